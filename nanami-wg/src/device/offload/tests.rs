//! Tests of the offloads. Packets are built by small helpers whose checksums come
//! from a straightforward RFC 1071 implementation (`fuzz.rs`'s), independent of
//! `checksum.rs`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checksum;
// The reference checksum is the fuzz target's (`fuzz.rs`): one copy.
use super::fuzz::{add16, sum as naive_sum};
use super::{
    split, Coalescer, OffloadError, PacketBuf, VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4,
    GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

// ---------------------------------------------------------------------------
// Packets read through the reference checksum.

fn is_v6(p: &[u8]) -> bool {
    p[0] >> 4 == 6
}

fn ip_hl(p: &[u8]) -> usize {
    if is_v6(p) {
        40
    } else {
        usize::from(p[0] & 0x0f) * 4
    }
}

fn proto(p: &[u8]) -> u8 {
    if is_v6(p) {
        p[6]
    } else {
        p[9]
    }
}

/// The pseudo-header sum of an IPv4 or IPv6 packet (transport right after the
/// IP header).
fn naive_pseudo(p: &[u8]) -> u32 {
    let (addrs, l4_len) = if is_v6(p) {
        (&p[8..40], p.len() - 40)
    } else {
        (&p[12..20], p.len() - ip_hl(p))
    };
    let l4_len = u32::try_from(l4_len).unwrap();
    add16(
        add16(naive_sum(addrs), u32::from(proto(p))),
        add16(l4_len >> 16, l4_len & 0xffff),
    )
}

fn csum_offset(proto: u8) -> usize {
    if proto == 6 {
        16
    } else {
        6
    }
}

/// Whether the IPv4 header checksum verifies (true for IPv6, which has none).
fn ip_ok(p: &[u8]) -> bool {
    is_v6(p) || naive_sum(&p[..ip_hl(p)]) == 0xffff
}

/// Whether the TCP or UDP checksum verifies.
fn l4_ok(p: &[u8]) -> bool {
    add16(naive_pseudo(p), naive_sum(&p[ip_hl(p)..])) == 0xffff
}

/// Whether `p` is a valid IP packet: version, lengths, checksums.
fn valid_ip(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            p.len() >= 20
                && ip_hl(p) >= 20
                && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
                && ip_ok(p)
                && l4_ok(p)
        }
        Some(6) => {
            p.len() >= 40
                && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len()
                && l4_ok(p)
        }
        _ => false,
    }
}

/// Sets the IPv4 header checksum and the TCP/UDP checksum, naively.
fn seal(p: &mut [u8]) {
    let hl = ip_hl(p);
    if !is_v6(p) {
        p[10..12].fill(0);
        let c = !(naive_sum(&p[..hl]) as u16);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let pr = proto(p);
    if pr != 6 && pr != 17 {
        return;
    }
    let at = hl + csum_offset(pr);
    p[at..at + 2].fill(0);
    let mut c = !(add16(naive_pseudo(p), naive_sum(&p[hl..])) as u16);
    if pr == 17 && c == 0 {
        c = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

// ---------------------------------------------------------------------------
// Packet builders.

/// A change to a packet or a frame.
type Edit = fn(&mut Vec<u8>);

/// A named batch and the groups (indices into it, in frame order) it must become.
type Case<'a> = (&'a str, Vec<Vec<u8>>, Vec<&'a [usize]>);

/// An IP packet around `l4` (IPv4: DF, TTL 64; IPv6: hop limit 64), sealed.
fn ip_packet(v6: bool, proto: u8, id: u16, ip_options: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[proto, 64]);
        p.extend_from_slice(&SRC6);
        p.extend_from_slice(&DST6);
    } else {
        let ihl = 20 + ip_options.len();
        assert_eq!(ihl % 4, 0);
        p.extend_from_slice(&[0x40 | (ihl / 4) as u8, 0]);
        p.extend_from_slice(&u16::try_from(ihl + l4.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&SRC4);
        p.extend_from_slice(&DST4);
        p.extend_from_slice(ip_options);
    }
    p.extend_from_slice(l4);
    seal(&mut p);
    p
}

/// A TCP packet's fields; [`Tcp::packet`] builds it around a payload.
#[derive(Clone, Debug)]
pub(crate) struct Tcp {
    v6: bool,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    id: u16,
    options: Vec<u8>,
    ip_options: Vec<u8>,
}

impl Tcp {
    pub(crate) fn v4() -> Self {
        Tcp {
            v6: false,
            sport: 40_000,
            dport: 443,
            seq: 1_000,
            ack: 77_000,
            flags: ACK,
            window: 502,
            id: 100,
            options: Vec::new(),
            ip_options: Vec::new(),
        }
    }

    fn v6() -> Self {
        Tcp {
            v6: true,
            ..Tcp::v4()
        }
    }

    fn packet(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let doff = 20 + self.options.len();
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        l4.extend_from_slice(&self.seq.to_be_bytes());
        l4.extend_from_slice(&self.ack.to_be_bytes());
        l4.extend_from_slice(&[((doff / 4) as u8) << 4, self.flags]);
        l4.extend_from_slice(&self.window.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]);
        l4.extend_from_slice(&self.options);
        l4.extend_from_slice(payload);
        ip_packet(self.v6, 6, self.id, &self.ip_options, &l4)
    }
}

fn ipv4_tcp(seq: u32, id: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    Tcp {
        seq,
        id,
        flags,
        ..Tcp::v4()
    }
    .packet(payload)
}

fn ipv6_tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    Tcp {
        seq,
        flags,
        ..Tcp::v6()
    }
    .packet(payload)
}

/// A UDP datagram from `sport` to port 4500.
fn udp(v6: bool, sport: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&4500u16.to_be_bytes());
    l4.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    ip_packet(v6, 17, id, &[], &l4)
}

fn ipv4_udp(id: u16, payload: &[u8]) -> Vec<u8> {
    udp(false, 5000, id, payload)
}

fn ipv6_udp(payload: &[u8]) -> Vec<u8> {
    udp(true, 5000, 0, payload)
}

/// An ICMP echo request.
fn icmp4(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![8, 0, 0, 0, 0, 1, 0, 1];
    l4.extend_from_slice(payload);
    let c = !(naive_sum(&l4) as u16);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    ip_packet(false, 1, id, &[], &l4)
}

