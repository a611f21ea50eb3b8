//! TUN offloads: splitting the kernel's TSO/USO super-packets and coalescing
//! received packets into super-packets (GRO), as Linux's `virtio_net` does.
//!
//! A Linux TUN opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM |
//! TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6)` prefixes every packet, both
//! ways, with a 10-byte [`VnetHdr`] (the legacy `struct virtio_net_hdr`, in native
//! byte order):
//!
//! - **Reads** may give a *super-packet* of up to 64 KiB: one IP header and one
//!   TCP or UDP header for many MTU-size segments' payloads, whose transport
//!   checksum field holds only the pseudo-header sum ([`F_NEEDS_CSUM`]). [`split`]
//!   turns such a frame into the IP packets it stands for (headers copied and fixed,
//!   every checksum computed), ready to be encrypted one by one. A frame without
//!   GSO is one packet, whose checksum [`split`] completes if the kernel left it
//!   partial.
//! - **Writes**: [`Coalescer::coalesce`] merges decrypted packets of one TCP (and
//!   optionally UDP) flow into such super-packets, so the kernel's stack handles a
//!   64 KiB frame instead of forty-odd small ones. It follows Linux GRO
//!   (`tcp_gro_receive`) and wireguard-go's `tun/offload_linux.go`, and is stricter
//!   where that keeps the packets the kernel sees exactly the ones that arrived:
//!   [`split`] of every frame it produces gives back its input packets byte for
//!   byte (see [`Coalescer`]).
//!
//! Everything here is pure (no I/O, no `unsafe`), works on any platform, and never
//! panics on its input: every offset taken from a packet or a header is checked.
//! Packets are stored in a reusable [`PacketBuf`], so a warm data plane allocates
//! nothing per packet.

mod coalesce;
pub(crate) mod fuzz;
mod split;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

pub use coalesce::Coalescer;
pub use split::split;

/// Length of the legacy `struct virtio_net_hdr` in front of every TUN packet.
pub const VNET_HDR_LEN: usize = 10;

/// [`VnetHdr::flags`]: the transport checksum is partial (`CHECKSUM_PARTIAL`): the
/// field at `csum_start + csum_offset` holds the pseudo-header sum, and the sum
/// from `csum_start` to the end of the packet remains to be added.
pub const F_NEEDS_CSUM: u8 = 1;
/// [`VnetHdr::flags`]: the checksums were verified (`CHECKSUM_UNNECESSARY`).
pub const F_DATA_VALID: u8 = 2;

/// [`VnetHdr::gso_type`]: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// [`VnetHdr::gso_type`]: an IPv4 TCP super-packet (TSO).
pub const GSO_TCPV4: u8 = 1;
/// [`VnetHdr::gso_type`]: an IPv6 TCP super-packet (TSO).
pub const GSO_TCPV6: u8 = 4;
/// [`VnetHdr::gso_type`]: a UDP super-packet, IPv4 or IPv6 (USO): every segment a
/// datagram of its own.
pub const GSO_UDP_L4: u8 = 5;
/// [`VnetHdr::gso_type`] flag on TCP types: the sender uses ECN (CWR only on the
/// first segment).
pub const GSO_ECN: u8 = 0x80;

