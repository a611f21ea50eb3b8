//! Network namespaces: the one place in the crate that creates, opens, enters and
//! deletes them.
//!
//! A named namespace follows the convention of `ip netns`: a file
//! `/run/netns/<name>` on which the namespace (`/proc/thread-self/ns/net` of a
//! thread that unshared it) is bind-mounted, and `/run/netns` itself a shared mount
//! so the name is visible from other mount namespaces. Nanami does this itself
//! rather than running `ip netns add`: no dependency on iproute2 at run time, no
//! process per operation, and failures keep their errno; the result is the same on
//! disk, so an operator's `ip netns exec nm-gw-a …`, `ip -n nm-gw-a …` and
//! `ip netns del` work on Nanami's namespaces.
//!
//! A thread enters a namespace with `setns(2)`; since that changes only the calling
//! thread, [`Netns::run`] runs a closure on a fresh, short-lived thread that entered
//! it, which is how sockets, TUN devices and `/proc/sys/net` files are created or
//! opened inside a namespace while the rest of the process stays where it is.
//! Threads spawned from inside such a closure inherit the namespace.

use nanami_model::ErrorKind;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Where named network namespaces are mounted (as `ip netns` does).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NSFS_MAGIC` in `linux/magic.h`: the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// What went wrong with a network namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The name cannot name a file in [`NETNS_RUN_DIR`] (empty, `.`/`..`, a `/` or
    /// a NUL, over 255 bytes): the caller's mistake.
    #[error("{name:?} is not a valid network namespace name")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A system call failed; `op` says which step. Usually a missing capability
    /// (`EPERM`: run as root / with CAP_SYS_ADMIN) or a file system that refuses
    /// mounts.
    #[error("network namespace {name}: {op}: {source}")]
    Io {
        /// The namespace.
        name: String,
        /// The step that failed.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// A bad name is [`ErrorKind::BadInput`]; the kernel's refusals are
    /// [`ErrorKind::Environment`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetnsError::InvalidName { .. } => ErrorKind::BadInput,
            NetnsError::Io { .. } => ErrorKind::Environment,
        }
    }
}

/// An open network namespace: a file descriptor that keeps it alive and lets
/// threads enter it. Named ones also live on in [`NETNS_RUN_DIR`] until
/// [`Netns::delete`].
#[derive(Debug)]
pub struct Netns {
    name: Option<String>,
    file: File,
}

fn io_error<'a>(name: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Io {
        name: name.to_owned(),
        op,
        source,
    }
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if valid {
        Ok(())
    } else {
        Err(NetnsError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Whether `file` is a namespace file (and not, say, the empty placeholder a crash
/// between creating and mounting leaves behind).
fn is_namespace(file: &File) -> io::Result<bool> {
    // SAFETY: statfs is plain data; zeroed is a valid value that fstatfs overwrites.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on an open fd, writing into a live statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as i64 == NSFS_MAGIC)
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (source, target) = (c_path(source)?, c_path(target)?);
    let none = c"none";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call;
    // no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes [`NETNS_RUN_DIR`] exist and be a shared mount, as `ip netns add` does, so a
/// namespace mounted in it is seen from every mount namespace.
fn prepare_run_dir() -> io::Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir)?;
    match mount(Path::new(""), dir, libc::MS_SHARED | libc::MS_REC) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then share it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mount(dir, dir, libc::MS_BIND | libc::MS_REC)?;
            mount(Path::new(""), dir, libc::MS_SHARED | libc::MS_REC)
        }
        Err(e) => Err(e),
    }
}

/// Runs `f` on a fresh thread that has entered the namespace `netns` (or stayed in
/// the caller's when `None`). The only `setns` in the crate.
pub(crate) fn run_in<R: Send>(
    netns: Option<BorrowedFd<'_>>,
    f: impl FnOnce() -> R + Send,
) -> io::Result<R> {
    let fd: Option<RawFd> = netns.map(|n| n.as_raw_fd());
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("nanami-netns".into())
            .spawn_scoped(s, move || {
                if let Some(fd) = fd {
                    // SAFETY: setns on a namespace fd the caller keeps open for the
                    // scope; it affects only this short-lived thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(f())
            })?;
        handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace helper thread panicked")))
    })
}

/// Makes the child of `cmd` enter `netns` (when given) before it execs: `nft` run
/// this way reads and writes that namespace's ruleset. The caller keeps `netns` open
/// until the child is spawned.
pub(crate) fn enter_before_exec(cmd: &mut tokio::process::Command, netns: Option<&Netns>) {
    let Some(netns) = netns else { return };
    let fd = netns.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setns(2), which is async-signal-safe; `fd` is open (the caller holds `netns`,
    // and close-on-exec only closes it at exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Netns {
    /// The file of the named namespace `name`.
    pub fn path(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// The calling thread's namespace (unnamed).
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            name: None,
            file: File::open("/proc/thread-self/ns/net")?,
        })
    }

    /// Opens the named namespace `name`; `None` when it does not exist.
    pub fn open(name: &str) -> Result<Option<Self>, NetnsError> {
        check_name(name)?;
        let file = match File::open(Self::path(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(name, "opening")(e)),
        };
        if !is_namespace(&file).map_err(io_error(name, "checking"))? {
            return Ok(None);
        }
        Ok(Some(Self {
            name: Some(name.to_owned()),
            file,
        }))
    }

    /// Opens the named namespace `name`, creating it first when it does not exist
    /// (`ip netns add <name>`): after a restart, the existing one is adopted with
    /// everything in it. A placeholder file a crash left unmounted is replaced.
    pub fn open_or_create(name: &str) -> Result<Self, NetnsError> {
        if let Some(ns) = Self::open(name)? {
            return Ok(ns);
        }
        prepare_run_dir().map_err(io_error(name, "preparing /run/netns"))?;
        let path = Self::path(name);
        // A leftover placeholder (not a namespace, or open() would have taken it).
        if path.exists() {
            let _ = Self::unmount(&path);
            std::fs::remove_file(&path).map_err(io_error(name, "removing a placeholder"))?;
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(io_error(name, "creating the mount point"))?;
        let mounted = run_in(None, || {
            // SAFETY: unshare(CLONE_NEWNET) moves only this helper thread into a
            // new namespace; nothing else is shared with it.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            mount(Path::new("/proc/thread-self/ns/net"), &path, libc::MS_BIND)
        })
        .and_then(|r| r);
        if let Err(e) = mounted {
            let _ = std::fs::remove_file(&path);
            return Err(io_error(name, "creating")(e));
        }
        Self::open(name)?.ok_or_else(|| {
            io_error(name, "opening after creation")(io::Error::from(io::ErrorKind::NotFound))
        })
    }

    fn unmount(path: &Path) -> io::Result<()> {
        let c = c_path(path)?;
        // SAFETY: a valid NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Deletes the named namespace `name` (`ip netns del <name>`); returns whether it
    /// existed. The namespace itself is freed once nothing holds it any more (open
    /// handles, processes and sockets inside); its interfaces go with it.
    pub fn delete(name: &str) -> Result<bool, NetnsError> {
        check_name(name)?;
        let path = Self::path(name);
        if !path.exists() {
            return Ok(false);
        }
        match Self::unmount(&path) {
            // EINVAL: not mounted (a placeholder); the file still goes.
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                return Err(io_error(name, "unmounting")(e));
            }
            _ => {}
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(name, "removing")(e)),
            _ => Ok(true),
        }
    }

    /// The name, for a named namespace.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Runs `f` on a fresh thread inside this namespace and returns what it returns;
    /// an error only when the thread could not be started, could not enter, or
    /// panicked.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        run_in(Some(self.file.as_fd()), f)
    }

    /// Whether `self` and `other` are the same namespace.
    pub fn same_as(&self, other: &Netns) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let (a, b) = (self.file.metadata()?, other.file.metadata()?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_files_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert!(
                matches!(Netns::open(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(Netns::path("nm-gw-a"), Path::new("/run/netns/nm-gw-a"));
    }

    #[test]
    fn the_current_namespace_is_itself() {
        let a = Netns::current().unwrap();
        let b = Netns::current().unwrap();
        assert!(a.same_as(&b).unwrap());
        let inside = a.run(|| Netns::current().map(|c| c.same_as(&a))).unwrap();
        assert!(inside.unwrap().unwrap());
    }
}
