//! The data plane's decisions, packet by packet, with no I/O (sans-IO): what a
//! received datagram is and where it goes, which peer a TUN packet is sealed for and
//! where it is sent, what a peer's timers send. Each function reads the
//! configuration ([`State`]), takes only the lock of the peer it works on, counts
//! what it drops in [`Counters`], is told the time (`now`), and returns what to
//! write to the TUN or send: the threads of [`super::dataplane`] read, batch, lock
//! and write around it.
//!
//! Without sockets or a TUN, everything here runs in unit tests (`tests.rs`) and in
//! the `dataplane` fuzz target ([`super::fuzzing::dataplane`], `fuzz.rs`), against
//! real boringtun `Tunn`s for the peers' ends (`rig.rs`).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};

use super::peer::{Peer, PeerInner};
use super::udp::MAX_DATAGRAM;
use super::{bump, Counters, Identity, State};

pub(super) mod fuzz;
pub(super) mod rig;
#[cfg(test)]
mod tests;

/// Room `Tunn::encapsulate` needs beyond the packet.
const OVERHEAD: usize = 32;

/// Sizes of the handshake messages (the paper, 5.4): anything else is not queued.
pub(super) const HANDSHAKE_INIT_LEN: usize = 148;
/// The size of a handshake response.
const HANDSHAKE_RESP_LEN: usize = 92;
/// The size of a cookie reply.
const COOKIE_REPLY_LEN: usize = 64;

/// Message type of a handshake initiation.
pub(super) const MSG_HANDSHAKE_INIT: u32 = 1;
/// Message type of a handshake response.
pub(super) const MSG_HANDSHAKE_RESP: u32 = 2;
/// Message type of a cookie reply.
pub(super) const MSG_COOKIE_REPLY: u32 = 3;
/// Message type of a data message (a keepalive too).
const MSG_DATA: u32 = 4;

/// What to do with one received datagram (besides the datagrams it left in
/// [`RxScratch::sends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Datagram {
    /// An authenticated packet whose inner source is the sender's (cryptokey routing):
    /// `out[range]` goes to the TUN.
    Deliver(Range<usize>),
    /// A handshake message or cookie reply of the right size: for the handshake
    /// thread, which verifies it.
    Handshake,
    /// Authenticated, and nothing for the TUN (a keepalive).
    Keepalive,
    /// Dropped, and counted under its reason.
    Dropped(DropReason),
}

/// Why a datagram was dropped: each reason is one of the device's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DropReason {
    /// Not a WireGuard message (bad type or length): `invalid_datagrams`.
    Invalid,
    /// A data message whose receiver index names no peer: `unknown_index`.
    UnknownIndex,
    /// A data message the peer's `Tunn` refused (no session, bad tag, replay):
    /// `decrypt_failed`.
    DecryptFailed,
    /// Authentic, but its inner source is not in the sender's AllowedIPs:
    /// `disallowed_source`.
    DisallowedSource,
    /// Authentic, but an IPv4 packet cut shorter than its own header by its length
    /// field (as wireguard-go, never written to the TUN): `malformed_packets`.
    Malformed,
}

impl DropReason {
    /// The counter of this reason.
    fn counter(self, c: &Counters) -> &AtomicU64 {
        match self {
            Self::Invalid => &c.invalid_datagrams,
            Self::UnknownIndex => &c.unknown_index,
            Self::DecryptFailed => &c.decrypt_failed,
            Self::DisallowedSource => &c.disallowed_source,
            Self::Malformed => &c.malformed_packets,
        }
    }
}

/// A datagram to send once no lock is held: for which peer, what, where.
pub(super) type Outgoing = (Arc<Peer>, Vec<u8>, SocketAddr);

