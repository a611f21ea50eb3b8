//! The `dataplane` fuzz target's body: an op list run through the real
//! [`handle_datagram`](super::handle_datagram), [`handle_tun`] and
//! [`handle_timeout`] on a [`Rig`] with an established session, checking the data
//! plane's laws after every op:
//!
//! - only packets the remote really sealed, with an inner source in peer 1's
//!   AllowedIPs, are delivered to the TUN, byte for byte;
//! - a datagram is counted once when it is dropped, under one reason, and not at all
//!   otherwise; no counter ever goes down;
//! - an authenticated datagram moves peer 1's endpoint to its source (roaming);
//! - what the remote opens of the device's datagrams is what the TUN gave.
//!
//! The op list: an op byte, a length byte, that many bytes (fewer at the end); the
//! op byte `% 5` picks what they are, and `/ 5 % 2` which of two addresses the
//! remote sends from:
//!
//! - 0: a raw datagram;
//! - 1: an inner packet the remote seals;
//! - 2: the last genuine datagram from the remote, with `(offset, xor)` byte pairs
//!   applied;
//! - 3: timers: the clock moves on by the first byte's value in seconds, then every
//!   peer's timers run;
//! - 4: a packet read from the TUN.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::rig::{Opened, Rig, PEER1_NETS, REMOTE_ADDR, ROAMED_ADDR};
use super::{handle_timeout, handle_tun, Datagram};
use crate::device::udp::MAX_DATAGRAM;
use crate::device::DeviceCounters;

/// How often a reply may bounce between the remote and the device in one op.
const MAX_BOUNCES: usize = 4;

/// What a run did, so that a test can tell the laws were not checked in vain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::device) struct Tally {
    /// Packets delivered to the TUN.
    pub(in crate::device) delivered: usize,
    /// Packets the remote opened.
    pub(in crate::device) opened: usize,
    /// Datagrams dropped.
    pub(in crate::device) dropped: usize,
}

/// Runs `ops` (see the module's docs); panics when a law breaks.
pub(in crate::device) fn run(ops: &[u8]) -> Tally {
    let mut f = Fuzz::new();
    let mut rest = ops;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(tail.first().copied().unwrap_or(0)).min(tail.len().saturating_sub(1));
        let chunk = tail.get(1..1 + len).unwrap_or_default();
        rest = tail.get(1 + len..).unwrap_or_default();
        let src = if op / 5 % 2 == 0 {
            REMOTE_ADDR
        } else {
            ROAMED_ADDR
        };
        let before = f.rig.counters.snapshot();
        match op % 5 {
            0 => f.device_receives(src, chunk, 0),
            1 => f.remote_sends(src, chunk),
            2 => f.corrupted(src, chunk),
            3 => f.timers(chunk.first().copied().unwrap_or(0)),
            _ => f.tun_reads(chunk),
        }
        let after = f.rig.counters.snapshot();
        assert!(
            fields(&before)
                .iter()
                .zip(fields(&after))
                .all(|(b, a)| *b <= a),
            "a counter went down: {before:?} → {after:?}"
        );
    }
    f.tally
}

/// The rig and what the laws need to remember.
struct Fuzz {
    rig: Rig,
    /// Every inner packet the remote sealed.
    sealed: Vec<Vec<u8>>,
    /// Every packet read from the TUN.
    from_tun: Vec<Vec<u8>>,
    /// The last datagram the remote sent.
    last: Vec<u8>,
    /// Peer 1's AllowedIPs.
    allowed: Vec<IpNet>,
    /// Room for one datagram.
    buf: Vec<u8>,
    /// What happened.
    tally: Tally,
}

impl Fuzz {
    fn new() -> Self {
        Self {
            rig: Rig::established(),
            sealed: Vec::new(),
            from_tun: Vec::new(),
            last: Vec::new(),
            allowed: PEER1_NETS
                .iter()
                .map(|n| n.parse().expect("a constant net"))
                .collect(),
            buf: vec![0u8; MAX_DATAGRAM],
            tally: Tally::default(),
        }
    }

    /// `datagram` from `src` through the receive thread's path; what comes back
    /// (queued packets, handshake answers) goes to the remote.
    fn device_receives(&mut self, src: SocketAddr, datagram: &[u8], bounces: usize) {
        let before = total(&self.rig.counters.snapshot());
        let received = self.rig.receive(src, datagram);
        let counted = self.counted_since(before);
        let dropped = matches!(received.verdict, Datagram::Dropped(_));
        assert_eq!(
            counted,
            u64::from(dropped),
            "{:?} counted {counted} times",
            received.verdict
        );
        if let Some(packet) = &received.delivered {
            self.check_delivered(packet);
            self.tally.delivered += 1;
        }
        self.tally.dropped += usize::from(dropped);
        if matches!(received.verdict, Datagram::Deliver(_) | Datagram::Keepalive) {
            assert_eq!(
                self.rig.peer(1).lock().endpoint,
                Some(src),
                "an authenticated datagram did not move the endpoint"
            );
        }
        let mut replies: Vec<Vec<u8>> = self.rig.rx.sends.drain(..).map(|(_, d, _)| d).collect();
        if received.verdict == Datagram::Handshake {
            replies.extend(self.rig.handshake_thread(src, datagram));
        }
        for reply in replies {
            self.remote_receives(&reply, bounces);
        }
    }

