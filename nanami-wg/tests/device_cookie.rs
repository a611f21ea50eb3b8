//! Under a flood of handshake initiations the device answers with cookie replies
//! (boringtun's `RateLimiter`) instead of doing Diffie-Hellman for each, and junk is
//! dropped and counted without harm. Needs root (a TUN in a private namespace).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use common::{ifname, keypair, Netns};
use nanami_wg::device::{DeviceUpdate, PeerUpdate};

#[test]
fn handshake_flood_gets_cookie_replies_and_junk_is_counted() {
    common::require(&[]);
    let ns = Netns::new("k");
    let a_if = ifname("k");
    let dev = common::pair::open_device(&ns, &a_if, 51820);
    let (a_key, a_pub) = keypair();
    let (b_key, b_pub) = keypair();
    dev.apply(
        DeviceUpdate::new()
            .private_key(a_key)
            .peer(PeerUpdate::new(b_pub).replace_allowed_ips(["10.9.0.2/32".parse().expect("n")])),
    )
    .expect("configure");

    let (responses, cookies) = ns.enter(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        // Junk of every shape first: it must be dropped and counted.
        for junk in [
            &b""[..],
            b"\x01",
            b"\x04\0\0\0\0\0\0\0",
            &[0xffu8; 200],
            &[1u8; 148],
            &[2u8; 92],
            &[4u8; 64],
        ] {
            sock.send_to(junk, "127.0.0.1:51820").expect("send junk");
        }
        let mut initiator = Tunn::new(
            x25519::StaticSecret::from(*b_key.expose_secret()),
            x25519::PublicKey::from(*a_pub.as_bytes()),
            None,
            None,
            1,
            None,
        );
        let mut buf = [0u8; 256];
        for _ in 0..300 {
            if let TunnResult::WriteToNetwork(p) =
                initiator.format_handshake_initiation(&mut buf, true)
            {
                sock.send_to(p, "127.0.0.1:51820").expect("send");
            }
        }
        let (mut responses, mut cookies) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if n > 0 && buf[0] == 2 => responses += 1,
                Ok((n, _)) if n > 0 && buf[0] == 3 => cookies += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (responses, cookies)
    });
    assert!(responses >= 1, "no handshake response at all");
    assert!(
        cookies >= 100,
        "only {cookies} cookie replies to 300 initiations in a burst"
    );
    let c = dev.counters();
    assert!(c.cookie_replies >= 100, "{c:?}");
    assert!(
        c.invalid_datagrams + c.handshake_rejected + c.unknown_index >= 5,
        "junk not counted: {c:?}"
    );
    assert!(dev.is_running());
}
