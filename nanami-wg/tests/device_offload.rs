//! Offloads end to end (issue 19): TCP and UDP traffic of sizes around every segment
//! boundary through a pair of Nanami devices, with offloads on and then switched
//! off at run time, every byte checked; and interop with both wireguard-go
//! releases (Debian bookworm's, and today's with its own offloads, fetched by
//! `bench/wireguard-go-current` through a private package list), offloads on and
//! off. Needs root, `wireguard-go`, `wg`, `ping`; fails with a clear message
//! otherwise.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use common::pair::{self, tcp_echo, Pair, A_IN, B_IN};
use common::{ifname, keypair, veth, Netns};
use nanami_wg::device::{Device, DeviceCounters, DeviceUpdate, Offloads, PeerUpdate};

/// TCP payload sizes around the segment boundaries of both families (MSS 1380 for
/// IPv4 and 1360 for IPv6 at MTU 1420, 12 bytes less with timestamps), of a 64 KiB
/// super-packet, and a long stream.
fn tcp_sizes() -> Vec<usize> {
    let mut sizes = vec![1, 15, 16, 17];
    for mss in [1348, 1360, 1368, 1380] {
        for k in [1, 2, 3, 46, 47, 48] {
            sizes.extend([k * mss - 1, k * mss, k * mss + 1]);
        }
    }
    sizes.extend([65_535, 65_536, 65_537, (1 << 20) + 7]);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// UDP payload sizes: small, around the largest unfragmented payload of each family
/// (1392 for IPv4, 1372 for IPv6), fragmented ones, and the largest.
fn udp_sizes(v6: bool) -> Vec<usize> {
    let top = if v6 { 1372 } else { 1392 };
    vec![1, 15, 16, 17, top - 1, top, top + 1, 2 * top, 8000, 65_000]
}

/// Two Nanami devices, `a` and `b`, joined by a veth: 172.30.0.1 ↔ .2 underneath,
/// 10.99.0.1 ↔ .2 and fd99::1 ↔ fd99::2 in the tunnel. Fields drop in order.
struct NanamiPair {
    a_dev: Device,
    b_dev: Device,
    a: Netns,
    b: Netns,
}

impl NanamiPair {
    fn new() -> Self {
        common::require(&["ping"]);
        let a = Netns::new("oa");
        let b = Netns::new("ob");
        veth(
            &a,
            &format!("{}/24", pair::A_UNDER),
            &b,
            &format!("{}/24", pair::B_UNDER),
        );
        let (a_key, a_pub) = keypair();
        let (b_key, b_pub) = keypair();
        let (a_if, b_if) = (ifname("a"), ifname("b"));
        let a_dev = pair::open_device(&a, &a_if, pair::A_PORT);
        let b_dev = pair::open_device(&b, &b_if, pair::B_PORT);
        for (ns, ifname, v4, v6) in [(&a, &a_if, A_IN, "fd99::1"), (&b, &b_if, B_IN, "fd99::2")] {
            pair::up(ns, ifname, &format!("{v4}/24"));
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
        }
        let peer = |key, under: &str, port, v4: &str, v6: &str| {
            PeerUpdate::new(key)
                .endpoint(SocketAddr::new(under.parse().expect("ip"), port))
                .replace_allowed_ips([
                    format!("{v4}/32").parse().expect("net"),
                    format!("{v6}/128").parse().expect("net"),
                ])
        };
        a_dev
            .apply(DeviceUpdate::new().private_key(a_key).peer(peer(
                b_pub,
                pair::B_UNDER,
                pair::B_PORT,
                B_IN,
                "fd99::2",
            )))
            .expect("configure a");
        b_dev
            .apply(DeviceUpdate::new().private_key(b_key).peer(peer(
                a_pub,
                pair::A_UNDER,
                pair::A_PORT,
                A_IN,
                "fd99::1",
            )))
            .expect("configure b");
        let p = Self { a_dev, b_dev, a, b };
        assert!(
            p.a.ping_until(B_IN, Duration::from_secs(15)),
            "no ping through the tunnel; counters a {:?} b {:?}",
            p.a_dev.counters(),
            p.b_dev.counters()
        );
        p
    }

    fn counters(&self) -> [DeviceCounters; 2] {
        [self.a_dev.counters(), self.b_dev.counters()]
    }
}

/// Sends each payload of `sizes` from `from` to `to` (a socket bound in `to_ns`) and
/// checks every byte that arrives; then one UDP GSO send (`UDP_SEGMENT`: a
/// USO super-packet at the TUN when it takes them) of 20 full segments and a short
/// one, every datagram checked.
fn udp_exchange(from: &Netns, to_ns: &Netns, to: SocketAddr, sizes: &[usize]) {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let rx = to_ns
        .enter(|| UdpSocket::bind(to))
        .expect("bind the receiver");
    rx.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let tx = from
        .enter(|| UdpSocket::bind(bind))
        .expect("bind the sender");
    let mut buf = vec![0u8; 70_000];
    for (n, &size) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..size)
            .map(|i| (i * 13 + n * 7 + i / 509) as u8)
            .collect();
        // A datagram may be lost (UDP); three tries, and then every byte must match.
        let got = (0..3).find_map(|_| {
            tx.send_to(&data, to).expect("send");
            loop {
                match rx.recv(&mut buf) {
                    Ok(len) if buf[..len] == data[..] => return Some(len),
                    Ok(_) => continue, // an earlier try's copy
                    Err(_) => return None,
                }
            }
        });
        assert_eq!(
            got,
            Some(size),
            "UDP payload of {size} bytes to {to} did not arrive intact"
        );
    }

    let segment = if to.is_ipv4() { 1392 } else { 1372 };
    let total = 20 * segment + 100;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 + i / 1013) as u8).collect();
    let expected: Vec<&[u8]> = data.chunks(segment).collect();
    let value = segment as libc::c_int;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let mut complete = false;
    for _ in 0..3 {
        tx.send_to(&data, to).expect("GSO send");
        let mut seen = vec![false; expected.len()];
        while let Ok(len) = rx.recv(&mut buf) {
            let at = expected.iter().position(|e| **e == buf[..len]);
            let at =
                at.unwrap_or_else(|| panic!("a datagram of {len} bytes matches no segment sent"));
            seen[at] = true;
            if seen.iter().all(|s| *s) {
                break;
            }
        }
        if seen.iter().all(|s| *s) {
            complete = true;
            break;
        }
    }
    assert!(
        complete,
        "the GSO send's {} datagrams did not all arrive",
        expected.len()
    );
}

