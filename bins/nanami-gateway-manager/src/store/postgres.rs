//! The shared store: a PostgreSQL database that any number of managers use at once.
//!
//! - Writes of the served state are serialized by a row lock on the change
//!   sequence (`store_seq`), so the sequence moves in commit order and a reader of
//!   rows "after sequence N" misses nothing.
//! - Every such write also sends `NOTIFY nanami_changes` (delivered at commit); each
//!   store listens on a connection of its own and moves [`Store::subscribe`]'s
//!   channel, which wakes its manager. A lost listening connection is reopened
//!   with backoff, and the channel moves once more then, so changes sent while it
//!   was away are caught up.
//! - Leases are judged on the database's clock.
//!
//! The [`Store`] methods block: each runs its queries on the calling thread (a
//! small executor), with the store's own runtime driving the connections. So they
//! may be called from any thread, as the SQLite store's are.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use deadpool_postgres::{Manager as PoolManager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use nanami_api::wire::Subject;
use nanami_model::{GatewayId, PublicKey, WorkspaceId};
use tokio::sync::watch;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};
use tracing::{info, warn};

use super::{
    api_kind, corrupt, gateway_id, parse_subject, principal_of, revocable, subject_parts, to_i64,
    to_u64, unhealthy_pair, AuditEntry, Changes, Committed, Digest, GatewayRow, ObservedRow,
    Principal, Redeemed, SchemaStatus, Snapshot, Store, StoreError, StoredHealth, StoredTopology,
    TopologyChanges, TopologyWrite,
};

/// The channel every write notifies.
const CHANNEL: &str = "nanami_changes";

/// Serializes migrations of managers starting together (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6e61_6e61_6d69; // "nanami"