/// What a receive thread keeps between datagrams besides the decrypted packets.
pub(super) struct RxScratch {
    /// Room to encrypt packets queued during a handshake into.
    spare: Vec<u8>,
    /// Datagrams to send: packets a peer's `Tunn` queued during a handshake, sealed
    /// once a packet confirmed its session. Empty for ordinary data.
    pub(super) sends: Vec<Outgoing>,
}

impl RxScratch {
    /// Room for one datagram's queued packets.
    pub(super) fn new() -> Self {
        Self {
            spare: vec![0u8; MAX_DATAGRAM],
            sends: Vec::new(),
        }
    }
}

/// Handles one datagram from `src`. A handshake message or cookie reply is for the
/// handshake thread; a data message is decrypted into `out` (at least as long as the
/// datagram) and, when its inner source is the sender's, delivered as a range of
/// `out`. Packets to send (ones queued during a handshake) are added to `rx.sends`.
/// A drop is counted in `counters`. Allocates nothing for ordinary data.
pub(super) fn handle_datagram(
    state: &State,
    counters: &Counters,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    rx: &mut RxScratch,
    now: Instant,
) -> Datagram {
    let verdict = match classify(datagram) {
        Ok(Message::Handshake) => Datagram::Handshake,
        Ok(Message::Data(index)) => match state.by_index.get(&index) {
            Some(peer) => data(state, peer, src, datagram, out, rx, now),
            None => Datagram::Dropped(DropReason::UnknownIndex),
        },
        Err(reason) => Datagram::Dropped(reason),
    };
    if let Datagram::Dropped(reason) = verdict {
        bump(reason.counter(counters));
    }
    verdict
}

/// A datagram's kind, by its header alone.
enum Message {
    /// A handshake message or cookie reply of its size.
    Handshake,
    /// A data message, for the peer of this (24-bit) index.
    Data(u32),
}

/// Reads a datagram's type and size (and a data message's receiver index).
fn classify(datagram: &[u8]) -> Result<Message, DropReason> {
    let (Some(kind), Some(receiver)) = (word(datagram, 0), word(datagram, 4)) else {
        return Err(DropReason::Invalid);
    };
    match (kind, datagram.len()) {
        (MSG_HANDSHAKE_INIT, HANDSHAKE_INIT_LEN)
        | (MSG_HANDSHAKE_RESP, HANDSHAKE_RESP_LEN)
        | (MSG_COOKIE_REPLY, COOKIE_REPLY_LEN) => Ok(Message::Handshake),
        // `Tunn` puts the peer's index in the top 24 bits of its session ids.
        (MSG_DATA, _) => Ok(Message::Data(receiver >> 8)),
        _ => Err(DropReason::Invalid),
    }
}

/// The little-endian word at `at`, when the datagram has it.
fn word(datagram: &[u8], at: usize) -> Option<u32> {
    let bytes = datagram.get(at..at + 4)?;
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    Some(u32::from_le_bytes(word))
}

/// A data message for `peer`: decrypted, the peer roams to `src`, and what it
/// carried is checked against the peer's AllowedIPs.
fn data(
    state: &State,
    peer: &Arc<Peer>,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    rx: &mut RxScratch,
    now: Instant,
) -> Datagram {
    let mut inner = peer.lock();
    let opened = match decrypt(peer, &mut inner, src, datagram, out) {
        Ok(opened) => opened,
        Err(reason) => return Datagram::Dropped(reason),
    };
    // Authenticated. Roaming: the peer is wherever its last authenticated packet came
    // from.
    peer.add_rx(datagram.len());
    inner.endpoint = Some(src);
    inner.last_traversal = Some(now);
    // A keepalive (maybe the one confirming our handshake response), or the
    // initiator's first data confirming the session we answered: packets queued
    // meanwhile can go, sealed into `spare` (`out` holds the packet for the TUN, and
    // is only as long as the datagram: a keepalive's 32 bytes hold no packet). With
    // nothing queued this is a look at an empty queue.
    if let Some(tunn) = inner.tunn.as_mut() {
        rx.sends
            .extend(drain_queued(tunn, &mut rx.spare).map(|d| (peer.clone(), d, src)));
    }
    let Some((range, inner_src)) = opened else {
        inner.refresh_handshake_time();
        return Datagram::Keepalive;
    };
    drop(inner);
    if !whole_header(out.get(range.clone()).unwrap_or_default()) {
        return Datagram::Dropped(DropReason::Malformed);
    }
    if !allowed(state, peer, inner_src) {
        tracing::trace!(peer = %peer.public_key, %inner_src, "inner source not in AllowedIPs");
        return Datagram::Dropped(DropReason::DisallowedSource);
    }
    Datagram::Deliver(range)
}

