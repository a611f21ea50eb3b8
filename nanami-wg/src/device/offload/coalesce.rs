//! Coalescing decrypted packets into TUN super-packets (GRO), the inverse of
//! [`split`](super::split).

use std::collections::HashMap;
use std::fmt;

use super::{
    be16, be32, put16, PacketBuf, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
    IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_CSUM_OFFSET, TCP_PSH, UDP_CSUM_OFFSET, VNET_HDR_LEN,
};
use crate::checksum::{checksum, pseudo_header, verifies};

/// The largest IP packet a group may become (IPv4 total length, IPv6 payload length
/// + 40 stays below it too).
const MAX_IP_LEN: usize = 65_535;
/// The most datagrams in one UDP super-packet: the kernel refuses a UDP_L4 frame of
/// more than `UDP_MAX_SEGMENTS` (64 before Linux 6.12) gso_size pieces.
const MAX_UDP_SEGMENTS: u32 = 64;
/// End of a group's member list.
const END: usize = usize::MAX;

/// Coalesces decrypted IP packets into TUN frames (each a `virtio_net_hdr` and a
/// packet), as Linux GRO does: packets of one TCP flow (and, if asked, of one UDP
/// flow) that continue each other become one super-packet that the kernel takes
/// as a whole.
///
/// Per flow (addresses, protocol, ports) the packets keep their order, and a packet
/// may only extend the flow's most recent group; frames come out in the order of
/// their first packets. A packet joins the group when:
///
/// - **IP**: IPv4 without options, not a fragment, total length the packet's,
///   header checksum valid, identification the previous one's + 1, and the same
///   TOS, TTL and flags (DF); or IPv6 with TCP/UDP directly after the fixed header,
///   payload length the packet's, the same traffic class, flow label and hop limit.
/// - **TCP**: flags exactly ACK or ACK|PSH; the same ports, acknowledgment number,
///   data offset, window, urgent pointer and options (byte for byte); payload not
///   empty and not larger than the group's first (its `gso_size`); sequence number
///   the previous one's + its payload; the packet's checksum valid. A segment
///   shorter than the first, or with PSH, closes the group.
/// - **UDP** (when asked): the same ports; length field the packet's; payload not
///   empty and not larger than the first's (a shorter one closes the group); at
///   most 64 datagrams; the checksum present (an IPv4 zero checksum is "none": such
///   a datagram is written alone) and valid.
/// - The group stays at most 65,535 bytes of IP packet.
///
/// Checksums are held to their canonical form too (a TCP checksum of `0xffff`
/// where the computed one is `0`, or the same for the IPv4 header, verifies but is
/// written alone): together with the identification and window rules this makes
/// [`split`](super::split) of every frame give back exactly the packets that went
/// in, so coalescing changes nothing the receiving stack (or a router forwarding the
/// super-packet, which re-segments it) could see, and never turns a corrupt packet
/// into one the kernel accepts.
///
/// A group of one is written as it came, with an all-zero header ([`GSO_NONE`](super::GSO_NONE)).
/// A group of several is the first packet's headers and every payload: IPv4 total
/// length and header checksum (IPv6 payload length) and the UDP length recomputed,
/// PSH set if the last packet had it, the transport checksum field holding the
/// folded pseudo-header sum, and the header [`F_NEEDS_CSUM`], [`GSO_TCPV4`] /
/// [`GSO_TCPV6`] / [`GSO_UDP_L4`], `hdr_len` the headers' length, `gso_size` the
/// first payload's length, `csum_start` the IP header's length and `csum_offset`
/// 16 (TCP) or 6 (UDP). Anything else (ICMP, non-IP, truncated, other protocols) is
/// written alone, unchanged.
///
/// The coalescer keeps its scratch space between calls: once warm it allocates
/// nothing.
#[derive(Default)]
pub struct Coalescer {
    /// The groups of the current batch, in the order of their first packets.
    groups: Vec<Group>,
    /// Per packet of the batch, the next member of its group (or `END`).
    next: Vec<usize>,
    /// Each flow's most recent group.
    flows: HashMap<FlowKey, usize>,
}

impl fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

/// A TCP or UDP flow.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    v6: bool,
    proto: u8,
    /// Addresses (IPv4 in the first 4 bytes).
    src: [u8; 16],
    dst: [u8; 16],
    /// Source and destination ports, as on the wire.
    ports: [u8; 4],
}

