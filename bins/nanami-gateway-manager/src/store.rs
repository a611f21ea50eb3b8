//! Persistence behind the [`Store`] trait; [`SqliteStore`] is the embedded default.
//!
//! Every write that must be atomic is one method, so another implementation (a
//! server database) only has to make each method one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use nanami_api::wire::Subject;
use nanami_model::{GatewayId, NodeId, PublicKey, WorkspaceId};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (disk full, corrupt file, locked past the busy timeout).
    #[error("store: {0}")]
    Db(#[from] rusqlite::Error),
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
}

/// A SHA-256 digest of a credential or token.
pub type Digest = [u8; 32];

pub use nanami_control::{AuditEntry, GatewayRow, Principal, NO_TARGETS};

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

/// Everything the manager loads at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The topology in force: its revision, catalog and workspace documents.
    pub topology: Option<StoredTopology>,
    /// Gateways' generations and states.
    pub gateways: BTreeMap<GatewayId, GatewayRow>,
    /// Gateways last known offline.
    pub offline: BTreeSet<GatewayId>,
    /// The last observed report of each gateway: (received Unix ms, report JSON).
    pub observed: BTreeMap<GatewayId, (u64, String)>,
    /// Enrolled gateway keys.
    pub gateway_keys: BTreeMap<GatewayId, PublicKey>,
}

/// How redeeming an enrolment token ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The token was valid and unused; it is now used and the credential stored.
    Enrolled(Subject),
    /// Unknown, expired or already used.
    Refused,
}

/// The manager's persistence. Each method is atomic.
pub trait Store: Send + Sync {
    /// Loads everything the manager keeps in memory.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Stores a topology change (its catalog and workspace rows, a new revision
    /// when it changed anything) together with the gateways whose generation
    /// changed, the write's audit entry (only when the topology changed) and the
    /// credentials it revokes, in one transaction. Returns the revision in force.
    fn put_topology(&self, write: &TopologyWrite<'_>) -> Result<u64, StoreError>;

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

    /// Stores new generations and the offline set (a health change), atomically.
    fn put_health(
        &self,
        offline: &BTreeSet<GatewayId>,
        changed: &BTreeMap<GatewayId, GatewayRow>,
    ) -> Result<(), StoreError>;

    /// Stores a gateway's latest observed report.
    fn put_observed(
        &self,
        gateway: &GatewayId,
        now_ms: u64,
        report: &str,
    ) -> Result<(), StoreError>;

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

    /// Replaces the control or operator credential.
    fn set_api_credential(&self, principal: &Principal, digest: &Digest) -> Result<(), StoreError>;

    /// Who `digest` belongs to (the caller compares in constant time too).
    fn principal(&self, digest: &Digest) -> Result<Option<(Principal, Digest)>, StoreError>;
}

/// One accepted topology change, as [`Store::put_topology`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct TopologyWrite<'a> {
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
    /// Its audit entry, stored when the document changed (its `seq` is assigned).
    pub audit: Option<&'a AuditEntry>,
    /// Credentials that stop working with this change (a revoked node's, a deleted
    /// workspace's).
    pub revoke: &'a [Principal],
}

