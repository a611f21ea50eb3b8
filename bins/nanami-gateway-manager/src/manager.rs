//! The manager's state: the topology, every gateway's compiled state and
//! generation, heartbeats and health, observed reports. Memory is what is served;
//! the [`Store`] is written before a topology change is published, and liveness
//! verdicts take effect even when the store cannot write (then they are stored as
//! soon as it can, and status shows the error meanwhile).
//!
//! # Locks
//!
//! Two locks, one order, and no store I/O or compile under the in-memory lock:
//! - `write` serializes every change (topology, health verdicts, generation
//!   re-issues). Its holder snapshots what it needs, compiles and writes the store
//!   with no other lock held, then installs the result. Callers run it on a
//!   blocking thread, never on the async executor.
//! - `inner` is the published state. It is held only to copy values out or to
//!   install them; nothing that blocks (the store, a compile) runs under it, and
//!   no other lock is taken while it is held.
//!
//! The store's own connection lock is therefore only ever taken after `write` or
//! alone: the lock-order cycle of earlier versions (the store's lock, then the
//! in-memory one, in `enrol`; the reverse in reports and health ticks) cannot form.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nanami_api::wire::{
    AuditEntry, AuditObject, CredentialKind, CredentialResponse, EnrolResponse, GatewayStatus,
    GenerationFork, Liveness, ObservedRecord, ObservedReport, PathHealth, RegionView, Subject,
    TopologyResponse, WorkspaceView, WriteResponse,
};
use nanami_control::movement::placement_changes;
use nanami_control::verdict::{handle_tick, moved_workspaces, reported_unhealthy, unhealthy_pairs};
use nanami_control::{
    compile_changed, gateways_in_scope, Compiled, Docs, Edit, EditError, Precondition, Principal,
    Scope, WriteError,
};
use nanami_model::doc::{RegionDoc, WorkspaceDoc};
use nanami_model::movement::Movement;
use nanami_model::ErrorKind;
use nanami_model::{
    compile_node, compile_workspace_nodes, explain_gateway, explain_node, Document, ExplainError,
    GatewayExplanation, GatewayId, GatewayState, Health, NetworkId, NodeConfig, NodeExplanation,
    NodeId, PublicKey, Topology, WorkspaceId,
};
use tokio::sync::watch;
use tracing::{info, info_span, warn};

use crate::auth;
use crate::history::{History, MovementRecord, Trigger};
use crate::store::{
    Changes, GatewayRow, Redeemed, Store, StoreError, StoredTopology, TopologyChanges,
    TopologyWrite, NO_TARGETS,
};

pub use nanami_control::content_digest;

/// Heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// How often daemons are expected to report.
    pub report_interval: Duration,
    /// Reports a gateway may miss before it is `Offline` and its clients fail over.
    /// Three tolerates one lost report and one slow one without flapping.
    pub missed_reports: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(10),
            missed_reports: 3,
        }
    }
}

impl HealthConfig {
    /// Silence longer than this makes a gateway offline.
    pub fn offline_after(&self) -> Duration {
        self.report_interval.saturating_mul(self.missed_reports)
    }
}

/// The longest enrolment token lifetime accepted (30 days).
pub const MAX_TOKEN_TTL: u64 = 30 * 24 * 3600;

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The topology document is unreadable or invalid; nothing changed.
    #[error("invalid topology: {message}")]
    InvalidTopology {
        /// Summary.
        message: String,
        /// Every problem with its path.
        issues: Vec<String>,
    },
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such gateway or node in the topology.
    #[error("{0} is not in the topology")]
    Unknown(String),
    /// A node's configuration could not be compiled (not active, a gateway node).
    #[error("{0}")]
    Compile(String),
    /// A request's content is wrong (a report that contradicts what the manager
    /// knows, a token lifetime out of range); nothing changed.
    #[error("{0}")]
    BadRequest(String),
    /// The enrolment token is unknown, expired or used, or the key is not the
    /// node's; nothing was spent.
    #[error(
        "enrolment refused: the token is unknown, expired or used, or the key is not the node's"
    )]
    EnrolmentRefused,
    /// The object (or its workspace) does not exist, or is hidden from this
    /// credential; nothing changed.
    #[error("{0}")]
    NotFound(String),
    /// The object's revision is not the one the write expected (`If-Match`);
    /// nothing changed.
    #[error("{message}")]
    PreconditionFailed {
        /// What happened, for people.
        message: String,
        /// The object's current revision (`None`: it does not exist).
        current: Option<String>,
    },
    /// The token is for someone else than the enrolling machine says it is;
    /// nothing was spent or revoked.
    #[error("enrolment refused: this token is for {token}, not {expected}; nothing was spent")]
    WrongSubject {
        /// Who the token is for.
        token: Subject,
        /// Who the enrolling machine is.
        expected: Subject,
    },
}

impl ManagerError {
    /// The store's errors say their own kind; every other refusal is about the
    /// request ([`ErrorKind::BadInput`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::Store(e) => e.kind(),
            ManagerError::InvalidTopology { .. }
            | ManagerError::Unknown(_)
            | ManagerError::Compile(_)
            | ManagerError::BadRequest(_)
            | ManagerError::EnrolmentRefused
            | ManagerError::NotFound(_)
            | ManagerError::PreconditionFailed { .. }
            | ManagerError::WrongSubject { .. } => ErrorKind::BadInput,
        }
    }
}

/// One gateway's served generation.
struct Entry {
    row: GatewayRow,
    /// [`content_digest`] of the row's state and targets.
    digest: String,
    /// The `GatewayDesired` body, serialized once per generation.
    body: Arc<[u8]>,
    peers: usize,
}

impl Entry {
    fn new(row: GatewayRow, peers: usize) -> Self {
        // Without targets or an uplink the body is exactly a `Desired` (what daemons
        // from before health targets accept); each is added only when present.
        let mut body = format!(
            "{{\"generation\":{},\"state\":{}",
            row.generation, row.state_json
        );
        if row.targets_json != NO_TARGETS {
            body.push_str(&format!(",\"health_targets\":{}", row.targets_json));
        }
        if let Some(uplink) = &row.uplink {
            // A JSON string always serializes.
            let quoted = serde_json::to_string(uplink).unwrap_or_else(|_| "null".to_owned());
            body.push_str(&format!(",\"uplink\":{quoted}"));
        }
        body.push('}');
        Self {
            digest: content_digest(&row.state_json, &row.targets_json, row.uplink.as_deref()),
            body: Arc::from(body.into_bytes()),
            row,
            peers,
        }
    }

    /// An entry for a stored row (the peer count parsed from its state).
    fn from_stored(row: GatewayRow) -> Self {
        let peers = serde_json::from_str::<GatewayState>(&row.state_json)
            .map(|s| s.peer_count())
            .unwrap_or(0);
        Self::new(row, peers)
    }

    fn generation(&self) -> u64 {
        self.row.generation
    }
}

#[derive(Default)]
struct Inner {
    topology: Option<Arc<Topology>>,
    /// The documents behind `topology` (what the object API reads and edits).
    docs: Docs,
    revision: u64,
    gateways: BTreeMap<GatewayId, Entry>,
    offline: BTreeSet<GatewayId>,
    /// (gateway, network) pairs whose forwarding path the gateway's latest report
    /// says is down, for online gateways only (see [`unhealthy_pairs`]).
    unhealthy: BTreeSet<(GatewayId, NetworkId)>,
    /// When each gateway was last heard from, in [`Manager::clock_ms`].
    last_seen: BTreeMap<GatewayId, u64>,
    /// Each gateway's latest forwarding-path verdicts (from its latest report).
    paths: BTreeMap<GatewayId, BTreeMap<NetworkId, PathHealth>>,
    observed: BTreeMap<GatewayId, ObservedRecord>,
    keys: BTreeMap<GatewayId, PublicKey>,
    /// Client configurations compiled since the last change, by workspace (one
    /// assignment serves every client of a workspace; dropped by every publish).
    clients: BTreeMap<WorkspaceId, Arc<BTreeMap<NodeId, NodeConfig>>>,
    /// Bumped by every publish: a client configuration compiled from an older
    /// state is not cached.
    version: u64,
    /// Gateways whose last report applied the generation served now (kept as
    /// reports and publishes arrive, so `/metrics` costs the same at any size).
    converged: BTreeSet<GatewayId>,
    /// Gateways of the topology (the others are served the empty state).
    in_topology: usize,
    /// The newest generation fork of each gateway that had one.
    forks: BTreeMap<GatewayId, GenerationFork>,
    /// Rows served but not stored yet (the store failed); written with the next
    /// successful change or retried by the next health tick.
    unpersisted: BTreeMap<GatewayId, GatewayRow>,
    /// The offline set in force is not stored yet.
    offline_unpersisted: bool,
    /// The store's last error while anything above is unpersisted.
    store_error: Option<String>,
    /// The store's change sequence this state is at.
    seq: u64,
    /// Where reading other managers' reports goes on from (shared stores).
    observed_cursor: u64,
    /// Each client's recent changes of primary gateway.
    history: History,
}

impl Inner {
    fn refresh_converged(&mut self, id: &GatewayId) {
        let applied = self
            .observed
            .get(id)
            .and_then(|o| o.report.status.applied_generation);
        match self.gateways.get(id) {
            Some(e) if applied == Some(e.generation()) => self.converged.insert(id.clone()),
            Some(_) | None => self.converged.remove(id),
        };
    }

    /// The generation and digest of each of `ids` that has one: what the next
    /// compile of them compares with.
    fn known(&self, ids: &BTreeSet<GatewayId>) -> BTreeMap<GatewayId, (u64, String)> {
        ids.iter()
            .filter_map(|id| {
                let e = self.gateways.get(id)?;
                Some((id.clone(), (e.generation(), e.digest.clone())))
            })
            .collect()
    }

    fn health(&self) -> Health {
        Health {
            offline: self.offline.clone(),
            unhealthy: self.unhealthy.clone(),
        }
    }
}