/// The migrations, in order: version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &["
CREATE TABLE store_seq (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
INSERT INTO store_seq (id, seq) VALUES (1, 0);
CREATE TABLE topology_meta (
    id INT PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL,
    catalog TEXT NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE TABLE workspace_docs (id TEXT PRIMARY KEY, doc TEXT NOT NULL, seq BIGINT NOT NULL);
CREATE TABLE gateways (
    id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL,
    health_targets TEXT NOT NULL,
    uplink TEXT,
    seq BIGINT NOT NULL
);
CREATE INDEX gateways_seq ON gateways (seq);
CREATE TABLE offline_gateways (gateway TEXT PRIMARY KEY);
CREATE TABLE unhealthy_paths (gateway TEXT NOT NULL, network TEXT NOT NULL, PRIMARY KEY (gateway, network));
CREATE SEQUENCE observed_seq;
CREATE TABLE observed (
    gateway TEXT PRIMARY KEY,
    received_unix_ms BIGINT NOT NULL,
    report TEXT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX observed_by_seq ON observed (seq);
CREATE TABLE enrolment_tokens (
    digest BYTEA PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE TABLE credentials (
    digest BYTEA PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    public_key TEXT
);
CREATE INDEX credentials_subject ON credentials (kind, subject);
CREATE TABLE audit (
    seq BIGSERIAL PRIMARY KEY,
    at_unix_ms BIGINT NOT NULL,
    credential_id TEXT NOT NULL,
    credential_kind TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    workspace TEXT,
    object_id TEXT NOT NULL,
    old_revision TEXT,
    new_revision TEXT,
    diff TEXT NOT NULL
);
CREATE INDEX audit_workspace ON audit (workspace, seq);
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_unix_ms BIGINT NOT NULL);
"];

/// The newest schema version this binary knows.
pub(super) const PG_SCHEMA: u32 = 1;

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key-value string (`postgres://user@host:port/db`).
    /// It may hold a password: it is never logged.
    pub url: String,
    /// Connections the pool opens at most.
    pub pool_size: usize,
    /// The CA certificate (PEM) that signed the database server's certificate:
    /// TLS to the database, verified. Without it the connection is plain, and a URL
    /// with `sslmode=require` is refused.
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("ca", &self.ca)
            .finish()
    }
}

/// How connections are secured.
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The shared store (see the module's notes).
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    changes: watch::Receiver<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The listener and connection tasks stop with the runtime; dropping it from
        // inside another runtime must not block.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(match e.as_db_error() {
        Some(db) => format!("database: {} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    })
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("database connection: {e}"))
}

fn tls_config(
    ca: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let pem = std::fs::read(ca).map_err(|e| {
        StoreError::Config(format!("reading the database CA {}: {e}", ca.display()))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem, ca)? {
        roots
            .add(cert)
            .map_err(|e| StoreError::Config(format!("database CA {}: {e}", ca.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    pem: &[u8],
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, StoreError> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Config(format!("database CA {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(StoreError::Config(format!(
            "database CA {}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

impl PgStore {
    /// Connects to the database, brings its schema to the newest version (refusing
    /// one newer than this binary knows) and starts listening for other managers'
    /// changes.
    pub fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let (store, config, tls, tx) = Self::pool(options)?;
        store.run(migrate(&store.pool))?;
        store.spawn(listen(config, tls, tx));
        Ok(store)
    }

    /// Connects to the database without migrating it or listening: what `check`
    /// reads.
    pub fn inspect(options: &PgOptions) -> Result<Self, StoreError> {
        Ok(Self::pool(options)?.0)
    }

    #[allow(clippy::type_complexity)]
    fn pool(
        options: &PgOptions,
    ) -> Result<(Self, tokio_postgres::Config, Tls, watch::Sender<u64>), StoreError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Config(format!("the PostgreSQL URL does not parse: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        if config.get_application_name().is_none() {
            config.application_name("nanami-gateway-manager");
        }
        // A database that vanishes without closing the connection (a host or
        // network failure) is noticed in seconds, not after the kernel's hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let tls = match (&options.ca, config.get_ssl_mode()) {
            (Some(ca), _) => Tls::Rustls(tls_config(ca)?),
            (None, SslMode::Require) => {
                return Err(StoreError::Config(
                    "sslmode=require needs the database server's CA (--store-ca)".to_owned(),
                ))
            }
            (None, _) => Tls::Plain,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nanami-store")
            .enable_all()
            .build()?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::Plain => PoolManager::from_config(config.clone(), NoTls, manager_config),
            Tls::Rustls(t) => PoolManager::from_config(config.clone(), t.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| StoreError::Config(format!("connection pool: {e}")))?;
        let (tx, changes) = watch::channel(0);
        let store = Self {
            runtime: Some(runtime),
            pool,
            changes,
        };
        Ok((store, config, tls, tx))
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        // Only `drop` takes it.
        self.runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives as long as the store"))
    }

    /// Runs `f` to completion on the calling thread; the store's runtime drives
    /// the connections and timers meanwhile.
    fn run<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let _entered = self.runtime().enter();
        futures_executor::block_on(f)
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        drop(self.runtime().spawn(f));
    }
}

/// Applies the migrations this database lacks, one transaction each, serialized
/// among managers starting together.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)")
        .await
        .map_err(pg)?;
    let version = schema_version(&tx).await?;
    if version > PG_SCHEMA {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: PG_SCHEMA,
        });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = u32::try_from(n + 1).unwrap_or(u32::MAX);
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(pg)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&i32::try_from(to).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(pg)?;
        info!(version = to, "store schema migrated");
    }
    tx.commit().await.map_err(pg)?;
    Ok(())
}

async fn schema_version(client: &impl GenericClient) -> Result<u32, StoreError> {
    let row = client
        .query_opt("SELECT max(version) FROM schema_version", &[])
        .await
        .map_err(pg)?;
    let version: Option<i32> = row.and_then(|r| r.get(0));
    Ok(version.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
}

/// Listens for other managers' changes for as long as the runtime runs.
async fn listen(config: tokio_postgres::Config, tls: Tls, tx: watch::Sender<u64>) {
    let mut backoff =
        nanami_reconcile::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match listen_once(&config, &tls, &tx).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if backoff.failures() == 0 {
                    warn!(error = %e, "store: listening for other managers' changes failed; retrying");
                }
            }
        }
        let wait = backoff.next_wait(&mut rand::thread_rng());
        tokio::time::sleep(wait).await;
    }
}

/// One listening connection, until it is lost. The channel moves once it listens
/// (whatever was sent while no connection listened is caught up) and then with
/// every notification.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &Tls,
    tx: &watch::Sender<u64>,
) -> Result<(), StoreError> {
    let (client, mut connection) = match tls {
        Tls::Plain => {
            let (c, conn) = config.connect(NoTls).await.map_err(pg)?;
            (c, Box::new(conn) as Box<dyn PollMessages>)
        }
        Tls::Rustls(t) => {
            let (c, conn) = config.connect(t.clone()).await.map_err(pg)?;
            (c, Box::new(conn) as Box<dyn PollMessages>)
        }
    };
    let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
    let notify = tx.clone();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => notify.send_modify(|n| *n += 1),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = lost_tx.send(pg(e));
                    return;
                }
                None => {
                    let _ = lost_tx.send(StoreError::Unavailable("connection closed".to_owned()));
                    return;
                }
            }
        }
    });
    let statement = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::select! {
        r = listening => r.map_err(pg)?,
        e = &mut lost => return Err(e.unwrap_or_else(|_| StoreError::Unavailable("connection task ended".to_owned()))),
    }
    info!("store: listening for other managers' changes");
    tx.send_modify(|n| *n += 1);
    let e = (&mut lost)
        .await
        .unwrap_or_else(|_| StoreError::Unavailable("connection task ended".to_owned()));
    warn!(error = %e, "store: the listening connection was lost");
    drop(client);
    Ok(())
}

