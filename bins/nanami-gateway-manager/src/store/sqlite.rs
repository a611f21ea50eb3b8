//! The embedded store: one SQLite file in WAL mode, for one manager.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use nanami_api::wire::Subject;
use nanami_model::{GatewayId, PublicKey, WorkspaceId};
use rusqlite::{params, Connection, OptionalExtension as _, Transaction, TransactionBehavior};
use tokio::sync::watch;

use super::{
    api_kind, corrupt, gateway_id, parse_subject, principal_of, revocable, subject_parts, to_i64,
    to_u64, unhealthy_pair, AuditEntry, Changes, Committed, Digest, GatewayRow, ObservedRow,
    Principal, Redeemed, SchemaStatus, Snapshot, Store, StoreError, StoredHealth, StoredTopology,
    TopologyChanges, TopologyWrite,
};

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

/// The schema of version 1 (what databases from before versioned migrations
/// hold, once their ad-hoc upgrades ran).
const SCHEMA_V1: &str = "
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

/// Version 2: the change sequence (rows carry the sequence that wrote them), the
/// stored path verdicts, the report sequence and leases: what managers sharing a
/// store need, kept by the embedded store too so both pass one suite.
const SCHEMA_V2: &str = "
CREATE TABLE store_seq (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT INTO store_seq (id, seq) VALUES (1, 0);
ALTER TABLE topology_meta ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workspace_docs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gateways ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX gateways_seq ON gateways (seq);
ALTER TABLE observed ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX observed_seq ON observed (seq);
CREATE TABLE unhealthy_paths (
    gateway TEXT NOT NULL,
    network TEXT NOT NULL,
    PRIMARY KEY (gateway, network)
);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_unix_ms INTEGER NOT NULL
);
DROP TABLE topology_revisions;
";

/// The newest schema version this binary knows.
pub(super) const SQLITE_SCHEMA: u32 = 2;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema to
    /// the newest version; refuses a database of a newer version. The database and
    /// its WAL and shared-memory files are private to the manager's user (0600)
    /// whatever the umask: they hold credential digests and every gateway's state.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, true)
    }

    /// Opens the existing database at `path` without migrating it: what `check`
    /// reads.
    pub fn inspect(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Config(format!(
                "{} does not exist",
                path.display()
            )));
        }
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, migrating: bool) -> Result<Self, StoreError> {
        create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        if migrating {
            migrate(&mut conn)?;
        }
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

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?)
}

/// Brings the schema to [`SQLITE_SCHEMA`] (SQLite's `user_version` holds it).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SQLITE_SCHEMA {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: SQLITE_SCHEMA,
        });
    }
    if version < 1 {
        // Version 1 is what every database from before versioned migrations was
        // upgraded to at open, step by step; those steps are kept as they were.
        conn.execute_batch(SCHEMA_V1)?;
        if !has_column(conn, "gateways", "health_targets")? {
            conn.execute_batch(
                "ALTER TABLE gateways ADD COLUMN health_targets TEXT NOT NULL DEFAULT '{}'",
            )?;
        }
        if !has_column(conn, "gateways", "uplink")? {
            conn.execute_batch("ALTER TABLE gateways ADD COLUMN uplink TEXT")?;
        }
        migrate_whole_documents(conn)?;
        conn.pragma_update(None, "user_version", 1)?;
    }
    if version < 2 {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA_V2)?;
        tx.pragma_update(None, "user_version", 2)?;
        tx.commit()?;
    }
    Ok(())
}

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

/// Creates `path` as an empty 0600 file if it does not exist (SQLite would create
/// it with the umask's mode).
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

