//! # nanami-control
//!
//! The gateway manager's logic without its wiring: who may do what
//! ([`authz`]), the object API's edits of the topology with their revisions
//! ([`object`]), what the audit trail records of each accepted write ([`audit`]),
//! and compiling only what a change can affect ([`incremental`]).
//!
//! Like `nanami-model`, nothing here performs I/O, reads a clock, draws randomness
//! or depends on hash order: time enters as a parameter (`now_ms`), and the same
//! inputs always give the same outputs. The manager binary is HTTP, SQLite and
//! locks around these functions.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod authz;
pub mod docs;
pub mod incremental;
pub mod movement;
pub mod object;
pub mod verdict;
pub mod write;

pub use audit::{AuditEntry, AuditObject};
pub use authz::{authorize, Action, Decision, Principal, Target};
pub use docs::Docs;
pub use incremental::{
    compile_changed, content_digest, gateways_in_scope, Compiled, GatewayRow, Scope, NO_TARGETS,
};
pub use object::{
    apply, current_revision, revision, Applied, Edit, EditError, ObjectKind, ObjectRef,
    Precondition, Touched,
};
pub use write::{follow_stored, handle_write, Prepared, StoredDocuments, WriteError};
