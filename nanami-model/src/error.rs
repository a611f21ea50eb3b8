//! Whose move an error is: every error type of Nanami's crates says, with a
//! `kind()`, whether the input was wrong, the environment failed, or Nanami broke
//! an invariant of its own. Callers decide with it: refuse and explain bad input,
//! retry the environment with backoff, report a bug.
//!
//! ```
//! use nanami_model::{ErrorKind, NodeId, Topology};
//! let err = NodeId::new("Not An Id").unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::BadInput);
//! let err = Topology::from_yaml("version: 1\nregions: [").unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::BadInput);
//! ```

use serde::Serialize;

use crate::compile::CompileError;
use crate::doc::{ParseError, SerializeError};
use crate::explain::ExplainError;
use crate::id::IdError;
use crate::key::KeyError;
use crate::topology::TopologyError;
use crate::validate::ValidationErrors;

/// Whose move an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is wrong (a document, an id, a key, a request, a precondition):
    /// the same input fails the same way; fix it.
    BadInput,
    /// What Nanami runs on failed (the network, the kernel, a disk, a peer, the
    /// store, a missing tool): retrying later may succeed.
    Environment,
    /// Nanami broke an invariant of its own: report it.
    Bug,
}

impl ErrorKind {
    /// Whether retrying the same thing later may succeed.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Environment
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::BadInput => "bad input",
            ErrorKind::Environment => "environment",
            ErrorKind::Bug => "bug",
        })
    }
}

impl ParseError {
    /// Always [`ErrorKind::BadInput`]: the text.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl ValidationErrors {
    /// Always [`ErrorKind::BadInput`]: the document.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl TopologyError {
    /// Always [`ErrorKind::BadInput`]: the text or the document.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl SerializeError {
    /// Always [`ErrorKind::Bug`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Bug
    }
}

impl IdError {
    /// Always [`ErrorKind::BadInput`]: the id.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl KeyError {
    /// Always [`ErrorKind::BadInput`]: the key.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl CompileError {
    /// Always [`ErrorKind::BadInput`]: the node or gateway asked for is not one
    /// the topology places.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

impl ExplainError {
    /// Always [`ErrorKind::BadInput`]: the node or gateway asked about.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{Document, PublicKey};

    #[test]
    fn input_errors_are_bad_input_and_serialization_a_bug() {
        assert_eq!(
            "AAAA".parse::<PublicKey>().unwrap_err().kind(),
            ErrorKind::BadInput
        );
        assert_eq!(
            Document::from_json("{").unwrap_err().kind(),
            ErrorKind::BadInput
        );
        assert_eq!(SerializeError::new("x", "y").kind(), ErrorKind::Bug);
        assert!(ErrorKind::Environment.is_retryable());
        assert!(!ErrorKind::BadInput.is_retryable());
        assert_eq!(ErrorKind::Bug.to_string(), "bug");
    }
}
