//! WireGuard protocol details a peer on the wire can check (issue 22): forged cookie
//! replies and replayed initiations move no endpoint, one limiter and one cookie secret
//! serve every peer, plaintext is padded. Each test drives a Nanami device with peers
//! made of a socket and a boringtun `Tunn` (`common/raw.rs`). Needs root (a TUN in a
//! private namespace).

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{ifname, keypair, Netns};
use nanami_model::{PrivateKey, PublicKey};
use nanami_wg::device::{Device, DeviceUpdate, PeerUpdate, PresharedKey};
use raw::{wait_until, RawPeer, COOKIE, DATA, DATA_OVERHEAD, INIT};

const PORT: u16 = 51820;
const MTU: usize = 1420;

/// A device in `ns` on 127.0.0.1:51820 with a fresh key, its TUN up as 10.9.0.1/24.
fn device(ns: &Netns) -> (Device, PrivateKey, PublicKey, SocketAddr) {
    let name = ifname("p");
    let dev = common::pair::open_device(ns, &name, PORT);
    ns.ip(&["addr", "add", "10.9.0.1/24", "dev", &name]);
    ns.ip(&["link", "set", &name, "mtu", &MTU.to_string(), "up"]);
    let (key, public) = keypair();
    dev.apply(DeviceUpdate::new().private_key(key.clone()))
        .expect("set the private key");
    (dev, key, public, SocketAddr::from(([127, 0, 0, 1], PORT)))
}

fn endpoint(dev: &Device, peer: &PublicKey) -> Option<SocketAddr> {
    dev.get().peer(peer).expect("peer").config.endpoint
}

#[test]
fn a_forged_cookie_reply_moves_no_endpoint_and_counts_as_no_traffic() {
    common::require(&[]);
    let ns = Netns::new("fc");
    let (dev, _, dev_pub, dev_addr) = device(&ns);
    let (p_key, p_pub) = keypair();
    let p = RawPeer::new(&ns, "127.0.0.1:0", p_key, &dev_pub, dev_addr);
    // The device initiates (persistent keepalive) to the peer, which stays silent.
    dev.apply(
        DeviceUpdate::new().peer(
            PeerUpdate::new(p_pub)
                .endpoint(p.addr())
                .persistent_keepalive(1)
                .replace_allowed_ips(["10.9.0.2/32".parse().expect("net")]),
        ),
    )
    .expect("configure");
    let init = p
        .recv_kind(INIT, Duration::from_secs(5))
        .expect("the device's initiation");
    assert_eq!(&init[132..148], &[0u8; 16], "no cookie yet: MAC2 is zero");

    // An observer on another address forges a cookie reply for it, twice.
    let observer = raw::socket(&ns, "127.0.0.3:0");
    let forged = raw::forged_cookie_reply(&init, &p_pub);
    let before = dev.counters();
    observer.send_to(&forged, dev_addr).expect("send");
    observer.send_to(&forged, dev_addr).expect("send");
    // The handshake thread takes them in order: once the second is refused (one
    // cookie per MAC1), the first was handled.
    wait_until(Duration::from_secs(5), "the second cookie refused", || {
        dev.counters().decrypt_failed > before.decrypt_failed
    });
    let info = dev.get();
    let peer = info.peer(&p_pub).expect("peer");
    assert_eq!(peer.config.endpoint, Some(p.addr()), "endpoint moved");
    assert_eq!(peer.stats.rx_bytes, 0, "a cookie reply counted as traffic");

    // The cookie itself was taken: the retry (after REKEY_TIMEOUT) carries a MAC2,
    // and goes to the endpoint the observer did not move.
    let retry = p
        .recv_kind(INIT, Duration::from_secs(10))
        .expect("the device's retry");
    assert_ne!(&retry[132..148], &[0u8; 16], "the retry has no MAC2");
    assert!(dev.is_running());
}