/// `n` bytes of recognizable payload.
fn payload(n: usize, tag: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

fn vnet_bytes(hdr: VnetHdr) -> [u8; VNET_HDR_LEN] {
    let mut h = [0; VNET_HDR_LEN];
    hdr.write(&mut h);
    h
}

/// The TSO/USO frame the kernel would hand over for `packet` (a complete packet
/// whose IP length covers everything): the transport checksum field holding the
/// pseudo-header sum, `F_NEEDS_CSUM`, the offsets of its headers.
fn gso_frame(packet: &[u8], gso_type: u8, gso_size: u16) -> Vec<u8> {
    let hl = ip_hl(packet);
    let pr = proto(packet);
    let l4_hl = if pr == 6 {
        usize::from(packet[hl + 12] >> 4) * 4
    } else {
        8
    };
    let mut p = packet.to_vec();
    let at = hl + csum_offset(pr);
    let pseudo = naive_pseudo(&p) as u16;
    p[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: (hl + l4_hl) as u16,
        gso_size,
        csum_start: hl as u16,
        csum_offset: csum_offset(pr) as u16,
    };
    let mut frame = vnet_bytes(hdr).to_vec();
    frame.extend_from_slice(&p);
    frame
}

/// A frame without GSO: a zero header and the packet.
fn plain_frame(packet: &[u8]) -> Vec<u8> {
    let mut frame = vec![0; VNET_HDR_LEN];
    frame.extend_from_slice(packet);
    frame
}

fn split_all(frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut out = PacketBuf::new();
    split(frame, &mut out)?;
    Ok(out.iter().map(<[u8]>::to_vec).collect())
}

fn coalesce_all(packets: &[Vec<u8>], udp: bool) -> Vec<Vec<u8>> {
    let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
    let mut out = PacketBuf::new();
    Coalescer::new().coalesce(&refs, udp, &mut out);
    out.iter().map(<[u8]>::to_vec).collect()
}

/// What the kernel checks of a frame written to the TUN, and what `coalesce`
/// promises of it.
fn check_written_frame(frame: &[u8]) {
    let hdr = VnetHdr::read(frame).unwrap();
    let p = &frame[VNET_HDR_LEN..];
    if hdr.gso_type == GSO_NONE {
        assert_eq!(hdr, VnetHdr::default(), "a group of one has a zero header");
        return;
    }
    assert_eq!(hdr.flags, F_NEEDS_CSUM);
    let hl = ip_hl(p);
    let pr = proto(p);
    assert_eq!(usize::from(hdr.csum_start), hl);
    assert_eq!(usize::from(hdr.csum_offset), csum_offset(pr));
    let l4_hl = if pr == 6 {
        assert_eq!(hdr.gso_type, if is_v6(p) { GSO_TCPV6 } else { GSO_TCPV4 });
        usize::from(p[hl + 12] >> 4) * 4
    } else {
        assert_eq!(hdr.gso_type, GSO_UDP_L4);
        let segs = (p.len() - hl - 8).div_ceil(usize::from(hdr.gso_size));
        assert!(segs <= 64, "{segs} UDP segments");
        8
    };
    assert_eq!(usize::from(hdr.hdr_len), hl + l4_hl);
    assert!(
        p.len() - hl - l4_hl > usize::from(hdr.gso_size),
        "not a real super-packet"
    );
    assert!(p.len() <= 65_535 + if is_v6(p) { 40 } else { 0 });
    // IP lengths right, IPv4 header checksum valid.
    if is_v6(p) {
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])) + 40, p.len());
    } else {
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert!(ip_ok(p));
    }
    // The checksum field: the folded pseudo-header sum, not complemented.
    let at = hl + csum_offset(pr);
    assert_eq!(
        u32::from(u16::from_be_bytes([p[at], p[at + 1]])),
        naive_pseudo(p)
    );
    if pr == 17 {
        assert_eq!(
            usize::from(u16::from_be_bytes([p[hl + 4], p[hl + 5]])),
            p.len() - hl
        );
    }
}

// ---------------------------------------------------------------------------
// Checksum.

#[test]
fn fast_checksum_equals_naive_for_random_lengths_and_alignments() {
    let mut rng = StdRng::seed_from_u64(1071);
    let mut buf = vec![0u8; 70_000];
    rng.fill(&mut buf[..]);
    for _ in 0..3_000 {
        let start = rng.gen_range(0..16);
        let len = if rng.gen_bool(0.1) {
            rng.gen_range(0..66_000)
        } else {
            rng.gen_range(0..200)
        };
        let data = &buf[start..start + len];
        assert_eq!(
            u32::from(checksum::sum(data)),
            naive_sum(data),
            "len {len} at {start}"
        );
    }
    // Every short length, odd ones included, at every alignment.
    for start in 0..8 {
        for len in 0..64 {
            let data = &buf[start..start + len];
            assert_eq!(u32::from(checksum::sum(data)), naive_sum(data));
        }
    }
    // Carries: all ones, and the largest packet.
    let ones = vec![0xffu8; 65_535];
    for len in [0, 1, 2, 3, 7, 8, 9, 1_500, 65_535] {
        assert_eq!(
            u32::from(checksum::sum(&ones[..len])),
            naive_sum(&ones[..len])
        );
    }
}

#[test]
fn pseudo_header_and_checksum_match_naive() {
    let p = ipv6_tcp(5, ACK, &payload(999, 1));
    let fast = checksum::pseudo_header(&p[8..24], &p[24..40], 6, p.len() - 40);
    assert_eq!(u32::from(fast), naive_pseudo(&p));
    assert!(checksum::verifies(&p[40..], fast));
    let q = ipv4_udp(1, &payload(33, 2));
    let fast = checksum::pseudo_header(&q[12..16], &q[16..20], 17, q.len() - 20);
    assert_eq!(u32::from(fast), naive_pseudo(&q));
    assert!(checksum::verifies(&q[20..], fast));
    assert!(checksum::verifies(&q[..20], 0));
    assert_eq!(checksum::fold(0), 0);
    assert_eq!(checksum::fold(0x1_fffe), 0xffff);
    assert_eq!(checksum::fold(u64::MAX), 0xffff);
}

// ---------------------------------------------------------------------------
// VnetHdr, PacketBuf.

#[test]
fn vnet_hdr_is_native_endian_and_round_trips() {
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV6 | GSO_ECN,
        hdr_len: 0x0102,
        gso_size: 1448,
        csum_start: 40,
        csum_offset: 16,
    };
    let bytes = vnet_bytes(hdr);
    let mut expected = vec![F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN];
    for v in [0x0102u16, 1448, 40, 16] {
        expected.extend_from_slice(&v.to_ne_bytes());
    }
    assert_eq!(bytes.to_vec(), expected);
    assert_eq!(VnetHdr::read(&bytes), Ok(hdr));
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[0x45; 30]);
    assert_eq!(VnetHdr::read(&longer), Ok(hdr));
    for n in 0..VNET_HDR_LEN {
        assert_eq!(VnetHdr::read(&bytes[..n]), Err(OffloadError::Truncated));
    }
}

