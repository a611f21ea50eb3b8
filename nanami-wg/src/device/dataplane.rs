//! The device's threads: TUN → UDP, UDP → TUN, timers (the handshake thread is in
//! [`super::handshake`]).
//!
//! Each loop drains what is queued (up to [`BATCH`] packets), processes the batch
//! under one read lock of the configuration, releases it, and only then writes to the
//! TUN or sends (one `sendmmsg`): no lock is held across a write that can block, so a
//! full socket buffer stalls one thread, not every thread and a waiting configuration
//! writer. Then it waits with `poll` (on the data fd and the wake pipe that `shutdown`
//! fires). Nothing here panics on input: every malformed or unexpected packet is
//! dropped and counted.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};

use super::offload::{self, Coalescer, PacketBuf};
use super::offloads::OffloadSwitch;
use super::peer::{Peer, PeerInner};
use super::sys::{self, Ready, WakePipe};
use super::udp::{RecvBatch, SendBatch, UdpSockets, MAX_DATAGRAM};
use super::{bump, Counters, Identity, Shared, State};

/// Packets handled per batch: amortises the lock, the clock and `sendmmsg` without
/// adding latency (a batch is only what is already queued).
const BATCH: usize = 32;

/// Timer resolution: boringtun's own device ticks every 250 ms; WireGuard's timers
/// are in seconds.
const TICK: Duration = Duration::from_millis(250);

/// Room `Tunn::encapsulate` needs beyond the packet.
const OVERHEAD: usize = 32;

/// Padding multiple of the plaintext (the paper, 5.4.6): exact inner sizes do not leak.
const PADDING: usize = 16;

/// Sizes of the handshake messages (the paper, 5.4): anything else is not queued.
pub(super) const HANDSHAKE_INIT_LEN: usize = 148;
const HANDSHAKE_RESP_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;

pub(super) const MSG_HANDSHAKE_INIT: u32 = 1;
pub(super) const MSG_HANDSHAKE_RESP: u32 = 2;
pub(super) const MSG_COOKIE_REPLY: u32 = 3;
const MSG_DATA: u32 = 4;

/// Most packets encrypted per pass: a pass reads TUN frames until it has this many
/// (a TSO super-packet gives up to ~45), then encrypts and sends them together.
const MAX_SEGMENTS: usize = 128;

/// Largest frame a TUN read gives: a 64 KiB super-packet behind its header.
const MAX_FRAME: usize = offload::VNET_HDR_LEN + 65_535;

