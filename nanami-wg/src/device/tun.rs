//! The TUN device: opened by name (`/dev/net/tun`, `TUNSETIFF`; Linux only) or taken
//! as an fd (Android `VpnService`, Apple's utun, a test that opened it itself). On
//! Linux and Android packets are raw IP, without the packet-information header
//! (`IFF_NO_PI`); on Apple every packet carries utun's 4-byte address-family header,
//! stripped on read and added on write ([`super::tun_frame`]) with `readv`/`writev`.
//!
//! Offloads (Linux): a TUN opened by name is opened with `IFF_VNET_HDR`, so every
//! read and write carries a `virtio_net_hdr` before the packet
//! ([`super::offload::VnetHdr`]); [`Tun::set_offload`] then lets the kernel hand over
//! TSO/USO super-packets of up to 64 KiB and take coalesced ones
//! (`TUNSETOFFLOAD`). A TUN handed over as an fd has the header when it was opened
//! with the flag (`TUNGETIFF` tells; [`super::create_tun`]'s are).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::sys;
use super::tun_frame;

/// `struct ifreq` as `TUNSETIFF`/`TUNGETIFF` use it: a name and the flags, padded to
/// the kernel's 40 bytes.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Packets the kernel holds for the device to read (the TUN's `txqueuelen`).
///
/// A TUN pushes no back-pressure to the sender: when its queue is full the kernel
/// drops the packet, and TCP retransmits it. At the kernel's default of 500 one
/// TCP stream through the device (`bench/dataplane.sh`'s path) overflowed it
/// about 15,000 times in 10 s, every one a retransmission; at 2,000 there were
/// none, with one and with four streams, at the same throughput and the same
/// ping RTT under one stream's load (four streams: 14 ms against 11).
#[cfg(target_os = "linux")]
pub(crate) const TX_QUEUE_LEN: u32 = 2000;

