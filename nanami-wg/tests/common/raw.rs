//! A WireGuard peer made of a UDP socket and a boringtun `Tunn`, driven by the test
//! message by message: it sees every datagram on the wire, and can replay, forge and
//! flood. Include it with `#[path = "common/raw.rs"] mod raw;` next to `mod common;`.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses some
pub use nanami_testkit::wait_until;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use nanami_model::{PrivateKey, PublicKey};

use crate::common::Netns;

/// Message types on the wire.
pub const INIT: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const COOKIE: u8 = 3;
pub const DATA: u8 = 4;

/// Bytes a data message adds to its (padded) plaintext: type, index, counter, tag.
pub const DATA_OVERHEAD: usize = 32;

pub struct RawPeer {
    pub sock: UdpSocket,
    pub tunn: Tunn,
    /// The device's address.
    pub device: SocketAddr,
}

/// A `Tunn` for `key` talking to `device_pub`. Its own limiter never feels load: the
/// test's peer answers everything the device sends, whatever the rate.
pub fn tunn(key: &PrivateKey, device_pub: &PublicKey, psk: Option<[u8; 32]>, index: u32) -> Tunn {
    let secret = x25519::StaticSecret::from(*key.expose_secret());
    let public = x25519::PublicKey::from(&secret);
    Tunn::new(
        secret,
        x25519::PublicKey::from(*device_pub.as_bytes()),
        psk,
        None,
        index,
        Some(std::sync::Arc::new(RateLimiter::new(&public, u64::MAX))),
    )
}

/// A fresh handshake initiation from `tunn` (with a MAC2 once it holds a cookie).
pub fn initiation(tunn: &mut Tunn) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) else {
        panic!("no initiation");
    };
    p.to_vec()
}

/// A UDP socket bound to `bind` inside `ns`.
pub fn socket(ns: &Netns, bind: &str) -> UdpSocket {
    let sock = ns
        .enter(|| UdpSocket::bind(bind))
        .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    sock
}

impl RawPeer {
    /// A peer with key `key`, its socket bound to `bind` inside `ns`.
    pub fn new(
        ns: &Netns,
        bind: &str,
        key: PrivateKey,
        device_pub: &PublicKey,
        device: SocketAddr,
    ) -> Self {
        Self {
            sock: socket(ns, bind),
            tunn: tunn(&key, device_pub, None, rand::random::<u32>() >> 8),
            device,
        }
    }

    /// Where the peer sends from.
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// A fresh handshake initiation (with a MAC2 once the peer holds a cookie).
    pub fn initiation(&mut self) -> Vec<u8> {
        initiation(&mut self.tunn)
    }

    pub fn send(&self, datagram: &[u8]) {
        self.sock
            .send_to(datagram, self.device)
            .expect("send to the device");
    }

    /// The next datagram of type `kind` within `timeout` (others are dropped).
    pub fn recv_kind(&self, kind: u8, timeout: Duration) -> Option<Vec<u8>> {
        let start = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while start.elapsed() < timeout {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if n > 0 && buf[0] == kind {
                    return Some(buf[..n].to_vec());
                }
            }
        }
        None
    }

    /// Completes a handshake as the initiator (taking a cookie when the device is
    /// under load) and confirms it with a keepalive; returns the initiation the device
    /// accepted. Fails the test when it takes longer than `timeout`.
    pub fn handshake(&mut self, timeout: Duration) -> Vec<u8> {
        self.try_handshake(timeout, usize::MAX)
            .unwrap_or_else(|sent| panic!("no handshake within {timeout:?} ({sent} initiations)"))
    }

    /// Like [`RawPeer::handshake`], but sends at most `max` initiations (each waits
    /// up to a second for its answer); `Err` holds how many were sent.
    pub fn try_handshake(&mut self, timeout: Duration, max: usize) -> Result<Vec<u8>, usize> {
        let start = Instant::now();
        let mut buf = vec![0u8; 65_536];
        let mut sent = 0;
        while start.elapsed() < timeout && sent < max {
            let init = self.initiation();
            self.send(&init);
            sent += 1;
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_secs(1) {
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut out = [0u8; 256];
                match (
                    buf.first(),
                    self.tunn.decapsulate(None, &buf[..n], &mut out),
                ) {
                    (Some(&RESPONSE), TunnResult::WriteToNetwork(keepalive)) => {
                        let keepalive = keepalive.to_vec();
                        self.send(&keepalive);
                        return Ok(init);
                    }
                    // A cookie: the next initiation carries its MAC2.
                    (Some(&COOKIE), TunnResult::Done) => break,
                    _ => {}
                }
            }
        }
        Err(sent)
    }
}

/// The cookie reply anyone who saw `init` (a handshake message to `responder`) and
/// knows `responder`'s public key can make: no secret is needed.
pub fn forged_cookie_reply(init: &[u8], responder: &PublicKey) -> Vec<u8> {
    let limiter = RateLimiter::new(&x25519::PublicKey::from(*responder.as_bytes()), 0);
    let mut dst = [0u8; 64];
    match limiter.verify_packet_under_load(Some([192, 0, 2, 1].into()), init, &mut dst, true) {
        Err(TunnResult::WriteToNetwork(reply)) => reply.to_vec(),
        other => panic!("no cookie reply for that message: {other:?}"),
    }
}

/// Sets its flag when dropped, also while a failed assertion unwinds: a background
/// loop watching the flag then ends, and a scope waiting for it does not hang.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
