//! Interop with `wireguard-go` (Debian) as the other end, in network namespaces.
//! Needs root, `wireguard-go`, `wg`, `ping`; fails with a clear message otherwise.

mod common;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, SystemTime};

use common::pair::{self, tcp_echo, Pair, A_IN, B_IN};
use common::{ifname, keypair, veth, Netns, WgGo};
use nanami_wg::device::{Device, DeviceOptions, DeviceUpdate, PeerUpdate, TunSource};

#[test]
fn handshake_ping_and_tcp_both_ways() {
    let p = Pair::new();
    p.wait_up();
    assert!(
        p.a.ping_all(B_IN, 5, &[]),
        "Nanami → wireguard-go ping lost packets"
    );
    assert!(
        p.b.ping_all(A_IN, 5, &[]),
        "wireguard-go → Nanami ping lost packets"
    );
    tcp_echo(&p.b, B_IN, &p.a, 4 << 20);
    tcp_echo(&p.a, A_IN, &p.b, 4 << 20);

    let info = p.dev.get();
    let peer = info.peer(&p.b_pub).expect("peer present");
    let hs = peer.stats.last_handshake.expect("a handshake time");
    let age = SystemTime::now().duration_since(hs).unwrap_or_default();
    assert!(age < Duration::from_secs(60), "handshake {age:?} ago");
    assert!(peer.stats.rx_bytes > 8 << 20, "rx {}", peer.stats.rx_bytes);
    assert!(peer.stats.tx_bytes > 8 << 20, "tx {}", peer.stats.tx_bytes);
    assert_eq!(info.public_key(), Some(p.a_pub));
}

