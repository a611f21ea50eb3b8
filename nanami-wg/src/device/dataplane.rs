//! The device's threads: TUN → UDP, UDP → TUN, timers (the handshake thread is in
//! [`super::handshake`]).
//!
//! They are the I/O shell around [`super::packet_core`], which makes every per-packet
//! decision (classification, peer by receiver index, decryption, roaming, cryptokey
//! routing, routing a TUN packet to its peer, the timers) without sockets or a TUN,
//! and counts the drops. Here are only what needs the kernel: reading the TUN and
//! splitting its super-packets, padding, receiving and sending batches of datagrams,
//! writing (and coalescing) to the TUN, the handshake queue, the clock, and the
//! locks.
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

use super::offload::{self, Coalescer, PacketBuf};
use super::offloads::OffloadSwitch;
use super::packet_core::{self, Datagram, RxScratch};
use super::peer::Peer;
use super::sys::{self, Ready, WakePipe};
use super::udp::{RecvBatch, SendBatch, UdpSockets, MAX_DATAGRAM};
use super::{bump, Counters, Shared, State};

/// Packets handled per batch: amortises the lock, the clock and `sendmmsg` without
/// adding latency (a batch is only what is already queued).
const BATCH: usize = 32;

/// Timer resolution: boringtun's own device ticks every 250 ms; WireGuard's timers
/// are in seconds.
const TICK: Duration = Duration::from_millis(250);

/// Padding multiple of the plaintext (the paper, 5.4.6): exact inner sizes do not leak.
const PADDING: usize = 16;

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
                seal(shared, &state, &buf[..padded], &mut out, now);
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

/// Seals one TUN packet into the next datagram of `out` (when it is not dropped).
fn seal(shared: &Shared, state: &State, packet: &[u8], out: &mut SendBatch, now: Instant) {
    let buf = out.next_buf(packet_core::room(packet.len()));
    if let Some(sealed) = packet_core::handle_tun(state, &shared.counters, packet, buf, now) {
        out.push(sealed.len, sealed.endpoint, sealed.peer);
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
    // The decrypted packets of a batch, and the TUN frames they become.
    let mut packets = PacketBuf::new();
    let mut to_tun = TunWriter::new();
    let mut rx = RxScratch::new();
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
            let now = Instant::now();
            for slot in 0..n {
                let (src, datagrams) = batch.get(slot);
                let Some(src) = src else {
                    bump(&shared.counters.invalid_datagrams);
                    continue;
                };
                for datagram in datagrams {
                    packets.push_with(datagram.len(), |out| {
                        let verdict = packet_core::handle_datagram(
                            &state,
                            &shared.counters,
                            src,
                            datagram,
                            out,
                            &mut rx,
                            now,
                        );
                        dispatch(shared, sockets, src, datagram, out, verdict)
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

/// Carries out the core's verdict on one datagram: a packet to deliver is moved to the
/// start of `out` and its length returned (the TUN gets it), a handshake message is
/// queued for the handshake thread.
fn dispatch(
    shared: &Shared,
    sockets: &Arc<UdpSockets>,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    verdict: Datagram,
) -> Option<usize> {
    match verdict {
        Datagram::Deliver(range) => {
            let len = range.len();
            out.copy_within(range, 0);
            Some(len)
        }
        Datagram::Handshake => {
            if !shared.handshakes.push(src, datagram, sockets) {
                bump(&shared.counters.handshake_queue_full);
            }
            None
        }
        Datagram::Keepalive | Datagram::Dropped(_) => None,
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
            let now = Instant::now();
            packet_core::handle_timeout(peer, identity.as_deref(), now, &mut buf, &mut sends);
            // Sent with no lock held (the peer's was released by `handle_timeout`).
            for (datagram, dst) in sends.drain(..) {
                match sockets.send_to(&datagram, dst) {
                    Ok(()) => peer.add_tx(datagram.len()),
                    Err(_) => bump(&shared.counters.udp_send_errors),
                }
            }
        }
    }
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