#[test]
fn packet_buf_stores_packets_with_room_and_reuses_memory() {
    let mut buf = PacketBuf::default();
    assert!(buf.is_empty());
    let packets: Vec<Vec<u8>> = (0..5).map(|i| payload(i * 7 + 1, i as u8)).collect();
    for p in &packets {
        buf.push(p);
    }
    assert!(buf.push_with(8, |b| {
        b[..3].copy_from_slice(&[9, 8, 7]);
        Some(3)
    }));
    assert!(!buf.push_with(8, |_| None), "nothing kept");
    assert!(
        !buf.push_with(2, |_| Some(3)),
        "longer than allowed: nothing kept"
    );
    assert_eq!(buf.len(), 6);
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(buf.get(i), &p[..]);
    }
    assert_eq!(buf.get(5), &[9, 8, 7]);
    assert_eq!(buf.iter().count(), 6);
    for i in 0..buf.len() {
        let expected = buf.get(i).to_vec();
        let (room, len) = buf.get_mut_with_room(i);
        assert_eq!(len, expected.len());
        assert!(room.len() >= len + PacketBuf::ROOM);
        assert_eq!(&room[..len], &expected[..]);
        assert!(room[len..].iter().all(|&b| b == 0), "room is zero");
        // Padding in place does not touch the next packet.
        room[len..].fill(0xee);
    }
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(buf.get(i), &p[..]);
    }
    buf.truncate(2);
    assert_eq!(buf.len(), 2);
    buf.push(&[1, 2, 3]);
    assert_eq!(buf.get(2), &[1, 2, 3]);
    let (room, len) = buf.get_mut_with_room(2);
    assert!(room[len..].iter().all(|&b| b == 0), "room zeroed again");

    // Warm: the same batch again allocates nothing.
    buf.clear();
    assert!(buf.is_empty());
    for p in &packets {
        buf.push(p);
    }
    let (data_cap, spans_cap) = (buf.data.capacity(), buf.spans.capacity());
    let data_ptr = buf.data.as_ptr();
    for _ in 0..10 {
        buf.clear();
        for p in &packets {
            buf.push(p);
        }
    }
    assert_eq!(buf.data.capacity(), data_cap);
    assert_eq!(buf.spans.capacity(), spans_cap);
    assert_eq!(buf.data.as_ptr(), data_ptr);
}

// ---------------------------------------------------------------------------
// Split.

#[test]
fn split_gso_none_without_needs_csum_is_the_packet_as_is() {
    for p in [
        ipv4_tcp(1, 1, ACK, b"hello"),
        icmp4(3, b"ping"),
        vec![0xde, 0xad],
        Vec::new(),
    ] {
        assert_eq!(split_all(&plain_frame(&p)), Ok(vec![p.clone()]));
    }
}

#[test]
fn split_gso_none_completes_a_partial_checksum() {
    for good in [
        ipv4_tcp(9, 1, ACK | PSH, &payload(301, 3)),
        ipv6_tcp(9, ACK, &payload(300, 4)),
        ipv4_udp(2, &payload(17, 5)),
        ipv6_udp(&payload(18, 6)),
    ] {
        let frame = gso_frame(&good, GSO_NONE, 0);
        assert_ne!(
            &frame[VNET_HDR_LEN..],
            &good[..],
            "the checksum was partial"
        );
        assert_eq!(split_all(&frame), Ok(vec![good.clone()]));
    }
    // A UDP checksum that computes to 0 is sent as 0xffff; the last two payload
    // bytes are chosen to make it so.
    let mut p = ipv4_udp(2, &[1, 2, 3, 4, 0, 0]);
    let at = p.len() - 2;
    p[26..28].fill(0);
    let rest = add16(naive_pseudo(&p), naive_sum(&p[20..]));
    let word = 0xffff - rest;
    p[at..at + 2].copy_from_slice(&(word as u16).to_be_bytes());
    seal(&mut p);
    assert_eq!(&p[26..28], &[0xff, 0xff]);
    let out = split_all(&gso_frame(&p, GSO_NONE, 0)).unwrap();
    assert_eq!(out, vec![p]);
    assert!(l4_ok(&out[0]));
}

/// The segments `split` must give for a TSO frame of `tcp` with `len` payload
/// bytes, built independently.
fn expected_tso(tcp: &Tcp, data: &[u8], gso: usize) -> Vec<Vec<u8>> {
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(gso).collect()
    };
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(k, piece)| {
            let mut flags = tcp.flags;
            if k + 1 < n {
                flags &= !(FIN | PSH);
            }
            if k > 0 {
                flags &= !CWR;
            }
            Tcp {
                seq: tcp.seq.wrapping_add((k * gso) as u32),
                id: tcp.id.wrapping_add(k as u16),
                flags,
                ..tcp.clone()
            }
            .packet(piece)
        })
        .collect()
}