fn insert_audit(tx: &Transaction<'_>, entry: &AuditEntry) -> Result<(), StoreError> {
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

/// Checks the store is at `expected` and moves it to the next sequence, which it
/// returns.
fn next_seq(tx: &Transaction<'_>, expected: u64) -> Result<u64, StoreError> {
    let current = to_u64(tx.query_row("SELECT seq FROM store_seq WHERE id = 1", [], |r| r.get(0))?);
    if current != expected {
        return Err(StoreError::Stale { expected, current });
    }
    let seq = current + 1;
    tx.execute(
        "UPDATE store_seq SET seq = ?1 WHERE id = 1",
        params![to_i64(seq)],
    )?;
    Ok(seq)
}

fn write_rows(
    tx: &Transaction<'_>,
    seq: u64,
    changed: &BTreeMap<GatewayId, GatewayRow>,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO gateways (id, generation, state, health_targets, uplink, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, state = excluded.state,
         health_targets = excluded.health_targets, uplink = excluded.uplink, seq = excluded.seq",
    )?;
    for (id, row) in changed {
        stmt.execute(params![
            id.as_str(),
            to_i64(row.generation),
            row.state_json,
            row.targets_json,
            row.uplink,
            to_i64(seq)
        ])?;
    }
    Ok(())
}

fn write_health(tx: &Transaction<'_>, health: &StoredHealth) -> Result<(), StoreError> {
    tx.execute("DELETE FROM health", [])?;
    tx.execute("DELETE FROM unhealthy_paths", [])?;
    let mut offline = tx.prepare_cached("INSERT INTO health (gateway, offline) VALUES (?1, 1)")?;
    for id in &health.offline {
        offline.execute(params![id.as_str()])?;
    }
    let mut paths =
        tx.prepare_cached("INSERT INTO unhealthy_paths (gateway, network) VALUES (?1, ?2)")?;
    for (gateway, network) in &health.unhealthy {
        paths.execute(params![gateway.as_str(), network.as_str()])?;
    }
    Ok(())
}

fn read_seq(conn: &Connection) -> Result<u64, StoreError> {
    Ok(to_u64(conn.query_row(
        "SELECT seq FROM store_seq WHERE id = 1",
        [],
        |r| r.get(0),
    )?))
}

fn read_health(conn: &Connection) -> Result<StoredHealth, StoreError> {
    let mut health = StoredHealth::default();
    let mut stmt = conn.prepare_cached("SELECT gateway FROM health WHERE offline = 1")?;
    for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
        health.offline.insert(gateway_id("health", id?)?);
    }
    let mut stmt = conn.prepare_cached("SELECT gateway, network FROM unhealthy_paths")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (gateway, network) = row?;
        health.unhealthy.insert(unhealthy_pair(gateway, network)?);
    }
    Ok(health)
}