/// The embedded store: one SQLite file in WAL mode.
///
/// `synchronous = NORMAL` in WAL mode keeps every committed transaction across a
/// process crash or restart (what "restart loses nothing" needs); only a power loss
/// can drop the newest commits, never corrupt the file.
pub struct SqliteStore {
    /// The one writing connection (writes are serialized by SQLite anyway).
    conn: Mutex<Connection>,
    /// A second connection for the reads on every request's path (credentials,
    /// tokens): in WAL mode it is never blocked by a long write transaction.
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topology_revisions (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    document TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS topology_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    catalog TEXT NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workspace_docs (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    health_targets TEXT NOT NULL DEFAULT '{}',
    uplink TEXT
);
CREATE TABLE IF NOT EXISTS health (
    gateway TEXT PRIMARY KEY,
    offline INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS observed (
    gateway TEXT PRIMARY KEY,
    received_unix_ms INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    digest BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS credentials (
    digest BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    public_key TEXT
);
CREATE INDEX IF NOT EXISTS credentials_subject ON credentials (kind, subject);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_ms INTEGER NOT NULL,
    credential_id TEXT NOT NULL,
    credential_kind TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    workspace TEXT,
    object_id TEXT NOT NULL,
    old_revision TEXT,
    new_revision TEXT,
    diff TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_workspace ON audit (workspace, seq);
";

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

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`. The database and its
    /// WAL and shared-memory files are private to the manager's user (0600)
    /// whatever the umask: they hold credential digests and every gateway's state.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // Databases from before health targets: add the column (rows get "{}", what
        // their generations were served with).
        let has_targets: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('gateways') WHERE name = 'health_targets'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_targets {
            conn.execute_batch(
                "ALTER TABLE gateways ADD COLUMN health_targets TEXT NOT NULL DEFAULT '{}'",
            )?;
        }
        // Databases from before hosting: gateways were not hosted.
        let has_uplink: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('gateways') WHERE name = 'uplink'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_uplink {
            conn.execute_batch("ALTER TABLE gateways ADD COLUMN uplink TEXT")?;
        }
        migrate_whole_documents(&mut conn)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        // SQLite gives the WAL and shared-memory files the database file's mode;
        // files left by an older version are tightened here.
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            restrict(Path::new(&file))?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll
        // back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates `path` as an empty 0600 file if it does not exist (SQLite would create
/// it with the umask's mode).
/// Databases from before per-workspace rows kept whole documents in
/// `topology_revisions`: the newest becomes the catalog and workspace rows (at its
/// revision), once, and the old rows are removed.
fn migrate_whole_documents(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let migrated: bool = tx.query_row("SELECT count(*) FROM topology_meta", [], |r| {
        r.get::<_, i64>(0).map(|n| n > 0)
    })?;
    let newest: Option<(i64, String)> = tx
        .query_row(
            "SELECT revision, document FROM topology_revisions ORDER BY revision DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let (false, Some((revision, document))) = (migrated, newest) {
        let doc: nanami_model::Document =
            serde_json::from_str(&document).map_err(|e| corrupt("topology_revisions", e))?;
        let catalog =
            serde_json::to_string(&doc.regions).map_err(|e| corrupt("topology_revisions", e))?;
        tx.execute(
            "INSERT INTO topology_meta (id, revision, catalog, updated_unix_ms) VALUES (1, ?1, ?2, 0)",
            params![revision, catalog],
        )?;
        for ws in &doc.workspaces {
            let json = serde_json::to_string(ws).map_err(|e| corrupt("topology_revisions", e))?;
            tx.execute(
                "INSERT OR REPLACE INTO workspace_docs (id, doc) VALUES (?1, ?2)",
                params![ws.id, json],
            )?;
        }
    }
    tx.execute("DELETE FROM topology_revisions", [])?;
    tx.commit()?;
    Ok(())
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Io(e)),
    }
}

/// Makes `path` 0600 if it exists.
fn restrict(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io(e)),
    }
}

fn insert_audit(tx: &rusqlite::Transaction<'_>, entry: &AuditEntry) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at_unix_ms, credential_id, credential_kind, object_kind,
         workspace, object_id, old_revision, new_revision, diff)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            to_i64(entry.at_unix_ms),
            entry.credential_id,
            entry.credential_kind,
            entry.object.kind,
            entry.object.workspace,
            entry.object.id,
            entry.old_revision,
            entry.new_revision,
            entry.diff
        ],
    )?;
    Ok(())
}

fn write_rows(
    tx: &rusqlite::Transaction<'_>,
    changed: &BTreeMap<GatewayId, GatewayRow>,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO gateways (id, generation, state, health_targets, uplink) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, state = excluded.state,
         health_targets = excluded.health_targets, uplink = excluded.uplink",
    )?;
    for (id, row) in changed {
        stmt.execute(params![
            id.as_str(),
            to_i64(row.generation),
            row.state_json,
            row.targets_json,
            row.uplink
        ])?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.conn();
        let meta: Option<(u64, String)> = conn
            .query_row(
                "SELECT revision, catalog FROM topology_meta WHERE id = 1",
                [],
                |r| Ok((to_u64(r.get(0)?), r.get::<_, String>(1)?)),
            )
            .optional()?;
        let mut snap = Snapshot::default();
        if let Some((revision, catalog)) = meta {
            let mut stmt = conn.prepare("SELECT id, doc FROM workspace_docs ORDER BY id")?;
            let workspaces = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<_, _>>()?;
            snap.topology = Some(StoredTopology {
                revision,
                catalog,
                workspaces,
            });
        }
        let mut stmt =
            conn.prepare("SELECT id, generation, state, health_targets, uplink FROM gateways")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                to_u64(r.get(1)?),
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        for row in rows {
            let (id, generation, state_json, targets_json, uplink) = row?;
            let id = GatewayId::new(id).map_err(|e| corrupt("gateways", e))?;
            snap.gateways.insert(
                id,
                GatewayRow {
                    generation,
                    state_json,
                    targets_json,
                    uplink,
                },
            );
        }
        let mut stmt = conn.prepare("SELECT gateway FROM health WHERE offline = 1")?;
        for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
            snap.offline
                .insert(GatewayId::new(id?).map_err(|e| corrupt("health", e))?);
        }
        let mut stmt = conn.prepare("SELECT gateway, received_unix_ms, report FROM observed")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                to_u64(r.get(1)?),
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (id, at, report) = row?;
            let id = GatewayId::new(id).map_err(|e| corrupt("observed", e))?;
            snap.observed.insert(id, (at, report));
        }
        let mut stmt = conn.prepare(
            "SELECT subject, public_key FROM credentials WHERE kind = 'gateway' AND public_key IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, key) = row?;
            let id = GatewayId::new(id).map_err(|e| corrupt("credentials", e))?;
            let key: PublicKey = key.parse().map_err(|e| corrupt("credentials", e))?;
            snap.gateway_keys.insert(id, key);
        }
        Ok(snap)
    }

    fn put_topology(&self, write: &TopologyWrite<'_>) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<i64> = tx
            .query_row("SELECT revision FROM topology_meta WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        let revision = match (current, write.topology_changed) {
            (Some(rev), false) => rev,
            (current, true) | (current @ None, false) => {
                let revision = current.unwrap_or(0) + 1;
                tx.execute(
                    "INSERT INTO topology_meta (id, revision, catalog, updated_unix_ms)
                     VALUES (1, ?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET revision = excluded.revision,
                     catalog = CASE WHEN ?4 THEN excluded.catalog ELSE catalog END,
                     updated_unix_ms = excluded.updated_unix_ms",
                    params![
                        revision,
                        write.catalog.unwrap_or("[]"),
                        to_i64(write.now_ms),
                        write.catalog.is_some()
                    ],
                )?;
                if write.replace_all {
                    tx.execute("DELETE FROM workspace_docs", [])?;
                }
                {
                    let mut upsert = tx.prepare_cached(
                        "INSERT INTO workspace_docs (id, doc) VALUES (?1, ?2)
                         ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                    )?;
                    let mut delete =
                        tx.prepare_cached("DELETE FROM workspace_docs WHERE id = ?1")?;
                    for (id, doc) in write.workspaces {
                        match doc {
                            Some(doc) => upsert.execute(params![id, doc])?,
                            None => delete.execute(params![id])?,
                        };
                    }
                }
                if let Some(entry) = write.audit {
                    insert_audit(&tx, entry)?;
                }
                revision
            }
        };
        let revision = to_u64(revision);
        for principal in write.revoke {
            let (kind, subject) = match principal {
                Principal::Workspace(ws) => ("workspace", ws.as_str()),
                Principal::Node(n) => ("node", n.as_str()),
                Principal::Gateway(g) => ("gateway", g.as_str()),
                Principal::Platform | Principal::Operator => continue,
            };
            tx.execute(
                "DELETE FROM credentials WHERE kind = ?1 AND subject = ?2",
                params![kind, subject],
            )?;
        }
        write_rows(&tx, write.changed)?;
        tx.commit()?;
        Ok(revision)
    }

    fn add_workspace_credential(
        &self,
        workspace: &WorkspaceId,
        digest: &Digest,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO credentials (digest, kind, subject) VALUES (?1, 'workspace', ?2)",
            params![&digest[..], workspace.as_str()],
        )?;
        insert_audit(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    fn audit(
        &self,
        after: u64,
        limit: u32,
        workspace: Option<&WorkspaceId>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at_unix_ms, credential_id, credential_kind, object_kind, workspace,
             object_id, old_revision, new_revision, diff FROM audit
             WHERE seq > ?1 AND (?2 IS NULL OR workspace = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                to_i64(after),
                workspace.map(|w| w.as_str()),
                i64::from(limit)
            ],
            |r| {
                Ok(AuditEntry {
                    seq: to_u64(r.get(0)?),
                    at_unix_ms: to_u64(r.get(1)?),
                    credential_id: r.get(2)?,
                    credential_kind: r.get(3)?,
                    object: nanami_control::AuditObject {
                        kind: r.get(4)?,
                        workspace: r.get(5)?,
                        id: r.get(6)?,
                    },
                    old_revision: r.get(7)?,
                    new_revision: r.get(8)?,
                    diff: r.get(9)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_health(
        &self,
        offline: &BTreeSet<GatewayId>,
        changed: &BTreeMap<GatewayId, GatewayRow>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM health", [])?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO health (gateway, offline) VALUES (?1, 1)")?;
            for id in offline {
                stmt.execute(params![id.as_str()])?;
            }
        }
        write_rows(&tx, changed)?;
        tx.commit()?;
        Ok(())
    }

    fn put_observed(
        &self,
        gateway: &GatewayId,
        now_ms: u64,
        report: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO observed (gateway, received_unix_ms, report) VALUES (?1, ?2, ?3)
             ON CONFLICT (gateway) DO UPDATE SET received_unix_ms = excluded.received_unix_ms,
             report = excluded.report",
            params![gateway.as_str(), to_i64(now_ms), report],
        )?;
        Ok(())
    }

    fn add_token(
        &self,
        digest: &Digest,
        subject: &Subject,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (kind, id) = subject_parts(subject);
        self.conn().execute(
            "INSERT INTO enrolment_tokens (digest, kind, subject, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![&digest[..], kind, id, to_i64(expires_at)],
        )?;
        Ok(())
    }

    fn token_subject(&self, token: &Digest, now: u64) -> Result<Option<Subject>, StoreError> {
        let row: Option<(String, String)> = self
            .reader()
            .query_row(
                "SELECT kind, subject FROM enrolment_tokens
                 WHERE digest = ?1 AND used_at IS NULL AND expires_at > ?2",
                params![&token[..], to_i64(now)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(kind, id)| parse_subject(&kind, id)).transpose()
    }

    fn redeem_token(
        &self,
        token: &Digest,
        now: u64,
        subject: &Subject,
        key: &PublicKey,
        credential: &Digest,
    ) -> Result<Redeemed, StoreError> {
        let (kind, id) = subject_parts(subject);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let spent = tx.execute(
            "UPDATE enrolment_tokens SET used_at = ?1
             WHERE digest = ?2 AND used_at IS NULL AND expires_at > ?1 AND kind = ?3 AND subject = ?4",
            params![to_i64(now), &token[..], kind, id],
        )?;
        if spent != 1 {
            return Ok(Redeemed::Refused);
        }
        tx.execute(
            "DELETE FROM credentials WHERE kind = ?1 AND subject = ?2",
            params![kind, id],
        )?;
        tx.execute(
            "INSERT INTO credentials (digest, kind, subject, public_key) VALUES (?1, ?2, ?3, ?4)",
            params![&credential[..], kind, id, key.to_base64()],
        )?;
        tx.commit()?;
        Ok(Redeemed::Enrolled(subject.clone()))
    }

    fn set_api_credential(&self, principal: &Principal, digest: &Digest) -> Result<(), StoreError> {
        let kind = match principal {
            Principal::Platform => "control",
            Principal::Operator => "operator",
            Principal::Workspace(_) | Principal::Gateway(_) | Principal::Node(_) => {
                return Err(corrupt(
                    "credentials",
                    "only control/operator are set directly",
                ))
            }
        };
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM credentials WHERE kind = ?1", params![kind])?;
        tx.execute(
            "INSERT INTO credentials (digest, kind, subject) VALUES (?1, ?2, '')",
            params![&digest[..], kind],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn principal(&self, digest: &Digest) -> Result<Option<(Principal, Digest)>, StoreError> {
        let row: Option<(Vec<u8>, String, String)> = self
            .reader()
            .query_row(
                "SELECT digest, kind, subject FROM credentials WHERE digest = ?1",
                params![&digest[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((stored, kind, subject)) = row else {
            return Ok(None);
        };
        let stored: Digest = stored
            .try_into()
            .map_err(|_| corrupt("credentials", "digest is not 32 bytes"))?;
        let principal = match kind.as_str() {
            "control" => Principal::Platform,
            "operator" => Principal::Operator,
            "workspace" => Principal::Workspace(
                WorkspaceId::new(subject).map_err(|e| corrupt("credentials", e))?,
            ),
            "gateway" => {
                Principal::Gateway(GatewayId::new(subject).map_err(|e| corrupt("credentials", e))?)
            }
            "node" => Principal::Node(NodeId::new(subject).map_err(|e| corrupt("credentials", e))?),
            other => return Err(corrupt("credentials", format!("kind {other:?}"))),
        };
        Ok(Some((principal, stored)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_change_writes_its_workspaces_and_a_revision_only_when_it_changed() {
        let dir = std::env::temp_dir().join(format!("nm-store-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("manager.db")).unwrap();
        let write = |changed: bool, catalog: Option<&str>, ws: &[(String, Option<String>)], all| {
            store
                .put_topology(&TopologyWrite {
                    topology_changed: changed,
                    catalog,
                    workspaces: ws,
                    replace_all: all,
                    now_ms: 0,
                    changed: &BTreeMap::new(),
                    audit: None,
                    revoke: &[],
                })
                .unwrap()
        };
        let a = ("a".to_owned(), Some("{\"id\":\"a\"}".to_owned()));
        let b = ("b".to_owned(), Some("{\"id\":\"b\"}".to_owned()));
        assert_eq!(write(true, Some("[1]"), &[a.clone(), b.clone()], true), 1);
        assert_eq!(write(false, None, &[], false), 1, "no change, no revision");
        let a2 = ("a".to_owned(), Some("{\"id\":\"a\",\"x\":1}".to_owned()));
        assert_eq!(write(true, None, std::slice::from_ref(&a2), false), 2);
        let stored = store.load().unwrap().topology.unwrap();
        assert_eq!(stored.revision, 2);
        assert_eq!(
            stored.catalog, "[1]",
            "a workspace change keeps the catalog"
        );
        assert_eq!(
            stored.workspaces,
            [
                ("a".to_owned(), a2.1.clone().unwrap()),
                ("b".to_owned(), b.1.clone().unwrap())
            ]
        );
        assert_eq!(write(true, None, &[("b".to_owned(), None)], false), 3);
        assert_eq!(store.load().unwrap().topology.unwrap().workspaces.len(), 1);
        // An import replaces every row.
        assert_eq!(write(true, Some("[]"), std::slice::from_ref(&b), true), 4);
        let stored = store.load().unwrap().topology.unwrap();
        assert_eq!(stored.workspaces, [("b".to_owned(), b.1.unwrap())]);
        assert_eq!(stored.catalog, "[]");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_of_whole_documents_is_migrated_to_workspace_rows() {
        let dir = std::env::temp_dir().join(format!("nm-store-migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manager.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            for doc in [
                "{\"version\":1,\"regions\":[],\"workspaces\":[]}",
                "{\"version\":1,\"regions\":[{\"id\":\"lab\",\"state\":\"active\"}],\"workspaces\":[{\"id\":\"acme\",\"tenant\":\"t\",\"regions\":[\"lab\"]}]}",
            ] {
                conn.execute(
                    "INSERT INTO topology_revisions (document, created_unix_ms) VALUES (?1, 0)",
                    params![doc],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let stored = store.load().unwrap().topology.unwrap();
        assert_eq!(stored.revision, 2, "the newest document's revision");
        assert_eq!(stored.workspaces.len(), 1);
        assert_eq!(stored.workspaces[0].0, "acme");
        assert!(stored.catalog.contains("lab"));
        drop(store);
        // Opening again changes nothing.
        let again = SqliteStore::open(&path).unwrap().load().unwrap().topology;
        assert_eq!(again, Some(stored));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