fn check_tso(v6: bool) {
    let gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    let mut cases = 0;
    for gso in [1usize, 3, 536, 1_448, 8_000] {
        for k in 1..=4usize {
            for len in [k * gso - 1, k * gso, k * gso + 1] {
                for (flags, ecn) in [(ACK | PSH | FIN | CWR, GSO_ECN), (ACK | PSH, 0), (ACK, 0)] {
                    let tcp = Tcp {
                        flags,
                        seq: 0xffff_fff0, // wraps within the frame
                        id: 0xfffe,
                        ..if v6 { Tcp::v6() } else { Tcp::v4() }
                    };
                    let data = payload(len, k as u8);
                    let frame = gso_frame(&tcp.packet(&data), gso_type | ecn, gso as u16);
                    let got = split_all(&frame).unwrap();
                    let expected = expected_tso(&tcp, &data, gso);
                    assert_eq!(got.len(), len.div_ceil(gso).max(1), "gso {gso} len {len}");
                    assert_eq!(got, expected, "gso {gso} len {len} flags {flags:#x}");
                    let mut seq = tcp.seq;
                    for (i, s) in got.iter().enumerate() {
                        assert!(valid_ip(s));
                        let hl = ip_hl(s);
                        let seg_payload = s.len() - hl - 20;
                        assert!(seg_payload <= gso);
                        assert_eq!(
                            u32::from_be_bytes(s[hl + 4..hl + 8].try_into().unwrap()),
                            seq
                        );
                        seq = seq.wrapping_add(seg_payload as u32);
                        if !v6 {
                            let id = u16::from_be_bytes([s[4], s[5]]);
                            assert_eq!(id, 0xfffeu16.wrapping_add(i as u16));
                        }
                        let f = s[hl + 13];
                        let last = i + 1 == got.len();
                        assert_eq!(f & (FIN | PSH), if last { flags & (FIN | PSH) } else { 0 });
                        assert_eq!(f & CWR, if i == 0 { flags & CWR } else { 0 });
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 5 * 4 * 3 * 3);
}

#[test]
fn split_tso4_sizes_around_every_boundary() {
    check_tso(false);
}

#[test]
fn split_tso6_sizes_around_every_boundary() {
    check_tso(true);
}

#[test]
fn split_tso_with_ip_and_tcp_options_and_without_payload() {
    let tcp = Tcp {
        options: vec![1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9],
        ip_options: vec![1, 1, 1, 0], // NOP NOP NOP EOL
        flags: ACK | PSH,
        ..Tcp::v4()
    };
    let data = payload(4_000, 9);
    let got = split_all(&gso_frame(&tcp.packet(&data), GSO_TCPV4, 1_000)).unwrap();
    assert_eq!(got, expected_tso(&tcp, &data, 1_000));
    assert_eq!(ip_hl(&got[0]), 24);
    // Headers only: one packet.
    let got = split_all(&gso_frame(&tcp.packet(&[]), GSO_TCPV4, 1_000)).unwrap();
    assert_eq!(got, vec![tcp.packet(&[])]);
    // A payload of at most gso_size: one packet.
    let got = split_all(&gso_frame(&tcp.packet(&data), GSO_TCPV4, 4_000)).unwrap();
    assert_eq!(got, vec![tcp.packet(&data)]);
}

#[test]
fn split_ignores_the_hdr_len_hint() {
    let tcp = Tcp::v6();
    let data = payload(3_000, 1);
    let frame = gso_frame(&tcp.packet(&data), GSO_TCPV6, 1_200);
    let expected = split_all(&frame).unwrap();
    assert_eq!(expected.len(), 3);
    for hint in [0u16, 1, 60, 1_260, 3_060, 65_535] {
        let mut f = frame.clone();
        f[2..4].copy_from_slice(&hint.to_ne_bytes());
        assert_eq!(split_all(&f).unwrap(), expected, "hdr_len {hint}");
    }
}

#[test]
fn split_uso4_and_uso6() {
    for v6 in [false, true] {
        for gso in [1usize, 8, 1_200] {
            for len in [gso - 1, gso, gso + 1, 5 * gso, 5 * gso + 3] {
                if len == 0 {
                    continue;
                }
                let data = payload(len, 7);
                let id = 0xfff0;
                let frame = gso_frame(&udp(v6, 5000, id, &data), GSO_UDP_L4, gso as u16);
                let got = split_all(&frame).unwrap();
                let expected: Vec<Vec<u8>> = data
                    .chunks(gso)
                    .enumerate()
                    .map(|(k, piece)| udp(v6, 5000, id.wrapping_add(k as u16), piece))
                    .collect();
                assert_eq!(got, expected, "v6 {v6} gso {gso} len {len}");
                for s in &got {
                    assert!(valid_ip(s));
                    let hl = ip_hl(s);
                    let udp_len = usize::from(u16::from_be_bytes([s[hl + 4], s[hl + 5]]));
                    assert_eq!(udp_len, s.len() - hl);
                    assert!(udp_len - 8 <= gso);
                    assert_ne!(&s[hl + 6..hl + 8], &[0, 0], "UDP checksum present");
                }
            }
        }
    }
}

/// A valid TSO frame and a valid USO frame, to break.
fn frames_to_break() -> Vec<Vec<u8>> {
    vec![
        gso_frame(&Tcp::v4().packet(&payload(3_000, 1)), GSO_TCPV4, 1_000),
        gso_frame(&Tcp::v6().packet(&payload(3_000, 2)), GSO_TCPV6, 1_000),
        gso_frame(&udp(false, 1, 1, &payload(2_000, 3)), GSO_UDP_L4, 700),
        gso_frame(&udp(true, 1, 1, &payload(2_000, 3)), GSO_UDP_L4, 700),
    ]
}

/// `split` of `frame` fails and leaves a non-empty `out` as it was.
fn assert_refused(frame: &[u8], what: &str) -> OffloadError {
    let mut out = PacketBuf::new();
    out.push(b"before");
    let err = split(frame, &mut out).expect_err(what);
    assert_eq!(out.len(), 1, "{what}: nothing appended");
    assert_eq!(out.get(0), b"before");
    // And the buffer still works after the failed call.
    out.push(b"after");
    assert_eq!(out.get(1), b"after");
    err
}

#[test]
fn split_refuses_malformed_frames() {
    const H: usize = VNET_HDR_LEN;
    let edits: Vec<(&str, Edit, Option<OffloadError>)> = vec![
        (
            "gso_size 0",
            |f| f[4..6].copy_from_slice(&0u16.to_ne_bytes()),
            Some(OffloadError::Malformed("gso_size is 0")),
        ),
        (
            "gso type 3 (UFO)",
            |f| f[1] = 3,
            Some(OffloadError::UnsupportedGso(3)),
        ),
        (
            "gso type 2",
            |f| f[1] = 2,
            Some(OffloadError::UnsupportedGso(2)),
        ),
        (
            "gso type 0x20",
            |f| f[1] = 0x20,
            Some(OffloadError::UnsupportedGso(0x20)),
        ),
        (
            "UDP with ECN",
            |f| {
                if f[1] == GSO_UDP_L4 {
                    f[1] |= GSO_ECN
                } else {
                    f[1] = 0x85
                }
            },
            Some(OffloadError::UnsupportedGso(0x85)),
        ),
        ("version 5", |f| f[H] = 0x55, Some(OffloadError::NotIp(5))),
        ("version 0", |f| f[H] = 0x05, Some(OffloadError::NotIp(0))),
        (
            "TCP type for the other IP version",
            |f| {
                f[1] = match f[1] {
                    GSO_TCPV4 => GSO_TCPV6,
                    GSO_TCPV6 => GSO_TCPV4,
                    _ => {
                        if f[H] >> 4 == 4 {
                            GSO_TCPV6
                        } else {
                            GSO_TCPV4
                        }
                    }
                }
            },
            None,
        ),
        (
            "csum_start + 1",
            |f| {
                let v = u16::from_ne_bytes([f[6], f[7]]) + 1;
                f[6..8].copy_from_slice(&v.to_ne_bytes())
            },
            None,
        ),
        (
            "csum_start 0",
            |f| f[6..8].copy_from_slice(&0u16.to_ne_bytes()),
            None,
        ),
        (
            "csum_start 65535",
            |f| f[6..8].copy_from_slice(&u16::MAX.to_ne_bytes()),
            None,
        ),
        (
            "csum_offset 2",
            |f| f[8..10].copy_from_slice(&2u16.to_ne_bytes()),
            None,
        ),
        (
            "csum_offset 65535",
            |f| f[8..10].copy_from_slice(&u16::MAX.to_ne_bytes()),
            None,
        ),
        (
            "IP length + 1",
            |f| {
                let at = if f[H] >> 4 == 6 { H + 4 } else { H + 2 };
                let v = u16::from_be_bytes([f[at], f[at + 1]]) + 1;
                f[at..at + 2].copy_from_slice(&v.to_be_bytes())
            },
            None,
        ),
        (
            "IP length - 1",
            |f| {
                let at = if f[H] >> 4 == 6 { H + 4 } else { H + 2 };
                let v = u16::from_be_bytes([f[at], f[at + 1]]) - 1;
                f[at..at + 2].copy_from_slice(&v.to_be_bytes())
            },
            None,
        ),
        ("trailing byte", |f| f.push(0), None),
        (
            "wrong protocol",
            |f| {
                let at = if f[H] >> 4 == 6 { H + 6 } else { H + 9 };
                f[at] = if f[at] == 6 { 17 } else { 6 }
            },
            None,
        ),
        (
            "ICMP protocol",
            |f| {
                let at = if f[H] >> 4 == 6 { H + 6 } else { H + 9 };
                f[at] = 1
            },
            None,
        ),
    ];
    for frame in frames_to_break() {
        for (what, edit, expected) in &edits {
            let mut f = frame.clone();
            edit(&mut f);
            let err = assert_refused(&f, what);
            if let Some(expected) = expected {
                assert_eq!(err, *expected, "{what}");
            }
            assert!(!err.to_string().is_empty());
        }
        // Every truncation: inside the virtio header, the IP header, the transport
        // header, the payload.
        for n in 0..frame.len() {
            assert_refused(&frame[..n], "truncated");
        }
    }
    // IPv4 only: IHL below 5, IHL beyond the headers, fragments, data offset.
    let v4 = &frames_to_break()[0];
    let v4_edits: Vec<(&str, Edit)> = vec![
        ("IHL 4", |f| f[H] = 0x44),
        ("IHL 15", |f| f[H] = 0x4f),
        ("IHL 6", |f| f[H] = 0x46),
        ("MF", |f| f[H + 6] |= 0x20),
        ("fragment offset", |f| f[H + 7] = 1),
        ("TCP data offset 4", |f| f[H + 20 + 12] = 0x40),
        ("TCP data offset 0", |f| f[H + 20 + 12] = 0x00),
    ];
    for (what, edit) in &v4_edits {
        let mut f = v4.clone();
        edit(&mut f);
        assert_refused(&f, what);
    }
    // IPv6 with an extension header (hop-by-hop) in front of TCP.
    let mut f = frames_to_break()[1].clone();
    f[H + 6] = 0;
    assert_eq!(
        assert_refused(&f, "IPv6 hop-by-hop"),
        OffloadError::Malformed(
            "IPv6 next header is not the GSO type's protocol (extension headers are not supported)"
        )
    );
    // TCP data offset 15 on a headers-only packet: the header runs past the end.
    let tcp = Tcp::v4();
    let mut f = gso_frame(&tcp.packet(&payload(30, 0)), GSO_TCPV4, 10);
    f[H + 20 + 12] = 0xf0;
    assert_eq!(
        assert_refused(&f, "data offset 15"),
        OffloadError::Truncated
    );
    // No packet at all after a GSO header.
    let hdr = VnetHdr::read(&frames_to_break()[0]).unwrap();
    assert_eq!(
        assert_refused(&vnet_bytes(hdr), "empty"),
        OffloadError::Truncated
    );
    // GSO_NONE with a partial checksum whose field lies beyond the packet.
    let p = ipv4_tcp(1, 1, ACK, b"abc");
    for (start, offset) in [
        (20u16, 22u16),
        (42, 0),
        (41, 1),
        (43, 0),
        (u16::MAX, u16::MAX),
        (0, 42),
    ] {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VnetHdr::default()
        };
        let mut f = vnet_bytes(hdr).to_vec();
        f.extend_from_slice(&p);
        assert_refused(&f, "partial checksum beyond the packet");
    }
}

#[test]
fn split_survives_random_bytes_and_random_damage() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let valid = frames_to_break();
    let mut out = PacketBuf::new();
    let gso_types = [
        GSO_NONE,
        GSO_TCPV4,
        GSO_TCPV6,
        GSO_UDP_L4,
        GSO_TCPV4 | GSO_ECN,
        3,
        0xff,
    ];
    for round in 0..20_000 {
        let frame: Vec<u8> = if round % 2 == 0 {
            let len = rng.gen_range(0..160);
            let mut f: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if f.len() > VNET_HDR_LEN {
                f[1] = gso_types[rng.gen_range(0..gso_types.len())];
                f[VNET_HDR_LEN] = if rng.gen() { 0x45 } else { 0x60 };
            }
            f
        } else {
            let mut f = valid[rng.gen_range(0..valid.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = if rng.gen_bool(0.7) {
                    rng.gen_range(0..VNET_HDR_LEN + 60)
                } else {
                    rng.gen_range(0..f.len())
                };
                f[at] ^= rng.gen_range(1..=255u8);
            }
            if rng.gen_bool(0.2) {
                let n = rng.gen_range(0..f.len());
                f.truncate(n);
            }
            f
        };
        out.clear();
        out.push(b"kept");
        match split(&frame, &mut out) {
            Err(_) => {
                assert_eq!(out.len(), 1);
                assert_eq!(out.get(0), b"kept");
            }
            Ok(()) => {
                assert!(out.len() >= 2);
                let hdr = VnetHdr::read(&frame).unwrap();
                if hdr.gso_type != GSO_NONE {
                    for p in out.iter().skip(1) {
                        assert!(valid_ip(p), "round {round}: an invalid segment");
                        assert!(p.len() <= frame.len() - VNET_HDR_LEN);
                    }
                }
                // What split gave, coalesced and split again, is the same.
                let packets: Vec<Vec<u8>> = out.iter().skip(1).map(<[u8]>::to_vec).collect();
                for udp in [false, true] {
                    let back: Vec<Vec<u8>> = coalesce_all(&packets, udp)
                        .iter()
                        .flat_map(|f| split_all(f).unwrap())
                        .collect();
                    assert_eq!(back, packets, "round {round}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Coalesce.

/// `n` packets of one IPv4 or IPv6 TCP flow, `size` payload bytes each, ids and
/// sequence numbers consecutive.
pub(crate) fn tcp_stream(base: &Tcp, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut seq = base.seq;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let p = Tcp {
                seq,
                id: base.id.wrapping_add(i as u16),
                ..base.clone()
            }
            .packet(&payload(size, i as u8));
            seq = seq.wrapping_add(size as u32);
            p
        })
        .collect()
}

/// Coalesces `packets` and checks the frames are the `groups` (indices into
/// `packets`, in frame order): each frame splits into exactly its packets, a
/// group of one is written as it came with a zero header.
fn assert_groups(packets: &[Vec<u8>], udp: bool, groups: &[&[usize]], what: &str) {
    let frames = coalesce_all(packets, udp);
    let shape: Vec<usize> = frames
        .iter()
        .map(|f| split_all(f).map_or(0, |s| s.len()))
        .collect();
    let expected_shape: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    assert_eq!(shape, expected_shape, "{what}: group sizes");
    for (frame, group) in frames.iter().zip(groups) {
        check_written_frame(frame);
        let members: Vec<Vec<u8>> = group.iter().map(|&i| packets[i].clone()).collect();
        assert_eq!(
            split_all(frame).unwrap(),
            members,
            "{what}: group {group:?}"
        );
        if group.len() == 1 {
            assert_eq!(
                frame,
                &plain_frame(&packets[group[0]]),
                "{what}: alone, unchanged"
            );
        }
    }
}

#[test]
fn coalesce_ipv4_stream_into_one_super_packet() {
    let base = Tcp::v4();
    let mut packets = tcp_stream(&base, &[1_000; 8]);
    // The last with PSH.
    let last = packets.len() - 1;
    packets[last][33] |= PSH;
    seal(&mut packets[last]);
    let frames = coalesce_all(&packets, false);
    assert_eq!(frames.len(), 1);
    let frame = &frames[0];
    check_written_frame(frame);
    assert_eq!(
        VnetHdr::read(frame).unwrap(),
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1_000,
            csum_start: 20,
            csum_offset: 16,
        }
    );
    let p = &frame[VNET_HDR_LEN..];
    assert_eq!(p.len(), 40 + 8_000);
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(&p[4..6], &packets[0][4..6], "the first packet's id");
    assert!(ip_ok(p));
    assert_eq!(&p[24..28], &packets[0][24..28], "the first packet's seq");
    assert_eq!(p[33], ACK | PSH, "PSH from the last");
    let data: Vec<u8> = packets.iter().flat_map(|q| q[40..].to_vec()).collect();
    assert_eq!(&p[40..], &data[..]);
    assert_eq!(
        u32::from(u16::from_be_bytes([p[36], p[37]])),
        naive_pseudo(p),
        "partial checksum"
    );
    assert_eq!(split_all(frame).unwrap(), packets);
}

#[test]
fn coalesce_ipv6_stream_closing_on_a_short_segment() {
    let base = Tcp {
        options: vec![1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0],
        ..Tcp::v6()
    };
    let packets = tcp_stream(&base, &[1_208, 1_208, 1_208, 500, 1_208, 1_208]);
    let frames = coalesce_all(&packets, false);
    assert_eq!(frames.len(), 2);
    let hdr = VnetHdr::read(&frames[0]).unwrap();
    assert_eq!(
        hdr,
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 40 + 32,
            gso_size: 1_208,
            csum_start: 40,
            csum_offset: 16,
        }
    );
    let p = &frames[0][VNET_HDR_LEN..];
    assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
    assert_eq!(p.len(), 40 + 32 + 3 * 1_208 + 500);
    assert_groups(&packets, false, &[&[0, 1, 2, 3], &[4, 5]], "ipv6");
}

#[test]
fn a_group_of_one_has_a_zero_header() {
    for p in [
        ipv4_tcp(1, 1, ACK, &payload(100, 1)),
        ipv6_tcp(1, ACK | PSH, &payload(100, 1)),
        ipv4_udp(1, &payload(10, 1)),
    ] {
        let frames = coalesce_all(std::slice::from_ref(&p), true);
        assert_eq!(frames, vec![plain_frame(&p)]);
    }
    assert!(coalesce_all(&[], true).is_empty());
}

#[test]
fn coalesce_interleaved_flows_each_in_order() {
    let a = Tcp::v4();
    let b = Tcp {
        sport: 40_001,
        ..Tcp::v6()
    };
    let c = Tcp {
        sport: 40_002,
        ..Tcp::v4()
    };
    let ta = tcp_stream(&a, &[1_400; 4]);
    let tb = tcp_stream(&b, &[1_000, 1_000, 1_000]);
    let tc = tcp_stream(&c, &[1_400, 1_400]);
    let ua: Vec<Vec<u8>> = (0..3)
        .map(|i| ipv4_udp(50 + i, &payload(1_300, 7)))
        .collect();
    let icmp: Vec<Vec<u8>> = (0..2).map(|i| icmp4(i, b"ping")).collect();
    // A0 B0 U0 I0 A1 C0 B1 U1 A2 I1 C1 B2 U2 A3
    let order: Vec<(&str, usize)> = vec![
        ("a", 0),
        ("b", 0),
        ("u", 0),
        ("i", 0),
        ("a", 1),
        ("c", 0),
        ("b", 1),
        ("u", 1),
        ("a", 2),
        ("i", 1),
        ("c", 1),
        ("b", 2),
        ("u", 2),
        ("a", 3),
    ];
    let packets: Vec<Vec<u8>> = order
        .iter()
        .map(|&(f, i)| match f {
            "a" => ta[i].clone(),
            "b" => tb[i].clone(),
            "c" => tc[i].clone(),
            "u" => ua[i].clone(),
            _ => icmp[i].clone(),
        })
        .collect();
    let index = |f: &str, i: usize| order.iter().position(|&x| x == (f, i)).unwrap();
    let a_idx: Vec<usize> = (0..4).map(|i| index("a", i)).collect();
    let b_idx: Vec<usize> = (0..3).map(|i| index("b", i)).collect();
    let c_idx: Vec<usize> = (0..2).map(|i| index("c", i)).collect();
    let u_idx: Vec<usize> = (0..3).map(|i| index("u", i)).collect();
    // With UDP: A, B, U, I0, C, I1 (in the order of their first packets).
    assert_groups(
        &packets,
        true,
        &[
            &a_idx,
            &b_idx,
            &u_idx,
            &[index("i", 0)],
            &c_idx,
            &[index("i", 1)],
        ],
        "interleaved, udp",
    );
    // Without: every UDP datagram alone, in place.
    assert_groups(
        &packets,
        false,
        &[
            &a_idx,
            &b_idx,
            &[u_idx[0]],
            &[index("i", 0)],
            &c_idx,
            &[u_idx[1]],
            &[index("i", 1)],
            &[u_idx[2]],
        ],
        "interleaved, no udp",
    );
}

/// Rebuilds packet `i` of `packets` with `edit` applied to its header fields.
fn rebuild(base: &Tcp, sizes: &[usize], i: usize, edit: impl FnOnce(&mut Tcp)) -> Vec<Vec<u8>> {
    let mut packets = tcp_stream(base, sizes);
    let seq = base
        .seq
        .wrapping_add(sizes[..i].iter().sum::<usize>() as u32);
    let mut t = Tcp {
        seq,
        id: base.id.wrapping_add(i as u16),
        ..base.clone()
    };
    edit(&mut t);
    packets[i] = t.packet(&payload(sizes[i], i as u8));
    packets
}

#[test]
fn coalesce_refuses_what_must_stay_apart() {
    for base in [Tcp::v4(), Tcp::v6()] {
        let v = if base.v6 { "v6" } else { "v4" };
        let s3 = [1_000, 1_000, 1_000];
        let with = |i: usize, edit: fn(&mut Tcp)| rebuild(&base, &s3, i, edit);
        let cases: Vec<Case> = vec![
            ("all fine", tcp_stream(&base, &s3), vec![&[0, 1, 2]]),
            (
                "gap in seq",
                with(1, |t| t.seq += 1),
                vec![&[0], &[1], &[2]],
            ),
            (
                "different ack",
                with(1, |t| t.ack += 1),
                vec![&[0], &[1], &[2]],
            ),
            (
                "different window",
                with(1, |t| t.window += 1),
                vec![&[0], &[1], &[2]],
            ),
            (
                "different options",
                with(1, |t| t.options = vec![1, 1, 1, 1]),
                vec![&[0], &[1], &[2]],
            ),
            (
                "SYN",
                with(1, |t| t.flags = SYN | ACK),
                vec![&[0], &[1], &[2]],
            ),
            (
                "FIN last",
                with(2, |t| t.flags = FIN | ACK),
                vec![&[0, 1], &[2]],
            ),
            (
                "RST",
                with(1, |t| t.flags = RST | ACK),
                vec![&[0], &[1], &[2]],
            ),
            (
                "URG",
                with(1, |t| t.flags = URG | ACK),
                vec![&[0], &[1], &[2]],
            ),
            (
                "ECE",
                with(1, |t| t.flags = ECE | ACK),
                vec![&[0], &[1], &[2]],
            ),
            (
                "CWR",
                with(1, |t| t.flags = CWR | ACK),
                vec![&[0], &[1], &[2]],
            ),
            ("no ACK", with(1, |t| t.flags = PSH), vec![&[0], &[1], &[2]]),
            (
                "PSH in the middle",
                with(1, |t| t.flags = ACK | PSH),
                vec![&[0, 1], &[2]],
            ),
            (
                "PSH first",
                with(0, |t| t.flags = ACK | PSH),
                vec![&[0], &[1, 2]],
            ),
        ];
        for (what, packets, groups) in &cases {
            assert_groups(packets, false, groups, &format!("{v} {what}"));
        }
        // Sizes: larger after smaller, smaller first, a pure ACK in the middle.
        assert_groups(
            &tcp_stream(&base, &[1_000, 500, 1_000]),
            false,
            &[&[0, 1], &[2]],
            v,
        );
        assert_groups(
            &tcp_stream(&base, &[500, 1_000, 1_000]),
            false,
            &[&[0], &[1, 2]],
            v,
        );
        assert_groups(
            &tcp_stream(&base, &[1_000, 0, 1_000]),
            false,
            &[&[0], &[1], &[2]],
            v,
        );
        // A corrupt checksum: written alone, unchanged, and what follows cannot
        // overtake it.
        let mut packets = tcp_stream(&base, &[1_000; 4]);
        let at = packets[1].len() - 1;
        packets[1][at] ^= 1;
        assert!(!l4_ok(&packets[1]));
        assert_groups(
            &packets,
            false,
            &[&[0], &[1], &[2, 3]],
            &format!("{v} corrupt"),
        );
        // Over 65,535 bytes: 44 segments of 1,460 fit in one IP packet (IPv6
        // too, header included), the 45th starts a new group.
        let packets = tcp_stream(&base, &[1_460; 46]);
        let first: Vec<usize> = (0..44).collect();
        assert_groups(&packets, false, &[&first, &[44, 45]], &format!("{v} 64k"));
    }
    // IPv4 only: id, TTL, TOS, DF, options, fragments, header checksum, length.
    let base = Tcp::v4();
    let s3 = [1_000, 1_000, 1_000];
    assert_groups(
        &rebuild(&base, &s3, 1, |t| t.id += 5),
        false,
        &[&[0], &[1], &[2]],
        "id jump",
    );
    assert_groups(
        &rebuild(&base, &s3, 1, |t| t.ip_options = vec![1, 1, 1, 1]),
        false,
        &[&[0], &[1], &[2]],
        "IPv4 options",
    );
    let edits: Vec<(&str, Edit)> = vec![
        ("TTL", |p| p[8] = 63),
        ("TOS (CE)", |p| p[1] = 3),
        ("DF clear", |p| p[6] = 0),
        ("MF", |p| p[6] |= 0x20),
    ];
    for (what, edit) in edits {
        let mut packets = tcp_stream(&base, &s3);
        edit(&mut packets[1]);
        seal(&mut packets[1]);
        assert_groups(&packets, false, &[&[0], &[1], &[2]], what);
    }
    // A non-first fragment has no ports: written alone without closing the flow.
    let mut frag = tcp_stream(&base, &[1_000])[0].clone();
    frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
    seal(&mut frag);
    let mut packets = tcp_stream(&base, &[1_000, 1_000]);
    packets.insert(1, frag);
    assert_groups(&packets, false, &[&[0, 2], &[1]], "later fragment");
    // A wrong IPv4 header checksum.
    let mut packets = tcp_stream(&base, &s3);
    packets[1][10] ^= 0x10;
    assert_groups(&packets, false, &[&[0], &[1], &[2]], "IPv4 header checksum");
    // Trailing bytes past the IP length.
    let mut packets = tcp_stream(&base, &s3);
    packets[1].push(0);
    let frames = coalesce_all(&packets, false);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[1], plain_frame(&packets[1]));
    // Non-canonical checksums that verify: 0xffff standing for a computed 0.
    // TCP: the last payload word chosen to make the checksum 0.
    let mut packets = tcp_stream(&base, &[200, 200, 200]);
    let p = &mut packets[1];
    let end = p.len();
    p[end - 2..].fill(0);
    p[36..38].fill(0);
    let rest = add16(naive_pseudo(p), naive_sum(&p[20..]));
    p[end - 2..].copy_from_slice(&((0xffff - rest) as u16).to_be_bytes());
    seal(p);
    assert_eq!(&p[36..38], &[0, 0]);
    assert_groups(&packets, false, &[&[0, 1, 2]], "TCP checksum 0");
    packets[1][36..38].copy_from_slice(&[0xff, 0xff]);
    assert!(l4_ok(&packets[1]), "verifies");
    assert_groups(&packets, false, &[&[0], &[1], &[2]], "TCP checksum 0xffff");
    // IPv4 header: the flow's first id chosen to make the second's checksum 0.
    let mut probe = tcp_stream(&base, &[200, 200])[1].clone();
    probe[4..6].fill(0);
    probe[10..12].fill(0);
    let id = (0xffff - naive_sum(&probe[..20])) as u16;
    let flow = Tcp {
        id: id.wrapping_sub(1),
        ..base.clone()
    };
    let mut packets = tcp_stream(&flow, &[200, 200]);
    assert_eq!(&packets[1][10..12], &[0, 0]);
    assert_groups(&packets, false, &[&[0, 1]], "IPv4 checksum 0");
    packets[1][10..12].copy_from_slice(&[0xff, 0xff]);
    assert!(ip_ok(&packets[1]));
    assert_groups(&packets, false, &[&[0], &[1]], "IPv4 checksum 0xffff");
}

#[test]
fn coalesce_udp() {
    for v6 in [false, true] {
        let stream = |sizes: &[usize]| -> Vec<Vec<u8>> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| udp(v6, 5000, 9 + i as u16, &payload(n, i as u8)))
                .collect()
        };
        let packets = stream(&[1_200, 1_200, 1_200, 700, 1_200, 1_200]);
        assert_groups(&packets, true, &[&[0, 1, 2, 3], &[4, 5]], "udp");
        let frames = coalesce_all(&packets, true);
        let hdr = VnetHdr::read(&frames[0]).unwrap();
        let hl = if v6 { 40 } else { 20 };
        assert_eq!(
            hdr,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_UDP_L4,
                hdr_len: hl + 8,
                gso_size: 1_200,
                csum_start: hl,
                csum_offset: 6,
            }
        );
        // Not asked: every datagram alone.
        assert_groups(
            &packets,
            false,
            &[&[0], &[1], &[2], &[3], &[4], &[5]],
            "udp off",
        );
        // Larger after smaller, 64 at most, empty payloads.
        assert_groups(&stream(&[500, 1_000]), true, &[&[0], &[1]], "larger");
        let many = stream(&[100; 70]);
        let first: Vec<usize> = (0..64).collect();
        let rest: Vec<usize> = (64..70).collect();
        assert_groups(&many, true, &[&first, &rest], "64 at most");
        assert_groups(&stream(&[100, 0, 100]), true, &[&[0], &[1], &[2]], "empty");
        // Another port is another flow (with identifications of its own).
        let packets = vec![
            udp(v6, 5000, 9, &payload(100, 0)),
            udp(v6, 5001, 20, &payload(100, 1)),
            udp(v6, 5000, 10, &payload(100, 2)),
        ];
        assert_groups(&packets, true, &[&[0, 2], &[1]], "ports");
        // A corrupt checksum.
        let mut packets = stream(&[100, 100, 100]);
        packets[1][hl as usize + 9] ^= 0x40;
        assert_groups(&packets, true, &[&[0], &[1], &[2]], "corrupt");
    }
    // IPv4 without a checksum (zero): written alone.
    let mut packets: Vec<Vec<u8>> = (0..3).map(|i| ipv4_udp(i, &payload(100, 0))).collect();
    packets[1][26..28].fill(0);
    assert_groups(&packets, true, &[&[0], &[1], &[2]], "no checksum");
    // A wrong UDP length field.
    let mut packets: Vec<Vec<u8>> = (0..3).map(|i| ipv4_udp(i, &payload(100, 0))).collect();
    packets[1][25] -= 1;
    seal(&mut packets[1]);
    assert_groups(&packets, true, &[&[0], &[1], &[2]], "UDP length");
}

#[test]
fn coalesce_writes_garbage_alone_and_never_panics() {
    let mut rng = StdRng::seed_from_u64(99);
    let mut c = Coalescer::new();
    let mut out = PacketBuf::new();
    let good = tcp_stream(&Tcp::v4(), &[100, 100]);
    for round in 0..2_000 {
        let mut packets: Vec<Vec<u8>> =
            vec![Vec::new(), vec![0x45], vec![0x60; 39], vec![0x45; 20]];
        for _ in 0..8 {
            let len = rng.gen_range(0..120);
            let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if let Some(b) = p.first_mut() {
                *b = [0x45, 0x46, 0x60, 0x4f, 0x00][rng.gen_range(0..5)];
            }
            if p.len() > 9 && rng.gen() {
                p[9] = 6;
                if p.len() > 6 {
                    p[6] = if rng.gen() { 6 } else { 17 };
                }
            }
            packets.push(p);
        }
        // Damaged copies of good packets.
        for g in &good {
            let mut p = g.clone();
            let at = rng.gen_range(0..p.len());
            p[at] ^= rng.gen_range(1..=255u8);
            packets.push(p);
        }
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        out.clear();
        c.coalesce(&refs, round % 2 == 0, &mut out);
        // Every packet in exactly one frame: the garbage is alone and unchanged.
        let mut back = Vec::new();
        for f in out.iter() {
            check_written_frame(f);
            back.extend(split_all(f).unwrap());
        }
        let mut sorted_in = packets.clone();
        sorted_in.sort();
        back.sort();
        assert_eq!(back, sorted_in);
    }
}

// ---------------------------------------------------------------------------
// Round trips.

/// A flow of the random streams.
struct Flow {
    tcp: Tcp,
    /// A UDP flow instead: (v6, source port, next id).
    udp: Option<(bool, u16, u16)>,
    mss: usize,
}

fn random_batch(rng: &mut StdRng, flows: &mut [Flow], n: usize) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let f = rng.gen_range(0..flows.len());
        let flow = &mut flows[f];
        let size = match rng.gen_range(0..40) {
            0 => rng.gen_range(1..flow.mss),
            1 => 0,
            _ => flow.mss,
        };
        let p = if let Some((v6, port, id)) = &mut flow.udp {
            let p = udp(*v6, *port, *id, &payload(size, rng.gen()));
            *id = id.wrapping_add(1);
            p
        } else {
            let t = &mut flow.tcp;
            t.flags = match rng.gen_range(0..60) {
                0 => ACK | PSH,
                1 => ACK | FIN,
                2 => SYN | ACK,
                3 => ACK | CWR,
                _ => ACK,
            };
            if rng.gen_range(0..80) == 0 {
                t.ack = t.ack.wrapping_add(1);
            }
            let mut p = t.packet(&payload(size, rng.gen()));
            t.seq = t.seq.wrapping_add(size as u32);
            t.id = t.id.wrapping_add(1);
            // Corruption (of the payload or the checksum: the packet stays
            // recognizably of its flow).
            if rng.gen_range(0..100) == 0 {
                let hl = ip_hl(&p) + usize::from(p[ip_hl(&p) + 12] >> 4) * 4;
                let at = if size > 0 {
                    rng.gen_range(hl..p.len())
                } else {
                    hl - 4
                };
                p[at] ^= 0x20;
            }
            p
        };
        out.push((f, p));
    }
    out
}

