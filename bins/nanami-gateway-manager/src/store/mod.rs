//! Persistence behind the [`Store`] trait: [`SqliteStore`] is the embedded default
//! (one manager), [`PgStore`] a PostgreSQL database shared by any number of
//! managers.
//!
//! Every write that must be atomic is one method, and so one transaction. The
//! managers sharing a store keep their state in step through the store's *change
//! sequence*: every write of the served state ([`Store::put_topology`],
//! [`Store::put_health`]) names the sequence its writer's state is at and is
//! refused with [`StoreError::Stale`] if another manager wrote first; the rows it
//! writes carry the new sequence, so [`Store::changes`] returns exactly what a
//! manager has not seen. A shared store also tells every manager when the sequence
//! moves ([`Store::subscribe`]).

use nanami_model::ErrorKind;
use std::collections::{BTreeMap, BTreeSet};

use nanami_api::wire::Subject;
use nanami_model::{GatewayId, NetworkId, NodeId, PublicKey, WorkspaceId};
use tokio::sync::watch;

mod postgres;
mod sqlite;

pub use nanami_control::{AuditEntry, GatewayRow, Principal, NO_TARGETS};
pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite database failed (disk full, corrupt file, locked past the busy
    /// timeout).
    #[error("store: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database server failed or cannot be reached (retry later).
    #[error("store: {0}")]
    Unavailable(String),
    /// The database file could not be created or protected.
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    /// A stored row does not parse (written by a newer or broken version).
    #[error("store: bad row in {table}: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Another manager changed the served state first: the write expected change
    /// sequence `expected`, the store is at `current`. Nothing was written; catch up
    /// ([`Store::changes`]) and decide again.
    #[error("store: another manager wrote first (expected change {expected}, store at {current})")]
    Stale {
        /// The sequence the write was decided at.
        expected: u64,
        /// The store's sequence.
        current: u64,
    },
    /// The database's schema is newer than this binary knows: it was migrated by
    /// a newer manager. Nothing was changed.
    #[error("store: schema version {found} is newer than this manager knows ({known}); upgrade the manager")]
    SchemaTooNew {
        /// The database's version.
        found: u32,
        /// The newest this binary knows.
        known: u32,
    },
    /// The store's address or options are wrong (bad input, not the database).
    #[error("store: {0}")]
    Config(String),
}

impl StoreError {
    /// A bad store URL or setting is [`ErrorKind::BadInput`]; everything else is
    /// the database's, the disk's or another manager's
    /// ([`ErrorKind::Environment`]: retry, or for a corrupt or newer store, act).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Config(_) => ErrorKind::BadInput,
            StoreError::Db(_)
            | StoreError::Unavailable(_)
            | StoreError::Io(_)
            | StoreError::Corrupt { .. }
            | StoreError::Stale { .. }
            | StoreError::SchemaTooNew { .. } => ErrorKind::Environment,
        }
    }
}

/// A SHA-256 digest of a credential or token.
pub type Digest = [u8; 32];

/// The topology as stored: one row per workspace, so that a change to one
/// workspace writes that workspace alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredTopology {
    /// Bumped by every change.
    pub revision: u64,
    /// The region catalog (JSON list of regions).
    pub catalog: String,
    /// Each workspace's document (JSON), by id.
    pub workspaces: Vec<(String, String)>,
}

/// The health verdicts in force, as stored with every served change.
pub use nanami_model::Health as StoredHealth;

/// Everything the manager loads at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The store's change sequence this snapshot is at.
    pub seq: u64,
    /// The topology in force: its revision, catalog and workspace documents.
    pub topology: Option<StoredTopology>,
    /// Gateways' generations and states.
    pub gateways: BTreeMap<GatewayId, GatewayRow>,
    /// Gateways last known offline.
    pub offline: BTreeSet<GatewayId>,
    /// The last observed report of each gateway: (received Unix ms, report JSON).
    pub observed: BTreeMap<GatewayId, (u64, String)>,
    /// Where [`Store::observed_since`] goes on from.
    pub observed_cursor: u64,
    /// Enrolled gateway keys.
    pub gateway_keys: BTreeMap<GatewayId, PublicKey>,
}

/// What changed in a store since a change sequence (written by another manager).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The store's sequence now.
    pub seq: u64,
    /// The topology, when it changed: its revision and catalog, the ids of every
    /// workspace, and the documents of those written since.
    pub topology: Option<TopologyChanges>,
    /// Gateway rows written since.
    pub gateways: BTreeMap<GatewayId, GatewayRow>,
    /// The verdicts in force.
    pub health: StoredHealth,
}