/// An explanation's error as the manager's: unknown ids are [`ManagerError::Unknown`]
/// (404), a node that is not a placed client is [`ManagerError::Compile`] (409).
#[allow(clippy::wildcard_enum_match_arm)] // `ExplainError` is non_exhaustive: see the last arm
fn explain_error(e: ExplainError) -> ManagerError {
    match e {
        ExplainError::UnknownNode(node) => ManagerError::Unknown(format!("node {node}")),
        ExplainError::UnknownGateway(gateway) => {
            ManagerError::Unknown(format!("gateway {gateway}"))
        }
        // Not active, a gateway's machine, or a reason the model adds later
        // (`ExplainError` is non_exhaustive): still a conflict, never a 500.
        e => ManagerError::Compile(e.to_string()),
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful enrolments.
    pub enrolments: AtomicU64,
    /// Refused enrolments.
    pub enrolments_refused: AtomicU64,
    /// Observed reports accepted.
    pub reports: AtomicU64,
    /// Desired states served.
    pub desired_served: AtomicU64,
    /// Requests refused for authentication (401) or authorization (403).
    pub auth_refused: AtomicU64,
    /// Bodies refused as malformed.
    pub bad_requests: AtomicU64,
    /// Store writes that failed.
    pub store_errors: AtomicU64,
    /// Generation forks noticed (see [`GenerationFork`]).
    pub generation_forks: AtomicU64,
    /// Desired-state long-polls waiting for a newer generation now (a gauge).
    pub desired_waiting: AtomicU64,
    /// Node-configuration long-polls waiting for a change now (a gauge).
    pub node_config_waiting: AtomicU64,
}

/// Counts a long-poll as waiting while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One gateway's traffic and probed networks, from its last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTelemetry {
    /// The networks whose forwarding path it probes.
    pub probed: BTreeSet<NetworkId>,
    /// Its peers' counters.
    pub peers: Vec<PeerSeries>,
}

/// One peer of a gateway, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSeries {
    /// The peer's public key.
    pub key: PublicKey,
    /// The node of the gateway's workspace with that key, if any (and asked for).
    pub node: Option<NodeId>,
    /// Its counters and newest handshake.
    pub telemetry: nanami_reconcile::PeerTelemetry,
}

/// Gauges for `/metrics`, read in constant time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The topology revision in force.
    pub revision: u64,
    /// Gateways with a desired state (including removed ones).
    pub gateways: usize,
    /// Gateways of the topology that report.
    pub online: usize,
    /// Gateways of the topology that missed too many reports.
    pub offline: usize,
    /// Gateways no longer in the topology.
    pub removed: usize,
    /// (gateway, network) pairs whose forwarding path is down.
    pub paths_unhealthy: usize,
    /// Gateways whose observed generation is the desired one.
    pub converged: usize,
    /// Whether everything served is stored.
    pub store_ok: bool,
}

/// The manager.
pub struct Manager {
    store: Arc<dyn Store>,
    health: HealthConfig,
    /// Serializes changes (see the module's notes on locks).
    write: Mutex<()>,
    inner: Mutex<Inner>,
    epoch: watch::Sender<u64>,
    /// The origin of [`Manager::clock_ms`].
    started: Instant,
    /// This manager's name for leases on a shared store (host, process, start).
    holder: String,
    /// Whether this manager held the health lease at its last tick.
    leading: AtomicBool,
    /// When expired tokens were last deleted ([`Manager::clock_ms`]; 0: never).
    tokens_swept_at: AtomicU64,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The version of a client's configuration: the first 16 bytes of the SHA-256 of
/// its JSON, in hex (the JSON is deterministic: ordered maps, no clock).
pub fn config_version(config: &NodeConfig) -> String {
    use sha2::{Digest as _, Sha256};
    // A NodeConfig is ordered maps, strings and integers: serializing it cannot
    // fail, and if it ever did the digest of its Debug form still tells versions
    // apart (never an empty body shared by every config).
    let json = serde_json::to_vec(config).unwrap_or_else(|_| format!("{config:?}").into_bytes());
    hex16(&Sha256::digest(&json))
}

/// A report's forwarding-path verdicts.
fn path_verdicts(report: &ObservedReport) -> BTreeMap<NetworkId, PathHealth> {
    report
        .health
        .iter()
        .map(|(network, h)| (network.clone(), h.state))
        .collect()
}

/// Who made a write, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// Who the credential authenticates as.
    pub principal: Principal,
    /// The credential's id: a prefix of its digest, never the secret.
    pub credential_id: String,
}

impl Writer {
    /// The manager itself, as the platform: its `--topology` file.
    pub fn local() -> Self {
        Self {
            principal: Principal::Platform,
            credential_id: "local".to_owned(),
        }
    }
}

/// Credentials an edit ends: a revoked or deleted node's, a deleted workspace's.
fn revoked_by(edit: &Edit) -> Vec<Principal> {
    match edit {
        Edit::SetNodeStatus { node, status, .. } if status == "revoked" => {
            NodeId::new(node).map(Principal::Node).into_iter().collect()
        }
        Edit::DeleteNode(_, node) => NodeId::new(node).map(Principal::Node).into_iter().collect(),
        Edit::DeleteWorkspace(ws) => WorkspaceId::new(ws)
            .map(Principal::Workspace)
            .into_iter()
            .collect(),
        Edit::PutRegion(_)
        | Edit::DeleteRegion(_)
        | Edit::PutWorkspace(_)
        | Edit::PutNetwork(..)
        | Edit::DeleteNetwork(..)
        | Edit::PutNode(..)
        | Edit::SetNodeStatus { .. }
        | Edit::RotateKey { .. }
        | Edit::PutGateway(..)
        | Edit::DeleteGateway(..)
        | Edit::Import(_) => Vec::new(),
    }
}

/// A validation failure as the manager's error, every issue with its path.
fn invalid(e: nanami_model::ValidationErrors) -> ManagerError {
    ManagerError::InvalidTopology {
        message: format!("{} problem(s)", e.0.len()),
        issues: e
            .0
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect(),
    }
}

/// The stored catalog and workspace documents, parsed.
fn parse_documents<'a>(
    catalog: &str,
    workspaces: impl IntoIterator<Item = &'a String>,
) -> Result<(Vec<RegionDoc>, Vec<WorkspaceDoc>), StoreError> {
    let regions = serde_json::from_str(catalog).map_err(|e| corrupt_row("topology_meta", e))?;
    let workspaces = workspaces
        .into_iter()
        .map(|json| serde_json::from_str::<WorkspaceDoc>(json))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt_row("workspace_docs", e))?;
    Ok((regions, workspaces))
}

/// The documents of a stored topology.
fn docs_of(stored: &StoredTopology) -> Result<Docs, StoreError> {
    let (regions, workspaces) = parse_documents(
        &stored.catalog,
        stored.workspaces.iter().map(|(_, json)| json),
    )?;
    Ok(Docs::new(regions, workspaces))
}

/// What a change must store: the rows still unpersisted and the new ones.
fn rows_to_store(
    unpersisted: BTreeMap<GatewayId, GatewayRow>,
    changed: &Compiled,
) -> BTreeMap<GatewayId, GatewayRow> {
    let mut rows = unpersisted;
    for (id, (row, _)) in changed {
        rows.insert(id.clone(), row.clone());
    }
    rows
}

/// Attempts of one write when other managers keep writing first.
const WRITE_ATTEMPTS: u32 = 5;

/// The lease that makes one manager of those sharing a store decide health
/// verdicts and expire tokens.
const HEALTH_LEASE: &str = "health";

/// The shortest health lease: a lease renewed every tick must outlive a few ticks.
const MIN_LEASE_MS: u64 = 1_000;

/// Reports read from a shared store per tick at most (the next tick goes on).
const REPORTS_PER_TICK: u32 = 10_000;

/// A name for this manager process, unique among those sharing a store.
fn lease_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The documents and topology after another manager's stored change.
fn follow(
    docs: &Docs,
    topology: Option<&Topology>,
    stored: TopologyChanges,
) -> Result<(u64, Docs, Topology), StoreError> {
    let (regions, written) =
        parse_documents(&stored.catalog, stored.written.iter().map(|(_, json)| json))?;
    let (docs, topology) =
        nanami_control::follow_stored(docs, topology, regions, &stored.ids, written)
            .map_err(|e| corrupt_row("workspace_docs", e))?;
    Ok((stored.revision, docs, topology))
}

fn corrupt_row(table: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        message: e.to_string(),
    }
}

