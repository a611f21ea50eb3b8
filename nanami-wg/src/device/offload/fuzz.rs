//! The `offload` fuzz target's laws ([`run`]), and the straightforward RFC 1071
//! checksum they (and the unit tests) check the device's against.

use super::{split, Coalescer, PacketBuf, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};

/// The bytes as one read of the device's TUN (`virtio_net_hdr` + packet), split as
/// the device splits it. A refused frame appends nothing. Otherwise every packet of
/// a TSO/USO frame is a valid IP packet whose checksums verify (a completed partial
/// checksum verifies too), and coalescing the packets (with UDP and without) then
/// splitting every frame again gives back exactly the same packets, in order.
/// Panics when a law breaks.
pub(crate) fn run(data: &[u8]) {
    let mut packets = PacketBuf::new();
    if split(data, &mut packets).is_err() {
        assert!(packets.is_empty(), "a refused frame appended packets");
        return;
    }
    let hdr = VnetHdr::read(data).expect("split read the header");
    if hdr.gso_type != GSO_NONE {
        for p in packets.iter() {
            assert!(valid_ip(p), "an invalid segment: {p:02x?}");
        }
    } else if hdr.flags & F_NEEDS_CSUM != 0 && hdr.csum_offset & 1 == 0 {
        // The completed field plus the pseudo-header sum the kernel left in it
        // verifies over csum_start.. (for a field on a 16-bit boundary of it).
        let start = usize::from(hdr.csum_start);
        let field = start + usize::from(hdr.csum_offset);
        let before = &data[VNET_HDR_LEN..];
        let left = u32::from(u16::from_be_bytes([before[field], before[field + 1]]));
        let p = packets.get(0);
        assert_eq!(
            add16(sum(&p[start..]), left),
            0xffff,
            "a completed checksum does not verify"
        );
    }
    let list: Vec<&[u8]> = packets.iter().collect();
    let mut coalescer = Coalescer::new();
    for udp in [false, true] {
        let mut frames = PacketBuf::new();
        coalescer.coalesce(&list, udp, &mut frames);
        assert!(frames.len() <= list.len());
        let mut back = PacketBuf::new();
        for frame in frames.iter() {
            split(frame, &mut back).expect("a coalesced frame splits");
        }
        let back: Vec<&[u8]> = back.iter().collect();
        assert_eq!(
            back, list,
            "coalesce then split changed the packets (udp {udp})"
        );
    }
}
/// One's complement addition of 16-bit values.
pub(crate) fn add16(a: u32, b: u32) -> u32 {
    let s = a + b;
    if s > 0xffff {
        (s & 0xffff) + 1
    } else {
        s
    }
}

/// The one's complement sum of big-endian 16-bit words, an odd byte padded.
pub(crate) fn sum(data: &[u8]) -> u32 {
    data.chunks(2).fold(0, |s, pair| {
        let word = match pair {
            [a, b] => u32::from(*a) << 8 | u32::from(*b),
            [a] => u32::from(*a) << 8,
            _ => 0,
        };
        add16(s, word)
    })
}

/// Whether `p` is an IPv4 or IPv6 packet with right lengths whose IPv4 header
/// checksum and TCP or UDP checksum (pseudo-header included) verify.
pub(crate) fn valid_ip(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let (hl, proto, addrs, ip_len) = match first >> 4 {
        4 if p.len() >= 20 => {
            let hl = usize::from(first & 0x0f) * 4;
            if hl < 20 || hl > p.len() || sum(&p[..hl]) != 0xffff {
                return false;
            }
            (
                hl,
                p[9],
                &p[12..20],
                usize::from(u16::from_be_bytes([p[2], p[3]])),
            )
        }
        6 if p.len() >= 40 => (
            40,
            p[6],
            &p[8..40],
            usize::from(u16::from_be_bytes([p[4], p[5]])) + 40,
        ),
        _ => return false,
    };
    if ip_len != p.len() || (proto != 6 && proto != 17) {
        return false;
    }
    let l4_len = (p.len() - hl) as u32;
    let pseudo = add16(
        add16(sum(addrs), u32::from(proto)),
        add16(l4_len >> 16, l4_len & 0xffff),
    );
    add16(pseudo, sum(&p[hl..])) == 0xffff
}