/// TCP both ways over both families, and UDP both ways, every size.
fn exchange(a: &Netns, b: &Netns) {
    for size in tcp_sizes() {
        tcp_echo(b, B_IN, a, size);
        tcp_echo(b, "[fd99::2]", a, size);
    }
    tcp_echo(a, A_IN, b, (1 << 20) + 7);
    tcp_echo(a, "[fd99::1]", b, (1 << 20) + 7);
    udp_exchange(
        a,
        b,
        "10.99.0.2:6000".parse().expect("addr"),
        &udp_sizes(false),
    );
    udp_exchange(
        b,
        a,
        "10.99.0.1:6000".parse().expect("addr"),
        &udp_sizes(false),
    );
    udp_exchange(
        a,
        b,
        "[fd99::2]:6000".parse().expect("addr"),
        &udp_sizes(true),
    );
}

fn no_drops(c: &DeviceCounters, which: &str) {
    assert_eq!(
        c.invalid_tun_packets, 0,
        "{which}: TUN frames dropped: {c:?}"
    );
    assert_eq!(c.tun_write_errors, 0, "{which}: TUN writes failed: {c:?}");
    assert_eq!(
        c.decrypt_failed, 0,
        "{which}: packets failed to decrypt: {c:?}"
    );
}

#[test]
fn every_byte_around_every_segment_boundary_with_offloads_on_and_off() {
    let p = NanamiPair::new();
    for dev in [&p.a_dev, &p.b_dev] {
        let o = dev.offloads();
        assert!(
            o.enabled && o.tun_tso && o.tun_gro,
            "offloads on by default: {o:?}"
        );
        assert!(o.udp_gso && o.udp_gro, "UDP offloads on by default: {o:?}");
    }

    exchange(&p.a, &p.b);
    let [a, b] = p.counters();
    no_drops(&a, "a");
    no_drops(&b, "b");
    // The offloads did the work: super-packets came from the TUNs and went to them.
    assert!(
        a.tun_super_packets_read > 0 && b.tun_super_packets_read > 0,
        "no TSO super-packet was split: a {a:?} b {b:?}"
    );
    assert!(
        a.tun_super_packets_written > 0 && b.tun_super_packets_written > 0,
        "no coalesced super-packet was written: a {a:?} b {b:?}"
    );

    // Off at run time, through the UAPI's own switch on one side and the API on
    // the other: the same traffic, without one super-packet.
    p.a_dev.set_offload(false).expect("offloads off");
    p.b_dev
        .apply(DeviceUpdate::new().offload(false))
        .expect("offloads off");
    for dev in [&p.a_dev, &p.b_dev] {
        assert_eq!(dev.offloads(), Offloads::default(), "everything off");
    }
    // A batch each thread had in hand when the switch moved may still count as
    // offloaded: a round trip over each family, both ways, goes through every data
    // thread after it, so the counters taken then are the baseline.
    for (ns, v4, v6) in [(&p.a, B_IN, "fd99::2"), (&p.b, A_IN, "fd99::1")] {
        assert!(ns.ping_all(v4, 1, &[]), "ping {v4}");
        assert!(ns.ping_all(v6, 1, &[]), "ping {v6}");
    }
    let [a, b] = p.counters();
    exchange(&p.a, &p.b);
    let [a2, b2] = p.counters();
    no_drops(&a2, "a (off)");
    no_drops(&b2, "b (off)");
    for (before, after) in [(a, a2), (b, b2)] {
        assert_eq!(
            (
                before.tun_super_packets_read,
                before.tun_super_packets_written
            ),
            (
                after.tun_super_packets_read,
                after.tun_super_packets_written
            ),
            "super-packets moved with offloads off"
        );
    }
}