/// Sets the `txqueuelen` of interface `name` (in the calling thread's namespace).
#[cfg(target_os = "linux")]
fn set_tx_queue_len(name: &str, len: u32) -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut req = IfReqInt {
        name: [0; libc::IFNAMSIZ],
        value: libc::c_int::try_from(len)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        _pad: [0; 20],
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: SIOCSIFTXQLEN reads the name and `ifr_qlen` from a `struct ifreq`;
    // `req` has its layout and size and lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFTXQLEN as _, &req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open TUN queue.
#[derive(Debug)]
pub(crate) struct Tun {
    fd: OwnedFd,
    name: Option<String>,
    /// Every read and write starts with a `virtio_net_hdr` (`IFF_VNET_HDR`).
    vnet_hdr: bool,
}

/// The offloads a TUN took ([`Tun::set_offload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TunOffload {
    /// TCP segmentation both ways (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`).
    pub(crate) tcp: bool,
    /// UDP segmentation both ways (`TUN_F_USO4 | TUN_F_USO6`, Linux 6.2 and later).
    pub(crate) udp: bool,
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name` in the calling thread's
    /// network namespace.
    #[cfg(target_os = "linux")]
    pub(crate) fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name must be 1 to 15 bytes",
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let fd: OwnedFd = file.into();
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout
        // and size and lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        sys::set_nonblocking(fd.as_raw_fd())?;
        // The header alone changes nothing until offloads are asked for: the kernel
        // then sends plain packets behind an all-zero header.
        let actual = name_of(&req);
        if let Err(e) = set_tx_queue_len(&actual, TX_QUEUE_LEN) {
            tracing::warn!(interface = %actual, error = %e, "cannot lengthen the TUN's queue; under load the kernel drops what the device has not read yet");
        }
        Ok(Self {
            fd,
            name: Some(actual),
            vnet_hdr: true,
        })
    }

    /// Takes over an already open TUN fd (on Apple a utun fd); its name is asked from
    /// the fd, and is `None` when the fd does not answer.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(fd.as_raw_fd())?;
        let req = if_req_of_fd(fd.as_raw_fd());
        let name = req.as_ref().map(|r| r.0.clone()).filter(|n| !n.is_empty());
        let vnet_hdr = req.is_some_and(|r| has_vnet_hdr(r.1));
        Ok(Self { fd, name, vnet_hdr })
    }

    /// Whether every read and write carries a `virtio_net_hdr`.
    pub(crate) fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Asks the kernel for TCP and UDP segmentation offloads (`on`), or for none.
    /// USO is asked for with TSO and dropped when the kernel refuses it (before 6.2).
    /// Only a TUN with the `virtio_net_hdr` has offloads: without it this is
    /// `Ok` with none.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn set_offload(&self, on: bool) -> io::Result<TunOffload> {
        if !self.vnet_hdr {
            return Ok(TunOffload::default());
        }
        let tcp = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let udp = libc::TUN_F_USO4 | libc::TUN_F_USO6;
        let attempts: &[(libc::c_uint, TunOffload)] = if on {
            &[
                (
                    tcp | udp,
                    TunOffload {
                        tcp: true,
                        udp: true,
                    },
                ),
                (
                    tcp,
                    TunOffload {
                        tcp: true,
                        udp: false,
                    },
                ),
            ]
        } else {
            &[(
                0,
                TunOffload {
                    tcp: false,
                    udp: false,
                },
            )]
        };
        let mut last = io::Error::from_raw_os_error(libc::EINVAL);
        for (flags, took) in attempts {
            // SAFETY: TUNSETOFFLOAD takes its flags as the ioctl's integer argument.
            let rc = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::TUNSETOFFLOAD as _,
                    *flags as libc::c_ulong,
                )
            };
            if rc == 0 {
                return Ok(*took);
            }
            last = io::Error::last_os_error();
        }
        Err(last)
    }

    /// No offloads off Linux.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn set_offload(&self, _on: bool) -> io::Result<TunOffload> {
        Ok(TunOffload::default())
    }

    /// Gives the fd up (for [`super::TunSource::Fd`] elsewhere).
    #[cfg(target_os = "linux")]
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub(crate) fn set_name(&mut self, name: String) {
        self.name = Some(name);
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one packet; `WouldBlock` when none is queued.
    #[cfg(not(any(target_os = "ios", target_os = "macos")))]
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one packet.
    #[cfg(not(any(target_os = "ios", target_os = "macos")))]
    pub(crate) fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of `packet.len()` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one plain packet: behind an all-zero `virtio_net_hdr` (no offload)
    /// when the TUN has the header, else as it is.
    #[cfg(not(any(target_os = "ios", target_os = "macos")))]
    pub(crate) fn write_packet(&self, packet: &[u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return self.write(packet);
        }
        write_after(
            self.fd.as_raw_fd(),
            &[0u8; super::offload::VNET_HDR_LEN],
            packet,
        )
    }

    /// Writes one plain packet (utun has no offloads).
    #[cfg(any(target_os = "ios", target_os = "macos"))]
    pub(crate) fn write_packet(&self, packet: &[u8]) -> io::Result<usize> {
        self.write(packet)
    }

    /// Reads one packet into `buf`, without utun's header; `WouldBlock` when none is
    /// queued, `InvalidData` for a frame without a whole IPv4/IPv6 header (the data
    /// plane drops and counts it).
    #[cfg(any(target_os = "ios", target_os = "macos"))]
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_framed(self.fd.as_raw_fd(), buf)
    }

    /// Writes one packet, after utun's header for its IP version; returns the
    /// packet's bytes written. `InvalidData` for a packet that is not IPv4/IPv6.
    #[cfg(any(target_os = "ios", target_os = "macos"))]
    pub(crate) fn write(&self, packet: &[u8]) -> io::Result<usize> {
        write_framed(self.fd.as_raw_fd(), packet)
    }
}

/// Reads one utun frame from `fd`: the header into a local, the packet straight into
/// `buf` (`readv`, no copy); returns the packet's length. `InvalidData` for a frame
/// without a whole header naming IPv4/IPv6; `UnexpectedEof` when the fd reads 0
/// bytes (utun never sends an empty frame: the other end is gone). Apple's TUN read;
/// compiled everywhere so the tests run it over a datagram socket pair.
#[cfg_attr(not(any(target_os = "ios", target_os = "macos")), allow(dead_code))]
fn read_framed(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut header = [0u8; tun_frame::HEADER_LEN];
    let iov = [
        libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        },
    ];
    // SAFETY: both iovecs point at valid, writable buffers of their lengths that live
    // across the call; 2 is the array's length.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    tun_frame::check_header(&header[..n.min(tun_frame::HEADER_LEN)])?;
    Ok(n - tun_frame::HEADER_LEN)
}

/// Writes `packet` to `fd` as one utun frame, after the header for its IP version
/// (`writev`, no copy); returns the packet's bytes written. `InvalidData` (and
/// nothing written) for a packet that is not IPv4/IPv6. Apple's TUN write; compiled
/// everywhere so the tests run it over a datagram socket pair.
#[cfg_attr(not(any(target_os = "ios", target_os = "macos")), allow(dead_code))]
fn write_framed(fd: RawFd, packet: &[u8]) -> io::Result<usize> {
    write_after(fd, &tun_frame::header_for(packet)?, packet)
}

/// Writes `header` then `packet` to `fd` as one frame (`writev`, no copy); returns
/// the packet's bytes written.
fn write_after(fd: RawFd, header: &[u8], packet: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        },
    ];
    // SAFETY: both iovecs point at valid buffers of their lengths that live across the
    // call, and writev only reads them; 2 is the array's length.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    Ok(n.saturating_sub(header.len()))
}

/// Whether `TUNGETIFF`'s flags have `IFF_VNET_HDR`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn has_vnet_hdr(flags: libc::c_int) -> bool {
    flags & libc::IFF_VNET_HDR != 0
}

/// No `virtio_net_hdr` off Linux.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn has_vnet_hdr(_flags: libc::c_int) -> bool {
    false
}

/// The interface name and flags of a TUN fd (`TUNGETIFF`). Failure is fine (not
/// every fd answers it): the name is then unknown and the fd has no offloads.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn if_req_of_fd(fd: RawFd) -> Option<(String, libc::c_int)> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF fills a `struct ifreq`; `req` has its layout and lives across
    // the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNGETIFF as _, &mut req) };
    (rc == 0).then(|| (name_of(&req), libc::c_int::from(req.flags) & 0xffff))
}

/// The interface name of a utun fd (`UTUN_OPT_IFNAME`, e.g. `utun3`), when the fd
/// answers; utun has no offload flags.
#[cfg(any(target_os = "ios", target_os = "macos"))]
fn if_req_of_fd(fd: RawFd) -> Option<(String, libc::c_int)> {
    // <sys/sys_domain.h> and <net/if_utun.h> (the `libc` crate has them for macOS
    // only; iOS's headers have the same values).
    const SYSPROTO_CONTROL: libc::c_int = 2;
    const UTUN_OPT_IFNAME: libc::c_int = 2;
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: UTUN_OPT_IFNAME writes at most `len` bytes into `name`; both live across
    // the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SYSPROTO_CONTROL,
            UTUN_OPT_IFNAME,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| (c_name(&name), 0))
}

/// Other systems: the name is unknown.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "ios",
    target_os = "macos"
)))]
fn if_req_of_fd(_fd: RawFd) -> Option<(String, libc::c_int)> {
    None
}

/// A NUL-terminated (or full) interface name.
fn c_name(name: &[u8]) -> String {
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn name_of(req: &IfReq) -> String {
    c_name(&req.name)
}

/// `struct ifreq` with an int in its union: `ifr_mtu` (`SIOCGIFMTU`), `ifr_qlen`
/// (`SIOCSIFTXQLEN`).
#[cfg(target_os = "linux")]
#[repr(C)]
struct IfReqInt {
    name: [u8; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// Reads an interface's MTU with `SIOCGIFMTU` on a socket made in the interface's
/// namespace (so it answers for that interface wherever it is asked from).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub(crate) struct MtuProbe {
    sock: OwnedFd,
    name: [u8; libc::IFNAMSIZ],
}

#[cfg(target_os = "linux")]
impl MtuProbe {
    /// A probe for `name` in the calling thread's network namespace.
    pub(crate) fn new(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let mut n = [0u8; libc::IFNAMSIZ];
        n[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self {
            sock: sock.into(),
            name: n,
        })
    }

    /// The MTU now, when the interface answers.
    pub(crate) fn mtu(&self) -> Option<usize> {
        let mut req = IfReqInt {
            name: self.name,
            value: 0,
            _pad: [0; 20],
        };
        // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into a `struct
        // ifreq`; `req` has its layout and size and lives across the call.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFMTU as _, &mut req) };
        (rc == 0).then(|| usize::try_from(req.value).ok()).flatten()
    }
}