/// Gateway rows written after `since`.
fn read_rows(conn: &Connection, since: i64) -> Result<BTreeMap<GatewayId, GatewayRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, generation, state, health_targets, uplink FROM gateways WHERE seq > ?1",
    )?;
    let rows = stmt.query_map(params![since], |r| {
        Ok((
            r.get::<_, String>(0)?,
            to_u64(r.get(1)?),
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (id, generation, state_json, targets_json, uplink) = row?;
        out.insert(
            gateway_id("gateways", id)?,
            GatewayRow {
                generation,
                state_json,
                targets_json,
                uplink,
            },
        );
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let meta: Option<(u64, String)> = tx
            .query_row(
                "SELECT revision, catalog FROM topology_meta WHERE id = 1",
                [],
                |r| Ok((to_u64(r.get(0)?), r.get::<_, String>(1)?)),
            )
            .optional()?;
        let mut snap = Snapshot {
            seq: read_seq(&tx)?,
            ..Snapshot::default()
        };
        if let Some((revision, catalog)) = meta {
            let mut stmt = tx.prepare("SELECT id, doc FROM workspace_docs ORDER BY id")?;
            let workspaces = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<_, _>>()?;
            snap.topology = Some(StoredTopology {
                revision,
                catalog,
                workspaces,
            });
        }
        // Every row, those from before the sequence (0) too.
        snap.gateways = read_rows(&tx, -1)?;
        snap.offline = read_health(&tx)?.offline;
        let mut stmt = tx.prepare("SELECT gateway, received_unix_ms, report, seq FROM observed")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                to_u64(r.get(1)?),
                r.get::<_, String>(2)?,
                to_u64(r.get(3)?),
            ))
        })?;
        for row in rows {
            let (id, at, report, seq) = row?;
            snap.observed_cursor = snap.observed_cursor.max(seq);
            snap.observed
                .insert(gateway_id("observed", id)?, (at, report));
        }
        let mut stmt = tx.prepare(
            "SELECT subject, public_key FROM credentials WHERE kind = 'gateway' AND public_key IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, key) = row?;
            let key: PublicKey = key.parse().map_err(|e| corrupt("credentials", e))?;
            snap.gateway_keys
                .insert(gateway_id("credentials", id)?, key);
        }
        Ok(snap)
    }

    fn put_topology(&self, write: &TopologyWrite<'_>) -> Result<Committed, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = next_seq(&tx, write.expected_seq)?;
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
                    "INSERT INTO topology_meta (id, revision, catalog, updated_unix_ms, seq)
                     VALUES (1, ?1, ?2, ?3, ?5)
                     ON CONFLICT (id) DO UPDATE SET revision = excluded.revision,
                     catalog = CASE WHEN ?4 THEN excluded.catalog ELSE catalog END,
                     updated_unix_ms = excluded.updated_unix_ms, seq = excluded.seq",
                    params![
                        revision,
                        write.catalog.unwrap_or("[]"),
                        to_i64(write.now_ms),
                        write.catalog.is_some(),
                        to_i64(seq)
                    ],
                )?;
                if write.replace_all {
                    tx.execute("DELETE FROM workspace_docs", [])?;
                }
                {
                    let mut upsert = tx.prepare_cached(
                        "INSERT INTO workspace_docs (id, doc, seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, seq = excluded.seq",
                    )?;
                    let mut delete =
                        tx.prepare_cached("DELETE FROM workspace_docs WHERE id = ?1")?;
                    for (id, doc) in write.workspaces {
                        match doc {
                            Some(doc) => upsert.execute(params![id, doc, to_i64(seq)])?,
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
        for (kind, subject) in write.revoke.iter().filter_map(revocable) {
            tx.execute(
                "DELETE FROM credentials WHERE kind = ?1 AND subject = ?2",
                params![kind, subject],
            )?;
        }
        write_rows(&tx, seq, write.changed)?;
        write_health(&tx, write.health)?;
        tx.commit()?;
        Ok(Committed {
            revision: to_u64(revision),
            seq,
        })
    }

    fn put_health(
        &self,
        expected_seq: u64,
        health: &StoredHealth,
        changed: &BTreeMap<GatewayId, GatewayRow>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = next_seq(&tx, expected_seq)?;
        write_health(&tx, health)?;
        write_rows(&tx, seq, changed)?;
        tx.commit()?;
        Ok(seq)
    }

    fn changes(&self, since: u64) -> Result<Option<Changes>, StoreError> {
        let mut conn = self.reader();
        let tx = conn.transaction()?;
        let seq = read_seq(&tx)?;
        if seq == since {
            return Ok(None);
        }
        let meta: Option<(u64, String, u64)> = tx
            .query_row(
                "SELECT revision, catalog, seq FROM topology_meta WHERE id = 1",
                [],
                |r| Ok((to_u64(r.get(0)?), r.get(1)?, to_u64(r.get(2)?))),
            )
            .optional()?;
        let topology = match meta {
            Some((revision, catalog, at)) if at > since => {
                let mut stmt = tx.prepare_cached("SELECT id, seq, doc FROM workspace_docs")?;
                let mut ids = BTreeSet::new();
                let mut written = Vec::new();
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        to_u64(r.get(1)?),
                        r.get::<_, String>(2)?,
                    ))
                })?;
                for row in rows {
                    let (id, at, doc) = row?;
                    if at > since {
                        written.push((id.clone(), doc));
                    }
                    ids.insert(id);
                }
                Some(TopologyChanges {
                    revision,
                    catalog,
                    ids,
                    written,
                })
            }
            Some(_) | None => None,
        };
        Ok(Some(Changes {
            seq,
            topology,
            gateways: read_rows(&tx, to_i64(since))?,
            health: read_health(&tx)?,
        }))
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

    fn put_observed(
        &self,
        gateway: &GatewayId,
        now_ms: u64,
        report: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO observed (gateway, received_unix_ms, report, seq)
             VALUES (?1, ?2, ?3, (SELECT coalesce(max(seq), 0) + 1 FROM observed))
             ON CONFLICT (gateway) DO UPDATE SET received_unix_ms = excluded.received_unix_ms,
             report = excluded.report, seq = excluded.seq",
            params![gateway.as_str(), to_i64(now_ms), report],
        )?;
        Ok(())
    }

    fn observed_since(&self, cursor: u64, limit: u32) -> Result<Vec<ObservedRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, gateway, received_unix_ms, report FROM observed
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![to_i64(cursor), i64::from(limit)], |r| {
            Ok((
                to_u64(r.get(0)?),
                r.get::<_, String>(1)?,
                to_u64(r.get(2)?),
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (seq, gateway, received_unix_ms, report) = row?;
            Ok(ObservedRow {
                seq,
                gateway: gateway_id("observed", gateway)?,
                received_unix_ms,
                report,
            })
        })
        .collect()
    }

    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = crate::manager::now_ms();
        let held: Option<String> = self
            .conn()
            .query_row(
                "INSERT INTO leases (name, holder, expires_unix_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                 expires_unix_ms = excluded.expires_unix_ms
                 WHERE leases.holder = excluded.holder OR leases.expires_unix_ms <= ?4
                 RETURNING holder",
                params![
                    name,
                    holder,
                    to_i64(now.saturating_add(ttl_ms)),
                    to_i64(now)
                ],
                |r| r.get(0),
            )
            .optional()?;
        Ok(held.as_deref() == Some(holder))
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

    fn expire_tokens(&self, before: u64) -> Result<u64, StoreError> {
        let n = self.conn().execute(
            "DELETE FROM enrolment_tokens WHERE expires_at <= ?1 OR used_at <= ?1",
            params![to_i64(before)],
        )?;
        Ok(n as u64)
    }

    fn set_api_credential(&self, principal: &Principal, digest: &Digest) -> Result<(), StoreError> {
        let kind = api_kind(principal)?;
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
        row.map(|(stored, kind, subject)| principal_of(stored, &kind, subject))
            .transpose()
    }

    fn status(&self) -> Result<SchemaStatus, StoreError> {
        let conn = self.reader();
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != SQLITE_SCHEMA {
            // Not this binary's schema: its tables are not read.
            return Ok(SchemaStatus {
                version,
                known: SQLITE_SCHEMA,
                seq: 0,
                revision: 0,
            });
        }
        let revision: Option<i64> = conn
            .query_row("SELECT revision FROM topology_meta WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(SchemaStatus {
            version,
            known: SQLITE_SCHEMA,
            seq: read_seq(&conn)?,
            revision: revision.map(to_u64).unwrap_or(0),
        })
    }

    fn shared(&self) -> bool {
        false
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_whole_documents_is_migrated_to_workspace_rows() {
        let dir = std::env::temp_dir().join(format!("nm-store-migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manager.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
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
        assert_eq!(store.status().unwrap().version, SQLITE_SCHEMA);
        drop(store);
        // Opening again changes nothing.
        let again = SqliteStore::open(&path).unwrap().load().unwrap().topology;
        assert_eq!(again, Some(stored));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_unchanged() {
        let dir = std::env::temp_dir().join(format!("nm-store-newer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manager.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SQLITE_SCHEMA + 1)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, known } if found == SQLITE_SCHEMA + 1 && known == SQLITE_SCHEMA),
            "{err}"
        );
        let version: u32 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SQLITE_SCHEMA + 1, "nothing was changed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
