//! Validated identifiers and interface names.
//!
//! An id is 1 to 63 bytes of lower-case ASCII letters, digits and `-`, starting with a
//! letter or digit: safe in paths, URLs, interface names and log lines, so an id from
//! a document can never traverse a path or forge a log line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id accepted, in bytes (a DNS label's limit).
pub const MAX_ID_LEN: usize = 63;

/// Why an id or interface name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Empty text.
    #[error("must not be empty")]
    Empty,
    /// Longer than allowed.
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `a-z`, `0-9` and `-`, or a leading `-`.
    #[error("may hold only a-z, 0-9 and '-', and must start with a letter or digit")]
    Charset,
}

fn check_id(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            len: text.len(),
            max: MAX_ID_LEN,
        });
    }
    let ok = text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdError::Charset)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `text`.
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                check_id(&text)?;
                Ok(Self(text))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A region of the platform catalog, such as `eu-west`.
    RegionId
);
id_type!(
    /// A workspace (one tenant's space).
    WorkspaceId
);
id_type!(
    /// A network inside a workspace.
    NetworkId
);
id_type!(
    /// A node (a client or a gateway machine), unique in the whole document.
    NodeId
);
id_type!(
    /// A gateway, unique in the whole document.
    GatewayId
);

/// Linux's interface name limit (`IFNAMSIZ` minus the terminating NUL).
pub const IFNAME_MAX: usize = 15;

/// Prefix of every interface Nanami owns.
pub const OWNED_PREFIX: &str = "nm-";

/// A Linux network interface name: 1 to 15 bytes, no `/`, whitespace or `:`, not `.`
/// or `..`. It may name any interface; [`InterfaceName::is_owned`] says whether
/// Nanami owns it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Validates and wraps `text`.
    pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
        let text = text.into();
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > IFNAME_MAX {
            return Err(IdError::TooLong {
                len: text.len(),
                max: IFNAME_MAX,
            });
        }
        let bad = text
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
            || text == "."
            || text == "..";
        if bad {
            return Err(IdError::Charset);
        }
        Ok(Self(text))
    }

    /// The owned interface name for `short`: `nm-` + `short`.
    pub fn owned(short: &str) -> Result<Self, IdError> {
        Self::new(format!("{OWNED_PREFIX}{short}"))
    }

    /// Whether Nanami owns this interface (its name starts with `nm-`).
    pub fn is_owned(&self) -> bool {
        self.0.starts_with(OWNED_PREFIX)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for InterfaceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InterfaceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_traversal_and_unicode() {
        assert!(NodeId::new("laptop-1").is_ok());
        assert_eq!(NodeId::new("../etc"), Err(IdError::Charset));
        assert_eq!(NodeId::new("Laptop"), Err(IdError::Charset));
        assert_eq!(NodeId::new("-x"), Err(IdError::Charset));
        assert_eq!(NodeId::new("ノード"), Err(IdError::Charset));
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert!(matches!(
            NodeId::new("a".repeat(64)),
            Err(IdError::TooLong { len: 64, .. })
        ));
    }

    #[test]
    fn interface_names() {
        assert!(InterfaceName::owned("gw-a").unwrap().is_owned());
        assert!(!InterfaceName::new("eth0").unwrap().is_owned());
        assert!(InterfaceName::owned("abcdefghijklm").is_err());
        assert_eq!(InterfaceName::new("a/b"), Err(IdError::Charset));
    }
}
