//! The manager's state: the topology, every gateway's compiled state and
//! generation, heartbeats and health, observed reports. Memory is a cache of the
//! [`Store`]: every change is written to the store first, then published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nanami_api::wire::{
    GatewayStatus, Liveness, ObservedRecord, ObservedReport, PathHealth, RegionView, Subject,
    TopologyResponse, WorkspaceView,
};
use nanami_model::{
    compile_all, compile_node, compile_workspace_nodes, health_targets, Document, GatewayId,
    GatewayState, Health, HealthTargets, NetworkId, NodeConfig, NodeId, PublicKey, Topology,
    WorkspaceId,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::{GatewayRow, Store, StoreError, NO_TARGETS};

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
    /// The store failed; nothing changed in memory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such gateway or node in the topology.
    #[error("{0} is not in the topology")]
    Unknown(String),
    /// A node's configuration could not be compiled (not active, a gateway node).
    #[error("{0}")]
    Compile(String),
    /// A report contradicts what the manager knows.
    #[error("{0}")]
    BadReport(String),
}

struct Entry {
    generation: u64,
    state_json: String,
    targets_json: String,
    /// The `GatewayDesired` body, serialized once per generation.
    body: Arc<[u8]>,
    peers: usize,
}

impl Entry {
    fn new(row: GatewayRow) -> Self {
        let GatewayRow {
            generation,
            state_json,
            targets_json,
        } = row;
        // Without targets the body is exactly a `Desired` (what daemons from before
        // health targets accept).
        let body = if targets_json == NO_TARGETS {
            format!("{{\"generation\":{generation},\"state\":{state_json}}}")
        } else {
            format!(
                "{{\"generation\":{generation},\"state\":{state_json},\"health_targets\":{targets_json}}}"
            )
        };
        let peers = serde_json::from_str::<GatewayState>(&state_json)
            .map(|s| s.peer_count())
            .unwrap_or(0);
        Self {
            generation,
            state_json,
            targets_json,
            body: Arc::from(body.into_bytes()),
            peers,
        }
    }
}

#[derive(Default)]
struct Inner {
    topology: Option<Topology>,
    document: Option<Document>,
    revision: u64,
    gateways: BTreeMap<GatewayId, Entry>,
    offline: BTreeSet<GatewayId>,
    /// (gateway, network) pairs whose forwarding path the gateway's latest report
    /// says is down, for online gateways only (see [`unhealthy_pairs`]).
    unhealthy: BTreeSet<(GatewayId, NetworkId)>,
    last_seen: BTreeMap<GatewayId, Instant>,
    observed: BTreeMap<GatewayId, ObservedRecord>,
    keys: BTreeMap<GatewayId, PublicKey>,
    /// Client configurations compiled since the last change, by workspace (one
    /// assignment serves every client of a workspace; dropped by every publish).
    clients: BTreeMap<WorkspaceId, Arc<BTreeMap<NodeId, NodeConfig>>>,
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
}