#[test]
fn two_peers_with_disjoint_allowed_ips() {
    common::require(&["wireguard-go", "wg", "ping"]);
    let a = Netns::new("a");
    let b = Netns::new("b");
    let c = Netns::new("c");
    veth(&a, "172.30.1.1/24", &b, "172.30.1.2/24");
    veth(&a, "172.30.2.1/24", &c, "172.30.2.2/24");
    let (a_key, a_pub) = keypair();
    let (b_key, b_pub) = keypair();
    let (c_key, c_pub) = keypair();
    let a_if = ifname("a");
    let dev = pair::open_device(&a, &a_if, 51820);
    pair::up(&a, &a_if, "10.99.0.1/24");
    a.ip(&["route", "add", "10.60.0.0/16", "dev", &a_if]);
    dev.apply(
        DeviceUpdate::new()
            .private_key(a_key)
            .peer(
                PeerUpdate::new(b_pub)
                    .endpoint("172.30.1.2:51821".parse().expect("ep"))
                    .replace_allowed_ips([
                        "10.99.0.2/32".parse().expect("n"),
                        "10.60.2.0/24".parse().expect("n"),
                    ]),
            )
            .peer(
                PeerUpdate::new(c_pub)
                    .endpoint("172.30.2.2:51821".parse().expect("ep"))
                    .replace_allowed_ips([
                        "10.99.0.3/32".parse().expect("n"),
                        "10.60.3.0/24".parse().expect("n"),
                    ]),
            ),
    )
    .expect("configure");

    let a_pub_s = a_pub.to_string();
    let wb = WgGo::start(&b, &ifname("b"));
    wb.configure(
        &b,
        &b_key,
        51821,
        &[
            "peer",
            &a_pub_s,
            "allowed-ips",
            "10.99.0.0/24",
            "endpoint",
            "172.30.1.1:51820",
        ],
    );
    pair::up(&b, &wb.ifname, "10.99.0.2/24");
    b.ip(&["addr", "add", "10.60.2.1/24", "dev", &wb.ifname]);
    let wc = WgGo::start(&c, &ifname("c"));
    wc.configure(
        &c,
        &c_key,
        51821,
        &[
            "peer",
            &a_pub_s,
            "allowed-ips",
            "10.99.0.0/24",
            "endpoint",
            "172.30.2.1:51820",
        ],
    );
    pair::up(&c, &wc.ifname, "10.99.0.3/24");
    c.ip(&["addr", "add", "10.60.3.1/24", "dev", &wc.ifname]);

    // Each address exists only behind its own peer: a reply proves the routing.
    assert!(
        a.ping_until("10.99.0.2", Duration::from_secs(15)),
        "peer b unreachable"
    );
    assert!(
        a.ping_until("10.99.0.3", Duration::from_secs(15)),
        "peer c unreachable"
    );
    assert!(a.ping_all("10.60.2.1", 3, &[]), "b's subnet unreachable");
    assert!(a.ping_all("10.60.3.1", 3, &[]), "c's subnet unreachable");
    assert!(b.ping_all("10.99.0.1", 3, &[]), "b → a failed");
    assert!(c.ping_all("10.99.0.1", 3, &[]), "c → a failed");
    // b may not speak for c's addresses: b's wireguard-go allows them, Nanami not.
    let before = dev.counters().disallowed_source;
    b.ip(&["addr", "add", "10.99.0.3/32", "dev", &wb.ifname]);
    assert!(
        !b.ping_all("10.99.0.1", 2, &["-I", "10.99.0.3"]),
        "b spoofing c's address got through"
    );
    assert!(dev.counters().disallowed_source >= before + 2);

    let info = dev.get();
    for key in [b_pub, c_pub] {
        let peer = info.peer(&key).expect("peer");
        assert!(
            peer.stats.tx_bytes > 0 && peer.stats.rx_bytes > 0,
            "{peer:?}"
        );
        assert!(peer.stats.last_handshake.is_some());
    }

    // Changing one peer's AllowedIPs, endpoint and keepalive happens in place: no
    // session (its own or the other peer's) is recreated.
    let before: Vec<_> = [b_pub, c_pub]
        .iter()
        .map(|k| info.peer(k).and_then(|x| x.stats.last_handshake))
        .collect();
    dev.upsert_peer(&nanami_wg::device::PeerConfig {
        public_key: c_pub,
        preshared_key: None,
        endpoint: Some("172.30.2.2:51821".parse().expect("ep")),
        allowed_ips: vec![
            "10.99.0.3/32".parse().expect("n"),
            "10.60.4.0/24".parse().expect("n"),
        ],
        persistent_keepalive: Some(25),
    })
    .expect("update c");
    assert!(
        a.ping_all("10.99.0.3", 3, &[]),
        "c lost traffic after its update"
    );
    assert!(
        a.ping_all("10.99.0.2", 3, &[]),
        "b lost traffic after c's update"
    );
    assert!(
        !a.ping_all("10.60.3.1", 1, &[]),
        "c's removed subnet still routed"
    );
    let info = dev.get();
    let after: Vec<_> = [b_pub, c_pub]
        .iter()
        .map(|k| info.peer(k).and_then(|x| x.stats.last_handshake))
        .collect();
    assert_eq!(
        before, after,
        "a session was recreated by an in-place update"
    );
    drop(dev);
}

#[test]
fn packet_with_inner_source_outside_allowed_ips_is_dropped() {
    let p = Pair::new();
    p.wait_up();
    // wireguard-go will send anything in 10.99.0.0/24 to Nanami; Nanami only accepts
    // 10.99.0.2 from it.
    p.b.ip(&["addr", "add", "10.99.0.50/24", "dev", &p.wg.ifname]);
    let before = p.dev.counters().disallowed_source;
    assert!(
        !p.b.ping_all(A_IN, 3, &["-I", "10.99.0.50"]),
        "a packet from outside the peer's AllowedIPs was delivered"
    );
    let after = p.dev.counters().disallowed_source;
    assert!(after >= before + 3, "disallowed_source {before} → {after}");
    assert!(
        p.b.ping_all(A_IN, 3, &["-I", B_IN]),
        "the legitimate source stopped working"
    );
}