/// Decrypts `datagram` with the peer's session into `out`: the packet's range of
/// `out` and its inner source, `None` for a keepalive.
fn decrypt(
    peer: &Peer,
    inner: &mut PeerInner,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
) -> Result<Option<(Range<usize>, IpAddr)>, DropReason> {
    let Some(tunn) = inner.tunn.as_mut() else {
        return Err(DropReason::DecryptFailed);
    };
    let base = out.as_ptr() as usize;
    let at = |packet: &[u8]| {
        let start = packet.as_ptr() as usize - base;
        start..start + packet.len()
    };
    match tunn.decapsulate(Some(src.ip()), datagram, out) {
        TunnResult::WriteToTunnelV4(packet, inner_src) => {
            Ok(Some((at(packet), IpAddr::from(inner_src))))
        }
        TunnResult::WriteToTunnelV6(packet, inner_src) => {
            Ok(Some((at(packet), IpAddr::from(inner_src))))
        }
        TunnResult::Done => Ok(None),
        TunnResult::Err(e) => {
            if matches!(
                e,
                WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter
            ) {
                tracing::trace!(peer = %peer.public_key, error = ?e, "replayed packet dropped");
            } else {
                tracing::debug!(peer = %peer.public_key, error = ?e, "packet dropped");
            }
            Err(DropReason::DecryptFailed)
        }
        // A data message never asks for an answer.
        TunnResult::WriteToNetwork(_) => Err(DropReason::DecryptFailed),
    }
}

/// Whether a decrypted packet holds its whole IP header. `Tunn` trims a packet to
/// its IP length field, which for IPv4 may be shorter than the header itself (an
/// IPv6 packet is at least its 40-byte header).
fn whole_header(packet: &[u8]) -> bool {
    match packet.first().map(|b| (b >> 4, usize::from(b & 0x0f) * 4)) {
        Some((4, header)) => header >= 20 && packet.len() >= header,
        Some((6, _)) => packet.len() >= 40,
        _ => false,
    }
}

/// Cryptokey routing: the inner source must be routed to the very peer it came from.
fn allowed(state: &State, peer: &Arc<Peer>, inner_src: IpAddr) -> bool {
    state
        .routes
        .lookup(inner_src)
        .is_some_and(|owner| Arc::ptr_eq(owner, peer))
}

/// The packets `tunn` queued while it had no session, encrypted now that it has one.
pub(super) fn drain_queued<'a>(
    tunn: &'a mut Tunn,
    out: &'a mut [u8],
) -> impl Iterator<Item = Vec<u8>> + 'a {
    std::iter::from_fn(move || match tunn.decapsulate(None, &[], out) {
        TunnResult::WriteToNetwork(queued) => Some(queued.to_vec()),
        TunnResult::Done
        | TunnResult::Err(_)
        | TunnResult::WriteToTunnelV4(..)
        | TunnResult::WriteToTunnelV6(..) => None,
    })
}

/// A datagram [`handle_tun`] wrote: its length, where to send it, for which peer.
pub(super) struct Sealed<'s> {
    /// Its length at the start of the buffer.
    pub(super) len: usize,
    /// The peer's endpoint.
    pub(super) endpoint: SocketAddr,
    /// The peer (its tx bytes count the datagram once sent).
    pub(super) peer: &'s Arc<Peer>,
}