fn round_trip(udp_flows: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut flows: Vec<Flow> = (0..if udp_flows { 8u16 } else { 5 })
        .map(|i| {
            let v6 = i % 2 == 1;
            let mss = [536, 1_200, 1_448, 1_380, 8_960, 1_200, 1_380, 100][usize::from(i)];
            Flow {
                tcp: Tcp {
                    sport: 1_000 + i,
                    seq: rng.gen(),
                    id: rng.gen(),
                    options: if i == 2 {
                        vec![1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8]
                    } else {
                        Vec::new()
                    },
                    ..if v6 { Tcp::v6() } else { Tcp::v4() }
                },
                udp: (i >= 5).then(|| (v6, 2_000 + i, rng.gen())),
                mss,
            }
        })
        .collect();
    let mut c = Coalescer::new();
    let mut out = PacketBuf::new();
    let (mut packets_total, mut frames_total) = (0, 0);
    for _ in 0..150 {
        let n = rng.gen_range(1..=128);
        let batch = random_batch(&mut rng, &mut flows, n);
        let refs: Vec<&[u8]> = batch.iter().map(|(_, p)| p.as_slice()).collect();
        out.clear();
        c.coalesce(&refs, udp_flows, &mut out);
        let mut back: Vec<Vec<u8>> = Vec::new();
        for frame in out.iter() {
            check_written_frame(frame);
            back.extend(split_all(frame).unwrap());
        }
        assert_eq!(back.len(), batch.len());
        // Per flow, exactly the input packets in their order.
        for f in 0..flows.len() {
            let sent: Vec<&Vec<u8>> = batch
                .iter()
                .filter(|(g, _)| *g == f)
                .map(|(_, p)| p)
                .collect();
            let got: Vec<&Vec<u8>> = back
                .iter()
                .filter(|p| batch.iter().any(|(g, q)| *g == f && q == *p))
                .collect();
            assert_eq!(got, sent, "flow {f}");
        }
        let mut a: Vec<&Vec<u8>> = batch.iter().map(|(_, p)| p).collect();
        let mut b: Vec<&Vec<u8>> = back.iter().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        packets_total += batch.len();
        frames_total += out.len();
    }
    // Not vacuous: most packets were merged.
    assert!(
        frames_total * 3 < packets_total,
        "{frames_total} frames for {packets_total} packets"
    );
}