/// The legacy `struct virtio_net_hdr` (10 bytes, native byte order, no
/// `num_buffers`), as a TUN with `IFF_VNET_HDR` reads and writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`F_NEEDS_CSUM`], [`F_DATA_VALID`].
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`], [`GSO_TCPV6`], [`GSO_UDP_L4`], possibly with
    /// [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers (IP + transport). From the kernel only a hint (it is
    /// the length of the skb's linear part), which [`split`] ignores.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Where the checksummed region starts: the transport header.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes of `frame`.
    pub fn read(frame: &[u8]) -> Result<VnetHdr, OffloadError> {
        let Some(h) = frame.get(..VNET_HDR_LEN) else {
            return Err(OffloadError::Truncated);
        };
        let u16_at = |at: usize| match h.get(at..at + 2) {
            Some(&[a, b]) => u16::from_ne_bytes([a, b]),
            _ => 0,
        };
        Ok(VnetHdr {
            flags: h.first().copied().unwrap_or(0),
            gso_type: h.get(1).copied().unwrap_or(0),
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header, in native byte order, into `out`.
    pub fn write(&self, out: &mut [u8; VNET_HDR_LEN]) {
        let [h0, h1] = self.hdr_len.to_ne_bytes();
        let [g0, g1] = self.gso_size.to_ne_bytes();
        let [s0, s1] = self.csum_start.to_ne_bytes();
        let [o0, o1] = self.csum_offset.to_ne_bytes();
        *out = [self.flags, self.gso_type, h0, h1, g0, g1, s0, s1, o0, o1];
    }

    /// The header as bytes.
    fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut out = [0; VNET_HDR_LEN];
        self.write(&mut out);
        out
    }
}

/// Why a TUN frame could not be split; the data plane counts and drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// The frame is shorter than its `virtio_net_hdr`, or than the IP and transport
    /// headers it announces.
    Truncated,
    /// A GSO type this device does not handle (neither TCPv4, TCPv6 nor UDP_L4, or
    /// UDP with the ECN flag); the raw `gso_type`.
    UnsupportedGso(u8),
    /// A super-packet that is neither IPv4 nor IPv6; its version nibble.
    NotIp(u8),
    /// The headers contradict each other or the frame; what is wrong.
    Malformed(&'static str),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("TUN frame shorter than the headers it announces"),
            Self::UnsupportedGso(t) => write!(f, "unsupported virtio GSO type {t:#04x}"),
            Self::NotIp(v) => write!(f, "GSO frame with IP version {v}, not 4 or 6"),
            Self::Malformed(what) => write!(f, "malformed GSO frame: {what}"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// Packets stored one after another in one reusable buffer: once it has grown to a
/// batch's size, filling it again allocates nothing.
///
/// Every packet is followed by at least [`PacketBuf::ROOM`] spare bytes (zero when
/// the packet is stored), so a caller can pad it in place
/// ([`PacketBuf::get_mut_with_room`]).
#[derive(Clone, Default)]
pub struct PacketBuf {
    /// The packets, each followed by `ROOM` bytes.
    data: Vec<u8>,
    /// `(start, len)` of each packet in `data`.
    spans: Vec<(usize, usize)>,
}

impl PacketBuf {
    /// Spare bytes after every packet.
    pub const ROOM: usize = 16;

    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes every packet, keeping the memory.
    pub fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
    }

    /// Keeps the first `n` packets (no-op if there are not more).
    pub fn truncate(&mut self, n: usize) {
        if let Some(&(start, _)) = self.spans.get(n) {
            self.data.truncate(start);
            self.spans.truncate(n);
        }
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there is no packet.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Packet `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn get(&self, i: usize) -> &[u8] {
        let (start, len) = self.spans[i];
        &self.data[start..start + len]
    }

    /// Packet `i` followed by its [`PacketBuf::ROOM`] spare bytes, and the packet's
    /// length: `&mut buf[..len]` is the packet.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn get_mut_with_room(&mut self, i: usize) -> (&mut [u8], usize) {
        let (start, len) = self.spans[i];
        (&mut self.data[start..start + len + Self::ROOM], len)
    }

    /// The packets, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|&(start, len)| self.data.get(start..start + len).unwrap_or_default())
    }

    /// Appends a copy of `packet`.
    pub fn push(&mut self, packet: &[u8]) {
        self.push_parts(&[packet]);
    }

    /// Lets `fill` write a packet of at most `max` bytes into room at the end, and
    /// keeps it when `fill` returns its length (`Some(n)`, `n ≤ max`); `None`
    /// appends nothing. Returns whether a packet was appended.
    pub fn push_with(&mut self, max: usize, fill: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        let start = self.data.len();
        self.data.resize(start + max, 0);
        match fill(&mut self.data[start..]) {
            Some(n) if n <= max => {
                self.data.truncate(start + n);
                self.finish(start);
                true
            }
            _ => {
                self.data.truncate(start);
                false
            }
        }
    }

    /// Appends the concatenation of `parts` as one packet and returns it.
    fn push_parts(&mut self, parts: &[&[u8]]) -> &mut [u8] {
        let start = self.data.len();
        for part in parts {
            self.data.extend_from_slice(part);
        }
        self.finish(start)
    }

    /// Where the next packet starts: bytes appended with [`Self::extend`] from here
    /// become one packet at [`Self::finish`].
    fn begin(&self) -> usize {
        self.data.len()
    }

    /// Appends bytes to the packet being built.
    fn extend(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    /// Ends the packet begun at `start`: records it, adds its room, returns it.
    fn finish(&mut self, start: usize) -> &mut [u8] {
        let end = self.data.len();
        self.spans.push((start, end - start));
        self.data.resize(end + Self::ROOM, 0);
        self.data.get_mut(start..end).unwrap_or_default()
    }
}

impl fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketBuf")
            .field("packets", &self.spans.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;

/// TCP flag bits (byte 13 of the header).
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// Offset of the checksum field in a TCP header.
const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum field in a UDP header.
const UDP_CSUM_OFFSET: usize = 6;

/// The big-endian `u16` at `at`, if inside `b`.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    match b.get(at..at.checked_add(2)?) {
        Some(&[x, y]) => Some(u16::from_be_bytes([x, y])),
        _ => None,
    }
}

/// The big-endian `u32` at `at`, if inside `b`.
fn be32(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at.checked_add(4)?) {
        Some(&[w, x, y, z]) => Some(u32::from_be_bytes([w, x, y, z])),
        _ => None,
    }
}

/// Writes `v` big-endian at `at`; nothing if that is not inside `b` (callers write
/// only inside headers they have validated).
fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(field) = at.checked_add(2).and_then(|end| b.get_mut(at..end)) {
        field.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes `v` big-endian at `at`; nothing if that is not inside `b`.
fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(field) = at.checked_add(4).and_then(|end| b.get_mut(at..end)) {
        field.copy_from_slice(&v.to_be_bytes());
    }
}