impl Manager {
    /// Loads the manager from `store`. Gateways that were online get one offline
    /// period of grace from now (the manager, not they, was away).
    pub fn load(store: Arc<dyn Store>, health: HealthConfig) -> Result<Self, ManagerError> {
        let snap = store.load()?;
        let started = Instant::now();
        let now = 0;
        let mut inner = Inner {
            offline: snap.offline,
            keys: snap.gateway_keys,
            seq: snap.seq,
            observed_cursor: snap.observed_cursor,
            ..Inner::default()
        };
        for (id, row) in snap.gateways {
            inner.gateways.insert(id, Entry::from_stored(row));
        }
        for (id, (at, report)) in snap.observed {
            match serde_json::from_str::<ObservedReport>(&report) {
                Ok(report) => {
                    inner.paths.insert(id.clone(), path_verdicts(&report));
                    inner.observed.insert(
                        id,
                        ObservedRecord {
                            received_unix_ms: at,
                            report,
                        },
                    );
                }
                Err(e) => warn!(gateway = %id, error = %e, "ignoring an unreadable stored report"),
            }
        }
        if let Some(stored) = snap.topology {
            let docs = docs_of(&stored)?;
            let topology =
                Topology::from_document(&docs.to_document()).map_err(|e| StoreError::Corrupt {
                    table: "workspace_docs",
                    message: e.to_string(),
                })?;
            for id in topology.gateway_ids() {
                if !inner.offline.contains(id) {
                    inner.last_seen.insert(id.clone(), now);
                }
            }
            inner.unhealthy =
                unhealthy_pairs(&topology, &inner.paths, &inner.offline, &BTreeSet::new());
            inner.in_topology = topology.gateway_count();
            inner.topology = Some(Arc::new(topology));
            inner.docs = docs;
            inner.revision = stored.revision;
        }
        let ids: Vec<GatewayId> = inner.gateways.keys().cloned().collect();
        for id in &ids {
            inner.refresh_converged(id);
        }
        info!(
            revision = inner.revision,
            gateways = inner.gateways.len(),
            "manager state loaded"
        );
        let (epoch, _) = watch::channel(0);
        Ok(Self {
            store,
            health,
            write: Mutex::new(()),
            inner: Mutex::new(inner),
            epoch,
            started,
            holder: lease_holder(),
            leading: AtomicBool::new(false),
            tokens_swept_at: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    /// Milliseconds since the manager loaded, on the monotonic clock: the time
    /// heartbeats are judged in.
    fn clock_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change to `Inner` is a set of plain assignments after all fallible
        // work is done, so a panic elsewhere cannot leave it half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The heartbeat settings.
    pub fn health_config(&self) -> HealthConfig {
        self.health
    }

    /// Installs compiled rows and wakes every long-poll (desired states and node
    /// configurations): called after every topology or health change, even one that
    /// changed no gateway, since a client's configuration may change alone (the order
    /// of its gateways).
    fn publish(&self, inner: &mut Inner, entries: Vec<(GatewayId, Entry)>) {
        inner.clients.clear();
        inner.version += 1;
        for (id, entry) in entries {
            info!(gateway = %id, generation = entry.generation(), "new desired generation");
            inner.gateways.insert(id.clone(), entry);
            inner.refresh_converged(&id);
        }
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Adds `moves` to the history, after [`Manager::publish`] installed the
    /// generations that carry them.
    fn record_moves(inner: &mut Inner, moves: Vec<Movement>, trigger: Trigger) {
        if moves.is_empty() {
            return;
        }
        info!(clients = moves.len(), ?trigger, "clients moved");
        let (at_unix_ms, revision) = (now_ms(), inner.revision);
        let records: Vec<MovementRecord> = moves
            .into_iter()
            .map(|movement| MovementRecord {
                at_unix_ms,
                revision,
                generation: movement
                    .to
                    .as_ref()
                    .and_then(|g| inner.gateways.get(g))
                    .map(Entry::generation),
                trigger,
                movement,
            })
            .collect();
        inner.history.record(records);
    }

    /// Records the outcome of [`Store::put_health`]; returns whether what it
    /// wrote may be served. From a store of its own a manager serves it anyway
    /// (stored later); managers sharing a store serve only what is stored, as the
    /// others do.
    fn stored_health(
        &self,
        inner: &mut Inner,
        result: Result<u64, StoreError>,
        rows: BTreeMap<GatewayId, GatewayRow>,
    ) -> bool {
        match result {
            Ok(seq) => {
                inner.seq = seq;
                self.stored(inner, Ok(()), rows, true);
                true
            }
            Err(e) if self.store.shared() => {
                self.stored(inner, Err(e), BTreeMap::new(), false);
                false
            }
            Err(e) => {
                self.stored(inner, Err(e), rows, true);
                true
            }
        }
    }

    /// Records the outcome of a store write of what is served.
    fn stored(
        &self,
        inner: &mut Inner,
        result: Result<(), StoreError>,
        rows: BTreeMap<GatewayId, GatewayRow>,
        offline_written: bool,
    ) {
        match result {
            Ok(()) => {
                for id in rows.keys() {
                    inner.unpersisted.remove(id);
                }
                if offline_written {
                    inner.offline_unpersisted = false;
                }
                if inner.store_error.is_some()
                    && inner.unpersisted.is_empty()
                    && !inner.offline_unpersisted
                {
                    info!("the store writes again: everything served is stored");
                    inner.store_error = None;
                }
            }
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if inner.store_error.is_none() {
                    warn!(error = %e, "the store cannot write: verdicts and generations take effect and are served, and are stored once it can");
                }
                inner.store_error = Some(e.to_string());
                inner.unpersisted.extend(rows);
                if offline_written {
                    inner.offline_unpersisted = true;
                }
            }
        }
    }

    /// Parses and applies a topology document (YAML or JSON, told apart by its
    /// first character). Nothing changes unless it is valid and stored.
    pub fn put_topology_text(&self, text: &str) -> Result<TopologyResponse, ManagerError> {
        let document = if text.trim_start().starts_with('{') {
            Document::from_json(text)
        } else {
            Document::from_yaml(text)
        }
        .map_err(|e| ManagerError::InvalidTopology {
            message: e.to_string(),
            issues: Vec::new(),
        })?;
        self.put_topology(document)
    }

    /// Applies a topology document (an import) as the local platform: what the
    /// `--topology` file and tests use. See [`Manager::write`].
    pub fn put_topology(&self, document: Document) -> Result<TopologyResponse, ManagerError> {
        let written = self.write(&Writer::local(), Edit::Import(document), &Precondition::Any)?;
        Ok(TopologyResponse {
            revision: written.topology_revision,
            changed: written.changed,
        })
    }

    /// Applies one edit of the topology: checks its precondition, validates the
    /// whole resulting document, compiles the gateways it can affect (those of the
    /// workspaces it touches), bumps the generation of those whose state changed,
    /// stores all of it with its audit entry in one transaction, then publishes.
    /// Anything refused (a stale revision, an invalid result, a store failure)
    /// changes nothing: no row, no generation, no audit entry. Blocking (compile and
    /// store): call it from a blocking thread.
    pub fn write(
        &self,
        writer: &Writer,
        edit: Edit,
        precondition: &Precondition,
    ) -> Result<WriteResponse, ManagerError> {
        let object = edit.object();
        let _span = info_span!("write", %object, by = writer.principal.kind()).entered();
        let _write = self.write_lock();
        // On a shared store another manager may have written since this one last
        // caught up: catch up, decide, and if another write still came first
        // (the store refuses a write decided on an old state), again.
        let mut behind = self.store.shared();
        for _ in 0..WRITE_ATTEMPTS {
            if behind {
                self.catch_up_locked()?;
            }
            match self.write_once(writer, edit.clone(), precondition) {
                Err(ManagerError::Store(StoreError::Stale { expected, current })) => {
                    info!(
                        expected,
                        current, "another manager wrote first; deciding again"
                    );
                    behind = true;
                }
                result => return result,
            }
        }
        self.catch_up_locked()?;
        self.write_once(writer, edit, precondition)
    }

    /// One attempt of [`Manager::write`], under the write lock.
    fn write_once(
        &self,
        writer: &Writer,
        edit: Edit,
        precondition: &Precondition,
    ) -> Result<WriteResponse, ManagerError> {
        let object = edit.object();
        let revoke = revoked_by(&edit);
        let (before_docs, before, health_before, seq) = {
            let inner = self.lock();
            (
                inner.docs.clone(),
                inner.topology.clone(),
                inner.health(),
                inner.seq,
            )
        };
        let prepared =
            nanami_control::handle_write(&before_docs, before.as_deref(), edit, precondition)
                .map_err(|e| {
                    let message = e.to_string();
                    match e {
                        WriteError::Edit(EditError::PreconditionFailed { current, .. }) => {
                            ManagerError::PreconditionFailed { message, current }
                        }
                        WriteError::Edit(EditError::NotFound(_)) => ManagerError::NotFound(message),
                        WriteError::Invalid(e) => invalid(e),
                    }
                })?;
        let topology = &prepared.topology;
        let scope = prepared.scope();
        let (ids, known, health, unpersisted) = {
            let inner = self.lock();
            let ids = prepared.gateways(before.as_deref(), inner.gateways.keys());
            let known = inner.known(&ids);
            // A gateway new to the topology gets one offline period of grace.
            let offline: BTreeSet<GatewayId> = inner
                .offline
                .iter()
                .filter(|g| topology.gateway(g).is_some())
                .cloned()
                .collect();
            let unhealthy = match scope {
                Scope::All => unhealthy_pairs(topology, &inner.paths, &offline, &inner.unhealthy),
                // Only the gateways in scope can have changed what they probe.
                Scope::Workspaces(_) => {
                    let in_scope = ids.iter().filter_map(|g| Some((g, inner.paths.get(g)?)));
                    inner
                        .unhealthy
                        .iter()
                        .filter(|(g, _)| !ids.contains(g))
                        .cloned()
                        .chain(unhealthy_pairs(
                            topology,
                            in_scope,
                            &offline,
                            &inner.unhealthy,
                        ))
                        .collect()
                }
            };
            (
                ids,
                known,
                Health { offline, unhealthy },
                inner.unpersisted.clone(),
            )
        };
        let changed = compile_changed(&known, &ids, topology, &health)
            .map_err(|e| ManagerError::Compile(e.to_string()))?;
        let rows = rows_to_store(unpersisted, &changed);
        let applied = &prepared.applied;
        let stored = prepared
            .stored()
            .map_err(|e| ManagerError::Compile(e.to_string()))?;
        let audit = AuditEntry::new(applied, &writer.principal, &writer.credential_id, now_ms());
        // A change that cannot be stored is refused whole: nothing changes.
        let committed = self.store.put_topology(&TopologyWrite {
            expected_seq: seq,
            topology_changed: !applied.is_noop(),
            catalog: stored.catalog.as_deref(),
            workspaces: &stored.workspaces,
            replace_all: stored.replace_all,
            now_ms: audit.at_unix_ms,
            changed: &rows,
            health: &health,
            audit: Some(&audit),
            revoke: &revoke,
        })?;
        let revision = committed.revision;
        let moves = placement_changes(before.as_deref(), &health_before, topology, &health);
        let response = WriteResponse {
            object: AuditObject::from(&object),
            revision: applied.new_revision.clone(),
            topology_revision: revision,
            changed: changed
                .iter()
                .map(|(id, (r, _))| (id.clone(), r.generation))
                .collect(),
        };
        let entries: Vec<(GatewayId, Entry)> = changed
            .into_iter()
            .map(|(id, (row, peers))| (id, Entry::new(row, peers)))
            .collect();
        let now = self.clock_ms();
        if revision != self.lock().revision {
            info!(revision, changed = entries.len(), diff = %applied.diff, "topology changed");
        }
        let nanami_control::Prepared {
            applied, topology, ..
        } = prepared;
        let mut inner = self.lock();
        // A gateway new to the topology gets one offline period of grace; one
        // known offline stays offline until it reports (a restart does not bring
        // it back for a period).
        for id in ids.iter().filter(|id| topology.gateway(id).is_some()) {
            if !health.offline.contains(id) {
                inner.last_seen.entry(id.clone()).or_insert(now);
            }
        }
        inner.offline = health.offline;
        inner.unhealthy = health.unhealthy;
        inner.in_topology = topology.gateway_count();
        inner.topology = Some(Arc::new(topology));
        inner.docs = applied.docs;
        inner.revision = revision;
        inner.seq = committed.seq;
        self.stored(&mut inner, Ok(()), rows, false);
        self.publish(&mut inner, entries);
        if let Some(topology) = inner.topology.clone() {
            inner.history.retain_in(&topology);
        }
        Self::record_moves(&mut inner, moves, Trigger::Revision);
        Ok(response)
    }

    /// Re-evaluates heartbeats and the latest reports' forwarding-path health; if
    /// the offline or the unhealthy set changed, recompiles and publishes. The new
    /// verdicts take effect even when the store cannot write them (the error is
    /// recorded and shown; the next tick retries). Returns whether the verdicts
    /// changed. Blocking (compile and store): call it from a blocking thread.
    pub fn health_tick(&self) -> bool {
        if self.store.shared() && !self.leading.load(Ordering::Relaxed) {
            // Another manager holds the health lease: its verdicts arrive as
            // changes.
            return false;
        }
        let _write = self.write_lock();
        let (topology, known, health_before, health, unpersisted, changed_verdicts, seq) = {
            let inner = self.lock();
            let Some(topology) = inner.topology.clone() else {
                return false;
            };
            let limit = u64::try_from(self.health.offline_after().as_millis()).unwrap_or(u64::MAX);
            let before = inner.health();
            let (after, changed_verdicts) = handle_tick(
                &topology,
                &inner.last_seen,
                &inner.paths,
                &before,
                self.clock_ms(),
                limit,
            );
            if !changed_verdicts {
                // Nothing new; retry storing what is served if the store failed.
                if inner.unpersisted.is_empty() && !inner.offline_unpersisted {
                    return false;
                }
            } else {
                for id in after.offline.difference(&before.offline) {
                    warn!(gateway = %id, "gateway offline: its clients fail over");
                }
                for id in before.offline.difference(&after.offline) {
                    info!(gateway = %id, "gateway back online");
                }
                for (id, network) in after.unhealthy.difference(&before.unhealthy) {
                    warn!(gateway = %id, %network, "forwarding path down: the network's clients move to another gateway");
                }
                for (id, network) in before.unhealthy.difference(&after.unhealthy) {
                    info!(gateway = %id, %network, "forwarding path healthy again");
                }
            }
            // A verdict moves clients only inside the gateway's workspace: only the
            // workspaces of gateways whose verdicts changed are recompiled.
            let moved = moved_workspaces(&topology, &before, &after);
            let ids = gateways_in_scope(Scope::Workspaces(&moved), None, &topology, []);
            let known = inner.known(&ids);
            (
                topology,
                (ids, known),
                before,
                after,
                inner.unpersisted.clone(),
                changed_verdicts,
                inner.seq,
            )
        };
        let _span = info_span!("health_tick", changed = changed_verdicts).entered();
        let (ids, known) = known;
        let changed = if changed_verdicts {
            match compile_changed(&known, &ids, &topology, &health) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "health change not compiled");
                    return false;
                }
            }
        } else {
            BTreeMap::new()
        };
        let rows = rows_to_store(unpersisted, &changed);
        let result = self.store.put_health(seq, &health, &rows);
        let moves = if changed_verdicts && result.is_ok() {
            placement_changes(Some(&topology), &health_before, &topology, &health)
        } else {
            Vec::new()
        };
        let entries: Vec<(GatewayId, Entry)> = changed
            .into_iter()
            .map(|(id, (row, peers))| (id, Entry::new(row, peers)))
            .collect();
        let mut inner = self.lock();
        // The next tick decides again when it was not stored.
        if !self.stored_health(&mut inner, result, rows) {
            return false;
        }
        if changed_verdicts {
            inner.offline = health.offline;
            inner.unhealthy = health.unhealthy;
            self.publish(&mut inner, entries);
            Self::record_moves(&mut inner, moves, Trigger::Health);
        }
        changed_verdicts
    }

