//! Small system helpers: a wake pipe for stopping blocked threads, `poll`, and the
//! network namespace the device binds its sockets in (Linux's are
//! [`crate::netns`]'s; elsewhere there is none).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A pipe whose two ends are close-on-exec and non-blocking: `pipe2` in one call.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe whose two ends are close-on-exec and non-blocking.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_then_fcntl()
}

/// Apple has no `pipe2`: `pipe`, then `fcntl` on each end (the device does not fork
/// meanwhile). Compiled everywhere so the tests run it here.
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
fn pipe_then_fcntl() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe succeeded, so both fds are open and owned by nobody else; owning
    // them first closes them on the error paths below.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [read.as_raw_fd(), write.as_raw_fd()] {
        // SAFETY: F_SETFD on an fd we own; no memory is passed.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        set_nonblocking(fd)?;
    }
    Ok((read, write))
}

/// The network namespace the device's sockets are bound in.
#[cfg(target_os = "linux")]
pub(crate) use crate::netns::Netns;

/// Network namespaces are Linux's: elsewhere there is none to remember, and this
/// type has no value.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub(crate) enum Netns {}

#[cfg(not(target_os = "linux"))]
impl Netns {
    /// There is no namespace to open: always `Unsupported`.
    pub(crate) fn current() -> io::Result<Self> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(not(target_os = "linux"))]
impl std::os::fd::AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match *self {}
    }
}

/// Runs `f` inside the namespace `netns` (or where the caller is, when `None`).
#[cfg(target_os = "linux")]
pub(crate) fn run_in<R: Send>(
    netns: Option<BorrowedFd<'_>>,
    f: impl FnOnce() -> R + Send,
) -> io::Result<R> {
    crate::netns::run_in(netns, f)
}

/// Runs `f` where the caller is: without namespaces `netns` is always `None`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn run_in<R: Send>(
    _netns: Option<BorrowedFd<'_>>,
    f: impl FnOnce() -> R + Send,
) -> io::Result<R> {
    Ok(f())
}

/// A pipe whose read end becomes readable (for good) once [`WakePipe::wake`] is
/// called: every thread polling it returns.
#[derive(Debug)]
pub(crate) struct WakePipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl WakePipe {
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = nonblocking_pipe()?;
        Ok(Self { read, write })
    }

    /// Makes the read end readable. Idempotent.
    pub(crate) fn wake(&self) {
        let byte = [1u8];
        // SAFETY: writing one byte from a valid buffer to an fd we own. A full pipe
        // (EAGAIN) is fine: it is readable already.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), byte.as_ptr().cast(), 1) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// What [`wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The watched fd is readable (or has an error/hang-up to collect).
    Fd,
    /// A wake fd fired: stop.
    Woken,
    /// The timeout passed.
    Timeout,
}

/// Waits until `fd` is readable, one of `wake` fires, or `timeout` passes.
pub(crate) fn wait_readable(
    fd: Option<RawFd>,
    wake: &[RawFd],
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(1 + wake.len());
    if let Some(fd) = fd {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    for w in wake {
        fds.push(libc::pollfd {
            fd: *w,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    loop {
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Ok(Ready::Timeout);
        }
        let offset = usize::from(fd.is_some());
        if fds[offset..].iter().any(|p| p.revents != 0) {
            return Ok(Ready::Woken);
        }
        return Ok(Ready::Fd);
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd the caller owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(fd: RawFd) -> (libc::c_int, libc::c_int) {
        // SAFETY: F_GETFD/F_GETFL on an open fd; no memory is passed.
        unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        }
    }

    /// Both ways of making the wake pipe give the same flags, and waking works.
    #[test]
    fn both_pipes_are_cloexec_and_nonblocking() {
        for (read, write) in [
            nonblocking_pipe().expect("pipe"),
            pipe_then_fcntl().expect("pipe"),
        ] {
            for fd in [read.as_raw_fd(), write.as_raw_fd()] {
                let (fd_flags, fl_flags) = flags(fd);
                assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
                assert_ne!(fl_flags & libc::O_NONBLOCK, 0);
            }
        }
        let pipe = WakePipe::new().expect("pipe");
        let idle = wait_readable(None, &[pipe.fd()], Some(Duration::from_millis(1)));
        assert_eq!(idle.expect("polls"), Ready::Timeout);
        pipe.wake();
        pipe.wake();
        let woken = wait_readable(None, &[pipe.fd()], Some(Duration::from_secs(5)));
        assert_eq!(woken.expect("polls"), Ready::Woken);
    }
}
