//! The replay window of the WireGuard core Nanami builds on (boringtun, patched in
//! `third_party/boringtun`): packets reordered by up to 8,000 are accepted once, replays
//! and packets older than the window (8,128, as in the Linux module) are refused.
//! Through boringtun's public API, with two `Tunn`s and no network; no root needed.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use rand::rngs::OsRng;

/// Two `Tunn`s with a session between them: (sender, receiver).
fn session() -> (Tunn, Tunn) {
    let a = x25519::StaticSecret::random_from_rng(OsRng);
    let b = x25519::StaticSecret::random_from_rng(OsRng);
    let (a_pub, b_pub) = (x25519::PublicKey::from(&a), x25519::PublicKey::from(&b));
    let mut sender = Tunn::new(a, b_pub, None, None, 1, None);
    let mut receiver = Tunn::new(b, a_pub, None, None, 2, None);
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = sender.format_handshake_initiation(&mut buf, false)
    else {
        panic!("no initiation");
    };
    let init = init.to_vec();
    let TunnResult::WriteToNetwork(resp) = receiver.decapsulate(None, &init, &mut out) else {
        panic!("no response");
    };
    let resp = resp.to_vec();
    let TunnResult::WriteToNetwork(keepalive) = sender.decapsulate(None, &resp, &mut buf) else {
        panic!("no keepalive");
    };
    let keepalive = keepalive.to_vec();
    assert!(matches!(
        receiver.decapsulate(None, &keepalive, &mut out),
        TunnResult::Done
    ));
    (sender, receiver)
}

/// A minimal IPv4 packet (header only, 20 bytes), numbered in its identification field.
fn ip_packet(n: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&20u16.to_be_bytes());
    p[4..6].copy_from_slice(&n.to_be_bytes());
    p[8] = 64;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p
}

#[derive(Debug, PartialEq)]
enum Got {
    Accepted,
    Replay,
    TooOld,
}

fn deliver(receiver: &mut Tunn, datagram: &[u8]) -> Got {
    let mut out = vec![0u8; 2048];
    match receiver.decapsulate(None, datagram, &mut out) {
        TunnResult::WriteToTunnelV4(..) => Got::Accepted,
        TunnResult::Err(WireGuardError::DuplicateCounter) => Got::Replay,
        TunnResult::Err(WireGuardError::InvalidCounter) => Got::TooOld,
        other @ (TunnResult::Done
        | TunnResult::Err(_)
        | TunnResult::WriteToNetwork(_)
        | TunnResult::WriteToTunnelV6(..)) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn reordering_within_8000_is_accepted_once_and_replays_are_refused() {
    let (mut sender, mut receiver) = session();
    // Counter 0 went with the keepalive; these are 1 ..= 8,200.
    let mut buf = vec![0u8; 2048];
    let sealed: Vec<Vec<u8>> = (0..8200u16)
        .map(|n| {
            let TunnResult::WriteToNetwork(p) = sender.encapsulate(&ip_packet(n), &mut buf) else {
                panic!("not encrypted");
            };
            p.to_vec()
        })
        .collect();

    // The newest first, then the 8,000 before it, newest to oldest: all accepted.
    let newest = sealed.len() - 1;
    assert_eq!(deliver(&mut receiver, &sealed[newest]), Got::Accepted);
    for i in (newest - 8000..newest).rev() {
        assert_eq!(
            deliver(&mut receiver, &sealed[i]),
            Got::Accepted,
            "packet {i}"
        );
    }
    // Each of them again: replays.
    for i in (newest - 8000..=newest).step_by(97) {
        assert_eq!(
            deliver(&mut receiver, &sealed[i]),
            Got::Replay,
            "packet {i}"
        );
    }
    // The window is the newest counter (8,200) and the 8,127 before it: counter 72
    // is just outside, 73 just inside.
    assert_eq!(deliver(&mut receiver, &sealed[71]), Got::TooOld);
    assert_eq!(deliver(&mut receiver, &sealed[72]), Got::Accepted);
}