#[test]
fn a_replayed_initiation_after_a_preshared_key_change_moves_no_endpoint() {
    common::require(&[]);
    let ns = Netns::new("rp");
    let (dev, _, dev_pub, dev_addr) = device(&ns);
    let (p_key, p_pub) = keypair();
    let mut p = RawPeer::new(&ns, "127.0.0.1:0", p_key.clone(), &dev_pub, dev_addr);
    dev.apply(
        DeviceUpdate::new().peer(
            PeerUpdate::new(p_pub).replace_allowed_ips(["10.9.0.2/32".parse().expect("net")]),
        ),
    )
    .expect("configure");
    let captured = p.handshake(Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "the peer's endpoint", || {
        endpoint(&dev, &p_pub) == Some(p.addr())
    });

    // A new preshared key: the device rebuilds the peer's session state.
    let psk = [7u8; 32];
    dev.apply(
        DeviceUpdate::new()
            .peer(PeerUpdate::new(p_pub).preshared_key(Some(PresharedKey::from_bytes(psk)))),
    )
    .expect("set the preshared key");

    // An attacker replays the captured initiation from elsewhere.
    let attacker = raw::socket(&ns, "127.0.0.4:0");
    let before = dev.counters().handshake_rejected;
    attacker.send_to(&captured, dev_addr).expect("send");
    wait_until(Duration::from_secs(5), "the replay refused", || {
        dev.counters().handshake_rejected > before
    });
    assert_eq!(
        endpoint(&dev, &p_pub),
        Some(p.addr()),
        "the replay moved it"
    );
    assert_eq!(
        attacker.recv_from(&mut [0u8; 256]).ok(),
        None,
        "the replay was answered"
    );

    // The peer itself, with the new preshared key, still gets in.
    p.tunn = raw::tunn(&p_key, &dev_pub, Some(psk), 77);
    p.handshake(Duration::from_secs(10));
}

