//! Handshake messages (initiations, responses, cookie replies) are not handled on the
//! receive threads: those queue them here, and one handshake thread verifies and
//! answers them. A flood of initiations then costs the receive threads a copy each, and
//! data for every peer keeps flowing.
//!
//! As in wireguard-go and the Linux module, the device is **under load** while the queue
//! holds at least [`UNDER_LOAD_DEPTH`] messages and for [`UNDER_LOAD_FOR`] after. Under
//! load, a message without a valid cookie (MAC2) gets a cookie reply and no
//! Diffie-Hellman, and one with a valid cookie is admitted only within its source's
//! budget ([`super::ratelimit`], 20 a second). Unlike them, a message turned away for
//! load (cookie reply sent, or over its source's budget) also extends the load period:
//! otherwise a steady flood would be let through, DH and all, for a moment after each
//! period until the queue filled again.
//!
//! Nothing here holds the configuration lock or a peer's lock while sending.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::packet_core::{
    drain_queued, HANDSHAKE_INIT_LEN, MSG_COOKIE_REPLY, MSG_HANDSHAKE_INIT, MSG_HANDSHAKE_RESP,
};
use super::peer::Peer;
use super::ratelimit::SourceLimiter;
use super::udp::{UdpSockets, MAX_DATAGRAM};
use super::{bump, Shared};

/// Handshake messages waiting for the handshake thread; more are dropped (wireguard-go's
/// `QueueHandshakeSize`).
pub(super) const QUEUE_LEN: usize = 1024;
/// Queue depth from which the device is under load (wireguard-go: an eighth).
pub(super) const UNDER_LOAD_DEPTH: usize = QUEUE_LEN / 8;
/// How long the device stays under load after the last sign of it.
pub(super) const UNDER_LOAD_FOR: Duration = Duration::from_secs(1);
/// How long the thread waits for a message before checking for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// Largest handshake message (an initiation).
const MAX_HANDSHAKE: usize = HANDSHAKE_INIT_LEN;

/// One queued handshake message and where it came from.
pub(super) struct Queued {
    src: SocketAddr,
    len: usize,
    buf: [u8; MAX_HANDSHAKE],
    /// The sockets that received it, which answer it.
    sockets: Arc<UdpSockets>,
}

/// The producer side, shared by the receive threads.
pub(super) struct HandshakeQueue {
    tx: SyncSender<Queued>,
    depth: AtomicUsize,
}

impl HandshakeQueue {
    pub(super) fn new() -> (Self, Receiver<Queued>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LEN);
        let q = Self {
            tx,
            depth: AtomicUsize::new(0),
        };
        (q, rx)
    }

    /// Queues `datagram`; false when it is too long or the queue is full (dropped).
    pub(super) fn push(&self, src: SocketAddr, datagram: &[u8], sockets: &Arc<UdpSockets>) -> bool {
        let Some(len) = (datagram.len() <= MAX_HANDSHAKE).then_some(datagram.len()) else {
            return false;
        };
        let mut buf = [0u8; MAX_HANDSHAKE];
        buf[..len].copy_from_slice(datagram);
        // Counted before it is sent so the consumer never sees the depth go below zero.
        self.depth.fetch_add(1, Ordering::AcqRel);
        let queued = Queued {
            src,
            len,
            buf,
            sockets: sockets.clone(),
        };
        match self.tx.try_send(queued) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }

    /// Takes one message off the depth count; returns how many are still queued.
    fn taken(&self) -> usize {
        self.depth.fetch_sub(1, Ordering::AcqRel).saturating_sub(1)
    }
}

/// Whether the device is under load, and each source's budget while it is.
struct Load {
    until: Option<Instant>,
    sources: SourceLimiter,
    last_cleanup: Instant,
}

impl Load {
    fn new(now: Instant) -> Self {
        Self {
            until: None,
            sources: SourceLimiter::default(),
            last_cleanup: now,
        }
    }

