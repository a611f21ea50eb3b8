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

use boringtun::noise::TunnResult;
use common::{ifname, keypair, Netns};
use nanami_model::{PrivateKey, PublicKey};
use nanami_wg::device::{Device, DeviceUpdate, PeerUpdate, PresharedKey};
use raw::{wait_until, RawPeer, StopOnDrop, COOKIE, DATA, DATA_OVERHEAD, INIT};

const PORT: u16 = 51820;
const MTU: usize = 1420;

/// A device in its own namespace on 127.0.0.1:51820, its TUN up as 10.9.0.1/24, with
/// one peer (10.9.0.2/32, no endpoint yet). Fields drop in order: the device, then the
/// namespace.
struct Rig {
    dev: Device,
    ns: Netns,
    dev_pub: PublicKey,
    dev_addr: SocketAddr,
    p_key: PrivateKey,
    p_pub: PublicKey,
}

impl Rig {
    fn new(tag: &str) -> Self {
        common::require(&[]);
        let ns = Netns::new(tag);
        let name = ifname("p");
        let dev = common::pair::open_device(&ns, &name, PORT);
        ns.ip(&["addr", "add", "10.9.0.1/24", "dev", &name]);
        ns.ip(&["link", "set", &name, "mtu", &MTU.to_string(), "up"]);
        let (key, dev_pub) = keypair();
        let (p_key, p_pub) = keypair();
        let peer =
            PeerUpdate::new(p_pub).replace_allowed_ips(["10.9.0.2/32".parse().expect("net")]);
        dev.apply(DeviceUpdate::new().private_key(key).peer(peer))
            .expect("configure the device");
        Self {
            dev,
            ns,
            dev_pub,
            dev_addr: SocketAddr::from(([127, 0, 0, 1], PORT)),
            p_key,
            p_pub,
        }
    }

    /// The peer's key on a socket bound to `bind`.
    fn peer(&self, bind: &str) -> RawPeer {
        RawPeer::new(
            &self.ns,
            bind,
            self.p_key.clone(),
            &self.dev_pub,
            self.dev_addr,
        )
    }

    /// The peer's endpoint as the device has it.
    fn endpoint(&self) -> Option<SocketAddr> {
        self.dev
            .get()
            .peer(&self.p_pub)
            .expect("peer")
            .config
            .endpoint
    }
}