#[test]
fn roaming_peer_keeps_traffic_flowing() {
    let p = Pair::new();
    p.wait_up();
    let endpoint = |p: &Pair| p.dev.get().peer(&p.b_pub).and_then(|x| x.config.endpoint);
    // 1. wireguard-go moves to another port.
    p.b.exec("wg", &["set", &p.wg.ifname, "listen-port", "51999"]);
    assert!(
        p.b.ping_until(A_IN, Duration::from_secs(10)),
        "wireguard-go → Nanami failed after the port change"
    );
    assert_eq!(
        endpoint(&p),
        Some("172.30.0.2:51999".parse::<SocketAddr>().expect("ep"))
    );
    assert!(
        p.a.ping_all(B_IN, 3, &[]),
        "Nanami → wireguard-go failed after the port change"
    );
    // 2. …and to another address: a NAT in front of wireguard-go rebinds (what a
    //    phone changing networks looks like), on a fresh port so conntrack sees a
    //    new flow.
    let veth = veth_of(&p.b);
    p.b.ip(&["addr", "add", "172.30.0.3/24", "dev", &veth]);
    p.b.exec_stdin(
        "nft",
        &["-f", "-"],
        "table ip nmt {\n chain post {\n  type nat hook postrouting priority 100;\n  \
         udp dport 51820 snat to 172.30.0.3\n }\n}\n",
    );
    p.b.exec("wg", &["set", &p.wg.ifname, "listen-port", "52000"]);
    assert!(
        p.b.ping_until(A_IN, Duration::from_secs(10)),
        "wireguard-go → Nanami failed after the address change; endpoint {:?}",
        endpoint(&p)
    );
    assert_eq!(
        endpoint(&p),
        Some("172.30.0.3:52000".parse::<SocketAddr>().expect("ep"))
    );
    assert!(
        p.a.ping_all(B_IN, 5, &[]),
        "Nanami → wireguard-go failed after roaming"
    );
}

/// The veth of a namespace made by `veth()` (the only interface besides lo and wg).
fn veth_of(ns: &Netns) -> String {
    let out = ns.exec("ip", &["-o", "link", "show", "type", "veth"]);
    out.split(':')
        .nth(1)
        .map(|s| s.trim().split('@').next().unwrap_or("").to_owned())
        .expect("a veth")
}

#[test]
fn rekey_after_peer_restart() {
    let p = Pair::new();
    p.wait_up();
    let first = p
        .dev
        .get()
        .peer(&p.b_pub)
        .and_then(|x| x.stats.last_handshake)
        .expect("first handshake");
    // Handshake timestamps have one-second resolution in wg(8); make the next one
    // clearly later.
    std::thread::sleep(Duration::from_millis(1500));
    p.b.stop(p.wg.pid);
    let wg = WgGo::start(&p.b, &p.wg.ifname);
    Pair::configure_wg(&p.b, &wg, &p.b_key, &p.a_pub);
    assert!(
        p.b.ping_until(A_IN, Duration::from_secs(15)),
        "no traffic after wireguard-go restarted"
    );
    assert!(p.a.ping_all(B_IN, 3, &[]), "Nanami → restarted peer failed");
    let second = p
        .dev
        .get()
        .peer(&p.b_pub)
        .and_then(|x| x.stats.last_handshake)
        .expect("second handshake");
    assert!(
        second > first,
        "handshake time did not advance: {first:?} → {second:?}"
    );
}

/// Opens a TUN the way an Android VpnService hands one over: the test opens it.
fn open_tun_fd(name: &str) -> OwnedFd {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a correctly laid out ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file.into()
}

#[test]
fn fd_mode_with_a_tun_the_test_opened() {
    common::require(&["wireguard-go", "wg", "ping"]);
    let a = Netns::new("a");
    let b = Netns::new("b");
    veth(&a, "172.30.0.1/24", &b, "172.30.0.2/24");
    let (a_key, a_pub) = keypair();
    let (b_key, b_pub) = keypair();
    let a_if = ifname("f");
    let fd = a.enter(|| open_tun_fd(&a_if));
    let dev = a
        .enter(|| {
            Device::open(
                TunSource::Fd { fd, name: None },
                DeviceOptions {
                    listen_port: 51820,
                    uapi_dir: None,
                    offload: true,
                },
            )
        })
        .expect("open from fd");
    assert_eq!(
        dev.name(),
        Some(a_if.as_str()),
        "name read back from the fd"
    );
    pair::up(&a, &a_if, "10.99.0.1/24");
    dev.apply(
        DeviceUpdate::new().private_key(a_key).peer(
            PeerUpdate::new(b_pub)
                .endpoint("172.30.0.2:51821".parse().expect("ep"))
                .replace_allowed_ips(["10.99.0.2/32".parse().expect("n")]),
        ),
    )
    .expect("configure");
    let wg = WgGo::start(&b, &ifname("b"));
    Pair::configure_wg(&b, &wg, &b_key, &a_pub);
    assert!(
        a.ping_until(B_IN, Duration::from_secs(15)),
        "fd-mode device: no reply"
    );
    assert!(
        b.ping_all(A_IN, 3, &[]),
        "fd-mode device: reverse ping failed"
    );
    drop(dev);
}

