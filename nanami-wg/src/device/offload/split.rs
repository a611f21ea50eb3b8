//! Splitting a TUN read (`virtio_net_hdr` + packet) into the IP packets it stands
//! for: the kernel's TSO/USO segmentation (`tcp_gso_segment`, `__udp_gso_segment`)
//! and its `skb_checksum_help`, done in user space.

use super::{
    be16, be32, put16, put32, OffloadError, PacketBuf, VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE,
    GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, IPPROTO_TCP, IPPROTO_UDP, TCP_CSUM_OFFSET, TCP_CWR, TCP_FIN,
    TCP_PSH, UDP_CSUM_OFFSET, VNET_HDR_LEN,
};
use crate::checksum::{checksum, pseudo_header};

/// Splits one TUN read (`frame` = `virtio_net_hdr` + IP packet) into the IP packets
/// it stands for, appended to `out`.
///
/// - [`GSO_NONE`] without [`F_NEEDS_CSUM`]: the packet as it is (not even checked to
///   be IP). With [`F_NEEDS_CSUM`]: the checksum completed, as the kernel's
///   `skb_checksum_help` does: the sum from `csum_start` to the end, folded and
///   complemented, stored at `csum_start + csum_offset` (a computed 0 is stored as
///   `0xffff`, which means the same to TCP and is required by UDP).
/// - [`GSO_TCPV4`], [`GSO_TCPV6`] (with or without [`GSO_ECN`]) and [`GSO_UDP_L4`]:
///   the payload cut in `gso_size` pieces, each with a copy of the headers: IPv4
///   total length, identification (+1 a segment) and header checksum, or IPv6
///   payload length; TCP sequence number advanced, FIN and PSH kept only on the last
///   segment and CWR only on the first; UDP length; the full transport checksum
///   (pseudo-header included; UDP's never 0). A super-packet without payload gives
///   one packet.
///
/// A super-packet must be an unfragmented IPv4 packet (options allowed) or an IPv6
/// packet without extension headers, of the protocol and version the GSO type names,
/// whose IP length is the packet's; `csum_start` must be the IP header's length and
/// `csum_offset` the transport's checksum field (16 or 6); the TCP header must fit
/// (data offset 5 to 15); `gso_size` must not be 0. `hdr_len` is ignored: the
/// kernel gives the length of the skb's linear part there, a hint only; the header
/// length comes from the headers themselves.
///
/// On error `out` holds exactly what it held before the call. Never panics.
pub fn split(frame: &[u8], out: &mut PacketBuf) -> Result<(), OffloadError> {
    let hdr = VnetHdr::read(frame)?;
    let packet = frame.get(VNET_HDR_LEN..).unwrap_or_default();
    let mark = out.len();
    let result = if hdr.gso_type == GSO_NONE {
        complete(&hdr, packet, out)
    } else {
        segment(&hdr, packet, out)
    };
    if result.is_err() {
        out.truncate(mark);
    }
    result
}

/// A packet without GSO: as it is, its checksum completed if it is partial.
fn complete(hdr: &VnetHdr, packet: &[u8], out: &mut PacketBuf) -> Result<(), OffloadError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        out.push(packet);
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return Err(OffloadError::Malformed(
            "checksum field (csum_start + csum_offset) beyond the packet",
        ));
    }
    let covered = packet.get(start..).unwrap_or_default();
    let mut csum = checksum(covered, 0);
    if csum == 0 {
        csum = 0xffff;
    }
    let copy = out.push_parts(&[packet]);
    put16(copy, field, csum);
    Ok(())
}

/// Where a validated super-packet's headers are.
struct Layout {
    v6: bool,
    tcp: bool,
    /// IP header length (IPv4 with options; 40 for IPv6).
    ip_hl: usize,
    /// IP + transport header length.
    hdr_len: usize,
}