/// The manager.
pub struct Manager {
    store: Arc<dyn Store>,
    health: HealthConfig,
    inner: Mutex<Inner>,
    epoch: watch::Sender<u64>,
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

/// The version of a client's configuration: the first 16 bytes of the SHA-256 of
/// its JSON, in hex (the JSON is deterministic: ordered maps, no clock).
pub fn config_version(config: &NodeConfig) -> String {
    use sha2::{Digest as _, Sha256};
    // Serializing a NodeConfig (ordered maps, no floats) cannot fail.
    let json = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The networks whose forwarding path `gateway`'s `report` says is down, among
/// those it probes now (a stale verdict about a network it no longer probes does
/// not count). A network the report says nothing certain about (`unknown`, or
/// absent: a daemon that just started has not finished a round) keeps its verdict
/// in `before`, so a daemon restart does not bounce clients back to a gateway whose
/// path is still down.
fn reported_unhealthy(
    topology: &Topology,
    gateway: &GatewayId,
    report: &ObservedReport,
    before: &BTreeSet<(GatewayId, NetworkId)>,
) -> BTreeSet<NetworkId> {
    health_targets(topology, gateway)
        .into_keys()
        .filter(
            |network| match report.health.get(network).map(|h| h.state) {
                Some(PathHealth::Unhealthy) => true,
                Some(PathHealth::Healthy) => false,
                Some(PathHealth::Unknown) | None => {
                    before.contains(&(gateway.clone(), network.clone()))
                }
            },
        )
        .collect()
}

/// [`Health::unhealthy`] from the latest reports (see [`reported_unhealthy`]; the
/// verdicts in force are `before`), for gateways that are online: an offline
/// gateway's last report is stale, and it is out anyway.
fn unhealthy_pairs(
    topology: &Topology,
    observed: &BTreeMap<GatewayId, ObservedRecord>,
    offline: &BTreeSet<GatewayId>,
    before: &BTreeSet<(GatewayId, NetworkId)>,
) -> BTreeSet<(GatewayId, NetworkId)> {
    observed
        .iter()
        .filter(|(gateway, _)| !offline.contains(*gateway))
        .flat_map(|(gateway, record)| {
            reported_unhealthy(topology, gateway, &record.report, before)
                .into_iter()
                .map(move |network| (gateway.clone(), network))
        })
        .collect()
}

fn targets_json(targets: &HealthTargets) -> String {
    if targets.is_empty() {
        return NO_TARGETS.to_owned();
    }
    // Ordered maps of ids and addresses: serializing cannot fail.
    serde_json::to_string(targets).unwrap_or_else(|_| NO_TARGETS.to_owned())
}

fn state_json(state: &GatewayState) -> String {
    // Serializing a GatewayState (ordered maps, no floats) cannot fail.
    serde_json::to_string(state).unwrap_or_default()
}

impl Manager {
    /// Loads the manager from `store`. Gateways that were online get one offline
    /// period of grace from now (the manager, not they, was away).
    pub fn load(store: Arc<dyn Store>, health: HealthConfig) -> Result<Self, ManagerError> {
        let snap = store.load()?;
        let now = Instant::now();
        let mut inner = Inner {
            offline: snap.offline,
            keys: snap.gateway_keys,
            ..Inner::default()
        };
        for (id, row) in snap.gateways {
            inner.gateways.insert(id, Entry::new(row));
        }
        for (id, (at, report)) in snap.observed {
            match serde_json::from_str::<ObservedReport>(&report) {
                Ok(report) => {
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
        if let Some((revision, doc)) = snap.topology {
            let document = Document::from_json(&doc).map_err(|e| StoreError::Corrupt {
                table: "topology_revisions",
                message: e.to_string(),
            })?;
            let topology = Topology::from_document(&document).map_err(|e| StoreError::Corrupt {
                table: "topology_revisions",
                message: e.to_string(),
            })?;
            for id in topology.gateway_ids() {
                if !inner.offline.contains(id) {
                    inner.last_seen.insert(id.clone(), now);
                }
            }
            inner.unhealthy =
                unhealthy_pairs(&topology, &inner.observed, &inner.offline, &BTreeSet::new());
            inner.topology = Some(topology);
            inner.document = Some(document);
            inner.revision = revision;
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
            inner: Mutex::new(inner),
            epoch,
            counters: Counters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The heartbeat settings.
    pub fn health_config(&self) -> HealthConfig {
        self.health
    }

    /// Compiles every gateway under `health` and returns the rows whose state
    /// changed, with their next generation (a gateway that left the topology gets
    /// the empty state: its daemon removes everything Nanami owns).
    fn recompile(
        inner: &Inner,
        topology: &Topology,
        health: &Health,
    ) -> BTreeMap<GatewayId, GatewayRow> {
        let compiled = compile_all(topology, health);
        let ids: BTreeSet<&GatewayId> = compiled.keys().chain(inner.gateways.keys()).collect();
        let mut changed = BTreeMap::new();
        for id in ids {
            let json = compiled
                .get(id)
                .map_or_else(|| state_json(&GatewayState::default()), state_json);
            let targets = targets_json(&health_targets(topology, id));
            let generation = match inner.gateways.get(id) {
                Some(e) if e.state_json == json && e.targets_json == targets => continue,
                Some(e) => e.generation + 1,
                None => 1,
            };
            changed.insert(
                id.clone(),
                GatewayRow {
                    generation,
                    state_json: json,
                    targets_json: targets,
                },
            );
        }
        changed
    }

    /// Installs the changed rows and wakes every long-poll (desired states and node
    /// configurations): called after every topology or health change, even one that
    /// changed no gateway, since a client's configuration may change alone (the order
    /// of its gateways).
    fn publish(&self, inner: &mut Inner, changed: BTreeMap<GatewayId, GatewayRow>) {
        inner.clients.clear();
        for (id, row) in changed {
            info!(gateway = %id, generation = row.generation, "new desired generation");
            inner.gateways.insert(id, Entry::new(row));
        }
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Parses and applies a topology document (YAML or JSON). Nothing changes
    /// unless it is valid and stored.
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

    /// Applies a topology document: validates, compiles every gateway, bumps the
    /// generation of those whose state changed, stores all of it in one
    /// transaction, then publishes.
    pub fn put_topology(&self, document: Document) -> Result<TopologyResponse, ManagerError> {
        let topology =
            Topology::from_document(&document).map_err(|e| ManagerError::InvalidTopology {
                message: format!("{} problem(s)", e.0.len()),
                issues: e
                    .0
                    .iter()
                    .map(|i| format!("{}: {}", i.path, i.message))
                    .collect(),
            })?;
        let mut inner = self.lock();
        let now = Instant::now();
        // A gateway new to the topology gets one offline period of grace.
        let ids: Vec<GatewayId> = topology.gateway_ids().cloned().collect();
        let offline: BTreeSet<GatewayId> = inner
            .offline
            .iter()
            .filter(|g| ids.contains(g))
            .cloned()
            .collect();
        let unhealthy = unhealthy_pairs(&topology, &inner.observed, &offline, &inner.unhealthy);
        let health = Health { offline, unhealthy };
        let changed = Self::recompile(&inner, &topology, &health);
        let revision = self
            .store
            .put_topology(&document.to_json(), now_ms(), &changed)?;
        for id in ids {
            inner.last_seen.entry(id).or_insert(now);
        }
        inner.offline = health.offline;
        inner.unhealthy = health.unhealthy;
        let response = TopologyResponse {
            revision,
            changed: changed
                .iter()
                .map(|(id, r)| (id.clone(), r.generation))
                .collect(),
        };
        if revision != inner.revision {
            info!(revision, changed = changed.len(), "topology applied");
        }
        inner.topology = Some(topology);
        inner.document = Some(document);
        inner.revision = revision;
        self.publish(&mut inner, changed);
        Ok(response)
    }

    /// Re-evaluates heartbeats and the latest reports' forwarding-path health; if
    /// the offline or the unhealthy set changed, recompiles, stores and publishes.
    /// Returns whether it changed.
    pub fn health_tick(&self) -> Result<bool, ManagerError> {
        let mut inner = self.lock();
        let Some(topology) = inner.topology.clone() else {
            return Ok(false);
        };
        let now = Instant::now();
        let limit = self.health.offline_after();
        let offline: BTreeSet<GatewayId> = topology
            .gateway_ids()
            .filter(|id| {
                inner
                    .last_seen
                    .get(*id)
                    .is_none_or(|seen| now.saturating_duration_since(*seen) > limit)
            })
            .cloned()
            .collect();
        let unhealthy = unhealthy_pairs(&topology, &inner.observed, &offline, &inner.unhealthy);
        if offline == inner.offline && unhealthy == inner.unhealthy {
            return Ok(false);
        }
        for id in offline.difference(&inner.offline) {
            warn!(gateway = %id, "gateway offline: its clients fail over");
        }
        for id in inner.offline.difference(&offline) {
            info!(gateway = %id, "gateway back online");
        }
        for (id, network) in unhealthy.difference(&inner.unhealthy) {
            warn!(gateway = %id, %network, "forwarding path down: the network's clients move to another gateway");
        }
        for (id, network) in inner.unhealthy.difference(&unhealthy) {
            info!(gateway = %id, %network, "forwarding path healthy again");
        }
        let health = Health { offline, unhealthy };
        let changed = Self::recompile(&inner, &topology, &health);
        self.store.put_health(&health.offline, &changed)?;
        inner.offline = health.offline;
        inner.unhealthy = health.unhealthy;
        self.publish(&mut inner, changed);
        Ok(true)
    }

    /// The current desired body of `gateway` if its generation is above `after`.
    fn desired_now(&self, gateway: &GatewayId, after: Option<u64>) -> Option<(u64, Arc<[u8]>)> {
        let inner = self.lock();
        let entry = inner.gateways.get(gateway)?;
        after
            .is_none_or(|a| entry.generation > a)
            .then(|| (entry.generation, entry.body.clone()))
    }

    /// Waits up to `wait` for a desired state of `gateway` newer than `after`;
    /// returns its generation and JSON body (`{"generation":..,"state":..}`).
    pub async fn wait_desired(
        &self,
        gateway: &GatewayId,
        after: Option<u64>,
        wait: Duration,
    ) -> Option<(u64, Arc<[u8]>)> {
        let mut rx = self.epoch.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if let Some(found) = self.desired_now(gateway, after) {
                self.counters.desired_served.fetch_add(1, Ordering::Relaxed);
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Records a gateway's report (its heartbeat).
    pub fn put_observed(
        &self,
        gateway: &GatewayId,
        report: ObservedReport,
    ) -> Result<(), ManagerError> {
        let json =
            serde_json::to_string(&report).map_err(|e| ManagerError::BadReport(e.to_string()))?;
        let at = now_ms();
        let recheck = {
            let mut inner = self.lock();
            if let Some(applied) = report.status.applied_generation {
                let known = inner.gateways.get(gateway).map_or(0, |e| e.generation);
                if applied > known {
                    warn!(gateway = %gateway, applied, known, "gateway reports a generation this manager never issued (restored from a backup?)");
                }
            }
            self.store.put_observed(gateway, at, &json)?;
            inner.last_seen.insert(gateway.clone(), Instant::now());
            let path_down = inner
                .topology
                .as_ref()
                .map(|t| reported_unhealthy(t, gateway, &report, &inner.unhealthy))
                .unwrap_or_default();
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
            // Back from offline, or a forwarding-path verdict changed: act now, not
            // at the next tick.
            inner.offline.contains(gateway) || path_down != known_down
        };
        self.counters.reports.fetch_add(1, Ordering::Relaxed);
        if recheck {
            self.health_tick()?;
        }
        Ok(())
    }

    /// Records the key a gateway enrolled with.
    pub fn set_gateway_key(&self, gateway: &GatewayId, key: PublicKey) {
        self.lock().keys.insert(gateway.clone(), key);
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
    /// assign its whole workspace again.
    pub fn node_config(&self, node: &NodeId) -> Result<NodeConfig, ManagerError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let topology = inner
            .topology
            .as_ref()
            .ok_or_else(|| ManagerError::Unknown(format!("node {node}")))?;
        let Some((ws, _)) = topology.node(node) else {
            return Err(ManagerError::Unknown(format!("node {node}")));
        };
        let health = || Health {
            offline: inner.offline.clone(),
            unhealthy: inner.unhealthy.clone(),
        };
        let clients = inner
            .clients
            .entry(ws.id.clone())
            .or_insert_with(|| Arc::new(compile_workspace_nodes(topology, &health(), &ws.id)));
        match clients.get(node) {
            Some(config) => Ok(config.clone()),
            // Not a client (inactive, or a gateway's machine): say why.
            None => compile_node(topology, &health(), node)
                .map_err(|e| ManagerError::Compile(e.to_string())),
        }
    }

    /// A client's configuration with its version (see [`config_version`]), waiting
    /// up to `wait` for one whose version differs from `after`; `Ok(None)` when it
    /// did not change within `wait`. Wakes on every topology or health change.
    pub async fn wait_node_config(
        &self,
        node: &NodeId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(String, NodeConfig)>, ManagerError> {
        let mut rx = self.epoch.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            let config = self.node_config(node)?;
            let version = config_version(&config);
            if after != Some(version.as_str()) {
                return Ok(Some((version, config)));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(None),
            }
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

    /// The current topology document.
    pub fn document(&self) -> Option<(u64, Document)> {
        let inner = self.lock();
        inner.document.clone().map(|d| (inner.revision, d))
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
                    health: if inner.offline.contains(id) {
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
                    desired_generation: entry.generation,
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
                }
            })
            .collect()
    }

    /// Regions, with the workspaces allowed in each and the gateways placed there.
    pub fn regions(&self) -> Vec<RegionView> {
        let inner = self.lock();
        let Some(t) = inner.topology.as_ref() else {
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
        let inner = self.lock();
        let Some(t) = inner.topology.as_ref() else {
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
                (id.clone(), e.generation, observed)
            })
            .collect()
    }

    /// The topology revision in force.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }
}
