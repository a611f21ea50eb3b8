//! The one error type of the FFI surface, mapped explicitly from the core's errors.
//!
//! Foreign code sees `NanamiException` (Kotlin) / `NanamiError` (Swift, Python), a
//! sealed family whose variants say whose fault it was: the input (`ConfigSyntax`,
//! `InvalidConfig`, `InvalidKey`, `InvalidTunFd`), the system (`PortInUse`,
//! `System`), or the caller's use of a stopped tunnel (`Stopped`). No core error
//! type crosses the boundary and there is no blanket `From`: each mapping below
//! names the variants it handles.

use nanami_model::ErrorKind;
use nanami_model::KeyError;
use nanami_wg::device::DeviceError;

/// Why a Nanami mobile call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum NanamiError {
    /// The wg-quick text is not in the form Nanami renders: `line` (1-based) says
    /// where. Fix the text; nothing was started or changed.
    #[error("line {line}: {reason}")]
    ConfigSyntax {
        /// 1-based line number in the text.
        line: u32,
        /// What is wrong there.
        reason: String,
    },
    /// The configuration parses but cannot be used (JSON that is not a Nanami
    /// client config, a peer listed twice, a private key that does not match the
    /// config, no private key at all). Nothing was started or changed.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A key is not a base64 WireGuard key (32 bytes).
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong.
        reason: String,
    },
    /// The descriptor is not an open TUN delivering raw IP packets (`IFF_NO_PI`).
    /// When the fd was open, the tunnel took it and has closed it.
    #[error("fd {fd} is not a usable TUN: {reason}")]
    InvalidTunFd {
        /// The descriptor that was passed.
        fd: i32,
        /// What the system said.
        reason: String,
    },
    /// The UDP port is taken. Use another `ListenPort`, or none (a free port).
    #[error("UDP port {port} is in use: {reason}")]
    PortInUse {
        /// The port that was asked for.
        port: u16,
        /// What the system said.
        reason: String,
    },
    /// The system refused something the tunnel needs (threads, sockets, a
    /// failed data-plane thread). Retrying may help; the message says what failed.
    #[error("system error: {reason}")]
    System {
        /// What failed.
        reason: String,
    },
    /// The tunnel has been stopped (by `stop()` or because its device failed);
    /// start a new one.
    #[error("the tunnel is stopped")]
    Stopped,
}

impl NanamiError {
    /// What the app passed is [`ErrorKind::BadInput`] (a configuration, a key, a
    /// TUN fd, a call on a stopped tunnel); the system's refusals are
    /// [`ErrorKind::Environment`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            NanamiError::ConfigSyntax { .. }
            | NanamiError::InvalidConfig { .. }
            | NanamiError::InvalidKey { .. }
            | NanamiError::InvalidTunFd { .. }
            | NanamiError::Stopped => ErrorKind::BadInput,
            NanamiError::PortInUse { .. } | NanamiError::System { .. } => ErrorKind::Environment,
        }
    }
}

impl NanamiError {
    pub(crate) fn invalid_config(reason: impl Into<String>) -> Self {
        NanamiError::InvalidConfig {
            reason: reason.into(),
        }
    }

    /// Maps a key parse error: always the caller's input.
    pub(crate) fn from_key(err: &KeyError) -> Self {
        NanamiError::InvalidKey {
            reason: err.to_string(),
        }
    }

    /// Maps a device error. `fd` is set while opening the TUN from a descriptor, so
    /// a TUN failure names it.
    pub(crate) fn from_device(err: &DeviceError, fd: Option<i32>) -> Self {
        match err {
            DeviceError::Tun { source, .. } => match fd {
                Some(fd) => NanamiError::InvalidTunFd {
                    fd,
                    reason: source.to_string(),
                },
                None => NanamiError::System {
                    reason: err.to_string(),
                },
            },
            DeviceError::Bind { port, source } => NanamiError::PortInUse {
                port: *port,
                reason: source.to_string(),
            },
            // The device checked the configuration this crate built from the
            // caller's config (and found it wanting).
            DeviceError::InvalidConfig(reason) | DeviceError::InvalidName(reason) => {
                NanamiError::InvalidConfig {
                    reason: reason.clone(),
                }
            }
            DeviceError::ShutDown => NanamiError::Stopped,
            DeviceError::Thread(_)
            | DeviceError::Io { .. }
            | DeviceError::Uapi { .. }
            | DeviceError::UapiInUse(_) => NanamiError::System {
                reason: err.to_string(),
            },
            // `DeviceError` is `#[non_exhaustive]`: a variant added later is reported
            // as a system error, with its message, until it gets its own mapping.
            #[allow(clippy::wildcard_enum_match_arm)]
            _ => NanamiError::System {
                reason: err.to_string(),
            },
        }
    }
}
