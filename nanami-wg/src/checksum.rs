//! The Internet checksum (RFC 1071), fast: the device's offloads (segments'
//! and coalesced packets' checksums) and the prober's ICMP echoes use it.
//!
//! The one's complement sum does not depend on byte order (RFC 1071 §2(B)): the
//! data is summed as native-endian 32-bit words into a `u64` (eight bytes a step,
//! which the compiler vectorizes), folded to 16 bits, and only the result is
//! turned into network order.

/// The one's complement sum of `data` as big-endian 16-bit words (an odd last byte
/// padded with a zero byte), folded to 16 bits. Sums of even-length pieces add up:
/// `fold(sum(a) + sum(b))` is the sum of `a` then `b` when `a.len()` is even.
pub(crate) fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    // The last 0..=7 bytes, zero-padded: a chunk starts at an even offset, so an
    // odd last byte lands in the high (first) byte of its 16-bit word.
    let mut word = [0u8; 8];
    for (w, b) in word.iter_mut().zip(chunks.remainder()) {
        *w = *b;
    }
    let w = u64::from_ne_bytes(word);
    acc += (w & 0xffff_ffff) + (w >> 32);
    // Folded in native order; swapping bytes commutes with one's complement
    // addition, so `from_be` turns the native-order sum into the network-order one.
    u16::from_be(fold(acc))
}

/// Folds a one's complement accumulator to 16 bits (end-around carry). Zero only
/// for a zero accumulator.
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // `acc <= 0xffff` here.
    acc as u16
}

/// The folded sum of the TCP/UDP pseudo-header: source and destination addresses
/// (4 or 16 bytes each), protocol and transport length (RFC 793, RFC 8200 §8.1).
pub(crate) fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u16 {
    let len = l4_len as u64;
    fold(
        u64::from(sum(src)) + u64::from(sum(dst)) + u64::from(proto) + (len >> 16) + (len & 0xffff),
    )
}

/// The checksum to store for `data` whose checksum field is zero, `initial` being
/// the folded sum of what else is covered (the pseudo-header, or 0): the complement
/// of the folded total.
pub(crate) fn checksum(data: &[u8], initial: u16) -> u16 {
    !fold(u64::from(sum(data)) + u64::from(initial))
}

/// Whether `data`, with its checksum field in place and `initial` (the pseudo-header
/// sum, or 0) added, verifies: the folded total is `0xffff`.
pub(crate) fn verifies(data: &[u8], initial: u16) -> bool {
    fold(u64::from(sum(data)) + u64::from(initial)) == 0xffff
}
