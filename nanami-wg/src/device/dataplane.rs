//! The device's threads: TUN → UDP, UDP → TUN, timers.
//!
//! Each loop drains what is queued (up to [`BATCH`] packets), processes the batch
//! under one read lock of the configuration, sends it with one `sendmmsg`, and only
//! then waits with `poll` (on the data fd and the wake pipe that `shutdown` fires).
//! Nothing here panics on input: every malformed or unexpected packet is dropped and
//! counted.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

use super::peer::{Peer, PeerInner};
use super::sys::{self, Ready, WakePipe};
use super::udp::{RecvBatch, SendBatch, UdpSockets, MAX_DATAGRAM};
use super::{bump, Shared, State};

/// Packets handled per batch: amortises the lock, the clock and `sendmmsg` without
/// adding latency (a batch is only what is already queued).
const BATCH: usize = 32;

/// Timer resolution: boringtun's own device ticks every 250 ms; WireGuard's timers
/// are in seconds.
const TICK: Duration = Duration::from_millis(250);

/// How often the device-wide handshake rate limiter is reset (its window is 1 s).
const LIMITER_RESET: Duration = Duration::from_secs(1);

/// Room `Tunn::encapsulate` needs beyond the packet.
const OVERHEAD: usize = 32;

const MSG_HANDSHAKE_INIT: u32 = 1;
const MSG_HANDSHAKE_RESP: u32 = 2;
const MSG_COOKIE_REPLY: u32 = 3;
const MSG_DATA: u32 = 4;

/// TUN → peers.
pub(super) fn tun_loop(shared: &Arc<Shared>) {
    let mut bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| vec![0u8; MAX_DATAGRAM - OVERHEAD])
        .collect();
    let mut lens = [0usize; BATCH];
    let mut out = SendBatch::new(BATCH);
    let tun_fd = shared.tun.raw_fd();
    loop {
        if shared.stopping() {
            return;
        }
        let mut n = 0;
        while n < BATCH {
            match shared.tun.read(&mut bufs[n]) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN failed; data plane stops");
                    shared.failed.store(true, Ordering::Release);
                    return;
                }
            }
        }
        if n == 0 {
            match sys::wait_readable(Some(tun_fd), &[shared.wake.fd()], None) {
                Ok(Ready::Woken) => return,
                Ok(Ready::Fd | Ready::Timeout) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll on the TUN failed");
                    shared.failed.store(true, Ordering::Release);
                    return;
                }
            }
        }
        let sockets = shared.sockets();
        {
            let state = shared.read();
            let now = Instant::now();
            for i in 0..n {
                encapsulate_one(shared, &state, &bufs[i][..lens[i]], &mut out, now);
                if out.is_full() {
                    flush(shared, &mut out, &sockets);
                }
            }
        }
        flush(shared, &mut out, &sockets);
    }
}

fn flush(shared: &Shared, out: &mut SendBatch, sockets: &UdpSockets) {
    let failed = out.flush(sockets);
    if failed > 0 {
        shared
            .counters
            .udp_send_errors
            .fetch_add(failed as u64, Ordering::Relaxed);
    }
}

fn encapsulate_one(
    shared: &Shared,
    state: &State,
    packet: &[u8],
    out: &mut SendBatch,
    now: Instant,
) {
    let c = &shared.counters;
    let Some(dst) = Tunn::dst_address(packet) else {
        bump(&c.invalid_tun_packets);
        return;
    };
    let Some(peer) = state.routes.lookup(dst) else {
        bump(&c.no_route);
        return;
    };
    let mut inner = peer.lock();
    if inner.endpoint.is_some() {
        peer.ensure_tunn(&mut inner, state.secret());
    }
    let PeerInner {
        tunn,
        endpoint,
        last_traversal,
        ..
    } = &mut *inner;
    let (Some(tunn), Some(endpoint)) = (tunn.as_mut(), *endpoint) else {
        bump(&c.no_endpoint);
        return;
    };
    match tunn.encapsulate(packet, out.next_buf()) {
        TunnResult::WriteToNetwork(datagram) => {
            let len = datagram.len();
            out.push(len, endpoint);
            peer.add_tx(len);
            *last_traversal = Some(now);
        }
        TunnResult::Done => {}
        TunnResult::Err(e) => {
            tracing::debug!(peer = %peer.public_key, error = ?e, "encapsulate failed");
        }
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
    }
}

/// UDP → TUN, for one socket of the generation `sockets`.
pub(super) fn udp_loop(
    shared: &Arc<Shared>,
    sockets: &Arc<UdpSockets>,
    v4: bool,
    gen_wake: &WakePipe,
) {
    let Some(sock) = (if v4 { &sockets.v4 } else { &sockets.v6 }) else {
        return;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
    let mut batch = RecvBatch::new(BATCH);
    let mut out = vec![0u8; MAX_DATAGRAM];
    loop {
        if shared.stopping() {
            return;
        }
        let n = match batch.recv(fd) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "recvmmsg failed");
                0
            }
        };
        if n == 0 {
            match sys::wait_readable(Some(fd), &[shared.wake.fd(), gen_wake.fd()], None) {
                Ok(Ready::Woken) => return,
                Ok(Ready::Fd | Ready::Timeout) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll on the UDP socket failed");
                    shared.failed.store(true, Ordering::Release);
                    return;
                }
            }
        }
        let state = shared.read();
        for i in 0..n {
            let (src, datagram) = batch.get(i);
            let Some(src) = src else {
                bump(&shared.counters.invalid_datagrams);
                continue;
            };
            handle_datagram(shared, &state, sockets, src, datagram, &mut out);
        }
    }
}