    /// Brings this manager up to what other managers stored (a no-op on a store
    /// no other manager writes). Blocking (store, and the topology is rebuilt when
    /// it changed): call it from a blocking thread.
    pub fn catch_up(&self) -> Result<bool, ManagerError> {
        let _write = self.write_lock();
        self.catch_up_locked()
    }

    /// [`Manager::catch_up`] under the write lock.
    fn catch_up_locked(&self) -> Result<bool, ManagerError> {
        let (since, docs, topology, health_before) = {
            let inner = self.lock();
            (
                inner.seq,
                inner.docs.clone(),
                inner.topology.clone(),
                inner.health(),
            )
        };
        let Some(Changes {
            seq,
            topology: stored,
            gateways,
            health,
        }) = self.store.changes(since)?
        else {
            return Ok(false);
        };
        let _span = info_span!("catch_up", from = since, to = seq).entered();
        let followed = match stored {
            None => None,
            Some(t) => Some(follow(&docs, topology.as_deref(), t)?),
        };
        let entries: Vec<(GatewayId, Entry)> = gateways
            .into_iter()
            .map(|(id, row)| (id, Entry::from_stored(row)))
            .collect();
        let moves = match (&followed, &topology) {
            (Some((_, _, after)), before) => {
                placement_changes(before.as_deref(), &health_before, after, &health)
            }
            (None, Some(same)) => placement_changes(Some(same), &health_before, same, &health),
            (None, None) => Vec::new(),
        };
        let now = self.clock_ms();
        let mut inner = self.lock();
        if let Some((revision, docs, topology)) = followed {
            info!(revision, "topology changed by another manager");
            // A gateway new to this manager gets one offline period of grace.
            for id in topology.gateway_ids() {
                if !health.offline.contains(id) {
                    inner.last_seen.entry(id.clone()).or_insert(now);
                }
            }
            inner.in_topology = topology.gateway_count();
            inner.topology = Some(Arc::new(topology));
            inner.docs = docs;
            inner.revision = revision;
        }
        inner.offline = health.offline;
        inner.unhealthy = health.unhealthy;
        inner.seq = seq;
        self.publish(&mut inner, entries);
        if let Some(topology) = inner.topology.clone() {
            inner.history.retain_in(&topology);
        }
        Self::record_moves(&mut inner, moves, Trigger::Followed);
        Ok(true)
    }