#[test]
fn round_trip_random_tcp_streams() {
    round_trip(false, 1);
    round_trip(false, 2);
}

#[test]
fn round_trip_random_udp_streams() {
    round_trip(true, 3);
    round_trip(true, 4);
}

#[test]
fn split_then_coalesce_then_split_is_the_identity() {
    for frame in frames_to_break() {
        let packets = split_all(&frame).unwrap();
        let frames = coalesce_all(&packets, true);
        assert_eq!(frames.len(), 1);
        assert_eq!(split_all(&frames[0]).unwrap(), packets);
    }
    // With CWR on the first segment and FIN on the last (ECN, close).
    let tcp = Tcp {
        flags: ACK | CWR | FIN | PSH,
        ..Tcp::v4()
    };
    let frame = gso_frame(&tcp.packet(&payload(10_000, 1)), GSO_TCPV4 | GSO_ECN, 1_000);
    let packets = split_all(&frame).unwrap();
    assert_eq!(packets.len(), 10);
    assert_groups(
        &packets,
        true,
        &[&[0], &[1, 2, 3, 4, 5, 6, 7, 8], &[9]],
        "CWR first, FIN last",
    );
}

#[test]
fn the_fuzz_targets_seeds_hold_the_laws() {
    for seed in [
        &include_bytes!("../../../../fuzz/seeds/offload/tso4")[..],
        &include_bytes!("../../../../fuzz/seeds/offload/uso6")[..],
        &include_bytes!("../../../../fuzz/seeds/offload/partial-csum")[..],
    ] {
        let mut packets = PacketBuf::new();
        split(seed, &mut packets).expect("every seed is a frame the device splits");
        super::fuzz::run(seed);
    }
}