/// The topology part of [`Changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyChanges {
    /// The topology's revision.
    pub revision: u64,
    /// The region catalog (JSON).
    pub catalog: String,
    /// Every workspace in force (the others were deleted).
    pub ids: BTreeSet<String>,
    /// Workspace documents written since (JSON), by id.
    pub written: Vec<(String, String)>,
}

/// One stored report, as [`Store::observed_since`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRow {
    /// Its place in the store's report sequence.
    pub seq: u64,
    /// The reporting gateway.
    pub gateway: GatewayId,
    /// When the manager that took it received it (Unix ms).
    pub received_unix_ms: u64,
    /// The report (JSON).
    pub report: String,
}

/// How redeeming an enrolment token ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The token was valid and unused; it is now used and the credential stored.
    Enrolled(Subject),
    /// Unknown, expired or already used.
    Refused,
}

/// The store's position after a committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The topology revision in force.
    pub revision: u64,
    /// The store's change sequence.
    pub seq: u64,
}

/// What `migrate` and `check` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The schema version of the database.
    pub version: u32,
    /// The newest version this binary knows.
    pub known: u32,
    /// The store's change sequence.
    pub seq: u64,
    /// The topology revision in force (0: none yet).
    pub revision: u64,
}

/// The manager's persistence. Each method is atomic.
pub trait Store: Send + Sync {
    /// Loads everything the manager keeps in memory.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Stores a topology change (its catalog and workspace rows, a new revision
    /// when it changed anything) together with the gateways whose generation
    /// changed, the verdicts in force, the write's audit entry (only when the
    /// topology changed) and the credentials it revokes, in one transaction, if the
    /// store is still at `write.expected_seq` ([`StoreError::Stale`] otherwise).
    fn put_topology(&self, write: &TopologyWrite<'_>) -> Result<Committed, StoreError>;

    /// Stores new generations and the verdicts in force (a health change), if the
    /// store is still at `expected_seq`. Returns the new sequence.
    fn put_health(
        &self,
        expected_seq: u64,
        health: &StoredHealth,
        changed: &BTreeMap<GatewayId, GatewayRow>,
    ) -> Result<u64, StoreError>;

    /// What changed since sequence `since` (`None`: nothing).
    fn changes(&self, since: u64) -> Result<Option<Changes>, StoreError>;

    /// Stores a workspace credential's digest (several may exist per workspace)
    /// and its audit entry, in one transaction.
    fn add_workspace_credential(
        &self,
        workspace: &WorkspaceId,
        digest: &Digest,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// The audit trail after entry `after`, oldest first, at most `limit`
    /// entries; only those of `workspace` when it is given.
    fn audit(
        &self,
        after: u64,
        limit: u32,
        workspace: Option<&WorkspaceId>,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Stores a gateway's latest observed report.
    fn put_observed(
        &self,
        gateway: &GatewayId,
        now_ms: u64,
        report: &str,
    ) -> Result<(), StoreError>;

    /// Reports stored after `cursor` (by any manager), oldest first, at most
    /// `limit`: how managers sharing a store hear every gateway's heartbeat.
    fn observed_since(&self, cursor: u64, limit: u32) -> Result<Vec<ObservedRow>, StoreError>;

    /// Takes or renews the lease `name` for `holder` for `ttl_ms` if it is free,
    /// expired or already `holder`'s. Returns whether `holder` holds it now. The
    /// store's clock judges expiry, so managers' clocks need not agree.
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Stores an enrolment token's digest.
    fn add_token(
        &self,
        digest: &Digest,
        subject: &Subject,
        expires_at: u64,
    ) -> Result<(), StoreError>;

    /// Who an unused, unexpired token is for, without spending it (`None`: unknown,
    /// expired or used). Lets the caller check the subject and key before anything
    /// is spent or revoked.
    fn token_subject(&self, token: &Digest, now: u64) -> Result<Option<Subject>, StoreError>;

    /// Atomically: marks the token used if it is unused, unexpired and for
    /// `subject`, then replaces the subject's credential with `credential`,
    /// recording `key`. Anything else changes nothing and is [`Redeemed::Refused`].
    fn redeem_token(
        &self,
        token: &Digest,
        now: u64,
        subject: &Subject,
        key: &PublicKey,
        credential: &Digest,
    ) -> Result<Redeemed, StoreError>;

    /// Deletes tokens that expired or were used before `before` (Unix seconds).
    /// Returns how many.
    fn expire_tokens(&self, before: u64) -> Result<u64, StoreError>;

    /// Replaces the control or operator credential.
    fn set_api_credential(&self, principal: &Principal, digest: &Digest) -> Result<(), StoreError>;

    /// Who `digest` belongs to (the caller compares in constant time too).
    fn principal(&self, digest: &Digest) -> Result<Option<(Principal, Digest)>, StoreError>;

    /// The schema and position of the store.
    fn status(&self) -> Result<SchemaStatus, StoreError>;

    /// Whether other managers may write this store too: then nothing is served
    /// before it is stored, heartbeats are read back from the store, and the work
    /// done once (health verdicts) needs the lease.
    fn shared(&self) -> bool;

    /// A channel that changes when another writer may have moved the change
    /// sequence (`None`: no other writer can).
    fn subscribe(&self) -> Option<watch::Receiver<u64>>;
}

/// One accepted topology change, as [`Store::put_topology`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct TopologyWrite<'a> {
    /// The change sequence the write was decided at.
    pub expected_seq: u64,
    /// Whether the topology changed (its revision is bumped, the audit entry
    /// stored); a write that changed nothing still stores `changed` rows.
    pub topology_changed: bool,
    /// The region catalog (JSON), when it changed.
    pub catalog: Option<&'a str>,
    /// Workspace documents written (JSON) or deleted (`None`), by id.
    pub workspaces: &'a [(String, Option<String>)],
    /// Every workspace row not in `workspaces` is deleted (an import).
    pub replace_all: bool,
    /// When (Unix milliseconds).
    pub now_ms: u64,
    /// Gateways whose generation changed (and rows not stored yet).
    pub changed: &'a BTreeMap<GatewayId, GatewayRow>,
    /// The verdicts in force after the change.
    pub health: &'a StoredHealth,
    /// Its audit entry, stored when the document changed (its `seq` is assigned).
    pub audit: Option<&'a AuditEntry>,
    /// Credentials that stop working with this change (a revoked node's, a deleted
    /// workspace's).
    pub revoke: &'a [Principal],
}

fn subject_parts(subject: &Subject) -> (&'static str, &str) {
    match subject {
        Subject::Gateway(g) => ("gateway", g.as_str()),
        Subject::Node(n) => ("node", n.as_str()),
    }
}

fn parse_subject(kind: &str, id: String) -> Result<Subject, StoreError> {
    match kind {
        "gateway" => Ok(Subject::Gateway(
            GatewayId::new(id).map_err(|e| corrupt("enrolment_tokens", e))?,
        )),
        "node" => Ok(Subject::Node(
            NodeId::new(id).map_err(|e| corrupt("enrolment_tokens", e))?,
        )),
        other => Err(corrupt("enrolment_tokens", format!("kind {other:?}"))),
    }
}

/// The credential row of a principal that can be revoked: (kind, subject).
fn revocable(principal: &Principal) -> Option<(&'static str, &str)> {
    match principal {
        Principal::Workspace(ws) => Some(("workspace", ws.as_str())),
        Principal::Node(n) => Some(("node", n.as_str())),
        Principal::Gateway(g) => Some(("gateway", g.as_str())),
        Principal::Platform | Principal::Operator => None,
    }
}

/// The credential kind of the control or operator credential.
fn api_kind(principal: &Principal) -> Result<&'static str, StoreError> {
    match principal {
        Principal::Platform => Ok("control"),
        Principal::Operator => Ok("operator"),
        Principal::Workspace(_) | Principal::Gateway(_) | Principal::Node(_) => Err(
            StoreError::Config("only control/operator credentials are set directly".to_owned()),
        ),
    }
}

/// A credential row as a principal.
fn principal_of(
    stored: Vec<u8>,
    kind: &str,
    subject: String,
) -> Result<(Principal, Digest), StoreError> {
    let stored: Digest = stored
        .try_into()
        .map_err(|_| corrupt("credentials", "digest is not 32 bytes"))?;
    let principal = match kind {
        "control" => Principal::Platform,
        "operator" => Principal::Operator,
        "workspace" => {
            Principal::Workspace(WorkspaceId::new(subject).map_err(|e| corrupt("credentials", e))?)
        }
        "gateway" => {
            Principal::Gateway(GatewayId::new(subject).map_err(|e| corrupt("credentials", e))?)
        }
        "node" => Principal::Node(NodeId::new(subject).map_err(|e| corrupt("credentials", e))?),
        other => return Err(corrupt("credentials", format!("kind {other:?}"))),
    };
    Ok((principal, stored))
}

fn gateway_id(table: &'static str, id: String) -> Result<GatewayId, StoreError> {
    GatewayId::new(id).map_err(|e| corrupt(table, e))
}

fn unhealthy_pair(gateway: String, network: String) -> Result<(GatewayId, NetworkId), StoreError> {
    Ok((
        gateway_id("unhealthy_paths", gateway)?,
        NetworkId::new(network).map_err(|e| corrupt("unhealthy_paths", e))?,
    ))
}

fn corrupt(table: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        message: message.to_string(),
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