/// TUN → peers.
pub(super) fn tun_loop(shared: &Arc<Shared>) {
    let vnet = shared.tun.vnet_hdr();
    let mut frame = vec![0u8; MAX_FRAME];
    // The IP packets of the frames read, split when they were super-packets.
    let mut packets = PacketBuf::new();
    let mut out = SendBatch::new();
    let tun_fd = shared.tun.raw_fd();
    loop {
        if shared.stopping() {
            return;
        }
        packets.clear();
        let mut frames = 0;
        while frames < BATCH && packets.len() < MAX_SEGMENTS {
            match shared.tun.read(&mut frame) {
                Ok(len) => {
                    frames += 1;
                    if !vnet {
                        packets.push(&frame[..len]);
                        continue;
                    }
                    let before = packets.len();
                    match offload::split(&frame[..len], &mut packets) {
                        Ok(()) if packets.len() > before + 1 => {
                            bump(&shared.counters.tun_super_packets_read);
                        }
                        Ok(()) => {}
                        Err(e) => {
                            tracing::trace!(error = %e, "TUN frame dropped");
                            bump(&shared.counters.invalid_tun_packets);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A utun frame without a known address family (Apple only): one
                // packet dropped, not the TUN gone.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    bump(&shared.counters.invalid_tun_packets);
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN failed; data plane stops");
                    shared.failed.store(true, Ordering::Release);
                    return;
                }
            }
        }
        if frames == 0 {
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
        let mtu = shared.mtu();
        {
            let state = shared.read();
            let now = Instant::now();
            for i in 0..packets.len() {
                let (buf, len) = packets.get_mut_with_room(i);
                let padded = pad(buf, len, mtu);
                encapsulate_one(shared, &state, &buf[..padded], &mut out, now);
            }
        }
        flush(shared, &mut out, &sockets);
    }
}

/// Pads the packet `buf[..len]` with zeros to a multiple of [`PADDING`], but not past
/// `mtu` (when known) or the buffer; returns the padded length. The receiver trims to
/// the IP header's length.
fn pad(buf: &mut [u8], len: usize, mtu: Option<usize>) -> usize {
    let cap = mtu.unwrap_or(usize::MAX).max(len).min(buf.len());
    let padded = len.div_ceil(PADDING).saturating_mul(PADDING).min(cap);
    if let Some(tail) = buf.get_mut(len..padded) {
        tail.fill(0);
    }
    padded
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
        peer.ensure_tunn(&mut inner, state.identity.as_deref());
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
    // Room for the packet's datagram, or for the handshake initiation `Tunn` writes
    // instead while it has no session.
    let room = (packet.len() + OVERHEAD).max(HANDSHAKE_INIT_LEN);
    match tunn.encapsulate(packet, out.next_buf(room)) {
        TunnResult::WriteToNetwork(datagram) => {
            let len = datagram.len();
            out.push(len, endpoint, peer);
            *last_traversal = Some(now);
        }
        TunnResult::Done => {}
        TunnResult::Err(e) => {
            tracing::debug!(peer = %peer.public_key, error = ?e, "encapsulate failed");
        }
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
    }
}

/// What a receive thread keeps between datagrams besides the decrypted packets.
struct RxScratch {
    /// Room to encrypt packets queued during a handshake into.
    spare: Vec<u8>,
    /// Datagrams to send once no lock is held: for which peer, what, where.
    sends: Vec<(Arc<Peer>, Vec<u8>, SocketAddr)>,
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
    // The decrypted packets of a batch, and the TUN frames they become.
    let mut packets = PacketBuf::new();
    let mut to_tun = TunWriter::new();
    let mut rx = RxScratch {
        spare: vec![0u8; MAX_DATAGRAM],
        sends: Vec::new(),
    };
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
        packets.clear();
        {
            let state = shared.read();
            for slot in 0..n {
                let (src, datagrams) = batch.get(slot);
                let Some(src) = src else {
                    bump(&shared.counters.invalid_datagrams);
                    continue;
                };
                for datagram in datagrams {
                    packets.push_with(datagram.len(), |out| {
                        let (start, end) =
                            handle_datagram(shared, &state, sockets, src, datagram, out, &mut rx)?;
                        out.copy_within(start..end, 0);
                        Some(end - start)
                    });
                }
            }
        }
        // Writes and sends with no lock held.
        to_tun.write(shared, &packets);
        for (peer, datagram, dst) in rx.sends.drain(..) {
            match sockets.send_to(&datagram, dst) {
                Ok(()) => peer.add_tx(datagram.len()),
                Err(_) => bump(&shared.counters.udp_send_errors),
            }
        }
    }
}

/// Writes decrypted packets to the TUN: coalesced into super-packets when the TUN
/// takes them (see [`super::offloads`]), else one by one.
struct TunWriter {
    coalescer: Coalescer,
    frames: PacketBuf,
    /// The packets of a refused super-packet, written again one by one.
    split: PacketBuf,
}

/// One write to the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunWrite<'a> {
    /// A frame: its `virtio_net_hdr`, then the (maybe super-) packet.
    Frame(&'a [u8]),
    /// A plain packet (an empty header goes before it where the TUN has one).
    Packet(&'a [u8]),
}

impl TunWriter {
    fn new() -> Self {
        Self {
            coalescer: Coalescer::new(),
            frames: PacketBuf::new(),
            split: PacketBuf::new(),
        }
    }

    fn write(&mut self, shared: &Shared, packets: &PacketBuf) {
        let tun = &shared.tun;
        self.write_to(&shared.offload, &shared.counters, packets, |w| match w {
            TunWrite::Frame(frame) => tun.write(frame),
            TunWrite::Packet(packet) => tun.write_packet(packet),
        });
    }

    /// Writes `packets` through `sink`. A super-packet the sink refuses with
    /// `EINVAL` or `EIO` (kernels with TUN GSO bugs do) ends coalescing on this
    /// device, with a warning, and its packets go again one by one: nothing is lost.
    fn write_to(
        &mut self,
        offload: &OffloadSwitch,
        counters: &Counters,
        packets: &PacketBuf,
        mut sink: impl FnMut(TunWrite<'_>) -> io::Result<usize>,
    ) {
        if packets.is_empty() {
            return;
        }
        let plain = |sink: &mut dyn FnMut(TunWrite<'_>) -> io::Result<usize>, packet: &[u8]| {
            if sink(TunWrite::Packet(packet)).is_err() {
                bump(&counters.tun_write_errors);
            }
        };
        let (tcp, udp) = offload.coalesce();
        if !tcp && !udp {
            for packet in packets.iter() {
                plain(&mut sink, packet);
            }
            return;
        }
        let list: Vec<&[u8]> = packets.iter().collect();
        self.frames.clear();
        self.coalescer.coalesce(&list, udp, &mut self.frames);
        for frame in self.frames.iter() {
            let super_packet =
                offload::VnetHdr::read(frame).is_ok_and(|h| h.gso_type != offload::GSO_NONE);
            let Err(e) = sink(TunWrite::Frame(frame)) else {
                if super_packet {
                    bump(&counters.tun_super_packets_written);
                }
                continue;
            };
            if !super_packet || !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) {
                bump(&counters.tun_write_errors);
                continue;
            }
            if offload.coalesce() != (false, false) {
                offload.refuse_coalescing();
                tracing::warn!(error = %e, "the TUN refused a coalesced write; TUN GRO turned off for this device");
            }
            self.split.clear();
            if offload::split(frame, &mut self.split).is_err() {
                bump(&counters.tun_write_errors);
                continue;
            }
            for packet in self.split.iter() {
                plain(&mut sink, packet);
            }
        }
    }
}

/// Handles one datagram. Handshake messages go to the handshake queue; a data message
/// is decrypted into `out` and, when its inner source is the sender's (cryptokey
/// routing), returned as the range of `out` to write to the TUN. Packets to send (ones
/// queued during a handshake) are added to `rx.sends`.
fn handle_datagram(
    shared: &Shared,
    state: &State,
    sockets: &Arc<UdpSockets>,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    rx: &mut RxScratch,
) -> Option<(usize, usize)> {
    let c = &shared.counters;
    if datagram.len() < 8 {
        bump(&c.invalid_datagrams);
        return None;
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&datagram[0..4]);
    match (u32::from_le_bytes(word), datagram.len()) {
        (MSG_HANDSHAKE_INIT, HANDSHAKE_INIT_LEN)
        | (MSG_HANDSHAKE_RESP, HANDSHAKE_RESP_LEN)
        | (MSG_COOKIE_REPLY, COOKIE_REPLY_LEN) => {
            if !shared.handshakes.push(src, datagram, sockets) {
                bump(&c.handshake_queue_full);
            }
            return None;
        }
        (MSG_DATA, _) => {}
        _ => {
            bump(&c.invalid_datagrams);
            return None;
        }
    }
    word.copy_from_slice(&datagram[4..8]);
    let Some(peer) = state.by_index.get(&(u32::from_le_bytes(word) >> 8)) else {
        bump(&c.unknown_index);
        return None;
    };
    let mut inner = peer.lock();
    let Some(tunn) = inner.tunn.as_mut() else {
        bump(&c.decrypt_failed);
        return None;
    };
    let base = out.as_ptr() as usize;
    let delivered = match tunn.decapsulate(Some(src.ip()), datagram, out) {
        TunnResult::WriteToTunnelV4(packet, inner_src) => Some((
            packet.as_ptr() as usize - base,
            packet.len(),
            std::net::IpAddr::from(inner_src),
        )),
        TunnResult::WriteToTunnelV6(packet, inner_src) => Some((
            packet.as_ptr() as usize - base,
            packet.len(),
            std::net::IpAddr::from(inner_src),
        )),
        TunnResult::Done => None,
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
            return None;
        }
        TunnResult::WriteToNetwork(_) => {
            // A data message never asks for an answer.
            bump(&c.decrypt_failed);
            return None;
        }
    };
    // Authenticated. Roaming: the peer is wherever its last authenticated packet came
    // from.
    peer.add_rx(datagram.len());
    inner.endpoint = Some(src);
    inner.last_traversal = Some(Instant::now());
    let Some((start, len, inner_src)) = delivered else {
        // A keepalive, maybe the one confirming our handshake response: packets queued
        // while it ran can go.
        if let Some(tunn) = inner.tunn.as_mut() {
            rx.sends
                .extend(drain_queued(tunn, out).map(|d| (peer.clone(), d, src)));
        }
        inner.refresh_handshake_time();
        return None;
    };
    // When the initiator's first packet is data, it confirmed the session we answered:
    // packets queued meanwhile can go (into `spare`: `out` holds the packet for the
    // TUN). With nothing queued this is a look at an empty queue.
    if let Some(tunn) = inner.tunn.as_mut() {
        rx.sends
            .extend(drain_queued(tunn, &mut rx.spare).map(|d| (peer.clone(), d, src)));
    }
    drop(inner);
    // Cryptokey routing: the inner source must be routed to the very peer it came from.
    let allowed = state
        .routes
        .lookup(inner_src)
        .is_some_and(|owner| Arc::ptr_eq(owner, peer));
    if !allowed {
        bump(&c.disallowed_source);
        tracing::trace!(peer = %peer.public_key, %inner_src, "inner source not in AllowedIPs");
        return None;
    }
    Some((start, start + len))
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

/// Timers: handshake retries and rekeys, keepalives, handshake timestamps.
pub(super) fn timer_loop(shared: &Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sends: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
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
        shared.refresh_mtu();
        let sockets = shared.sockets();
        // A snapshot of the peers, so no configuration lock is held while sending.
        let (identity, peers) = {
            let state = shared.read();
            let peers: Vec<Arc<Peer>> = state.peers.values().map(|e| e.peer.clone()).collect();
            (state.identity.clone(), peers)
        };
        for peer in &peers {
            tick_peer(peer, identity.as_deref(), &mut buf, &mut sends);
            // Sent with no lock held (the peer's was released by `tick_peer`).
            for (datagram, dst) in sends.drain(..) {
                match sockets.send_to(&datagram, dst) {
                    Ok(()) => peer.add_tx(datagram.len()),
                    Err(_) => bump(&shared.counters.udp_send_errors),
                }
            }
        }
    }
}

/// One tick of `peer`'s timers; what is to be sent goes to `sends`.
fn tick_peer(
    peer: &Peer,
    identity: Option<&Identity>,
    buf: &mut [u8],
    sends: &mut Vec<(Vec<u8>, SocketAddr)>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::offload::tests::{tcp_stream, Tcp};
    use crate::device::offload::{VnetHdr, GSO_NONE, VNET_HDR_LEN};

    /// Writes `packets` through a TUN that refuses every super-packet with `errno`;
    /// returns the packets it took, in order.
    fn write_refusing(
        writer: &mut TunWriter,
        switch: &OffloadSwitch,
        counters: &Counters,
        packets: &[Vec<u8>],
        errno: i32,
    ) -> Vec<Vec<u8>> {
        let mut buf = PacketBuf::new();
        for p in packets {
            buf.push(p);
        }
        let mut took = Vec::new();
        writer.write_to(switch, counters, &buf, |w| match w {
            TunWrite::Frame(f) => {
                let hdr = VnetHdr::read(f).expect("a header");
                if hdr.gso_type != GSO_NONE {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                took.push(f[VNET_HDR_LEN..].to_vec());
                Ok(f.len())
            }
            TunWrite::Packet(p) => {
                took.push(p.to_vec());
                Ok(p.len())
            }
        });
        took
    }

    #[test]
    fn a_refused_super_packet_turns_coalescing_off_and_its_packets_go_one_by_one() {
        for errno in [libc::EINVAL, libc::EIO] {
            let switch = OffloadSwitch::took(true, true);
            let counters = Counters::default();
            let mut writer = TunWriter::new();
            let stream = tcp_stream(&Tcp::v4(), &[1200, 1200, 1200, 1200, 700]);
            let took = write_refusing(&mut writer, &switch, &counters, &stream, errno);
            assert_eq!(
                took, stream,
                "every packet written, byte for byte, in order"
            );
            assert_eq!(
                switch.coalesce(),
                (false, false),
                "coalescing is off for good"
            );
            let c = counters.snapshot();
            assert_eq!((c.tun_write_errors, c.tun_super_packets_written), (0, 0));

            // The next batch is not even offered as a super-packet.
            let next = tcp_stream(&Tcp::v4(), &[1200; 4]);
            let mut offered = Vec::new();
            let mut buf = PacketBuf::new();
            next.iter().for_each(|p| buf.push(p));
            writer.write_to(&switch, &counters, &buf, |w| {
                offered.push(matches!(w, TunWrite::Packet(_)));
                Ok(0)
            });
            assert_eq!(offered, vec![true; 4], "plain packets only");
        }
    }

    #[test]
    fn other_write_errors_are_counted_and_leave_coalescing_on() {
        let switch = OffloadSwitch::took(true, false);
        let counters = Counters::default();
        let mut writer = TunWriter::new();
        let stream = tcp_stream(&Tcp::v4(), &[1000; 6]);
        let took = write_refusing(&mut writer, &switch, &counters, &stream, libc::ENOBUFS);
        assert!(
            took.is_empty(),
            "the one super-packet was dropped: {took:?}"
        );
        assert_eq!(counters.snapshot().tun_write_errors, 1);
        assert_eq!(switch.coalesce(), (true, false), "still coalescing");

        // Accepted super-packets are counted as such.
        let mut buf = PacketBuf::new();
        stream.iter().for_each(|p| buf.push(p));
        writer.write_to(&switch, &counters, &buf, |w| {
            Ok(match w {
                TunWrite::Frame(f) | TunWrite::Packet(f) => f.len(),
            })
        });
        assert_eq!(counters.snapshot().tun_super_packets_written, 1);
    }

    #[test]
    fn padding_is_to_sixteen_and_capped_at_the_mtu() {
        let mut buf = vec![0xffu8; 2000];
        assert_eq!(pad(&mut buf, 0, Some(1420)), 0);
        assert_eq!(pad(&mut buf, 1, Some(1420)), 16);
        assert!(buf[1..16].iter().all(|b| *b == 0), "padding is zeros");
        assert_eq!(pad(&mut buf, 16, Some(1420)), 16);
        assert_eq!(pad(&mut buf, 84, Some(1420)), 96);
        // 1,413 rounds up to 1,424, past the MTU: capped.
        assert_eq!(pad(&mut buf, 1413, Some(1420)), 1420);
        assert_eq!(pad(&mut buf, 1420, Some(1420)), 1420);
        // A packet larger than the MTU (it changed meanwhile) is never cut.
        assert_eq!(pad(&mut buf, 1500, Some(1420)), 1500);
        // Unknown MTU: to sixteen, as wireguard-go and the Linux module do.
        assert_eq!(pad(&mut buf, 1413, None), 1424);
        // Never past the buffer.
        assert_eq!(pad(&mut buf[..1414], 1413, None), 1414);
    }
}
