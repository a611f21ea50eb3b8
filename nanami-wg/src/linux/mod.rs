//! The Linux platform: a [`Platform`](nanami_reconcile::Platform) that makes a real
//! machine match a [`GatewayState`](nanami_model::GatewayState).
//!
//! - WireGuard interfaces are Nanami devices ([`crate::device`]), driven through
//!   their typed API (their UAPI sockets are for people and `wg(8)`);
//! - addresses, link state, MTU, routes and rules go through rtnetlink
//!   ([`netlink`]); Nanami's routes and rules carry its protocol number and table;
//! - the filter and NAT set is the `inet nanami` nftables table, replaced in one
//!   transaction ([`nft`]);
//! - forwarding sysctls are switched on and restored on [`LinuxPlatform::teardown`]
//!   ([`sysctl`]);
//! - out-of-band changes arrive as events ([`events`]).
//!
//! A gateway without [`LinuxConfig::namespace`] does all of this in the network
//! namespace of the thread that created the platform (a dedicated machine). With a
//! [`Hosting`] it does all of it inside the gateway's own namespace `nm-<gateway
//! id>`, which the platform creates (or adopts after a restart) and deletes on
//! teardown: its rtnetlink and event sockets are opened there, `nft` runs there,
//! forwarding sysctls are those of the namespace, the TUN is created there, and only
//! the WireGuard UDP socket stays in the host namespace. See [`Hosting`].

pub mod events;
pub mod kernel;
pub mod netlink;
pub mod nft;
mod platform;
pub mod sysctl;

use nanami_model::ErrorKind;
use std::path::PathBuf;

pub use platform::{DeviceMode, Hosting, LinuxConfig, LinuxPlatform};

use crate::netns::{Netns, NetnsError};

/// What went wrong on the machine. Each variant keeps what the kernel or tool said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// A netlink request failed; `errno` is the kernel's (0 when not from the kernel).
    /// Usually a missing capability (`EPERM`: run with CAP_NET_ADMIN) or a resource
    /// that vanished during the pass (the next pass repairs it).
    #[error("netlink: {message} (errno {errno})")]
    Netlink {
        /// The kernel's errno, positive.
        errno: i32,
        /// What happened.
        message: String,
    },
    /// `nft` failed or its output could not be read; is the `nftables` package
    /// installed?
    #[error("nftables: {0}")]
    Nft(String),
    /// A sysctl could not be read or written.
    #[error("sysctl {path}: {message}")]
    Sysctl {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The WireGuard device failed.
    #[error("device {interface}: {source}")]
    Device {
        /// The interface.
        interface: String,
        /// The device's error.
        #[source]
        source: crate::device::DeviceError,
    },
    /// A detached device did not answer or refused a request on its UAPI socket.
    #[error("device {interface} (UAPI): {source}")]
    Uapi {
        /// The interface.
        interface: String,
        /// The client's error.
        #[source]
        source: crate::uapi_client::UapiClientError,
    },
    /// An op named an interface that has no link or device here; the next pass
    /// observes and plans again.
    #[error("no interface {0} on this machine")]
    NoInterface(String),
    /// The key file is missing, unreadable, readable by others, or malformed.
    #[error("key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The reconciler sent an op this platform does not know (a newer
    /// `nanami-reconcile` than this `nanami-wg`).
    #[error("unsupported op: {0}")]
    Unsupported(String),
    /// A network namespace could not be created, opened or deleted.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The hosting set-up cannot be done: the uplink is missing or cannot move, or
    /// the backend cannot run in a namespace. `message` says what to change.
    #[error("hosting in network namespace {namespace}: {message}")]
    Hosting {
        /// The gateway's namespace.
        namespace: String,
        /// What is wrong.
        message: String,
    },
    /// Another I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl PlatformError {
    /// The machine's refusals (netlink, nftables, sysctls, namespaces, hosting, a
    /// missing interface) are [`ErrorKind::Environment`]; a device's or a
    /// namespace's error says its own; a bad key file is
    /// [`ErrorKind::BadInput`]; an op the platform cannot do is a
    /// [`ErrorKind::Bug`] of the plan.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PlatformError::Device { source, .. } => source.kind(),
            PlatformError::Uapi { source, .. } => source.kind(),
            PlatformError::Netns(e) => e.kind(),
            PlatformError::KeyFile { .. } => ErrorKind::BadInput,
            PlatformError::Unsupported(_) => ErrorKind::Bug,
            PlatformError::Netlink { .. }
            | PlatformError::Nft(_)
            | PlatformError::Sysctl { .. }
            | PlatformError::NoInterface(_)
            | PlatformError::Hosting { .. }
            | PlatformError::Io { .. } => ErrorKind::Environment,
        }
    }
}

/// Runs `f` inside `netns` (on a helper thread that entered it and the caller's
/// tokio runtime, so sockets `f` registers are driven by that runtime), or right here
/// when `netns` is `None`.
pub(crate) fn in_netns<R: Send>(
    netns: Option<&Netns>,
    f: impl FnOnce() -> Result<R, PlatformError> + Send,
) -> Result<R, PlatformError> {
    let Some(ns) = netns else { return f() };
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| PlatformError::Io {
        context: "the Linux platform needs a tokio runtime".into(),
        source: std::io::Error::other(e),
    })?;
    ns.run(move || {
        let _entered = runtime.enter();
        f()
    })
    .map_err(|source| PlatformError::Io {
        context: format!(
            "entering network namespace {}",
            ns.name().unwrap_or("(unnamed)")
        ),
        source,
    })?
}

impl From<crate::keyfile::KeyFileError> for PlatformError {
    fn from(e: crate::keyfile::KeyFileError) -> Self {
        PlatformError::KeyFile {
            path: e.path,
            message: e.message,
        }
    }
}
