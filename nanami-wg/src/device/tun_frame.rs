//! Apple's utun framing: every packet read from or written to a utun fd (macOS
//! `utunN`, iOS `NEPacketTunnelProvider`'s socket) starts with a 4-byte big-endian
//! address family, `AF_INET` (2) or Darwin's `AF_INET6` (30), before the raw IP.
//!
//! Pure functions, compiled and tested on every platform; the TUN uses them only on
//! Apple targets (`tun.rs`), with `readv`/`writev` so the packet is never copied.

// Off Apple only the tests use these; on Apple `strip` and `frame_into` are the
// tests' (the TUN frames with `readv`/`writev` around `check_header`/`header_for`).
#![cfg_attr(not(any(target_os = "ios", target_os = "macos")), allow(dead_code))]

use std::fmt;

/// Length of the address-family header.
pub(crate) const HEADER_LEN: usize = 4;

/// Darwin's `AF_INET` (the constant of the platform the frame comes from, not of the
/// one this is compiled for: Linux's `AF_INET6` is 10).
const DARWIN_AF_INET: u32 = 2;
/// Darwin's `AF_INET6`.
const DARWIN_AF_INET6: u32 = 30;

/// Why a frame or a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A frame shorter than its header (`usize` bytes).
    Short(usize),
    /// A header naming neither `AF_INET` nor `AF_INET6`.
    UnknownFamily(u32),
    /// A packet to write that is neither IPv4 nor IPv6 (its first byte's version
    /// nibble; `None` for an empty packet).
    NotIp(Option<u8>),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short(n) => write!(f, "utun frame of {n} bytes has no 4-byte header"),
            Self::UnknownFamily(af) => write!(f, "utun frame of unknown address family {af}"),
            Self::NotIp(None) => write!(f, "empty packet: no IP version for the utun header"),
            Self::NotIp(Some(v)) => write!(f, "packet of IP version {v}: not IPv4 or IPv6"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for std::io::Error {
    /// `InvalidData`: the data plane drops and counts the packet, and goes on.
    fn from(e: FrameError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// The header to write before `packet`, chosen from its IP version nibble.
pub(crate) fn header_for(packet: &[u8]) -> Result<[u8; HEADER_LEN], FrameError> {
    let first = packet.first().copied();
    let af = match first.map(|b| b >> 4) {
        Some(4) => DARWIN_AF_INET,
        Some(6) => DARWIN_AF_INET6,
        v => return Err(FrameError::NotIp(v)),
    };
    Ok(af.to_be_bytes())
}

/// Checks a header read before a packet: it must be whole and name IPv4 or IPv6.
pub(crate) fn check_header(header: &[u8]) -> Result<(), FrameError> {
    let Some(bytes) = header.get(..HEADER_LEN) else {
        return Err(FrameError::Short(header.len()));
    };
    let mut af = [0u8; HEADER_LEN];
    af.copy_from_slice(bytes);
    match u32::from_be_bytes(af) {
        DARWIN_AF_INET | DARWIN_AF_INET6 => Ok(()),
        other => Err(FrameError::UnknownFamily(other)),
    }
}

/// The packet inside a whole frame read from a utun fd.
#[cfg_attr(any(target_os = "ios", target_os = "macos"), allow(dead_code))]
pub(crate) fn strip(frame: &[u8]) -> Result<&[u8], FrameError> {
    check_header(frame)?;
    Ok(&frame[HEADER_LEN..])
}

/// Writes the frame of `packet` (header, then the packet) into `out`; returns its
/// length. `out` must hold `HEADER_LEN + packet.len()` bytes.
#[cfg_attr(any(target_os = "ios", target_os = "macos"), allow(dead_code))]
pub(crate) fn frame_into(packet: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let header = header_for(packet)?;
    let len = HEADER_LEN + packet.len();
    let Some(dst) = out.get_mut(..len) else {
        return Err(FrameError::Short(out.len()));
    };
    dst[..HEADER_LEN].copy_from_slice(&header);
    dst[HEADER_LEN..].copy_from_slice(packet);
    Ok(len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 header (version 4, IHL 5) and a few payload bytes.
    pub(crate) const V4: [u8; 24] = [
        0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 2, 3, 4,
    ];

    /// A minimal IPv6 header (version 6, next header UDP) and a few payload bytes.
    pub(crate) fn v6() -> Vec<u8> {
        let mut p = vec![0u8; 44];
        p[0] = 0x60;
        p[6] = 17;
        p[40..].copy_from_slice(&[5, 6, 7, 8]);
        p
    }

    fn round_trip(packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; HEADER_LEN + packet.len()];
        let n = frame_into(packet, &mut frame).expect("frames");
        assert_eq!(n, frame.len());
        strip(&frame).expect("strips").to_vec()
    }

    #[test]
    fn ipv4_round_trip_and_header_bytes() {
        assert_eq!(header_for(&V4), Ok([0, 0, 0, 2]));
        let mut frame = [0u8; HEADER_LEN + V4.len()];
        frame_into(&V4, &mut frame).expect("frames");
        assert_eq!(frame[..HEADER_LEN], [0x00, 0x00, 0x00, 0x02]);
        assert_eq!(frame[HEADER_LEN..], V4);
        assert_eq!(round_trip(&V4), V4);
    }

    #[test]
    fn ipv6_round_trip_and_header_bytes() {
        let p = v6();
        assert_eq!(header_for(&p), Ok([0, 0, 0, 0x1e]));
        let mut frame = vec![0u8; HEADER_LEN + p.len()];
        frame_into(&p, &mut frame).expect("frames");
        assert_eq!(frame[..HEADER_LEN], [0x00, 0x00, 0x00, 0x1e]);
        assert_eq!(round_trip(&p), p);
    }

    #[test]
    fn short_frames_are_refused() {
        for len in 0..HEADER_LEN {
            let frame = vec![0u8; len];
            assert_eq!(strip(&frame), Err(FrameError::Short(len)));
            assert_eq!(check_header(&frame), Err(FrameError::Short(len)));
        }
        // A header alone is a frame with an empty packet, which the device then
        // drops as not IP.
        assert_eq!(strip(&[0, 0, 0, 2]), Ok(&[][..]));
    }

    #[test]
    fn unknown_families_are_refused() {
        // Linux's AF_INET6 (10), AF_UNSPEC, a little-endian AF_INET, all ones.
        for (header, af) in [
            ([0, 0, 0, 10], 10),
            ([0, 0, 0, 0], 0),
            ([2, 0, 0, 0], 0x0200_0000),
            ([0xff; 4], u32::MAX),
        ] {
            let mut frame = header.to_vec();
            frame.extend_from_slice(&V4);
            assert_eq!(strip(&frame), Err(FrameError::UnknownFamily(af)));
        }
    }

    #[test]
    fn empty_and_non_ip_packets_get_no_header() {
        assert_eq!(header_for(&[]), Err(FrameError::NotIp(None)));
        assert_eq!(header_for(&[0x50, 0]), Err(FrameError::NotIp(Some(5))));
        let mut out = [0u8; 8];
        assert_eq!(frame_into(&[], &mut out), Err(FrameError::NotIp(None)));
    }

    #[test]
    fn a_too_small_output_is_refused() {
        let mut out = [0u8; HEADER_LEN + 3];
        assert_eq!(frame_into(&V4, &mut out), Err(FrameError::Short(out.len())));
    }

    #[test]
    fn errors_are_invalid_data() {
        let e = std::io::Error::from(FrameError::UnknownFamily(7));
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("unknown address family 7"));
    }
}