#[test]
fn plaintext_is_padded_to_sixteen_on_the_wire_capped_at_the_mtu() {
    common::require(&[]);
    let ns = Netns::new("pd");
    let (dev, _, dev_pub, dev_addr) = device(&ns);
    let (p_key, p_pub) = keypair();
    let mut p = RawPeer::new(&ns, "127.0.0.1:0", p_key, &dev_pub, dev_addr);
    dev.apply(
        DeviceUpdate::new().peer(
            PeerUpdate::new(p_pub).replace_allowed_ips(["10.9.0.2/32".parse().expect("net")]),
        ),
    )
    .expect("configure");
    p.handshake(Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "the peer's endpoint", || {
        endpoint(&dev, &p_pub).is_some()
    });

    // UDP payloads whose IP packets (28 bytes more) are 28 … 1,420 bytes long.
    let app = ns
        .enter(|| UdpSocket::bind("10.9.0.1:0"))
        .expect("bind in the namespace");
    let mut out = vec![0u8; 65_536];
    // The device reads the TUN's MTU every 250 ms: wait until it knows the one set
    // after it opened the TUN (a 1,413-byte packet then goes out capped at 1,420).
    wait_until(Duration::from_secs(5), "the device to read the MTU", || {
        app.send_to(&[0x5a; 1385], "10.9.0.2:9").expect("send");
        p.recv_kind(DATA, Duration::from_secs(1))
            .is_some_and(|d| d.len() - DATA_OVERHEAD == MTU)
    });
    for payload in [0usize, 1, 3, 4, 17, 100, 999, 1000, 1385, 1391, 1392] {
        let ip_len = payload + 28;
        app.send_to(&vec![0x5a; payload], "10.9.0.2:9")
            .expect("send into the tunnel");
        let datagram = p
            .recv_kind(DATA, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no data message for a {ip_len}-byte packet"));
        let plaintext = datagram.len() - DATA_OVERHEAD;
        let expected = (ip_len.div_ceil(16) * 16).min(MTU);
        assert_eq!(
            plaintext, expected,
            "a {ip_len}-byte packet went out as {plaintext} bytes of plaintext"
        );
        assert!(plaintext % 16 == 0 || plaintext == MTU);
        // The receiver trims the padding by the IP header's length.
        match p.tunn.decapsulate(None, &datagram, &mut out) {
            boringtun::noise::TunnResult::WriteToTunnelV4(packet, _) => {
                assert_eq!(packet.len(), ip_len);
            }
            other => panic!("the padded packet does not decrypt: {other:?}"),
        }
    }
}

/// Before issue 22 each peer's `Tunn` had its own limiter and cookie secret besides the
/// device's: under load on both, no MAC2 satisfied both and a peer could never finish
/// a handshake. Anyone who knows the peer's public key can load the peer's limiter with
/// initiations naming it; boringtun only makes initiations for a key it holds, so the
/// flooder here holds the peer's key (what it sends is what such an attacker sends).
#[test]
fn under_a_flood_naming_a_peer_the_peer_still_completes_its_handshake() {
    common::require(&[]);
    let ns = Netns::new("bl");
    let (dev, _, dev_pub, dev_addr) = device(&ns);
    let (p_key, p_pub) = keypair();
    dev.apply(
        DeviceUpdate::new().peer(
            PeerUpdate::new(p_pub).replace_allowed_ips(["10.9.0.2/32".parse().expect("net")]),
        ),
    )
    .expect("configure");

    // The flooder, from its own address, takes a cookie, then sends initiations that
    // carry it (all prepared in advance, so older than the peer's own).
    let mut flooder = RawPeer::new(&ns, "127.0.0.1:0", p_key.clone(), &dev_pub, dev_addr);
    let cookie_pool: Vec<Vec<u8>> = (0..300).map(|_| flooder.initiation()).collect();
    let mut got_cookie = false;
    for _ in 0..20 {
        for init in &cookie_pool {
            flooder.send(init);
        }
        // The last one sent is the one the flooder's `Tunn` takes a cookie for.
        let mut buf = [0u8; 256];
        let mut out = [0u8; 256];
        while let Ok((n, _)) = flooder.sock.recv_from(&mut buf) {
            if buf[0] == COOKIE
                && matches!(
                    flooder.tunn.decapsulate(None, &buf[..n], &mut out),
                    boringtun::noise::TunnResult::Done
                )
            {
                got_cookie = true;
            }
        }
        if got_cookie {
            break;
        }
    }
    assert!(
        got_cookie,
        "the flooder never got a cookie: {:?}",
        dev.counters()
    );
    let flood: Vec<Vec<u8>> = (0..300).map(|_| flooder.initiation()).collect();
    assert!(flood.iter().all(|i| i[132..148] != [0u8; 16]), "no MAC2");

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // About 10,000 a second until the peer is done.
            while !stop.load(Ordering::Relaxed) {
                for init in flood.iter().cycle().take(100) {
                    let _ = flooder.sock.send_to(init, dev_addr);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let before = dev.counters();
        wait_until(Duration::from_secs(10), "the flood limited", || {
            dev.counters().handshake_rate_limited > before.handshake_rate_limited + 100
        });
        // The peer, from its own address, under load on the very limiter its
        // initiations meet: it takes a cookie and gets in.
        let mut p = RawPeer::new(&ns, "127.0.0.2:0", p_key.clone(), &dev_pub, dev_addr);
        p.handshake(Duration::from_secs(10));
        wait_until(Duration::from_secs(5), "the peer's endpoint", || {
            endpoint(&dev, &p_pub) == Some(p.addr())
        });
        // The flood's initiations are older than the peer's: none moves it back.
        let rejected = dev.counters().handshake_rejected;
        wait_until(Duration::from_secs(10), "more flood refused", || {
            dev.counters().handshake_rejected > rejected + 20
        });
        assert_eq!(endpoint(&dev, &p_pub), Some(p.addr()));
        stop.store(true, Ordering::Relaxed);
    });
    assert!(dev.is_running());
}