/// What coalescing needs of a packet that may join a group.
#[derive(Clone, Copy)]
struct Segment {
    v6: bool,
    tcp: bool,
    /// IP header length (20 or 40).
    ip_hl: usize,
    /// Transport header length.
    l4_hl: usize,
    /// Transport payload length (> 0).
    payload: usize,
    /// TCP sequence number.
    seq: u32,
    /// IPv4 identification.
    id: u16,
    /// TCP PSH.
    psh: bool,
}

/// What a packet is to the coalescer.
enum Class {
    /// No flow to speak of: written alone, affects no group.
    Alone,
    /// A packet of a flow that cannot be merged: written alone, and it closes its
    /// flow's group (what follows must not overtake it).
    Barrier(FlowKey),
    /// A packet that may join its flow's group.
    Candidate(FlowKey, Segment),
}

/// Packets written as one frame.
struct Group {
    /// Index of the first packet.
    head: usize,
    /// Index of the last packet.
    tail: usize,
    /// Number of packets.
    count: u32,
    /// Whether another packet may still join.
    open: bool,
    /// The first packet, if it is a candidate (groups of several only).
    seg: Option<Segment>,
    /// The first packet's payload length.
    gso_size: usize,
    /// Length of the merged IP packet.
    ip_len: usize,
    /// TCP: the sequence number the next packet must have.
    next_seq: u32,
    /// IPv4: the last packet's identification.
    last_id: u16,
    /// TCP: whether the last packet had PSH.
    psh: bool,
}

impl Group {
    fn single(index: usize) -> Self {
        Group {
            head: index,
            tail: index,
            count: 1,
            open: false,
            seg: None,
            gso_size: 0,
            ip_len: 0,
            next_seq: 0,
            last_id: 0,
            psh: false,
        }
    }
}

impl Coalescer {
    /// A coalescer with empty scratch space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Coalesces `packets` (decrypted IP packets, each trimmed to its IP length)
    /// into TUN frames appended to `out`: every packet ends up in exactly one
    /// frame. `udp`: also coalesce UDP ([`GSO_UDP_L4`]; only for a TUN that took
    /// `TUN_F_USO4 | TUN_F_USO6`); otherwise every UDP packet is written alone.
    pub fn coalesce(&mut self, packets: &[&[u8]], udp: bool, out: &mut PacketBuf) {
        self.groups.clear();
        self.flows.clear();
        self.next.clear();
        self.next.resize(packets.len(), END);

        for (i, &packet) in packets.iter().enumerate() {
            match classify(packet, udp) {
                Class::Alone => self.groups.push(Group::single(i)),
                Class::Barrier(key) => {
                    self.flows.insert(key, self.groups.len());
                    self.groups.push(Group::single(i));
                }
                Class::Candidate(key, seg) => {
                    if let Some(&g) = self.flows.get(&key) {
                        if let Some(group) = self.groups.get_mut(g) {
                            let head = packets.get(group.head).copied().unwrap_or_default();
                            if can_join(group, head, packet, &seg) {
                                if let Some(link) = self.next.get_mut(group.tail) {
                                    *link = i;
                                }
                                join(group, i, &seg);
                                continue;
                            }
                        }
                    }
                    self.flows.insert(key, self.groups.len());
                    self.groups.push(Group {
                        head: i,
                        tail: i,
                        count: 1,
                        open: !seg.psh,
                        seg: Some(seg),
                        gso_size: seg.payload,
                        ip_len: packet.len(),
                        next_seq: seg.seq.wrapping_add(seg.payload as u32),
                        last_id: seg.id,
                        psh: seg.psh,
                    });
                }
            }
        }

        for group in &self.groups {
            match group.seg {
                Some(seg) if group.count > 1 => write_merged(group, &seg, packets, &self.next, out),
                _ => {
                    let packet = packets.get(group.head).copied().unwrap_or_default();
                    out.push_parts(&[&[0; VNET_HDR_LEN], packet]);
                }
            }
        }
    }
}