    /// How much the counters grew since their sum was `before`.
    fn counted_since(&self, before: u64) -> u64 {
        total(&self.rig.counters.snapshot())
            .checked_sub(before)
            .expect("the counters went down")
    }

    /// Law: a delivered packet is (the IP length's prefix of) one the remote sealed,
    /// from an address in peer 1's AllowedIPs.
    fn check_delivered(&self, packet: &[u8]) {
        assert!(
            self.sealed.iter().any(|s| s.starts_with(packet)),
            "a packet the remote never sealed was delivered: {packet:02x?}"
        );
        let src = inner_source(packet);
        assert!(
            src.is_some_and(|ip| self.allowed.iter().any(|n| n.contains(&ip))),
            "a packet from {src:?}, outside peer 1's AllowedIPs, was delivered"
        );
    }

    /// The remote receives `datagram` from the device; answers go back.
    fn remote_receives(&mut self, datagram: &[u8], bounces: usize) {
        match self.rig.open(datagram) {
            Opened::Packet(p) => {
                assert!(
                    self.from_tun.iter().any(|t| t.starts_with(&p)),
                    "the remote opened a packet the TUN never gave: {p:02x?}"
                );
                self.tally.opened += 1;
            }
            Opened::Reply(reply) if bounces < MAX_BOUNCES => {
                self.last.clone_from(&reply);
                self.device_receives(REMOTE_ADDR, &reply, bounces + 1);
            }
            Opened::Reply(_) | Opened::Nothing | Opened::Refused => {}
        }
    }

    /// The remote seals `packet` and sends it from `src`.
    fn remote_sends(&mut self, src: SocketAddr, packet: &[u8]) {
        let Some(datagram) = self.rig.seal(packet) else {
            return;
        };
        self.sealed.push(packet.to_vec());
        self.last.clone_from(&datagram);
        self.device_receives(src, &datagram, 0);
    }

    /// The last genuine datagram, with `(offset, xor)` pairs applied.
    fn corrupted(&mut self, src: SocketAddr, pairs: &[u8]) {
        let mut d = self.last.clone();
        for pair in pairs.chunks_exact(2) {
            if !d.is_empty() {
                let i = usize::from(pair[0]) % d.len();
                d[i] ^= pair[1].max(1);
            }
        }
        self.device_receives(src, &d, 0);
    }

    /// The clock moves on `seconds`; every peer's timers run.
    fn timers(&mut self, seconds: u8) {
        self.rig.now += Duration::from_secs(u64::from(seconds));
        let identity = self.rig.state.identity.clone();
        let peers: Vec<_> = self
            .rig
            .state
            .peers
            .values()
            .map(|e| e.peer.clone())
            .collect();
        let mut sends = Vec::new();
        for peer in &peers {
            handle_timeout(
                peer,
                identity.as_deref(),
                self.rig.now,
                &mut self.buf,
                &mut sends,
            );
        }
        self.deliver_sends(sends);
    }

    /// `packet` read from the TUN.
    fn tun_reads(&mut self, packet: &[u8]) {
        self.from_tun.push(packet.to_vec());
        let before = total(&self.rig.counters.snapshot());
        let sealed = handle_tun(
            &self.rig.state,
            &self.rig.counters,
            packet,
            &mut self.buf,
            self.rig.now,
        )
        .map(|s| (self.buf[..s.len].to_vec(), s.endpoint));
        let counted = self.counted_since(before);
        assert!(counted <= 1, "one TUN packet counted {counted} times");
        assert!(
            sealed.is_none() || counted == 0,
            "a sealed packet was counted as dropped"
        );
        self.deliver_sends(sealed.into_iter().collect());
    }

    /// Datagrams the device sends: those for peer 1's endpoint reach the remote.
    fn deliver_sends(&mut self, sends: Vec<(Vec<u8>, SocketAddr)>) {
        let endpoint = self.rig.peer(1).lock().endpoint;
        for (datagram, dst) in sends {
            if Some(dst) == endpoint {
                self.remote_receives(&datagram, 0);
            }
        }
    }
}

/// The source address of an IP packet, read independently of boringtun.
fn inner_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 => {
            let b: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Every counter (destructured, so a new one cannot be forgotten).
fn fields(c: &DeviceCounters) -> [u64; 16] {
    let DeviceCounters {
        invalid_datagrams,
        unknown_index,
        handshake_rejected,
        decrypt_failed,
        disallowed_source,
        malformed_packets,
        cookie_replies,
        handshake_rate_limited,
        handshake_queue_full,
        invalid_tun_packets,
        no_route,
        no_endpoint,
        tun_write_errors,
        udp_send_errors,
        tun_super_packets_read,
        tun_super_packets_written,
    } = *c;
    [
        invalid_datagrams,
        unknown_index,
        handshake_rejected,
        decrypt_failed,
        disallowed_source,
        malformed_packets,
        cookie_replies,
        handshake_rate_limited,
        handshake_queue_full,
        invalid_tun_packets,
        no_route,
        no_endpoint,
        tun_write_errors,
        udp_send_errors,
        tun_super_packets_read,
        tun_super_packets_written,
    ]
}

/// The sum of every counter.
fn total(c: &DeviceCounters) -> u64 {
    fields(c).iter().sum()
}
