//! Errors of the device and of its UAPI parser.

use nanami_model::ErrorKind;
use std::io;
use std::path::PathBuf;

/// Why a device operation failed.
///
/// Variants separate what the caller's input got wrong ([`DeviceError::InvalidConfig`],
/// [`DeviceError::InvalidName`]), what the system refused (`Tun`, `Bind`, `Uapi`, …)
/// and misuse ([`DeviceError::ShutDown`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The interface name cannot name a Linux interface (empty, over 15 bytes, or with
    /// `/`, `:`, whitespace or control characters). Pick another name.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// Opening or configuring the TUN device failed. The process needs
    /// `CAP_NET_ADMIN` and `/dev/net/tun`; an fd must be a TUN opened without packet
    /// information (`IFF_NO_PI`).
    #[error("TUN device {name:?}: {source}")]
    Tun {
        /// The interface name, or `<fd>` when the TUN was handed over as a descriptor.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Binding the UDP socket failed; usually the port is taken. Choose another port
    /// (0 picks a free one).
    #[error("binding UDP port {port}: {source}")]
    Bind {
        /// The port that was asked for.
        port: u16,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Creating the UAPI socket failed. Check that the directory is writable.
    #[error("UAPI socket {path}: {source}")]
    Uapi {
        /// The socket's path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Another live process answers on this interface's UAPI socket: a device of that
    /// name already runs. Stop it or pick another name.
    #[error("UAPI socket {0} is served by another process")]
    UapiInUse(PathBuf),
    /// The requested configuration is invalid; nothing of it was applied.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A worker thread could not be started (resource exhaustion).
    #[error("spawning a device thread: {0}")]
    Thread(#[source] io::Error),
    /// Another system call failed; `op` names it.
    #[error("{op}: {source}")]
    Io {
        /// What the device was doing.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The device has been shut down; create a new one.
    #[error("the device is shut down")]
    ShutDown,
}

impl DeviceError {
    /// A bad name or configuration is [`ErrorKind::BadInput`]; the kernel's and
    /// the sockets' refusals, and a device shut down meanwhile, are
    /// [`ErrorKind::Environment`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeviceError::InvalidName(_) | DeviceError::InvalidConfig(_) => ErrorKind::BadInput,
            DeviceError::Tun { .. }
            | DeviceError::Bind { .. }
            | DeviceError::Uapi { .. }
            | DeviceError::UapiInUse(_)
            | DeviceError::Thread(_)
            | DeviceError::Io { .. }
            | DeviceError::ShutDown => ErrorKind::Environment,
        }
    }
}

impl DeviceError {
    /// The errno the UAPI protocol reports for this error.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            DeviceError::InvalidName(_) | DeviceError::InvalidConfig(_) => libc::EINVAL,
            DeviceError::Bind { .. } => libc::EADDRINUSE,
            DeviceError::ShutDown => libc::ENODEV,
            DeviceError::Tun { .. }
            | DeviceError::Uapi { .. }
            | DeviceError::UapiInUse(_)
            | DeviceError::Thread(_)
            | DeviceError::Io { .. } => libc::EIO,
        }
    }
}

/// Why a UAPI request was refused. The request is untrusted input: none of it is
/// applied when it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UapiError {
    /// A line is longer than the protocol ever needs; the connection is closed.
    #[error("line {line} is longer than {max} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// The request is larger than the limit; the connection is closed.
    #[error("request larger than {max} bytes")]
    RequestTooLarge {
        /// The limit.
        max: usize,
    },
    /// The connection ended before the empty line that closes a request.
    #[error("request not terminated by an empty line")]
    Truncated,
    /// The first line is neither `get=1` nor `set=1`.
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    /// A line is not valid UTF-8 or has no `=`.
    #[error("line {line}: not a key=value line")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A key this implementation does not know (or one not allowed where it stands).
    #[error("line {line}: unexpected key {key:?}")]
    UnexpectedKey {
        /// 1-based line number.
        line: usize,
        /// The key, truncated to 64 bytes.
        key: String,
    },
    /// A known key with a value that does not parse or is out of range.
    #[error("line {line}: invalid value for {key}: {reason}")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

impl UapiError {
    /// Always [`ErrorKind::BadInput`]: the UAPI request.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl UapiError {
    /// The errno the protocol reports: `EPROTO` for framing, `EINVAL` for content.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            UapiError::LineTooLong { .. }
            | UapiError::RequestTooLarge { .. }
            | UapiError::Truncated
            | UapiError::UnknownOperation(_)
            | UapiError::Malformed { .. } => libc::EPROTO,
            UapiError::UnexpectedKey { .. } | UapiError::InvalidValue { .. } => libc::EINVAL,
        }
    }
}