/// A connection's messages, whatever its TLS.
trait PollMessages: Send {
    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> PollMessages for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        self.poll_message(cx)
    }
}

/// Locks the change sequence, checks it is at `expected` and moves it on; the
/// change is announced to every manager at commit.
async fn next_seq(tx: &Transaction<'_>, expected: u64) -> Result<u64, StoreError> {
    let current: i64 = tx
        .query_one("SELECT seq FROM store_seq WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(pg)?
        .get(0);
    let current = to_u64(current);
    if current != expected {
        return Err(StoreError::Stale { expected, current });
    }
    let seq = current + 1;
    tx.execute(
        "UPDATE store_seq SET seq = $1 WHERE id = 1",
        &[&to_i64(seq)],
    )
    .await
    .map_err(pg)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await
        .map_err(pg)?;
    Ok(seq)
}

async fn insert_audit(tx: &Transaction<'_>, entry: &AuditEntry) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at_unix_ms, credential_id, credential_kind, object_kind,
         workspace, object_id, old_revision, new_revision, diff)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &to_i64(entry.at_unix_ms),
            &entry.credential_id,
            &entry.credential_kind,
            &entry.object.kind,
            &entry.object.workspace,
            &entry.object.id,
            &entry.old_revision,
            &entry.new_revision,
            &entry.diff,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Upserts gateway rows in one statement.
async fn write_rows(
    tx: &Transaction<'_>,
    seq: u64,
    changed: &BTreeMap<GatewayId, GatewayRow>,
) -> Result<(), StoreError> {
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = changed.keys().map(GatewayId::as_str).collect();
    let generations: Vec<i64> = changed.values().map(|r| to_i64(r.generation)).collect();
    let states: Vec<&str> = changed.values().map(|r| r.state_json.as_str()).collect();
    let targets: Vec<&str> = changed.values().map(|r| r.targets_json.as_str()).collect();
    let uplinks: Vec<Option<&str>> = changed.values().map(|r| r.uplink.as_deref()).collect();
    tx.execute(
        "INSERT INTO gateways (id, generation, state, health_targets, uplink, seq)
         SELECT id, generation, state, targets, uplink, $6
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
           AS r(id, generation, state, targets, uplink)
         ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, state = excluded.state,
         health_targets = excluded.health_targets, uplink = excluded.uplink, seq = excluded.seq",
        &[
            &ids,
            &generations,
            &states,
            &targets,
            &uplinks,
            &to_i64(seq),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn write_health(tx: &Transaction<'_>, health: &StoredHealth) -> Result<(), StoreError> {
    let offline: Vec<&str> = health.offline.iter().map(GatewayId::as_str).collect();
    let gateways: Vec<&str> = health.unhealthy.iter().map(|(g, _)| g.as_str()).collect();
    let networks: Vec<&str> = health.unhealthy.iter().map(|(_, n)| n.as_str()).collect();
    tx.batch_execute("DELETE FROM offline_gateways; DELETE FROM unhealthy_paths")
        .await
        .map_err(pg)?;
    tx.execute(
        "INSERT INTO offline_gateways (gateway) SELECT unnest($1::text[])",
        &[&offline],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "INSERT INTO unhealthy_paths (gateway, network) SELECT * FROM unnest($1::text[], $2::text[])",
        &[&gateways, &networks],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn read_health(client: &impl GenericClient) -> Result<StoredHealth, StoreError> {
    let mut health = StoredHealth::default();
    for row in client
        .query("SELECT gateway FROM offline_gateways", &[])
        .await
        .map_err(pg)?
    {
        health
            .offline
            .insert(gateway_id("offline_gateways", row.get(0))?);
    }
    for row in client
        .query("SELECT gateway, network FROM unhealthy_paths", &[])
        .await
        .map_err(pg)?
    {
        health
            .unhealthy
            .insert(unhealthy_pair(row.get(0), row.get(1))?);
    }
    Ok(health)
}

async fn read_rows(
    client: &impl GenericClient,
    since: i64,
) -> Result<BTreeMap<GatewayId, GatewayRow>, StoreError> {
    let mut out = BTreeMap::new();
    for row in client
        .query(
            "SELECT id, generation, state, health_targets, uplink FROM gateways WHERE seq > $1",
            &[&since],
        )
        .await
        .map_err(pg)?
    {
        out.insert(
            gateway_id("gateways", row.get(0))?,
            GatewayRow {
                generation: to_u64(row.get(1)),
                state_json: row.get(2),
                targets_json: row.get(3),
                uplink: row.get(4),
            },
        );
    }
    Ok(out)
}

async fn read_seq(client: &impl GenericClient) -> Result<u64, StoreError> {
    let seq: i64 = client
        .query_one("SELECT seq FROM store_seq WHERE id = 1", &[])
        .await
        .map_err(pg)?
        .get(0);
    Ok(to_u64(seq))
}

impl Store for PgStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg)?;
            let mut snap = Snapshot {
                seq: read_seq(&tx).await?,
                ..Snapshot::default()
            };
            if let Some(meta) = tx
                .query_opt(
                    "SELECT revision, catalog FROM topology_meta WHERE id = 1",
                    &[],
                )
                .await
                .map_err(pg)?
            {
                let workspaces = tx
                    .query("SELECT id, doc FROM workspace_docs ORDER BY id", &[])
                    .await
                    .map_err(pg)?
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                snap.topology = Some(StoredTopology {
                    revision: to_u64(meta.get(0)),
                    catalog: meta.get(1),
                    workspaces,
                });
            }
            snap.gateways = read_rows(&tx, -1).await?;
            snap.offline = read_health(&tx).await?.offline;
            for row in tx
                .query(
                    "SELECT gateway, received_unix_ms, report, seq FROM observed",
                    &[],
                )
                .await
                .map_err(pg)?
            {
                snap.observed_cursor = snap.observed_cursor.max(to_u64(row.get(3)));
                snap.observed.insert(
                    gateway_id("observed", row.get(0))?,
                    (to_u64(row.get(1)), row.get(2)),
                );
            }
            for row in tx
                .query(
                    "SELECT subject, public_key FROM credentials
                     WHERE kind = 'gateway' AND public_key IS NOT NULL",
                    &[],
                )
                .await
                .map_err(pg)?
            {
                let key: String = row.get(1);
                let key: PublicKey = key.parse().map_err(|e| corrupt("credentials", e))?;
                snap.gateway_keys
                    .insert(gateway_id("credentials", row.get(0))?, key);
            }
            tx.commit().await.map_err(pg)?;
            Ok(snap)
        })
    }

    fn put_topology(&self, write: &TopologyWrite<'_>) -> Result<Committed, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg)?;
            let seq = next_seq(&tx, write.expected_seq).await?;
            let current: Option<i64> = tx
                .query_opt("SELECT revision FROM topology_meta WHERE id = 1", &[])
                .await
                .map_err(pg)?
                .map(|r| r.get(0));
            let revision = match (current, write.topology_changed) {
                (Some(rev), false) => rev,
                (current, true) | (current @ None, false) => {
                    let revision = current.unwrap_or(0) + 1;
                    tx.execute(
                        "INSERT INTO topology_meta (id, revision, catalog, updated_unix_ms, seq)
                         VALUES (1, $1, $2, $3, $5)
                         ON CONFLICT (id) DO UPDATE SET revision = excluded.revision,
                         catalog = CASE WHEN $4 THEN excluded.catalog ELSE topology_meta.catalog END,
                         updated_unix_ms = excluded.updated_unix_ms, seq = excluded.seq",
                        &[
                            &revision,
                            &write.catalog.unwrap_or("[]"),
                            &to_i64(write.now_ms),
                            &write.catalog.is_some(),
                            &to_i64(seq),
                        ],
                    )
                    .await
                    .map_err(pg)?;
                    if write.replace_all {
                        tx.execute("DELETE FROM workspace_docs", &[]).await.map_err(pg)?;
                    }
                    let (written, deleted): (Vec<_>, Vec<_>) =
                        write.workspaces.iter().partition(|(_, doc)| doc.is_some());
                    let ids: Vec<&str> = written.iter().map(|(id, _)| id.as_str()).collect();
                    let docs: Vec<&str> =
                        written.iter().filter_map(|(_, doc)| doc.as_deref()).collect();
                    let gone: Vec<&str> = deleted.iter().map(|(id, _)| id.as_str()).collect();
                    tx.execute(
                        "INSERT INTO workspace_docs (id, doc, seq)
                         SELECT id, doc, $3 FROM unnest($1::text[], $2::text[]) AS w(id, doc)
                         ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, seq = excluded.seq",
                        &[&ids, &docs, &to_i64(seq)],
                    )
                    .await
                    .map_err(pg)?;
                    tx.execute("DELETE FROM workspace_docs WHERE id = ANY($1)", &[&gone])
                        .await
                        .map_err(pg)?;
                    if let Some(entry) = write.audit {
                        insert_audit(&tx, entry).await?;
                    }
                    revision
                }
            };
            for (kind, subject) in write.revoke.iter().filter_map(revocable) {
                tx.execute(
                    "DELETE FROM credentials WHERE kind = $1 AND subject = $2",
                    &[&kind, &subject],
                )
                .await
                .map_err(pg)?;
            }
            write_rows(&tx, seq, write.changed).await?;
            write_health(&tx, write.health).await?;
            tx.commit().await.map_err(pg)?;
            Ok(Committed {
                revision: to_u64(revision),
                seq,
            })
        })
    }

    fn put_health(
        &self,
        expected_seq: u64,
        health: &StoredHealth,
        changed: &BTreeMap<GatewayId, GatewayRow>,
    ) -> Result<u64, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg)?;
            let seq = next_seq(&tx, expected_seq).await?;
            write_health(&tx, health).await?;
            write_rows(&tx, seq, changed).await?;
            tx.commit().await.map_err(pg)?;
            Ok(seq)
        })
    }

    fn changes(&self, since: u64) -> Result<Option<Changes>, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg)?;
            let seq = read_seq(&tx).await?;
            if seq == since {
                return Ok(None);
            }
            let since_i = to_i64(since);
            let topology = match tx
                .query_opt(
                    "SELECT revision, catalog FROM topology_meta WHERE id = 1 AND seq > $1",
                    &[&since_i],
                )
                .await
                .map_err(pg)?
            {
                None => None,
                Some(meta) => {
                    let mut ids = BTreeSet::new();
                    let mut written = Vec::new();
                    for row in tx
                        .query(
                            "SELECT id, CASE WHEN seq > $1 THEN doc END FROM workspace_docs",
                            &[&since_i],
                        )
                        .await
                        .map_err(pg)?
                    {
                        let id: String = row.get(0);
                        if let Some(doc) = row.get::<_, Option<String>>(1) {
                            written.push((id.clone(), doc));
                        }
                        ids.insert(id);
                    }
                    Some(TopologyChanges {
                        revision: to_u64(meta.get(0)),
                        catalog: meta.get(1),
                        ids,
                        written,
                    })
                }
            };
            let changes = Changes {
                seq,
                topology,
                gateways: read_rows(&tx, since_i).await?,
                health: read_health(&tx).await?,
            };
            tx.commit().await.map_err(pg)?;
            Ok(Some(changes))
        })
    }

    fn add_workspace_credential(
        &self,
        workspace: &WorkspaceId,
        digest: &Digest,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg)?;
            // Audit entries are numbered in commit order: every writer of one holds
            // the sequence's row lock.
            tx.execute("SELECT seq FROM store_seq WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(pg)?;
            tx.execute(
                "INSERT INTO credentials (digest, kind, subject) VALUES ($1, 'workspace', $2)",
                &[&&digest[..], &workspace.as_str()],
            )
            .await
            .map_err(pg)?;
            insert_audit(&tx, audit).await?;
            tx.commit().await.map_err(pg)?;
            Ok(())
        })
    }

    fn audit(
        &self,
        after: u64,
        limit: u32,
        workspace: Option<&WorkspaceId>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT seq, at_unix_ms, credential_id, credential_kind, object_kind, workspace,
                     object_id, old_revision, new_revision, diff FROM audit
                     WHERE seq > $1 AND ($2::text IS NULL OR workspace = $2) ORDER BY seq LIMIT $3",
                    &[&to_i64(after), &workspace.map(|w| w.as_str()), &i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .into_iter()
                .map(|r| AuditEntry {
                    seq: to_u64(r.get(0)),
                    at_unix_ms: to_u64(r.get(1)),
                    credential_id: r.get(2),
                    credential_kind: r.get(3),
                    object: nanami_control::AuditObject {
                        kind: r.get(4),
                        workspace: r.get(5),
                        id: r.get(6),
                    },
                    old_revision: r.get(7),
                    new_revision: r.get(8),
                    diff: r.get(9),
                })
                .collect())
        })
    }

    fn put_observed(
        &self,
        gateway: &GatewayId,
        now_ms: u64,
        report: &str,
    ) -> Result<(), StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO observed (gateway, received_unix_ms, report, seq)
                     VALUES ($1, $2, $3, nextval('observed_seq'))
                     ON CONFLICT (gateway) DO UPDATE SET received_unix_ms = excluded.received_unix_ms,
                     report = excluded.report, seq = excluded.seq",
                    &[&gateway.as_str(), &to_i64(now_ms), &report],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn observed_since(&self, cursor: u64, limit: u32) -> Result<Vec<ObservedRow>, StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .query(
                    "SELECT seq, gateway, received_unix_ms, report FROM observed
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&to_i64(cursor), &i64::from(limit)],
                )
                .await
                .map_err(pg)?
                .into_iter()
                .map(|r| {
                    Ok(ObservedRow {
                        seq: to_u64(r.get(0)),
                        gateway: gateway_id("observed", r.get(1))?,
                        received_unix_ms: to_u64(r.get(2)),
                        report: r.get(3),
                    })
                })
                .collect()
        })
    }

    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let held = client
                .query_opt(
                    "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
                     INSERT INTO leases (name, holder, expires_unix_ms)
                     SELECT $1, $2, ms + $3 FROM now
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     expires_unix_ms = excluded.expires_unix_ms
                     WHERE leases.holder = excluded.holder
                        OR leases.expires_unix_ms <= (SELECT ms FROM now)
                     RETURNING holder",
                    &[&name, &holder, &to_i64(ttl_ms)],
                )
                .await
                .map_err(pg)?;
            Ok(held.is_some_and(|r| r.get::<_, &str>(0) == holder))
        })
    }

    fn add_token(
        &self,
        digest: &Digest,
        subject: &Subject,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (kind, id) = subject_parts(subject);
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO enrolment_tokens (digest, kind, subject, expires_at)
                     VALUES ($1, $2, $3, $4)",
                    &[&&digest[..], &kind, &id, &to_i64(expires_at)],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn token_subject(&self, token: &Digest, now: u64) -> Result<Option<Subject>, StoreError> {
        let row = self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .query_opt(
                    "SELECT kind, subject FROM enrolment_tokens
                     WHERE digest = $1 AND used_at IS NULL AND expires_at > $2",
                    &[&&token[..], &to_i64(now)],
                )
                .await
                .map_err(pg)
        })?;
        row.map(|r| parse_subject(r.get(0), r.get(1))).transpose()
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
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg)?;
            let spent = tx
                .execute(
                    "UPDATE enrolment_tokens SET used_at = $1
                     WHERE digest = $2 AND used_at IS NULL AND expires_at > $1
                     AND kind = $3 AND subject = $4",
                    &[&to_i64(now), &&token[..], &kind, &id],
                )
                .await
                .map_err(pg)?;
            if spent != 1 {
                return Ok(Redeemed::Refused);
            }
            tx.execute(
                "DELETE FROM credentials WHERE kind = $1 AND subject = $2",
                &[&kind, &id],
            )
            .await
            .map_err(pg)?;
            tx.execute(
                "INSERT INTO credentials (digest, kind, subject, public_key) VALUES ($1, $2, $3, $4)",
                &[&&credential[..], &kind, &id, &key.to_base64()],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(Redeemed::Enrolled(subject.clone()))
        })
    }

    fn expire_tokens(&self, before: u64) -> Result<u64, StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "DELETE FROM enrolment_tokens WHERE expires_at <= $1 OR used_at <= $1",
                    &[&to_i64(before)],
                )
                .await
                .map_err(pg)
        })
    }

    fn set_api_credential(&self, principal: &Principal, digest: &Digest) -> Result<(), StoreError> {
        let kind = api_kind(principal)?;
        self.run(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg)?;
            tx.execute("DELETE FROM credentials WHERE kind = $1", &[&kind])
                .await
                .map_err(pg)?;
            tx.execute(
                "INSERT INTO credentials (digest, kind, subject) VALUES ($1, $2, '')",
                &[&&digest[..], &kind],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(())
        })
    }

    fn principal(&self, digest: &Digest) -> Result<Option<(Principal, Digest)>, StoreError> {
        let row = self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .query_opt(
                    "SELECT digest, kind, subject FROM credentials WHERE digest = $1",
                    &[&&digest[..]],
                )
                .await
                .map_err(pg)
        })?;
        row.map(|r| principal_of(r.get(0), r.get(1), r.get(2)))
            .transpose()
    }

    fn status(&self) -> Result<SchemaStatus, StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let has_versions: bool = client
                .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
                .await
                .map_err(pg)?
                .get(0);
            let version = if has_versions {
                schema_version(&client).await?
            } else {
                0
            };
            if version != PG_SCHEMA {
                // Not this binary's schema: its tables are not read.
                return Ok(SchemaStatus {
                    version,
                    known: PG_SCHEMA,
                    seq: 0,
                    revision: 0,
                });
            }
            let revision: Option<i64> = client
                .query_opt("SELECT revision FROM topology_meta WHERE id = 1", &[])
                .await
                .map_err(pg)?
                .map(|r| r.get(0));
            Ok(SchemaStatus {
                version,
                known: PG_SCHEMA,
                seq: read_seq(&client).await?,
                revision: revision.map(to_u64).unwrap_or(0),
            })
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.clone())
    }
}