    /// The manager's periodic work, one pass. On a store of its own: the health
    /// verdicts. On a shared store: catches up (a safety net under the change
    /// notifications), reads the reports other managers took, and renews the
    /// health lease; only its holder decides verdicts and expires tokens.
    /// Returns whether the verdicts changed. Blocking: call it from a blocking
    /// thread.
    pub fn tick(&self) -> bool {
        if self.store.shared() {
            match self.catch_up() {
                // The store answers: an error shown since it failed clears (nothing
                // unstored is served from a shared store).
                Ok(_) => self.stored(&mut self.lock(), Ok(()), BTreeMap::new(), false),
                Err(e) => warn!(error = %e, "cannot catch up with the store"),
            }
            self.follow_reports();
            let ttl = u64::try_from(self.health.report_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(MIN_LEASE_MS);
            let held = match self.store.try_lease(HEALTH_LEASE, &self.holder, ttl) {
                Ok(held) => held,
                Err(e) => {
                    warn!(error = %e, "cannot renew the health lease");
                    false
                }
            };
            if self.leading.swap(held, Ordering::Relaxed) != held {
                if held {
                    info!(holder = %self.holder, "this manager holds the health lease: it decides health verdicts");
                } else {
                    info!(holder = %self.holder, "health lease lost: another manager decides health verdicts");
                }
            }
            if !held {
                return false;
            }
        }
        self.expire_tokens();
        self.health_tick()
    }

    /// Deletes enrolment tokens expired or used a day ago, at most once a minute.
    fn expire_tokens(&self) {
        let now = self.clock_ms();
        let last = self.tokens_swept_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 60_000 {
            return;
        }
        self.tokens_swept_at.store(now.max(1), Ordering::Relaxed);
        match self
            .store
            .expire_tokens((now_ms() / 1000).saturating_sub(86_400))
        {
            Ok(0) => {}
            Ok(n) => info!(tokens = n, "expired enrolment tokens deleted"),
            Err(e) => warn!(error = %e, "cannot delete expired enrolment tokens"),
        }
    }

    /// Takes in the reports other managers stored (a shared store): each is a
    /// heartbeat of its gateway, unless it is older than the offline period.
    fn follow_reports(&self) {
        let cursor = self.lock().observed_cursor;
        let rows = match self.store.observed_since(cursor, REPORTS_PER_TICK) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "cannot read other managers' reports");
                return;
            }
        };
        if rows.is_empty() {
            return;
        }
        let limit = u64::try_from(self.health.offline_after().as_millis()).unwrap_or(u64::MAX);
        let (now, wall) = (self.clock_ms(), now_ms());
        let mut inner = self.lock();
        for row in rows {
            inner.observed_cursor = inner.observed_cursor.max(row.seq);
            let report = match serde_json::from_str::<ObservedReport>(&row.report) {
                Ok(report) => report,
                Err(e) => {
                    warn!(gateway = %row.gateway, error = %e, "ignoring an unreadable stored report");
                    continue;
                }
            };
            if wall.saturating_sub(row.received_unix_ms) < limit {
                inner.last_seen.insert(row.gateway.clone(), now);
            }
            inner
                .paths
                .insert(row.gateway.clone(), path_verdicts(&report));
            inner.observed.insert(
                row.gateway.clone(),
                ObservedRecord {
                    received_unix_ms: row.received_unix_ms,
                    report,
                },
            );
            inner.refresh_converged(&row.gateway);
        }
    }

    /// Whether this manager decides health verdicts (always, on a store of its
    /// own; the lease holder's, on a shared one).
    pub fn leads(&self) -> bool {
        !self.store.shared() || self.leading.load(Ordering::Relaxed)
    }

    /// Serves `gateway`'s current content again at a generation above `above` (a
    /// daemon runs a generation this manager did not issue with that content).
    fn reissue(&self, gateway: &GatewayId, above: u64) {
        let _write = self.write_lock();
        let (row, peers, health, seq) = {
            let inner = self.lock();
            let Some(entry) = inner.gateways.get(gateway) else {
                return;
            };
            if entry.generation() > above {
                return;
            }
            let row = GatewayRow {
                generation: above + 1,
                ..entry.row.clone()
            };
            (row, entry.peers, inner.health(), inner.seq)
        };
        let rows = BTreeMap::from([(gateway.clone(), row.clone())]);
        let result = self.store.put_health(seq, &health, &rows);
        let mut inner = self.lock();
        // The daemon reports again; the re-issue is decided again then.
        if !self.stored_health(&mut inner, result, rows) {
            return;
        }
        warn!(gateway = %gateway, generation = row.generation, "re-issued the current state above the daemon's generation");
        if let Some(fork) = inner.forks.get_mut(gateway) {
            fork.reissued_generation = row.generation;
        }
        self.publish(&mut inner, vec![(gateway.clone(), Entry::new(row, peers))]);
    }

    /// The current desired body of `gateway` with its digest, if its generation is
    /// above `after`.
    fn desired_now(&self, gateway: &GatewayId, after: Option<u64>) -> Option<Desired> {
        let inner = self.lock();
        let entry = inner.gateways.get(gateway)?;
        after
            .is_none_or(|a| entry.generation() > a)
            .then(|| Desired {
                generation: entry.generation(),
                digest: entry.digest.clone(),
                body: entry.body.clone(),
            })
    }

    /// Waits up to `wait` for a desired state of `gateway` newer than `after`.
    pub async fn wait_desired(
        &self,
        gateway: &GatewayId,
        after: Option<u64>,
        wait: Duration,
    ) -> Option<Desired> {
        let mut rx = self.epoch.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if let Some(found) = self.desired_now(gateway, after) {
                self.counters.desired_served.fetch_add(1, Ordering::Relaxed);
                return Some(found);
            }
            let changed = {
                let _waiting = Waiting::new(&self.counters.desired_waiting);
                tokio::time::timeout_at(deadline, rx.changed()).await
            };
            match changed {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Records a gateway's report (its heartbeat). The heartbeat takes effect even
    /// when the store cannot write the report (the error is recorded and shown).
    /// A report of a generation this manager did not issue with that content is a
    /// fork: recorded, shown in status, and healed by re-issuing the current state
    /// above it. Blocking (store, and a health change at once): call it from a
    /// blocking thread.
    pub fn put_observed(
        &self,
        gateway: &GatewayId,
        report: ObservedReport,
    ) -> Result<(), ManagerError> {
        let json =
            serde_json::to_string(&report).map_err(|e| ManagerError::BadRequest(e.to_string()))?;
        if self.store.shared() {
            // A daemon that moved from another manager may have applied a
            // generation this one has not caught up with: that is no fork.
            let ahead = {
                let inner = self.lock();
                let known = inner.gateways.get(gateway).map(Entry::generation);
                report
                    .status
                    .applied_generation
                    .zip(known)
                    .is_some_and(|(applied, known)| applied > known)
            };
            if ahead {
                self.catch_up()?;
            }
        }
        let at = now_ms();
        let (recheck, fork) = {
            let mut inner = self.lock();
            let fork = self.check_fork(&mut inner, gateway, &report, at);
            let now = self.clock_ms();
            inner.last_seen.insert(gateway.clone(), now);
            let paths = path_verdicts(&report);
            let path_down = inner
                .topology
                .as_ref()
                .map(|t| reported_unhealthy(t, gateway, &paths, &inner.unhealthy))
                .unwrap_or_default();
            inner.paths.insert(gateway.clone(), paths);
            let known_down: BTreeSet<NetworkId> = inner
                .unhealthy
                .iter()
                .filter(|(g, _)| g == gateway)
                .map(|(_, n)| n.clone())
                .collect();
            inner.observed.insert(
                gateway.clone(),
                ObservedRecord {
                    received_unix_ms: at,
                    report,
                },
            );
            inner.refresh_converged(gateway);
            // Back from offline, or a forwarding-path verdict changed: act now, not
            // at the next tick.
            (
                inner.offline.contains(gateway) || path_down != known_down,
                fork,
            )
        };
        self.counters.reports.fetch_add(1, Ordering::Relaxed);
        let result = self.store.put_observed(gateway, at, &json);
        if let Err(e) = result {
            let mut inner = self.lock();
            self.stored(&mut inner, Err(e), BTreeMap::new(), false);
        }
        if let Some(above) = fork {
            self.reissue(gateway, above);
        }
        if recheck {
            self.health_tick();
        }
        Ok(())
    }

    /// Whether `report` shows a generation this manager did not issue with that
    /// content; records it. Returns the generation to re-issue above.
    fn check_fork(
        &self,
        inner: &mut Inner,
        gateway: &GatewayId,
        report: &ObservedReport,
        at: u64,
    ) -> Option<u64> {
        let applied = report.status.applied_generation?;
        // A gateway this manager serves nothing (never in any topology it knows)
        // has no history to fork from: its daemon is answered 404.
        let entry = inner.gateways.get(gateway)?;
        let known = entry.generation();
        let forked = applied > known
            || (applied == known
                && report
                    .applied_digest
                    .as_deref()
                    .is_some_and(|d| d != entry.digest));
        if !forked {
            if let Some(fork) = inner.forks.get_mut(gateway) {
                if !fork.resolved && applied >= fork.reissued_generation {
                    info!(gateway = %gateway, generation = applied, "generation fork resolved: the daemon applied the re-issued state");
                    fork.resolved = true;
                }
            }
            return None;
        }
        self.counters
            .generation_forks
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            gateway = %gateway,
            applied,
            known,
            "the gateway runs a generation this manager did not issue with that content (an older store restored?): re-issuing the current state above it"
        );
        inner.forks.insert(
            gateway.clone(),
            GenerationFork {
                reported_generation: applied,
                manager_generation: known,
                reissued_generation: applied.max(known) + 1,
                detected_unix_ms: at,
                resolved: false,
            },
        );
        Some(applied.max(known))
    }

    /// Enrols the holder of an enrolment token with `key`, returning its new
    /// credential (shown once; only its digest is stored). The token is checked
    /// first without spending it: a token for someone other than `expected`, or a
    /// node token with a key that is not the node's, is refused and stays usable.
    /// Blocking (store): call it from a blocking thread.
    pub fn enrol(
        &self,
        token: &str,
        key: PublicKey,
        expected: Option<&Subject>,
    ) -> Result<EnrolResponse, ManagerError> {
        if !token.starts_with(CredentialKind::Enrolment.prefix()) {
            return Err(ManagerError::EnrolmentRefused);
        }
        let digest = auth::digest(token);
        let now = now_ms() / 1000;
        let subject = self
            .store
            .token_subject(&digest, now)?
            .ok_or(ManagerError::EnrolmentRefused)?;
        if let Some(expected) = expected {
            if *expected != subject {
                return Err(ManagerError::WrongSubject {
                    token: subject,
                    expected: expected.clone(),
                });
            }
        }
        // A node added through another manager a moment ago may not be here yet.
        let may = self.may_enrol(&subject, &key)
            || (self.store.shared() && self.catch_up()? && self.may_enrol(&subject, &key));
        if !may {
            return Err(ManagerError::EnrolmentRefused);
        }
        let credential = auth::generate(match subject {
            Subject::Gateway(_) => CredentialKind::Gateway,
            Subject::Node(_) => CredentialKind::Node,
        });
        match self
            .store
            .redeem_token(&digest, now, &subject, &key, &auth::digest(&credential))?
        {
            Redeemed::Enrolled(subject) => {
                if let Subject::Gateway(g) = &subject {
                    self.lock().keys.insert(g.clone(), key);
                }
                Ok(EnrolResponse {
                    subject,
                    credential,
                })
            }
            Redeemed::Refused => Err(ManagerError::EnrolmentRefused),
        }
    }

    /// Whether a subject may enrol with `key`: a node only with the key the topology
    /// gives it (its configuration is compiled for that key); a gateway with any key
    /// (a mismatch with the topology is shown in its status).
    pub fn may_enrol(&self, subject: &Subject, key: &PublicKey) -> bool {
        let inner = self.lock();
        match subject {
            Subject::Gateway(_) => true,
            Subject::Node(node) => inner
                .topology
                .as_ref()
                .and_then(|t| t.node(node))
                .is_some_and(|(_, n)| &n.public_key == key),
        }
    }

    /// Whether the topology knows `subject`.
    pub fn knows(&self, subject: &Subject) -> bool {
        let inner = self.lock();
        let Some(t) = inner.topology.as_ref() else {
            return false;
        };
        match subject {
            Subject::Gateway(g) => t.gateway(g).is_some(),
            Subject::Node(n) => t.node(n).is_some(),
        }
    }

    /// A client's configuration under the current health.
    ///
    /// The clients of a workspace are compiled together, once per change, and
    /// cached: a change wakes every long-polling client, and each would otherwise
    /// assign its whole workspace again. The compile runs without the in-memory
    /// lock. Blocking (compile): call it from a blocking thread.
    pub fn node_config(&self, node: &NodeId) -> Result<NodeConfig, ManagerError> {
        let unknown = || ManagerError::Unknown(format!("node {node}"));
        let (topology, workspace, health, version, cached) = {
            let inner = self.lock();
            let topology = inner.topology.clone().ok_or_else(unknown)?;
            let workspace = topology.node(node).ok_or_else(unknown)?.0.id.clone();
            let cached = inner.clients.get(&workspace).cloned();
            (topology, workspace, inner.health(), inner.version, cached)
        };
        let clients = match cached {
            Some(c) => c,
            None => {
                let compiled = Arc::new(compile_workspace_nodes(&topology, &health, &workspace));
                let mut inner = self.lock();
                if inner.version == version {
                    inner.clients.insert(workspace, compiled.clone());
                }
                compiled
            }
        };
        match clients.get(node) {
            Some(config) => Ok(config.clone()),
            // Not a client (inactive, or a gateway's machine): say why.
            None => compile_node(&topology, &health, node)
                .map_err(|e| ManagerError::Compile(e.to_string())),
        }
    }

    /// A client's configuration with its version (see [`config_version`]), waiting
    /// up to `wait` for one whose version differs from `after`; `Ok(None)` when it
    /// did not change within `wait`. Wakes on every topology or health change.
    /// Compiles run on blocking threads.
    pub async fn wait_node_config(
        self: &Arc<Self>,
        node: &NodeId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(String, NodeConfig)>, ManagerError> {
        let mut rx = self.epoch.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        // An agent that moved here from another manager of a shared store may hold
        // a configuration newer than this manager has caught up with: catch up
        // before answering it with another (versions are digests: the agent cannot
        // tell an older one). The same for a node added through another manager a
        // moment ago. When nothing changed, that costs one query.
        let mut current = !self.store.shared();
        loop {
            rx.borrow_and_update();
            let (manager, id) = (self.clone(), node.clone());
            let config = tokio::task::spawn_blocking(move || manager.node_config(&id))
                .await
                .map_err(|e| ManagerError::Compile(format!("bug: compile task failed: {e}")))?;
            let answer = match config {
                Ok(config) => {
                    let version = config_version(&config);
                    (after != Some(version.as_str())).then_some(Ok((version, config)))
                }
                Err(e @ ManagerError::Unknown(_)) => Some(Err(e)),
                Err(e) => return Err(e),
            };
            if let Some(answer) = answer {
                if !current {
                    current = true;
                    let manager = self.clone();
                    let moved = tokio::task::spawn_blocking(move || manager.catch_up())
                        .await
                        .map_err(|e| {
                            ManagerError::Compile(format!("bug: catch-up task failed: {e}"))
                        })??;
                    if moved {
                        continue;
                    }
                }
                return answer.map(Some);
            }
            let changed = {
                let _waiting = Waiting::new(&self.counters.node_config_waiting);
                tokio::time::timeout_at(deadline, rx.changed()).await
            };
            match changed {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(None),
            }
        }
    }

    /// The topology and health in force, copied out under the in-memory lock;
    /// [`ManagerError::Unknown`] (naming `what`) when there is no topology yet.
    fn snapshot(
        &self,
        what: impl FnOnce() -> String,
    ) -> Result<(Arc<Topology>, Health), ManagerError> {
        let inner = self.lock();
        let topology = inner
            .topology
            .clone()
            .ok_or_else(|| ManagerError::Unknown(what()))?;
        Ok((topology, inner.health()))
    }

    /// The topology and health in force (a clone costs nothing); none before
    /// the first topology.
    pub fn current(&self) -> Option<(Arc<Topology>, Health)> {
        let inner = self.lock();
        Some((inner.topology.clone()?, inner.health()))
    }

    /// Why client `node` is on the gateways it is on, under the current topology
    /// and health: [`nanami_model::explain_node`]. [`ManagerError::Unknown`] for a
    /// node not in the topology (or no topology yet), [`ManagerError::Compile`] for
    /// a node that is not active or is a gateway's machine. Runs the workspace's
    /// assignment without the in-memory lock. Blocking (assignment): call it from
    /// a blocking thread.
    pub fn explain_node(&self, node: &NodeId) -> Result<NodeExplanation, ManagerError> {
        let (topology, health) = self.snapshot(|| format!("node {node}"))?;
        explain_node(&topology, &health, node).map_err(explain_error)
    }

    /// Which clients `gateway` carries and why, under the current topology and
    /// health: [`nanami_model::explain_gateway`]. [`ManagerError::Unknown`] for a
    /// gateway not in the topology (or no topology yet). Runs the workspace's
    /// assignment without the in-memory lock. Blocking (assignment): call it from
    /// a blocking thread.
    pub fn explain_gateway(&self, gateway: &GatewayId) -> Result<GatewayExplanation, ManagerError> {
        let (topology, health) = self.snapshot(|| format!("gateway {gateway}"))?;
        explain_gateway(&topology, &health, gateway).map_err(explain_error)
    }

    /// `node`'s recent changes of primary gateway, newest first (see
    /// [`crate::history`]). [`ManagerError::Unknown`] for a node not in the
    /// topology.
    pub fn movements(&self, node: &NodeId) -> Result<Vec<MovementRecord>, ManagerError> {
        let inner = self.lock();
        match &inner.topology {
            Some(t) if t.node_workspace(node).is_some() => Ok(inner.history.of(node)),
            Some(_) | None => Err(ManagerError::Unknown(format!("node {node}"))),
        }
    }

    /// The last report of `gateway`.
    pub fn observed(&self, gateway: &GatewayId) -> Option<ObservedRecord> {
        self.lock().observed.get(gateway).cloned()
    }

    /// Whether `gateway` has a desired state (is or was in the topology).
    pub fn has_gateway(&self, gateway: &GatewayId) -> bool {
        self.lock().gateways.contains_key(gateway)
    }

    /// The current topology's documents (a clone costs nothing), with the
    /// revision; `None` before the first topology.
    pub fn docs(&self) -> Option<(u64, Docs)> {
        let inner = self.lock();
        (inner.revision > 0 || inner.topology.is_some())
            .then(|| (inner.revision, inner.docs.clone()))
    }

    /// The status of every gateway, ordered by id.
    pub fn status(&self) -> Vec<GatewayStatus> {
        let inner = self.lock();
        inner
            .gateways
            .iter()
            .map(|(id, entry)| {
                let placed = inner.topology.as_ref().and_then(|t| t.gateway(id));
                let observed = inner.observed.get(id);
                let report = observed.map(|o| &o.report);
                let topo_key = placed
                    .and_then(|(ws, gw)| ws.nodes.get(&gw.node))
                    .map(|n| n.public_key);
                let enrolled = inner.keys.get(id).copied().or(report.map(|r| r.public_key));
                GatewayStatus {
                    id: id.clone(),
                    workspace: placed.map(|(ws, _)| ws.id.to_string()),
                    region: placed.map(|(_, gw)| gw.region.to_string()),
                    health: if placed.is_none() {
                        Liveness::Removed
                    } else if inner.offline.contains(id) {
                        Liveness::Offline
                    } else {
                        Liveness::Online
                    },
                    unhealthy_networks: inner
                        .unhealthy
                        .iter()
                        .filter(|(g, _)| g == id)
                        .map(|(_, n)| n.clone())
                        .collect(),
                    condition: report.map(|r| r.status.condition.clone()),
                    desired_generation: entry.generation(),
                    observed_generation: report.and_then(|r| r.status.applied_generation),
                    peers: entry.peers,
                    observed_peers: report.map_or(0, |r| r.state.peer_count()),
                    newest_handshake: report.and_then(|r| {
                        r.telemetry
                            .values()
                            .flat_map(|peers| peers.values())
                            .filter_map(|t| t.last_handshake)
                            .max()
                    }),
                    last_report_unix_ms: observed.map(|o| o.received_unix_ms),
                    key_mismatch: matches!((topo_key, enrolled), (Some(t), Some(e)) if t != e),
                    facts: report.map(|r| r.facts.clone()).unwrap_or_default(),
                    generation_fork: inner.forks.get(id).cloned(),
                    store_error: inner.store_error.clone(),
                }
            })
            .collect()
    }

    /// Each reporting gateway's traffic and probed networks, from its last report;
    /// peers ordered by key, each with the node of the gateway's workspace whose
    /// key it is when `nodes` is asked (the per-peer series of `/metrics`; the
    /// lookup costs an index of each such workspace's keys).
    pub fn telemetry(&self, nodes: bool) -> BTreeMap<GatewayId, GatewayTelemetry> {
        let inner = self.lock();
        // Key -> node, per workspace, built on first use.
        let mut index: BTreeMap<WorkspaceId, BTreeMap<PublicKey, NodeId>> = BTreeMap::new();
        inner
            .observed
            .iter()
            .map(|(id, record)| {
                let keys = match inner.topology.as_ref().and_then(|t| t.gateway(id)) {
                    Some((ws, _)) if nodes => {
                        Some(&*index.entry(ws.id.clone()).or_insert_with(|| {
                            ws.nodes
                                .iter()
                                .map(|(node, n)| (n.public_key, node.clone()))
                                .collect()
                        }))
                    }
                    Some(_) | None => None,
                };
                let mut peers: Vec<PeerSeries> = record
                    .report
                    .telemetry
                    .values()
                    .flat_map(|peers| peers.iter())
                    .map(|(key, telemetry)| PeerSeries {
                        key: *key,
                        node: keys.and_then(|k| k.get(key)).cloned(),
                        telemetry: *telemetry,
                    })
                    .collect();
                peers.sort_by_key(|p| p.key);
                let telemetry = GatewayTelemetry {
                    probed: record.report.health.keys().cloned().collect(),
                    peers,
                };
                (id.clone(), telemetry)
            })
            .collect()
    }

    /// The gauges of `/metrics`, in constant time.
    pub fn summary(&self) -> Summary {
        let inner = self.lock();
        let removed = inner.gateways.len().saturating_sub(inner.in_topology);
        Summary {
            revision: inner.revision,
            gateways: inner.gateways.len(),
            online: inner.in_topology.saturating_sub(inner.offline.len()),
            offline: inner.offline.len(),
            removed,
            paths_unhealthy: inner.unhealthy.len(),
            converged: inner.converged.len(),
            store_ok: inner.store_error.is_none(),
        }
    }

    /// Regions, with the workspaces allowed in each and the gateways placed there.
    pub fn regions(&self) -> Vec<RegionView> {
        let Some(t) = self.lock().topology.clone() else {
            return Vec::new();
        };
        t.regions
            .values()
            .map(|r| RegionView {
                id: r.id.to_string(),
                display_name: r.display_name.clone(),
                state: format!("{:?}", r.state).to_lowercase(),
                workspaces: t
                    .workspaces
                    .values()
                    .filter(|w| w.regions.contains(&r.id))
                    .map(|w| w.id.to_string())
                    .collect(),
                gateways: t
                    .workspaces
                    .values()
                    .flat_map(|w| w.gateways.values())
                    .filter(|g| g.region == r.id)
                    .map(|g| g.id.clone())
                    .collect(),
            })
            .collect()
    }

    /// Workspaces with their regions and gateways.
    pub fn workspaces(&self) -> Vec<WorkspaceView> {
        let Some(t) = self.lock().topology.clone() else {
            return Vec::new();
        };
        t.workspaces
            .values()
            .map(|w| WorkspaceView {
                id: w.id.to_string(),
                tenant: w.tenant.clone(),
                regions: w.regions.iter().map(|r| r.to_string()).collect(),
                gateways: w.gateways.keys().cloned().collect(),
                active_nodes: w.nodes.values().filter(|n| n.is_active()).count(),
            })
            .collect()
    }

    /// Each gateway's desired and last reported generation (cheaper than
    /// [`Manager::status`], for watching convergence).
    pub fn generations(&self) -> Vec<(GatewayId, u64, Option<u64>)> {
        let inner = self.lock();
        inner
            .gateways
            .iter()
            .map(|(id, e)| {
                let observed = inner
                    .observed
                    .get(id)
                    .and_then(|o| o.report.status.applied_generation);
                (id.clone(), e.generation(), observed)
            })
            .collect()
    }

    /// The workspace gateway `id` is in, if the topology has it.
    pub fn gateway_workspace(&self, id: &GatewayId) -> Option<WorkspaceId> {
        let inner = self.lock();
        inner
            .topology
            .as_ref()?
            .gateway(id)
            .map(|(ws, _)| ws.id.clone())
    }

    /// The workspace node `id` is in, if the topology has it.
    pub fn node_workspace(&self, id: &NodeId) -> Option<WorkspaceId> {
        let inner = self.lock();
        inner
            .topology
            .as_ref()?
            .node(id)
            .map(|(ws, _)| ws.id.clone())
    }

    /// Mints a credential for `workspace` (shown once; only its digest is stored),
    /// recorded in the audit trail. Blocking (store).
    pub fn mint_workspace_credential(
        &self,
        writer: &Writer,
        workspace: &WorkspaceId,
    ) -> Result<CredentialResponse, ManagerError> {
        let exists = self
            .lock()
            .topology
            .as_ref()
            .is_some_and(|t| t.workspaces.contains_key(workspace));
        if !exists {
            return Err(ManagerError::NotFound(format!(
                "workspace {workspace:?} does not exist"
            )));
        }
        let credential = auth::generate(CredentialKind::Workspace);
        let digest = auth::digest(&credential);
        let credential_id = auth::credential_id(&digest);
        let entry = AuditEntry {
            seq: 0,
            at_unix_ms: now_ms(),
            credential_id: writer.credential_id.clone(),
            credential_kind: writer.principal.kind().to_owned(),
            object: AuditObject {
                kind: "credential".to_owned(),
                workspace: Some(workspace.to_string()),
                id: credential_id.clone(),
            },
            old_revision: None,
            new_revision: None,
            diff: "workspace credential minted".to_owned(),
        };
        self.store
            .add_workspace_credential(workspace, &digest, &entry)?;
        info!(%workspace, credential_id, "workspace credential minted");
        Ok(CredentialResponse {
            credential,
            workspace: workspace.to_string(),
            credential_id,
        })
    }

    /// A page of the audit trail: entries after `after`, at most `limit`, only
    /// `workspace`'s when given. Blocking (store).
    pub fn audit(
        &self,
        after: u64,
        limit: u32,
        workspace: Option<&WorkspaceId>,
    ) -> Result<Vec<AuditEntry>, ManagerError> {
        Ok(self.store.audit(after, limit, workspace)?)
    }

    /// The topology revision in force.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }
}

/// A gateway's desired state as served.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Its generation.
    pub generation: u64,
    /// [`content_digest`] of its content (the answer's `ETag`).
    pub digest: String,
    /// The `GatewayDesired` JSON body.
    pub body: Arc<[u8]>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use nanami_api::wire::Facts;
    use nanami_model::PrivateKey;
    use nanami_reconcile::Status;

    use super::*;
    use crate::store::{Digest, Principal, Snapshot, SqliteStore};

    /// The SQLite store, whose writes fail while `full` is set (a full disk).
    struct Flaky {
        inner: SqliteStore,
        full: AtomicBool,
        _dir: TempDir,
    }

    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Flaky {
        fn new(tag: &str) -> Arc<Self> {
            let dir = std::env::temp_dir().join(format!(
                "nm-manager-{tag}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Arc::new(Self {
                inner: SqliteStore::open(&dir.join("manager.db")).unwrap(),
                full: AtomicBool::new(false),
                _dir: TempDir(dir),
            })
        }
        fn check(&self) -> Result<(), StoreError> {
            if self.full.load(Ordering::Relaxed) {
                Err(StoreError::Io(std::io::Error::other(
                    "database or disk is full",
                )))
            } else {
                Ok(())
            }
        }
    }

    impl Store for Flaky {
        fn load(&self) -> Result<Snapshot, StoreError> {
            self.inner.load()
        }
        fn put_topology(
            &self,
            write: &TopologyWrite<'_>,
        ) -> Result<crate::store::Committed, StoreError> {
            self.check()?;
            self.inner.put_topology(write)
        }
        fn changes(&self, since: u64) -> Result<Option<Changes>, StoreError> {
            self.inner.changes(since)
        }
        fn observed_since(
            &self,
            cursor: u64,
            limit: u32,
        ) -> Result<Vec<crate::store::ObservedRow>, StoreError> {
            self.inner.observed_since(cursor, limit)
        }
        fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
            self.inner.try_lease(name, holder, ttl_ms)
        }
        fn expire_tokens(&self, before: u64) -> Result<u64, StoreError> {
            self.inner.expire_tokens(before)
        }
        fn status(&self) -> Result<crate::store::SchemaStatus, StoreError> {
            self.inner.status()
        }
        fn shared(&self) -> bool {
            false
        }
        fn subscribe(&self) -> Option<watch::Receiver<u64>> {
            None
        }
        fn add_workspace_credential(
            &self,
            workspace: &WorkspaceId,
            digest: &Digest,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            self.check()?;
            self.inner
                .add_workspace_credential(workspace, digest, audit)
        }
        fn audit(
            &self,
            after: u64,
            limit: u32,
            workspace: Option<&WorkspaceId>,
        ) -> Result<Vec<AuditEntry>, StoreError> {
            self.inner.audit(after, limit, workspace)
        }
        fn put_health(
            &self,
            expected_seq: u64,
            health: &Health,
            changed: &BTreeMap<GatewayId, GatewayRow>,
        ) -> Result<u64, StoreError> {
            self.check()?;
            self.inner.put_health(expected_seq, health, changed)
        }
        fn put_observed(
            &self,
            gateway: &GatewayId,
            now_ms: u64,
            report: &str,
        ) -> Result<(), StoreError> {
            self.check()?;
            self.inner.put_observed(gateway, now_ms, report)
        }
        fn add_token(
            &self,
            digest: &Digest,
            subject: &Subject,
            expires_at: u64,
        ) -> Result<(), StoreError> {
            self.check()?;
            self.inner.add_token(digest, subject, expires_at)
        }
        fn token_subject(&self, token: &Digest, now: u64) -> Result<Option<Subject>, StoreError> {
            self.inner.token_subject(token, now)
        }
        fn redeem_token(
            &self,
            token: &Digest,
            now: u64,
            subject: &Subject,
            key: &PublicKey,
            credential: &Digest,
        ) -> Result<Redeemed, StoreError> {
            self.check()?;
            self.inner
                .redeem_token(token, now, subject, key, credential)
        }
        fn set_api_credential(
            &self,
            principal: &Principal,
            digest: &Digest,
        ) -> Result<(), StoreError> {
            self.inner.set_api_credential(principal, digest)
        }
        fn principal(&self, digest: &Digest) -> Result<Option<(Principal, Digest)>, StoreError> {
            self.inner.principal(digest)
        }
    }

    fn key() -> PublicKey {
        PrivateKey::generate(&mut rand::rngs::OsRng).public_key()
    }

    /// Two gateways of one network (auto: gw-a carries the client) and a client.
    fn document() -> Document {
        let yaml = format!(
            "version: 1
regions: [{{id: lab, state: active}}]
workspaces:
  - id: acme
    tenant: acme-corp
    regions: [lab]
    networks:
      - {{id: corp, overlay: 100.80.0.0/24, routes: [10.20.0.0/16]}}
    nodes:
      - {{id: gw-a, public_key: \"{}\", status: active, memberships: [{{network: corp}}]}}
      - {{id: gw-b, public_key: \"{}\", status: active, memberships: [{{network: corp}}]}}
      - {{id: laptop, public_key: \"{}\", status: active, memberships: [{{network: corp}}]}}
    gateways:
      - {{id: gw-a, node: gw-a, region: lab, networks: [corp], roles: [ingress, egress], endpoint: \"192.0.2.1:51820\", listen_port: 51820}}
      - {{id: gw-b, node: gw-b, region: lab, networks: [corp], roles: [ingress, egress], endpoint: \"192.0.2.2:51820\", listen_port: 51820}}
",
            key(),
            key(),
            key()
        );
        Document::from_yaml(&yaml).unwrap()
    }

    fn gw(id: &str) -> GatewayId {
        GatewayId::new(id).unwrap()
    }

    fn report(applied: u64, digest: Option<&str>) -> ObservedReport {
        ObservedReport {
            public_key: key(),
            status: Status {
                applied_generation: Some(applied),
                ..Status::default()
            },
            state: GatewayState::default(),
            telemetry: BTreeMap::new(),
            facts: Facts::default(),
            health: BTreeMap::new(),
            applied_digest: digest.map(str::to_owned),
        }
    }

    fn status_of(m: &Manager, id: &str) -> GatewayStatus {
        m.status()
            .into_iter()
            .find(|s| s.id.as_str() == id)
            .unwrap()
    }

    #[test]
    fn the_same_generation_with_other_content_is_a_fork_healed_above_it() {
        let m = Manager::load(Flaky::new("fork"), HealthConfig::default()).unwrap();
        m.put_topology(document()).unwrap();
        let served = m.desired_now(&gw("gw-a"), None).unwrap();
        // The right content at the right generation: no fork.
        m.put_observed(&gw("gw-a"), report(served.generation, Some(&served.digest)))
            .unwrap();
        assert_eq!(status_of(&m, "gw-a").generation_fork, None);
        // The daemon runs this generation with other content (a restored store
        // issued the number again): noticed, shown, re-issued above.
        m.put_observed(&gw("gw-a"), report(served.generation, Some("00ff")))
            .unwrap();
        let s = status_of(&m, "gw-a");
        let fork = s.generation_fork.unwrap();
        assert_eq!(
            (
                fork.reported_generation,
                fork.reissued_generation,
                fork.resolved
            ),
            (served.generation, served.generation + 1, false)
        );
        let again = m.desired_now(&gw("gw-a"), Some(served.generation)).unwrap();
        assert_eq!(again.generation, served.generation + 1);
        assert_eq!(
            again.digest, served.digest,
            "the same content, a new number"
        );
        assert_eq!(m.counters.generation_forks.load(Ordering::Relaxed), 1);
        // The daemon applies it: resolved, no new fork.
        m.put_observed(&gw("gw-a"), report(again.generation, Some(&again.digest)))
            .unwrap();
        assert!(status_of(&m, "gw-a").generation_fork.unwrap().resolved);
        assert_eq!(m.counters.generation_forks.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_generation_never_issued_is_a_fork() {
        let m = Manager::load(Flaky::new("ahead"), HealthConfig::default()).unwrap();
        m.put_topology(document()).unwrap();
        m.put_observed(&gw("gw-b"), report(7, None)).unwrap();
        let s = status_of(&m, "gw-b");
        assert_eq!(s.desired_generation, 8);
        assert_eq!(s.generation_fork.unwrap().reported_generation, 7);
        // The next change counts on from there: numbers never repeat.
        let mut doc = document();
        doc.workspaces[0].gateways[1].capacity = Some(10);
        m.put_topology(doc).unwrap();
        assert!(status_of(&m, "gw-b").desired_generation >= 8);
    }

    #[test]
    fn placement_changes_are_recorded_with_their_trigger_and_cause() {
        use nanami_model::assign::Verdict;
        use nanami_model::movement::Cause;
        let health = HealthConfig {
            report_interval: Duration::ZERO,
            missed_reports: 0,
        };
        let m = Manager::load(Flaky::new("moves"), health).unwrap();
        let laptop = NodeId::new("laptop").unwrap();
        let mut doc = document();
        m.put_topology(doc.clone()).unwrap();
        assert!(
            m.movements(&laptop).unwrap().is_empty(),
            "placed, not moved"
        );
        doc.workspaces[0].gateways[0].drain = true;
        m.put_topology(doc.clone()).unwrap();
        let moves = m.movements(&laptop).unwrap();
        assert_eq!(moves.len(), 1);
        let r = &moves[0];
        assert_eq!(r.trigger, Trigger::Revision);
        assert_eq!(r.revision, m.revision());
        assert_eq!(
            (r.movement.from.clone(), r.movement.to.clone()),
            (Some(gw("gw-a")), Some(gw("gw-b")))
        );
        assert_eq!(
            r.movement.cause,
            Cause::Left {
                gateway: gw("gw-a"),
                verdict: Verdict::Drained
            }
        );
        assert_eq!(r.generation, Some(status_of(&m, "gw-b").desired_generation));
        // Every gateway falls silent: the client loses its gateway, newest first.
        nanami_testkit::wait_until("the silence took effect", Duration::from_secs(5), || {
            m.health_tick()
        });
        let moves = m.movements(&laptop).unwrap();
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[0].trigger, Trigger::Health);
        assert_eq!(
            (moves[0].movement.to.clone(), moves[0].generation),
            (None, None)
        );
        assert_eq!(
            moves[0].movement.cause,
            Cause::Left {
                gateway: gw("gw-b"),
                verdict: Verdict::Offline
            }
        );
        // A node the topology does not hold is unknown, not empty.
        let err = m.movements(&NodeId::new("nobody").unwrap()).unwrap_err();
        assert!(matches!(err, ManagerError::Unknown(_)), "{err}");
    }

    #[test]
    fn a_topology_that_cannot_be_stored_changes_nothing() {
        let store = Flaky::new("nostore");
        let m = Manager::load(store.clone(), HealthConfig::default()).unwrap();
        m.put_topology(document()).unwrap();
        let before = m.generations();
        let revision = m.revision();
        store.full.store(true, Ordering::Relaxed);
        let err = m.put_topology(document()).unwrap_err();
        assert!(matches!(err, ManagerError::Store(_)), "{err}");
        assert_eq!(m.generations(), before);
        assert_eq!(m.revision(), revision);
    }

    #[test]
    fn liveness_takes_effect_when_the_store_cannot_write_and_is_stored_later() {
        let store = Flaky::new("full");
        let health = HealthConfig {
            report_interval: Duration::ZERO,
            missed_reports: 0,
        };
        let m = Manager::load(store.clone(), health).unwrap();
        m.put_topology(document()).unwrap();
        store.full.store(true, Ordering::Relaxed);
        // Every gateway falls silent at once (no report within zero time: the
        // next millisecond of the manager's clock).
        nanami_testkit::wait_until("the silence took effect", Duration::from_secs(5), || {
            m.health_tick()
        });
        let s = status_of(&m, "gw-a");
        assert_eq!(s.health, Liveness::Offline);
        assert!(s.store_error.unwrap().contains("full"));
        assert!(!m.summary().store_ok);
        assert!(m.counters.store_errors.load(Ordering::Relaxed) > 0);
        let served = m.generations();
        // The store writes again: the next tick stores what is served.
        store.full.store(false, Ordering::Relaxed);
        m.health_tick();
        assert!(m.summary().store_ok);
        assert_eq!(status_of(&m, "gw-a").store_error, None);
        let reloaded = Manager::load(store, health).unwrap();
        let generations: Vec<(GatewayId, u64)> = reloaded
            .generations()
            .into_iter()
            .map(|(g, d, _)| (g, d))
            .collect();
        let expected: Vec<(GatewayId, u64)> = served.into_iter().map(|(g, d, _)| (g, d)).collect();
        assert_eq!(generations, expected);
    }

    #[test]
    fn enrolment_checks_the_subject_and_key_before_anything_is_spent() {
        let store = Flaky::new("enrol");
        let m = Manager::load(store.clone(), HealthConfig::default()).unwrap();
        let doc = document();
        m.put_topology(doc.clone()).unwrap();
        let token = crate::http::issue_token(&m, &Subject::Gateway(gw("gw-b")), 60)
            .unwrap()
            .token;
        let err = m
            .enrol(&token, key(), Some(&Subject::Gateway(gw("gw-a"))))
            .unwrap_err();
        assert!(matches!(err, ManagerError::WrongSubject { .. }), "{err}");
        let digest = auth::digest(&token);
        assert!(store
            .token_subject(&digest, now_ms() / 1000)
            .unwrap()
            .is_some());
        // A node token with a key that is not the node's: refused, unspent.
        let laptop = NodeId::new("laptop").unwrap();
        let node_token = crate::http::issue_token(&m, &Subject::Node(laptop.clone()), 60)
            .unwrap()
            .token;
        assert!(matches!(
            m.enrol(&node_token, key(), None).unwrap_err(),
            ManagerError::EnrolmentRefused
        ));
        let laptop_key = Topology::from_document(&doc)
            .unwrap()
            .node(&laptop)
            .unwrap()
            .1
            .public_key;
        m.enrol(&node_token, laptop_key, Some(&Subject::Node(laptop)))
            .unwrap();
        // The right gateway spends it once.
        m.enrol(&token, key(), Some(&Subject::Gateway(gw("gw-b"))))
            .unwrap();
        assert!(matches!(
            m.enrol(&token, key(), None).unwrap_err(),
            ManagerError::EnrolmentRefused
        ));
        // Token lifetimes are bounded (no overflow, none born expired).
        for ttl in [0, MAX_TOKEN_TTL + 1, u64::MAX] {
            assert!(crate::http::issue_token(&m, &Subject::Gateway(gw("gw-a")), ttl).is_err());
        }
    }
}
