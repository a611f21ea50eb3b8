//! The TUN device: opened by name (`/dev/net/tun`, `TUNSETIFF`) or taken as an fd
//! (Android `VpnService`, a test that opened it itself). Packets are raw IP, without
//! the packet-information header (`IFF_NO_PI`).
//!
//! Seam for speed: multi-queue (`IFF_MULTI_QUEUE`, one fd per worker) and offload
//! (`IFF_VNET_HDR` + `TUNSETOFFLOAD`, then segmenting TSO super-packets) would be
//! added here; the loop only needs `read`/`write` of one packet.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::sys;

/// `struct ifreq` as `TUNSETIFF`/`TUNGETIFF` use it: a name and the flags, padded to
/// the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN queue.
#[derive(Debug)]
pub(crate) struct Tun {
    fd: OwnedFd,
    name: Option<String>,
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name` in the calling thread's
    /// network namespace.
    pub(crate) fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name must be 1 to 15 bytes",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let fd: OwnedFd = file.into();
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
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
        let actual = name_of(&req);
        Ok(Self {
            fd,
            name: Some(actual),
        })
    }

    /// Takes over an already open TUN fd.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(fd.as_raw_fd())?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF fills a `struct ifreq`; `req` has its layout. Failure is
        // fine (not every platform's fd answers it): the name is then unknown.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut req) };
        let name = (rc == 0).then(|| name_of(&req)).filter(|n| !n.is_empty());
        Ok(Self { fd, name })
    }

    /// Gives the fd up (for [`super::TunSource::Fd`] elsewhere).
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
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one packet.
    pub(crate) fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of `packet.len()` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

fn name_of(req: &IfReq) -> String {
    let end = req
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(req.name.len());
    String::from_utf8_lossy(&req.name[..end]).into_owned()
}

/// `struct ifreq` as `SIOCGIFMTU` uses it.
#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

/// Reads an interface's MTU with `SIOCGIFMTU` on a socket made in the interface's
/// namespace (so it answers for that interface wherever it is asked from).
#[derive(Debug)]
pub(crate) struct MtuProbe {
    sock: OwnedFd,
    name: [u8; libc::IFNAMSIZ],
}

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
        let mut req = IfReqMtu {
            name: self.name,
            mtu: 0,
            _pad: [0; 20],
        };
        // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into a `struct
        // ifreq`; `req` has its layout and size and lives across the call.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFMTU as _, &mut req) };
        (rc == 0).then(|| usize::try_from(req.mtu).ok()).flatten()
    }
}