/// Finds the peer a datagram is for, answering with a cookie when under load.
fn peer_for<'s>(
    shared: &Shared,
    state: &'s State,
    sockets: &UdpSockets,
    src: SocketAddr,
    datagram: &[u8],
) -> Option<&'s Arc<Peer>> {
    let c = &shared.counters;
    if datagram.len() < 8 {
        bump(&c.invalid_datagrams);
        return None;
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&datagram[0..4]);
    let kind = u32::from_le_bytes(word);
    match kind {
        MSG_HANDSHAKE_INIT => {
            let Some(id) = state.identity.as_ref() else {
                bump(&c.handshake_rejected);
                return None;
            };
            let mut cookie = [0u8; 64];
            match id
                .limiter
                .verify_packet(Some(src.ip()), datagram, &mut cookie)
            {
                Ok(Packet::HandshakeInit(init)) => {
                    match parse_handshake_anon(&id.secret, &id.public, &init) {
                        Ok(half) => {
                            let found =
                                nanami_model::PublicKey::from_bytes(half.peer_static_public)
                                    .ok()
                                    .and_then(|k| state.peers.get(&k))
                                    .map(|e| &e.peer);
                            if found.is_none() {
                                bump(&c.handshake_rejected);
                            }
                            found
                        }
                        Err(_) => {
                            bump(&c.handshake_rejected);
                            None
                        }
                    }
                }
                Ok(
                    Packet::HandshakeResponse(_)
                    | Packet::PacketCookieReply(_)
                    | Packet::PacketData(_),
                ) => {
                    bump(&c.invalid_datagrams);
                    None
                }
                Err(TunnResult::WriteToNetwork(reply)) => {
                    bump(&c.cookie_replies);
                    if sockets.send_to(reply, src).is_err() {
                        bump(&c.udp_send_errors);
                    }
                    None
                }
                Err(_) => {
                    bump(&c.handshake_rejected);
                    None
                }
            }
        }
        MSG_HANDSHAKE_RESP | MSG_COOKIE_REPLY | MSG_DATA => {
            // The receiver index follows the type, except in a handshake response,
            // where the sender's index comes first.
            let at = if kind == MSG_HANDSHAKE_RESP { 8 } else { 4 };
            let Some(bytes) = datagram.get(at..at + 4) else {
                bump(&c.invalid_datagrams);
                return None;
            };
            word.copy_from_slice(bytes);
            let index = u32::from_le_bytes(word) >> 8;
            let found = state.by_index.get(&index);
            if found.is_none() {
                bump(&c.unknown_index);
            }
            found
        }
        _ => {
            bump(&c.invalid_datagrams);
            None
        }
    }
}

fn handle_datagram(
    shared: &Shared,
    state: &State,
    sockets: &UdpSockets,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
) {
    let c = &shared.counters;
    let Some(peer) = peer_for(shared, state, sockets, src, datagram) else {
        return;
    };
    let mut inner = peer.lock();
    // An initiation naming this peer (see `peer_for`) may start its first session;
    // anything else for a peer without one answers nothing it sent.
    if datagram.first() == Some(&(MSG_HANDSHAKE_INIT as u8)) {
        peer.ensure_tunn(&mut inner, state.secret());
    }
    let Some(tunn) = inner.tunn.as_mut() else {
        bump(&c.handshake_rejected);
        return;
    };
    let base = out.as_ptr() as usize;
    let outcome = match tunn.decapsulate(Some(src.ip()), datagram, out) {
        TunnResult::WriteToNetwork(reply) => {
            let is_cookie = reply.first() == Some(&(MSG_COOKIE_REPLY as u8));
            if is_cookie {
                bump(&c.cookie_replies);
            } else {
                peer.add_tx(reply.len());
            }
            if sockets.send_to(reply, src).is_err() {
                bump(&c.udp_send_errors);
            }
            if is_cookie {
                Outcome::Dropped
            } else {
                Outcome::Control
            }
        }
        TunnResult::WriteToTunnelV4(packet, inner_src) => Outcome::Data {
            start: packet.as_ptr() as usize - base,
            len: packet.len(),
            inner_src: inner_src.into(),
        },
        TunnResult::WriteToTunnelV6(packet, inner_src) => Outcome::Data {
            start: packet.as_ptr() as usize - base,
            len: packet.len(),
            inner_src: inner_src.into(),
        },
        TunnResult::Done => Outcome::Control,
        TunnResult::Err(e) => {
            if matches!(
                e,
                WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter
            ) {
                tracing::trace!(peer = %peer.public_key, error = ?e, "replayed packet dropped");
            } else {
                tracing::debug!(peer = %peer.public_key, error = ?e, "packet dropped");
            }
            bump(&c.decrypt_failed);
            Outcome::Dropped
        }
    };
    if let Outcome::Dropped = outcome {
        return;
    }
    peer.add_rx(datagram.len());
    // Roaming: the peer is wherever its last authenticated packet came from.
    inner.endpoint = Some(src);
    inner.last_traversal = Some(Instant::now());
    match outcome {
        Outcome::Data {
            start,
            len,
            inner_src,
        } => {
            // The TUN write happens outside the peer's lock, so the TUN thread can
            // encrypt for this peer meanwhile.
            drop(inner);
            if let Some(packet) = out.get(start..start + len) {
                deliver(shared, state, peer, packet, inner_src);
            }
        }
        Outcome::Control | Outcome::Dropped => {
            // After a handshake, packets queued while it ran can go.
            if let Some(tunn) = inner.tunn.as_mut() {
                while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], out) {
                    peer.add_tx(queued.len());
                    if sockets.send_to(queued, src).is_err() {
                        bump(&c.udp_send_errors);
                    }
                }
            }
            inner.refresh_handshake_time();
        }
    }
}