/// Sorts a packet into alone, barrier or candidate.
fn classify(p: &[u8], udp: bool) -> Class {
    let wanted = |proto: u8| proto == IPPROTO_TCP || (udp && proto == IPPROTO_UDP);
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let (Some(&proto), Some(frag)) = (p.get(9), be16(p, 6)) else {
                return Class::Alone;
            };
            let ihl = usize::from(p.first().copied().unwrap_or(0) & 0x0f) * 4;
            // A non-first fragment has no ports.
            if !wanted(proto) || ihl < 20 || frag & 0x1fff != 0 {
                return Class::Alone;
            }
            let Some(key) = flow_key(p, false, proto, 12..16, 16..20, ihl) else {
                return Class::Alone;
            };
            let header = p.get(..20).unwrap_or_default();
            let valid_ip = ihl == 20
                && frag & 0x2000 == 0
                && be16(p, 2).map(usize::from) == Some(p.len())
                && verifies(header, 0)
                && be16(p, 10) != Some(0xffff);
            if !valid_ip {
                return Class::Barrier(key);
            }
            transport(p, key, false, 20)
        }
        Some(6) => {
            let Some(&proto) = p.get(6) else {
                return Class::Alone;
            };
            if !wanted(proto) || p.len() < 40 {
                return Class::Alone;
            }
            let Some(key) = flow_key(p, true, proto, 8..24, 24..40, 40) else {
                return Class::Alone;
            };
            if be16(p, 4).map(|len| usize::from(len) + 40) != Some(p.len()) {
                return Class::Barrier(key);
            }
            transport(p, key, true, 40)
        }
        _ => Class::Alone,
    }
}

/// The flow of a TCP/UDP packet whose transport header starts at `l4`.
fn flow_key(
    p: &[u8],
    v6: bool,
    proto: u8,
    src: std::ops::Range<usize>,
    dst: std::ops::Range<usize>,
    l4: usize,
) -> Option<FlowKey> {
    let mut key = FlowKey {
        v6,
        proto,
        src: [0; 16],
        dst: [0; 16],
        ports: [0; 4],
    };
    let (s, d) = (p.get(src)?, p.get(dst)?);
    key.src.get_mut(..s.len())?.copy_from_slice(s);
    key.dst.get_mut(..d.len())?.copy_from_slice(d);
    key.ports.copy_from_slice(p.get(l4..l4.checked_add(4)?)?);
    Some(key)
}

/// The transport half of [`classify`], for a packet whose IP header is fit.
fn transport(p: &[u8], key: FlowKey, v6: bool, ip_hl: usize) -> Class {
    let l4 = p.get(ip_hl..).unwrap_or_default();
    let (src, dst) = if v6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let pseudo = pseudo_header(
        p.get(src).unwrap_or_default(),
        p.get(dst).unwrap_or_default(),
        key.proto,
        l4.len(),
    );
    let id = if v6 { 0 } else { be16(p, 4).unwrap_or(0) };
    if key.proto == IPPROTO_TCP {
        let (Some(&offset), Some(&flags), Some(seq), Some(csum)) = (
            l4.get(12),
            l4.get(13),
            be32(l4, 4),
            be16(l4, TCP_CSUM_OFFSET),
        ) else {
            return Class::Barrier(key);
        };
        let l4_hl = usize::from(offset >> 4) * 4;
        let fit = l4_hl >= 20
            && l4_hl < l4.len()
            && (flags == TCP_ACK || flags == TCP_ACK | TCP_PSH)
            && csum != 0xffff
            && verifies(l4, pseudo);
        if !fit {
            return Class::Barrier(key);
        }
        Class::Candidate(
            key,
            Segment {
                v6,
                tcp: true,
                ip_hl,
                l4_hl,
                payload: l4.len() - l4_hl,
                seq,
                id,
                psh: flags & TCP_PSH != 0,
            },
        )
    } else {
        let (Some(len), Some(csum)) = (be16(l4, 4), be16(l4, UDP_CSUM_OFFSET)) else {
            return Class::Barrier(key);
        };
        let fit = l4.len() > 8 && usize::from(len) == l4.len() && csum != 0 && verifies(l4, pseudo);
        if !fit {
            return Class::Barrier(key);
        }
        Class::Candidate(
            key,
            Segment {
                v6,
                tcp: false,
                ip_hl,
                l4_hl: 8,
                payload: l4.len() - 8,
                seq: 0,
                id,
                psh: false,
            },
        )
    }
}