/// Today's wireguard-go (`bench/wireguard-go-current` fetches it on first use).
fn wireguard_go_current() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/wireguard-go-current");
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (it fetches wireguard-go from Debian unstable): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn interop_with_both_wireguard_go_releases_offloads_on_and_off() {
    let current = wireguard_go_current();
    for program in [PathBuf::from("wireguard-go"), current] {
        for offload in [true, false] {
            let p = Pair::with_program(&program);
            p.dev.set_offload(offload).expect("switch");
            assert_eq!(p.dev.offloads().tun_tso, offload, "{:?}", p.dev.offloads());
            p.wait_up();
            for size in [1, 1367, 1368, 1369, 64 * 1368 + 1, (2 << 20) + 3] {
                tcp_echo(&p.b, B_IN, &p.a, size);
                tcp_echo(&p.a, A_IN, &p.b, size);
            }
            udp_exchange(
                &p.a,
                &p.b,
                "10.99.0.2:6000".parse().expect("addr"),
                &udp_sizes(false),
            );
            udp_exchange(
                &p.b,
                &p.a,
                "10.99.0.1:6000".parse().expect("addr"),
                &udp_sizes(false),
            );
            let c = p.dev.counters();
            no_drops(&c, &format!("{} offload {offload}", program.display()));
            assert_eq!(c.tun_super_packets_read > 0, offload, "{c:?}");
        }
    }
}