/// What decapsulating one datagram produced.
enum Outcome {
    /// Nothing authenticated (or only a cookie reply was sent).
    Dropped,
    /// An authenticated handshake message or keepalive.
    Control,
    /// A decrypted packet at `out[start..start + len]`.
    Data {
        start: usize,
        len: usize,
        inner_src: std::net::IpAddr,
    },
}

/// Cryptokey routing: the inner source must be routed to the very peer it came from.
fn deliver(
    shared: &Shared,
    state: &State,
    peer: &Arc<Peer>,
    packet: &[u8],
    inner_src: std::net::IpAddr,
) {
    let allowed = state
        .routes
        .lookup(inner_src)
        .is_some_and(|owner| Arc::ptr_eq(owner, peer));
    if !allowed {
        bump(&shared.counters.disallowed_source);
        tracing::trace!(peer = %peer.public_key, %inner_src, "inner source not in AllowedIPs");
        return;
    }
    if shared.tun.write(packet).is_err() {
        bump(&shared.counters.tun_write_errors);
    }
}

/// Timers: handshake retries and rekeys, keepalives, handshake timestamps.
pub(super) fn timer_loop(shared: &Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_reset = Instant::now();
    loop {
        match sys::wait_readable(None, &[shared.wake.fd()], Some(TICK)) {
            Ok(Ready::Woken) => return,
            Ok(Ready::Fd | Ready::Timeout) => {}
            Err(e) => {
                tracing::error!(error = %e, "poll in the timer thread failed");
                std::thread::sleep(TICK);
            }
        }
        if shared.stopping() {
            return;
        }
        let sockets = shared.sockets();
        let state = shared.read();
        if last_reset.elapsed() >= LIMITER_RESET {
            if let Some(id) = state.identity.as_ref() {
                id.limiter.reset_count();
            }
            last_reset = Instant::now();
        }
        for entry in state.peers.values() {
            tick_peer(shared, &entry.peer, state.secret(), &sockets, &mut buf);
        }
    }
}

fn tick_peer(
    shared: &Shared,
    peer: &Peer,
    secret: Option<&x25519::StaticSecret>,
    sockets: &UdpSockets,
    buf: &mut [u8],
) {
    let mut inner = peer.lock();
    let endpoint = inner.endpoint;
    let keepalive = inner.keepalive;
    let due = keepalive > 0
        && match inner.last_traversal {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_secs(u64::from(keepalive)),
        };
    if due && endpoint.is_some() {
        peer.ensure_tunn(&mut inner, secret);
    }
    let Some(tunn) = inner.tunn.as_mut() else {
        return;
    };
    let mut sent = false;
    let mut send = |datagram: &[u8]| {
        if let Some(ep) = endpoint {
            if sockets.send_to(datagram, ep).is_ok() {
                peer.add_tx(datagram.len());
                sent = true;
            } else {
                bump(&shared.counters.udp_send_errors);
            }
        }
    };
    match tunn.update_timers(buf) {
        TunnResult::WriteToNetwork(datagram) => send(datagram),
        TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
        TunnResult::Err(e) => tracing::debug!(peer = %peer.public_key, error = ?e, "timer error"),
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
    }
    if due && endpoint.is_some() {
        // An empty packet is a keepalive; without a session `Tunn` queues it and
        // starts a handshake, which is what a persistent keepalive should do.
        match tunn.encapsulate(&[], buf) {
            TunnResult::WriteToNetwork(datagram) => send(datagram),
            TunnResult::Done
            | TunnResult::Err(_)
            | TunnResult::WriteToTunnelV4(..)
            | TunnResult::WriteToTunnelV6(..) => {}
        }
        if !sent {
            // Handshake in flight: try again at the next interval, not every tick.
            inner.last_traversal = Some(Instant::now());
        }
    }
    if sent {
        inner.last_traversal = Some(Instant::now());
    }
    inner.refresh_handshake_time();
}