    /// Under load at `now`, with `depth` messages still queued.
    fn check(&mut self, depth: usize, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_cleanup) >= Duration::from_secs(1) {
            self.sources.forget_idle(now);
            self.last_cleanup = now;
        }
        if depth >= UNDER_LOAD_DEPTH {
            self.turned_away(now);
            return true;
        }
        self.until.is_some_and(|t| now < t)
    }

    /// A message was turned away for load: the load period goes on.
    fn turned_away(&mut self, now: Instant) {
        self.until = Some(now + UNDER_LOAD_FOR);
    }
}

/// The handshake thread: runs until the device stops.
pub(super) fn handshake_loop(shared: &Arc<Shared>, rx: &Receiver<Queued>) {
    let mut load = Load::new(Instant::now());
    let mut out = vec![0u8; MAX_DATAGRAM];
    loop {
        if shared.stopping() {
            return;
        }
        let msg = match rx.recv_timeout(IDLE_WAIT) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let depth = shared.handshakes.taken();
        let now = Instant::now();
        let under_load = load.check(depth, now);
        let mut replies = Vec::new();
        handle(
            shared,
            &msg,
            under_load,
            &mut load,
            now,
            &mut out,
            &mut replies,
        );
        // Sent with no lock held: a full socket buffer stalls only this thread.
        for (peer, datagram, dst) in replies {
            match msg.sockets.send_to(&datagram, dst) {
                Ok(()) => {
                    if let Some(peer) = peer {
                        peer.add_tx(datagram.len());
                    }
                }
                Err(_) => bump(&shared.counters.udp_send_errors),
            }
        }
    }
}

/// A datagram to send: for which peer's tx bytes (none for a cookie reply), and where.
type Reply = (Option<Arc<Peer>>, Vec<u8>, SocketAddr);

fn handle(
    shared: &Shared,
    msg: &Queued,
    under_load: bool,
    load: &mut Load,
    now: Instant,
    out: &mut [u8],
    replies: &mut Vec<Reply>,
) {
    let c = &shared.counters;
    let datagram = &msg.buf[..msg.len];
    let kind = u32::from(datagram[0]);
    if kind == MSG_COOKIE_REPLY {
        cookie_reply(shared, datagram, out);
        return;
    }
    let Some(id) = shared.read().identity.clone() else {
        bump(&c.handshake_rejected);
        return;
    };
    let mut cookie = [0u8; 64];
    let verified =
        id.limiter
            .verify_packet_under_load(Some(msg.src.ip()), datagram, &mut cookie, under_load);
    let packet = match verified {
        Ok(packet) => packet,
        Err(TunnResult::WriteToNetwork(reply)) => {
            bump(&c.cookie_replies);
            load.turned_away(now);
            replies.push((None, reply.to_vec(), msg.src));
            return;
        }
        Err(_) => {
            bump(&c.handshake_rejected);
            return;
        }
    };
    if under_load && !load.sources.allow(msg.src.ip(), now) {
        bump(&c.handshake_rate_limited);
        load.turned_away(now);
        return;
    }
    let peer = match &packet {
        Packet::HandshakeInit(init) if kind == MSG_HANDSHAKE_INIT => {
            parse_handshake_anon(&id.secret, &id.public, init)
                .ok()
                .and_then(|half| nanami_model::PublicKey::from_bytes(half.peer_static_public).ok())
                .and_then(|key| shared.read().peers.get(&key).map(|e| e.peer.clone()))
        }
        Packet::HandshakeResponse(resp) if kind == MSG_HANDSHAKE_RESP => shared
            .read()
            .by_index
            .get(&(resp.receiver_idx >> 8))
            .cloned(),
        Packet::HandshakeInit(_)
        | Packet::HandshakeResponse(_)
        | Packet::PacketCookieReply(_)
        | Packet::PacketData(_) => None,
    };
    let Some(peer) = peer else {
        bump(&c.handshake_rejected);
        return;
    };
    let mut inner = peer.lock();
    if kind == MSG_HANDSHAKE_INIT {
        // An initiation naming this peer may start its first session.
        peer.ensure_tunn(&mut inner, Some(&id));
    }
    let Some(tunn) = inner.tunn.as_mut() else {
        bump(&c.handshake_rejected);
        return;
    };
    match tunn.handle_verified_packet(packet, out) {
        TunnResult::WriteToNetwork(answer) => {
            // Authenticated (a response to an initiation, or the keepalive that
            // confirms a response): the peer is where it came from.
            replies.push((Some(peer.clone()), answer.to_vec(), msg.src));
        }
        TunnResult::Err(e) => {
            tracing::debug!(peer = %peer.public_key, error = ?e, "handshake refused");
            bump(&c.handshake_rejected);
            return;
        }
        TunnResult::Done | TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
            bump(&c.handshake_rejected);
            return;
        }
    }
    peer.add_rx(msg.len);
    inner.endpoint = Some(msg.src);
    inner.last_traversal = Some(now);
    if kind == MSG_HANDSHAKE_INIT {
        inner.remember_initiation();
    }
    if let Some(tunn) = inner.tunn.as_mut() {
        // After a handshake, packets queued while it ran can go.
        for datagram in drain_queued(tunn, out) {
            replies.push((Some(peer.clone()), datagram, msg.src));
        }
    }
    inner.refresh_handshake_time();
}