/// Only a TUN opened by name (Linux) has an MTU probe: a TUN handed over as an fd may
/// be in any namespace, so padding is then uncapped. This type has no value.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub(crate) enum MtuProbe {}

#[cfg(not(target_os = "linux"))]
impl MtuProbe {
    /// Never called: there is no probe.
    pub(crate) fn mtu(&self) -> Option<usize> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::device::tun_frame::tests::{v6, V4};

    /// A datagram pair stands in for utun: one frame per datagram, as on Apple.
    fn pair() -> (UnixDatagram, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    #[test]
    fn writes_carry_the_header_of_their_ip_version() {
        let (dev, app) = pair();
        let mut frame = [0u8; 128];
        assert_eq!(
            write_framed(dev.as_raw_fd(), &V4).expect("writes"),
            V4.len()
        );
        let n = app.recv(&mut frame).expect("one frame");
        assert_eq!(frame[..4], [0x00, 0x00, 0x00, 0x02]);
        assert_eq!(frame[4..n], V4);

        let p = v6();
        assert_eq!(write_framed(dev.as_raw_fd(), &p).expect("writes"), p.len());
        let n = app.recv(&mut frame).expect("one frame");
        assert_eq!(frame[..4], [0x00, 0x00, 0x00, 0x1e]);
        assert_eq!(frame[4..n], p[..]);
    }

    #[test]
    fn a_packet_that_is_not_ip_is_refused_and_not_written() {
        let (dev, app) = pair();
        for packet in [&[][..], &[0x50, 1, 2][..]] {
            let err = write_framed(dev.as_raw_fd(), packet).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
        let mut frame = [0u8; 16];
        let nothing = app.recv(&mut frame).expect_err("nothing was sent");
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn reads_strip_the_header() {
        let (app, dev) = pair();
        let mut buf = [0u8; 128];
        for (header, packet) in [([0, 0, 0, 2], V4.to_vec()), ([0, 0, 0, 0x1e], v6())] {
            let mut frame = header.to_vec();
            frame.extend_from_slice(&packet);
            app.send(&frame).expect("sends");
            let n = read_framed(dev.as_raw_fd(), &mut buf).expect("reads");
            assert_eq!(buf[..n], packet[..]);
        }
        let err = read_framed(dev.as_raw_fd(), &mut buf).expect_err("nothing queued");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn short_frames_and_unknown_families_are_invalid_data_not_fatal() {
        let (app, dev) = pair();
        let mut buf = [0u8; 128];
        let mut linux_af_inet6 = vec![0, 0, 0, 10];
        linux_af_inet6.extend_from_slice(&v6());
        for frame in [&[0u8, 0][..], &[0, 0, 0][..], &linux_af_inet6[..]] {
            app.send(frame).expect("sends");
            let err = read_framed(dev.as_raw_fd(), &mut buf).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
        // The next good frame reads as usual.
        let mut frame = vec![0, 0, 0, 2];
        frame.extend_from_slice(&V4);
        app.send(&frame).expect("sends");
        let n = read_framed(dev.as_raw_fd(), &mut buf).expect("reads");
        assert_eq!(buf[..n], V4);
    }
}