/// Whether `range` of `a` and of `b` exists and is equal.
fn same(a: &[u8], b: &[u8], range: std::ops::Range<usize>) -> bool {
    match (a.get(range.clone()), b.get(range)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether candidate `p` (`seg`) may join `group`, whose first packet is `head`.
/// The flow key (addresses, protocol, ports) is already the same.
fn can_join(group: &Group, head: &[u8], p: &[u8], seg: &Segment) -> bool {
    let Some(first) = group.seg else {
        return false;
    };
    if !group.open
        || first.v6 != seg.v6
        || first.tcp != seg.tcp
        || seg.payload > group.gso_size
        || group.ip_len + seg.payload > MAX_IP_LEN
        || (!seg.v6 && seg.id != group.last_id.wrapping_add(1))
    {
        return false;
    }
    if seg.tcp {
        if seg.seq != group.next_seq {
            return false;
        }
    } else if group.count >= MAX_UDP_SEGMENTS {
        return false;
    }
    // The IP fields `split` copies from the first packet: IPv4 version, IHL, TOS,
    // flags, fragment offset, TTL, protocol; IPv6 version, traffic class, flow
    // label, next header, hop limit.
    let ip_same = if seg.v6 {
        same(head, p, 0..4) && same(head, p, 6..8)
    } else {
        same(head, p, 0..2) && same(head, p, 6..10)
    };
    if !ip_same {
        return false;
    }
    if !seg.tcp {
        return true;
    }
    // The TCP fields it copies: acknowledgment, data offset (and reserved bits),
    // window, urgent pointer, options. (Flags are ACK or ACK|PSH, checked.)
    let t = seg.ip_hl;
    seg.l4_hl == first.l4_hl
        && same(head, p, t + 8..t + 13)
        && same(head, p, t + 14..t + 16)
        && same(head, p, t + 18..t + seg.l4_hl)
}

/// Adds packet `index` (`seg`) to `group`.
fn join(group: &mut Group, index: usize, seg: &Segment) {
    group.tail = index;
    group.count += 1;
    group.ip_len += seg.payload;
    group.next_seq = seg.seq.wrapping_add(seg.payload as u32);
    group.last_id = seg.id;
    group.psh = seg.psh;
    if seg.payload < group.gso_size || seg.psh {
        group.open = false;
    }
}

/// Writes a group of several packets as one super-packet frame.
fn write_merged(
    group: &Group,
    first: &Segment,
    packets: &[&[u8]],
    next: &[usize],
    out: &mut PacketBuf,
) {
    let head = packets.get(group.head).copied().unwrap_or_default();
    let hdr_len = first.ip_hl + first.l4_hl;
    let (gso_type, csum_offset, proto) = match (first.tcp, first.v6) {
        (true, false) => (GSO_TCPV4, TCP_CSUM_OFFSET, IPPROTO_TCP),
        (true, true) => (GSO_TCPV6, TCP_CSUM_OFFSET, IPPROTO_TCP),
        (false, _) => (GSO_UDP_L4, UDP_CSUM_OFFSET, IPPROTO_UDP),
    };
    // Every value below is at most 65,535 (`MAX_IP_LEN`), checked as packets joined.
    let vnet = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: hdr_len as u16,
        gso_size: group.gso_size as u16,
        csum_start: first.ip_hl as u16,
        csum_offset: csum_offset as u16,
    };
    let start = out.begin();
    out.extend(&vnet.to_bytes());
    out.extend(head.get(..hdr_len).unwrap_or_default());
    let mut member = group.head;
    while member != END {
        let packet = packets.get(member).copied().unwrap_or_default();
        out.extend(packet.get(hdr_len..).unwrap_or_default());
        member = next.get(member).copied().unwrap_or(END);
    }
    let frame = out.finish(start);
    let Some(ip) = frame.get_mut(VNET_HDR_LEN..) else {
        return;
    };
    let ip_len = ip.len();
    let l4_len = ip_len - first.ip_hl;
    let (src, dst) = if first.v6 {
        put16(ip, 4, l4_len as u16);
        (8..24, 24..40)
    } else {
        put16(ip, 2, ip_len as u16);
        put16(ip, 10, 0);
        let csum = checksum(ip.get(..first.ip_hl).unwrap_or_default(), 0);
        put16(ip, 10, csum);
        (12..16, 16..20)
    };
    let t = first.ip_hl;
    if first.tcp {
        if group.psh {
            if let Some(flags) = ip.get_mut(t + 13) {
                *flags |= TCP_PSH;
            }
        }
    } else {
        put16(ip, t + 4, l4_len as u16);
    }
    let pseudo = pseudo_header(
        ip.get(src).unwrap_or_default(),
        ip.get(dst).unwrap_or_default(),
        proto,
        l4_len,
    );
    put16(ip, t + csum_offset, pseudo);
}