#[test]
fn persistent_keepalive_set_in_place_brings_the_tunnel_up_without_traffic() {
    let p = Pair::new();
    let stats = |p: &Pair| p.dev.get().peer(&p.b_pub).map(|x| x.stats).expect("peer");
    assert!(
        stats(&p).last_handshake.is_none(),
        "no traffic yet, no handshake yet"
    );
    p.dev
        .apply(
            DeviceUpdate::new().peer(
                PeerUpdate::new(p.b_pub)
                    .update_only()
                    .persistent_keepalive(1),
            ),
        )
        .expect("set keepalive");
    let start = std::time::Instant::now();
    while stats(&p).last_handshake.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keepalive did not start a handshake"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tx = stats(&p).tx_bytes;
    std::thread::sleep(Duration::from_millis(2500));
    assert!(stats(&p).tx_bytes > tx, "no keepalives sent");
    let seen = p.b.exec("wg", &["show", &p.wg.ifname, "latest-handshakes"]);
    let secs: u64 = seen
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("latest-handshakes");
    assert!(secs > 0, "wireguard-go saw no handshake");
    // The keepalive is visible through the UAPI as wg(8) reads it.
    let shown = p.a.exec("wg", &["show", &p.a_if, "persistent-keepalive"]);
    assert!(shown.trim_end().ends_with('1'), "{shown}");
}

#[test]
fn ipv6_underlay_and_overlay() {
    common::require(&["wireguard-go", "wg", "ping"]);
    let a = Netns::new("a");
    let b = Netns::new("b");
    veth(&a, "172.30.0.1/24", &b, "172.30.0.2/24");
    let (va, vb) = (veth_of(&a), veth_of(&b));
    a.ip(&["addr", "add", "fd30::1/64", "dev", &va, "nodad"]);
    b.ip(&["addr", "add", "fd30::2/64", "dev", &vb, "nodad"]);
    let (a_key, a_pub) = keypair();
    let (b_key, b_pub) = keypair();
    let a_if = ifname("a");
    let dev = pair::open_device(&a, &a_if, 51820);
    pair::up(&a, &a_if, "10.99.0.1/24");
    a.ip(&["addr", "add", "fd99::1/64", "dev", &a_if, "nodad"]);
    dev.apply(
        DeviceUpdate::new().private_key(a_key).peer(
            PeerUpdate::new(b_pub)
                .endpoint("[fd30::2]:51821".parse().expect("ep"))
                .replace_allowed_ips([
                    "10.99.0.2/32".parse().expect("n"),
                    "fd99::2/128".parse().expect("n"),
                ]),
        ),
    )
    .expect("configure");
    let wg = WgGo::start(&b, &ifname("b"));
    let a_pub = a_pub.to_string();
    wg.configure(
        &b,
        &b_key,
        51821,
        &[
            "peer",
            &a_pub,
            "allowed-ips",
            "10.99.0.0/24,fd99::/64",
            "endpoint",
            "[fd30::1]:51820",
        ],
    );
    pair::up(&b, &wg.ifname, "10.99.0.2/24");
    b.ip(&["addr", "add", "fd99::2/64", "dev", &wg.ifname, "nodad"]);
    assert!(
        a.ping_until("fd99::2", Duration::from_secs(15)),
        "IPv6 in IPv6: no reply"
    );
    assert!(
        a.ping_all("10.99.0.2", 3, &[]),
        "IPv4 in IPv6: lost packets"
    );
    assert!(b.ping_all("fd99::1", 3, &[]), "reverse IPv6 ping failed");
    let ep = dev.get().peer(&b_pub).and_then(|x| x.config.endpoint);
    assert_eq!(
        ep,
        Some("[fd30::2]:51821".parse::<SocketAddr>().expect("ep"))
    );
}
