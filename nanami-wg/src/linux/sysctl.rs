//! Forwarding sysctls: read, switched on, and restored on teardown from a record of
//! what the machine had before Nanami touched it.
//!
//! `/proc/sys/net` files belong to the network namespace of the thread that opens
//! them, so the `*_in` forms open them on a thread inside the given namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nanami_model::IpFamily;

use super::PlatformError;
use crate::netns::Netns;

/// The file that switches forwarding for `family` in the current network namespace.
pub fn path(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "/proc/sys/net/ipv4/ip_forward",
        IpFamily::V6 => "/proc/sys/net/ipv6/conf/all/forwarding",
    }
}

/// Whether forwarding is on for `family` in `netns` (the current namespace when
/// `None`).
pub fn read_in(netns: Option<&Netns>, family: IpFamily) -> Result<bool, PlatformError> {
    match netns {
        None => read(family),
        Some(ns) => ns.run(|| read(family)).map_err(|e| PlatformError::Sysctl {
            path: path(family).into(),
            message: format!("entering the namespace: {e}"),
        })?,
    }
}

fn write_in(netns: Option<&Netns>, family: IpFamily, on: bool) -> Result<(), PlatformError> {
    match netns {
        None => write(family, on),
        Some(ns) => ns
            .run(|| write(family, on))
            .map_err(|e| PlatformError::Sysctl {
                path: path(family).into(),
                message: format!("entering the namespace: {e}"),
            })?,
    }
}

/// Whether forwarding is on for `family`.
pub fn read(family: IpFamily) -> Result<bool, PlatformError> {
    let text = std::fs::read_to_string(path(family)).map_err(|e| PlatformError::Sysctl {
        path: path(family).into(),
        message: e.to_string(),
    })?;
    Ok(text.trim() != "0")
}

fn write(family: IpFamily, on: bool) -> Result<(), PlatformError> {
    std::fs::write(path(family), if on { "1\n" } else { "0\n" }).map_err(|e| {
        PlatformError::Sysctl {
            path: path(family).into(),
            message: e.to_string(),
        }
    })
}

/// Where the original values are recorded, so that a restarted daemon still
/// restores what the machine had before Nanami.
pub struct Record {
    file: PathBuf,
    netns: Option<Arc<Netns>>,
}

impl Record {
    /// The record in `state_dir`, for the current network namespace.
    pub fn new(state_dir: &Path) -> Self {
        Self::in_netns(state_dir, None)
    }

    /// The record in `state_dir`, for the sysctls of `netns` (the current namespace
    /// when `None`).
    pub fn in_netns(state_dir: &Path, netns: Option<Arc<Netns>>) -> Self {
        Self {
            file: state_dir.join("sysctl-originals.json"),
            netns,
        }
    }

    /// The recorded originals: none when there is no record; an error when the
    /// record cannot be read or parsed (it is then kept as it is: reading it as
    /// empty would record Nanami's own values as the originals and lose the
    /// machine's).
    fn load(&self) -> Result<BTreeMap<IpFamily, bool>, PlatformError> {
        let error = |message: String| PlatformError::Sysctl {
            path: self.file.clone(),
            message,
        };
        match std::fs::read_to_string(&self.file) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                error(format!(
                    "the record of original values is damaged ({e}); fix or remove it by hand"
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// Switches forwarding on for `family`, recording the original value first.
    pub fn enable(&self, family: IpFamily) -> Result<(), PlatformError> {
        let mut originals = self.load()?;
        if let std::collections::btree_map::Entry::Vacant(e) = originals.entry(family) {
            e.insert(read_in(self.netns.as_deref(), family)?);
            let text = serde_json::to_string(&originals).map_err(|e| PlatformError::Sysctl {
                path: self.file.clone(),
                message: format!("bug: cannot serialize the record: {e}"),
            })?;
            crate::files::write_atomic(&self.file, text.as_bytes()).map_err(|e| {
                PlatformError::Sysctl {
                    path: self.file.clone(),
                    message: e.to_string(),
                }
            })?;
        }
        write_in(self.netns.as_deref(), family, true)
    }

    /// Puts every recorded value back and forgets the record.
    pub fn restore(&self) -> Result<(), PlatformError> {
        for (family, on) in self.load()? {
            write_in(self.netns.as_deref(), family, on)?;
        }
        match std::fs::remove_file(&self.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PlatformError::Sysctl {
                path: self.file.clone(),
                message: e.to_string(),
            }),
            _ => Ok(()),
        }
    }
}