/// A cookie reply: the peer's `Tunn` keeps the cookie for its next handshake message.
/// It is not authenticated by the peer, so it moves no endpoint, counts as no traffic
/// and touches no timer.
fn cookie_reply(shared: &Shared, datagram: &[u8], out: &mut [u8]) {
    let c = &shared.counters;
    let packet = match Tunn::parse_incoming_packet(datagram) {
        Ok(p @ Packet::PacketCookieReply(_)) => p,
        Ok(_) | Err(_) => {
            bump(&c.invalid_datagrams);
            return;
        }
    };
    let index = match &packet {
        Packet::PacketCookieReply(p) => p.receiver_idx >> 8,
        Packet::HandshakeInit(_) | Packet::HandshakeResponse(_) | Packet::PacketData(_) => return,
    };
    let Some(peer) = shared.read().by_index.get(&index).cloned() else {
        bump(&c.unknown_index);
        return;
    };
    let mut inner = peer.lock();
    let Some(tunn) = inner.tunn.as_mut() else {
        bump(&c.decrypt_failed);
        return;
    };
    match tunn.handle_verified_packet(packet, out) {
        TunnResult::Done => {}
        TunnResult::Err(WireGuardError::UnexpectedPacket) => {
            // No handshake message of ours awaits a cookie (or one was taken already).
            bump(&c.decrypt_failed);
        }
        TunnResult::Err(_)
        | TunnResult::WriteToNetwork(_)
        | TunnResult::WriteToTunnelV4(..)
        | TunnResult::WriteToTunnelV6(..) => bump(&c.decrypt_failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_starts_at_an_eighth_of_the_queue_and_lasts_while_messages_are_turned_away() {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        assert!(!load.check(UNDER_LOAD_DEPTH - 1, t0));
        assert!(load.check(UNDER_LOAD_DEPTH, t0));
        // The queue drained: still under load for a second...
        assert!(load.check(0, t0 + UNDER_LOAD_FOR / 2));
        assert!(!load.check(0, t0 + UNDER_LOAD_FOR));
        // ...unless messages keep being turned away.
        assert!(load.check(UNDER_LOAD_DEPTH, t0));
        let mut t = t0;
        for _ in 0..10 {
            t += UNDER_LOAD_FOR / 2;
            assert!(load.check(0, t));
            load.turned_away(t);
        }
        assert!(!load.check(0, t + UNDER_LOAD_FOR));
    }
}