/// The buffer [`handle_tun`] needs for a packet of `len` bytes: the packet's
/// datagram, or the handshake initiation `Tunn` writes instead while it has no
/// session.
pub(super) fn room(len: usize) -> usize {
    (len + OVERHEAD).max(HANDSHAKE_INIT_LEN)
}

/// Handles one (padded) packet read from the TUN: routed by its destination to a
/// peer (longest-prefix match over AllowedIPs), sealed into `out` (at least
/// [`room`] bytes), and returned with where to send it; `None` when it was dropped
/// (counted) or queued by the peer's `Tunn` until a handshake completes.
pub(super) fn handle_tun<'s>(
    state: &'s State,
    counters: &Counters,
    packet: &[u8],
    out: &mut [u8],
    now: Instant,
) -> Option<Sealed<'s>> {
    let Some(dst) = Tunn::dst_address(packet) else {
        bump(&counters.invalid_tun_packets);
        return None;
    };
    let Some(peer) = state.routes.lookup(dst) else {
        bump(&counters.no_route);
        return None;
    };
    let mut inner = peer.lock();
    if inner.endpoint.is_some() {
        peer.ensure_tunn(&mut inner, state.identity.as_deref());
    }
    let PeerInner {
        tunn,
        endpoint,
        last_traversal,
        ..
    } = &mut *inner;
    let (Some(tunn), Some(endpoint)) = (tunn.as_mut(), *endpoint) else {
        bump(&counters.no_endpoint);
        return None;
    };
    match tunn.encapsulate(packet, out) {
        TunnResult::WriteToNetwork(datagram) => {
            *last_traversal = Some(now);
            Some(Sealed {
                len: datagram.len(),
                endpoint,
                peer,
            })
        }
        TunnResult::Err(e) => {
            tracing::debug!(peer = %peer.public_key, error = ?e, "encapsulate failed");
            None
        }
        TunnResult::Done | TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
            None
        }
    }
}

/// One tick of `peer`'s timers at `now`: handshake retries and rekeys (`Tunn`'s own
/// timers), persistent keepalive, the handshake timestamp. What is to be sent goes to
/// `sends`, for the peer's endpoint; `buf` is room for one datagram.
pub(super) fn handle_timeout(
    peer: &Peer,
    identity: Option<&Identity>,
    now: Instant,
    buf: &mut [u8],
    sends: &mut Vec<(Vec<u8>, SocketAddr)>,
) {
    let mut inner = peer.lock();
    let endpoint = inner.endpoint;
    let due = keepalive_due(&inner, now) && endpoint.is_some();
    if due {
        peer.ensure_tunn(&mut inner, identity);
    }
    let Some(tunn) = inner.tunn.as_mut() else {
        return;
    };
    let mut sent = false;
    let mut send = |datagram: &[u8]| {
        if let Some(ep) = endpoint {
            sends.push((datagram.to_vec(), ep));
            sent = true;
        }
    };
    match tunn.update_timers(buf) {
        TunnResult::WriteToNetwork(datagram) => send(datagram),
        TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
        TunnResult::Err(e) => tracing::debug!(peer = %peer.public_key, error = ?e, "timer error"),
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
    }
    if due {
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
            inner.last_traversal = Some(now);
        }
    }
    if sent {
        inner.last_traversal = Some(now);
    }
    inner.refresh_handshake_time();
}

/// Whether the peer's persistent keepalive is due at `now`: it is on, and nothing
/// went either way for its interval (or ever).
fn keepalive_due(inner: &PeerInner, now: Instant) -> bool {
    inner.keepalive > 0
        && match inner.last_traversal {
            None => true,
            Some(t) => {
                now.saturating_duration_since(t) >= Duration::from_secs(u64::from(inner.keepalive))
            }
        }
}