/// Validates a super-packet against its `virtio_net_hdr`.
fn layout(hdr: &VnetHdr, packet: &[u8]) -> Result<Layout, OffloadError> {
    let ecn = hdr.gso_type & GSO_ECN != 0;
    let (version, tcp) = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 => (Some(4), true),
        GSO_TCPV6 => (Some(6), true),
        GSO_UDP_L4 if !ecn => (None, false),
        _ => return Err(OffloadError::UnsupportedGso(hdr.gso_type)),
    };
    if hdr.gso_size == 0 {
        return Err(OffloadError::Malformed("gso_size is 0"));
    }
    let first = *packet.first().ok_or(OffloadError::Truncated)?;
    let actual = first >> 4;
    if actual != 4 && actual != 6 {
        return Err(OffloadError::NotIp(actual));
    }
    if version.is_some_and(|v| v != actual) {
        return Err(OffloadError::Malformed(
            "IP version does not match the GSO type",
        ));
    }
    let v6 = actual == 6;
    let proto = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    let ip_hl = if v6 {
        if packet.len() < 40 {
            return Err(OffloadError::Truncated);
        }
        let payload_len = be16(packet, 4).ok_or(OffloadError::Truncated)?;
        let next_header = *packet.get(6).ok_or(OffloadError::Truncated)?;
        if usize::from(payload_len) + 40 != packet.len() {
            return Err(OffloadError::Malformed(
                "IPv6 payload length is not the packet's",
            ));
        }
        if next_header != proto {
            return Err(OffloadError::Malformed(
                "IPv6 next header is not the GSO type's protocol (extension headers are not supported)",
            ));
        }
        40
    } else {
        if packet.len() < 20 {
            return Err(OffloadError::Truncated);
        }
        let ihl = usize::from(first & 0x0f) * 4;
        if ihl < 20 {
            return Err(OffloadError::Malformed("IPv4 IHL below 5"));
        }
        if ihl > packet.len() {
            return Err(OffloadError::Truncated);
        }
        if be16(packet, 2).map(usize::from) != Some(packet.len()) {
            return Err(OffloadError::Malformed(
                "IPv4 total length is not the packet's",
            ));
        }
        if be16(packet, 6).is_none_or(|frag| frag & 0x3fff != 0) {
            return Err(OffloadError::Malformed("IPv4 fragment"));
        }
        if packet.get(9) != Some(&proto) {
            return Err(OffloadError::Malformed(
                "IPv4 protocol is not the GSO type's protocol",
            ));
        }
        ihl
    };
    if usize::from(hdr.csum_start) != ip_hl {
        return Err(OffloadError::Malformed(
            "csum_start is not the transport header's offset",
        ));
    }
    let csum_offset = if tcp {
        TCP_CSUM_OFFSET
    } else {
        UDP_CSUM_OFFSET
    };
    if usize::from(hdr.csum_offset) != csum_offset {
        return Err(OffloadError::Malformed(
            "csum_offset is not the transport checksum field's",
        ));
    }
    let l4_hl = if tcp {
        let offset = *packet.get(ip_hl + 12).ok_or(OffloadError::Truncated)?;
        let l4_hl = usize::from(offset >> 4) * 4;
        if l4_hl < 20 {
            return Err(OffloadError::Malformed("TCP data offset below 5"));
        }
        l4_hl
    } else {
        8
    };
    let hdr_len = ip_hl + l4_hl;
    if hdr_len > packet.len() {
        return Err(OffloadError::Truncated);
    }
    Ok(Layout {
        v6,
        tcp,
        ip_hl,
        hdr_len,
    })
}

/// A super-packet: validated, then cut.
fn segment(hdr: &VnetHdr, packet: &[u8], out: &mut PacketBuf) -> Result<(), OffloadError> {
    let Layout {
        v6,
        tcp,
        ip_hl,
        hdr_len,
    } = layout(hdr, packet)?;
    let headers = packet.get(..hdr_len).ok_or(OffloadError::Truncated)?;
    let payload = packet.get(hdr_len..).unwrap_or_default();
    let gso_size = usize::from(hdr.gso_size);
    let (proto, csum_field) = if tcp {
        (IPPROTO_TCP, ip_hl + TCP_CSUM_OFFSET)
    } else {
        (IPPROTO_UDP, ip_hl + UDP_CSUM_OFFSET)
    };
    let (src, dst) = if v6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let id = be16(packet, 4).unwrap_or(0);
    let seq = be32(packet, ip_hl + 4).unwrap_or(0);
    let flags = packet.get(ip_hl + 13).copied().unwrap_or(0);

    // No payload: one segment of headers only.
    let count = payload.len().div_ceil(gso_size).max(1);
    let too_long = OffloadError::Malformed("segment longer than an IP packet can be");
    for (i, piece) in payload
        .chunks(gso_size)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let seg = out.push_parts(&[headers, piece]);
        let l4_len = seg.len() - ip_hl;
        if v6 {
            put16(seg, 4, u16::try_from(l4_len).map_err(|_| too_long)?);
        } else {
            put16(seg, 2, u16::try_from(seg.len()).map_err(|_| too_long)?);
            // `i < count <= 65_535 + 1`: the identification wraps as the kernel's.
            put16(seg, 4, id.wrapping_add(i as u16));
            put16(seg, 10, 0);
            let ip_csum = checksum(seg.get(..ip_hl).unwrap_or_default(), 0);
            put16(seg, 10, ip_csum);
        }
        if tcp {
            put32(seg, ip_hl + 4, seq.wrapping_add((i * gso_size) as u32));
            let mut f = flags;
            if i + 1 < count {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            if let Some(b) = seg.get_mut(ip_hl + 13) {
                *b = f;
            }
        } else {
            put16(seg, ip_hl + 4, u16::try_from(l4_len).map_err(|_| too_long)?);
        }
        put16(seg, csum_field, 0);
        let pseudo = pseudo_header(
            seg.get(src.clone()).unwrap_or_default(),
            seg.get(dst.clone()).unwrap_or_default(),
            proto,
            l4_len,
        );
        let mut csum = checksum(seg.get(ip_hl..).unwrap_or_default(), pseudo);
        if !tcp && csum == 0 {
            csum = 0xffff;
        }
        put16(seg, csum_field, csum);
    }
    Ok(())
}