#[test]
fn a_forged_cookie_reply_moves_no_endpoint_and_counts_as_no_traffic() {
    let rig = Rig::new("fc");
    let (ns, dev, dev_addr, p_pub) = (&rig.ns, &rig.dev, rig.dev_addr, rig.p_pub);
    let p = rig.peer("127.0.0.1:0");
    // The device initiates (persistent keepalive) to the peer, which stays silent.
    dev.apply(
        DeviceUpdate::new().peer(
            PeerUpdate::new(p_pub)
                .endpoint(p.addr())
                .persistent_keepalive(1),
        ),
    )
    .expect("configure");
    let init = p
        .recv_kind(INIT, Duration::from_secs(5))
        .expect("the device's initiation");
    assert_eq!(&init[132..148], &[0u8; 16], "no cookie yet: MAC2 is zero");

    // An observer on another address forges a cookie reply for it, twice.
    let observer = raw::socket(ns, "127.0.0.3:0");
    let forged = raw::forged_cookie_reply(&init, &p_pub);
    let before = dev.counters();
    observer.send_to(&forged, dev_addr).expect("send");
    observer.send_to(&forged, dev_addr).expect("send");
    // The handshake thread takes them in order: once the second is refused (one
    // cookie per MAC1), the first was handled.
    wait_until("the second cookie refused", Duration::from_secs(5), || {
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
    let rig = Rig::new("rp");
    let (ns, dev, dev_addr, p_pub) = (&rig.ns, &rig.dev, rig.dev_addr, rig.p_pub);
    let mut p = rig.peer("127.0.0.1:0");
    let captured = p.handshake(Duration::from_secs(10));
    wait_until("the peer's endpoint", Duration::from_secs(5), || {
        rig.endpoint() == Some(p.addr())
    });

    // A new preshared key: the device rebuilds the peer's session state.
    let psk = [7u8; 32];
    dev.apply(
        DeviceUpdate::new()
            .peer(PeerUpdate::new(p_pub).preshared_key(Some(PresharedKey::from_bytes(psk)))),
    )
    .expect("set the preshared key");

    // An attacker replays the captured initiation from elsewhere.
    let attacker = raw::socket(ns, "127.0.0.4:0");
    let before = dev.counters().handshake_rejected;
    attacker.send_to(&captured, dev_addr).expect("send");
    wait_until("the replay refused", Duration::from_secs(5), || {
        dev.counters().handshake_rejected > before
    });
    assert_eq!(rig.endpoint(), Some(p.addr()), "the replay moved it");
    assert_eq!(
        attacker.recv_from(&mut [0u8; 256]).ok(),
        None,
        "the replay was answered"
    );

    // The peer itself, with the new preshared key, still gets in.
    p.tunn = raw::tunn(&rig.p_key, &rig.dev_pub, Some(psk), 77);
    p.handshake(Duration::from_secs(10));
}

#[test]
fn plaintext_is_padded_to_sixteen_on_the_wire_capped_at_the_mtu() {
    let rig = Rig::new("pd");
    let ns = &rig.ns;
    let mut p = rig.peer("127.0.0.1:0");
    p.handshake(Duration::from_secs(10));
    wait_until("the peer's endpoint", Duration::from_secs(5), || {
        rig.endpoint().is_some()
    });

    // UDP payloads whose IP packets (28 bytes more) are 28 … 1,420 bytes long.
    let app = ns
        .enter(|| UdpSocket::bind("10.9.0.1:0"))
        .expect("bind in the namespace");
    let mut out = vec![0u8; 65_536];
    // The device reads the TUN's MTU every 250 ms: wait until it knows the one set
    // after it opened the TUN (a 1,413-byte packet then goes out capped at 1,420).
    wait_until("the device to read the MTU", Duration::from_secs(5), || {
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
        let TunnResult::WriteToTunnelV4(packet, _) = p.tunn.decapsulate(None, &datagram, &mut out)
        else {
            panic!("the padded {ip_len}-byte packet does not decrypt");
        };
        assert_eq!(packet.len(), ip_len);
    }
}

/// Sends `pool` to the device from `flooder` until the device answers the last one
/// with a cookie reply and `flooder`'s `Tunn` takes it; fails the test otherwise.
fn take_cookie(flooder: &mut RawPeer, pool: &[Vec<u8>], dev: &Device) {
    for _ in 0..50 {
        for init in pool {
            flooder.send(init);
        }
        // The last one sent is the one the flooder's `Tunn` takes a cookie for.
        let mut buf = [0u8; 256];
        let mut out = [0u8; 256];
        while let Ok((n, _)) = flooder.sock.recv_from(&mut buf) {
            if buf[0] == COOKIE
                && matches!(
                    flooder.tunn.decapsulate(None, &buf[..n], &mut out),
                    TunnResult::Done
                )
            {
                return;
            }
        }
    }
    panic!("the flooder never got a cookie: {:?}", dev.counters());
}

/// Before issue 22 each peer's `Tunn` had its own limiter (10 handshakes a second) and
/// cookie secret besides the device's. Unloaded, a peer's eleventh handshake in a second
/// got a cookie from its `Tunn`; with both under load no MAC2 satisfied both, and the
/// peer could not finish a handshake. Anyone who knows the peer's public key can load
/// the peer's limiter with initiations naming it; here eight sources, each with its own
/// cookie and so within its 20 a second, together send the peer's `Tunn` 160 a second.
/// (boringtun only makes initiations for a key it holds, so the flooders hold the
/// peer's key; what they send is what such an attacker sends.)
#[test]
fn one_limiter_for_every_peer_a_peer_gets_in_under_a_flood_naming_it() {
    let rig = Rig::new("bl");
    let (dev, dev_addr) = (&rig.dev, rig.dev_addr);

    // Not under load: fifteen handshakes in a row are each answered at once, none
    // with a cookie (only the device decides when it is under load).
    let mut p = rig.peer("127.0.0.2:0");
    for i in 0..15 {
        let got = p.try_handshake(Duration::from_secs(5), 1);
        assert!(
            got.is_ok(),
            "handshake {i} not answered: {:?}",
            dev.counters()
        );
    }

    // Each flooder takes a cookie for its address, then prepares initiations that carry
    // it (all older than the peer's next ones).
    let mut floods = Vec::new();
    for host in 1..=8 {
        let mut flooder = rig.peer(&format!("127.0.1.{host}:0"));
        let pool: Vec<Vec<u8>> = (0..300).map(|_| flooder.initiation()).collect();
        take_cookie(&mut flooder, &pool, dev);
        let flood: Vec<Vec<u8>> = (0..100).map(|_| flooder.initiation()).collect();
        assert!(flood.iter().all(|i| i[132..148] != [0u8; 16]), "no MAC2");
        floods.push((flooder, flood));
    }

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // About 1,500 a second from each source until the test ends.
            while !stop.load(Ordering::Relaxed) {
                for (flooder, flood) in &floods {
                    for init in flood.iter().take(15) {
                        let _ = flooder.sock.send_to(init, dev_addr);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let _stop = StopOnDrop(&stop);
        let before = dev.counters();
        wait_until("the flood limited", Duration::from_secs(10), || {
            dev.counters().handshake_rate_limited > before.handshake_rate_limited + 500
        });
        // The peer, from its own address, under load on the one limiter its
        // initiations meet: one cookie, then in (a spare initiation in case one is
        // lost in a full queue).
        let mut p = rig.peer("127.0.0.2:0");
        let got = p.try_handshake(Duration::from_secs(10), 3);
        assert!(
            got.is_ok(),
            "the peer did not get in with 3 initiations: {:?}",
            dev.counters()
        );
        wait_until("the peer's endpoint", Duration::from_secs(5), || {
            rig.endpoint() == Some(p.addr())
        });
        // The flood's initiations are older than the peer's: none moves it back.
        let rejected = dev.counters().handshake_rejected;
        wait_until("more flood refused", Duration::from_secs(10), || {
            dev.counters().handshake_rejected > rejected + 40
        });
        assert_eq!(rig.endpoint(), Some(p.addr()));
    });
    assert!(dev.is_running());
}
