//! The JSON bodies of the manager's API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use nanami_model::{
    GatewayId, GatewayState, HealthTargets, InterfaceName, NetworkId, NodeId, PublicKey,
};
use nanami_reconcile::{PeerTelemetry, Status};
use serde::{Deserialize, Serialize};

pub use nanami_control::audit::{AuditEntry, AuditObject};
pub use nanami_control::object::{ObjectKind, Precondition};
pub use nanami_model::doc::{GatewayDoc, NetworkDoc, NodeDoc, RegionDoc, WorkspaceSpec};
pub use nanami_reconcile::Desired;

/// `GET /v1/gateways/{id}/desired`: a gateway's desired state and, at the same
/// generation, the addresses it probes per network (forwarding-path health). A
/// change of either bumps the generation. `health_targets` is left out when empty,
/// so the body is then exactly a [`Desired`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayDesired {
    /// Monotonically increasing version, from the manager.
    pub generation: u64,
    /// The state the machine must have.
    pub state: GatewayState,
    /// Per network, the addresses behind the gateway it probes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<NetworkId, BTreeSet<nanami_model::openapi::IpAddr>>))]
    pub health_targets: HealthTargets,
    /// Hosting: the interface to the gateway's LAN on a machine shared by several
    /// workspaces' gateways. With it the daemon runs the gateway in its own network
    /// namespace `nm-<gateway>` and moves the uplink there (left out when the
    /// gateway is not hosted, so the body is then what older daemons accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<InterfaceName>,
    /// The manager's digest of this generation's content, from the answer's `ETag`
    /// (not in the body, which older daemons parse strictly). The daemon keeps it
    /// with its last-known-good state and reports it back, so a manager whose
    /// history forked (an older store restored) sees that the content the daemon
    /// runs at a generation differs from its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl GatewayDesired {
    /// The reconciler's part and the prober's part.
    pub fn into_parts(self) -> (Arc<Desired>, HealthTargets) {
        (
            Arc::new(Desired {
                generation: self.generation,
                state: self.state,
            }),
            self.health_targets,
        )
    }
}

/// Every error response: `{"error": "..."}` with a 4xx or 5xx status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Individual problems (topology validation issues, with their paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    /// With 412 (a stale `If-Match`): the object's current revision (absent when
    /// the object does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
}

/// Who a credential or enrolment token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Subject {
    /// A gateway (its daemon).
    Gateway(GatewayId),
    /// A client node.
    Node(NodeId),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gateway(g) => write!(f, "gateway {g}"),
            Self::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// The kinds of bearer credential, told apart by their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialKind {
    /// The platform (control plane): the catalog, workspaces and their access
    /// grants, every workspace's contents; mints enrolment tokens and workspace
    /// credentials; reads all.
    Control,
    /// One workspace's administrator: reads and writes that workspace's networks,
    /// nodes and gateways and mints enrolment tokens for them; cannot see other
    /// workspaces.
    Workspace,
    /// Platform operators: read-only oversight.
    Operator,
    /// One gateway's daemon: reads its own desired state, reports its own observed.
    Gateway,
    /// One client node: reads its own configuration.
    Node,
    /// A one-time enrolment token (only valid in the body of `POST /v1/enrol`).
    Enrolment,
}

impl CredentialKind {
    /// The prefix of credentials of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Control => "nmc_",
            Self::Workspace => "nmw_",
            Self::Operator => "nmo_",
            Self::Gateway => "nmg_",
            Self::Node => "nmn_",
            Self::Enrolment => "nme_",
        }
    }
}

/// `POST /v1/enrolment-tokens` (control credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Who may enrol with it.
    pub subject: Subject,
    /// How long it stays valid; one hour when absent.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A fresh one-time enrolment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenResponse {
    /// The token (shown once; only its hash is stored).
    pub token: String,
    /// Who may enrol with it.
    pub subject: Subject,
    /// Unix time (seconds) after which it is refused.
    pub expires_at: u64,
}

/// `POST /v1/enrol`: trade a one-time token and a public key for a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The one-time enrolment token.
    pub token: String,
    /// The enrolling machine's WireGuard public key (the private key never leaves it).
    pub public_key: PublicKey,
    /// Who the enrolling machine is (its `--gateway` or node id). When present, a
    /// token for anyone else is refused before it is spent, so a token given to
    /// the wrong machine neither burns nor revokes the right one's credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
}

/// The credential an enrolment yields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrolResponse {
    /// Who enrolled.
    pub subject: Subject,
    /// The per-subject credential (shown once; only its hash is stored).
    pub credential: String,
}

/// Machine facts that only the gateway knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// Interfaces toward private networks (up, with an address, not the default
    /// route's, not Nanami's).
    #[serde(default)]
    pub lan_interfaces: Vec<String>,
    /// Interfaces carrying a default route.
    #[serde(default)]
    pub wan_interfaces: Vec<String>,
    /// Whether the kernel WireGuard module is loaded.
    #[serde(default)]
    pub kernel_wireguard: bool,
}

/// `PUT /v1/gateways/{id}/observed`: the daemon's report after a pass and every few
/// seconds. The observed generation is `status.applied_generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ObservedReport {
    /// The gateway's WireGuard public key.
    pub public_key: PublicKey,
    /// The reconciler's status: condition, desired and applied generations, op errors.
    pub status: Status,
    /// What the daemon observed that Nanami owns (for `nanami plan`).
    pub state: GatewayState,
    /// Peer telemetry by interface and peer key.
    #[serde(default)]
    pub telemetry: BTreeMap<InterfaceName, BTreeMap<PublicKey, PeerTelemetry>>,
    /// Machine facts.
    #[serde(default)]
    pub facts: Facts,
    /// Forwarding-path health of each network the gateway probes (absent: it
    /// probes nothing, or is an older daemon).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<NetworkId, NetworkHealth>,
    /// The manager's digest ([`GatewayDesired::digest`]) of the applied generation
    /// (`status.applied_generation`), when the daemon knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_digest: Option<String>,
}

/// What a gateway's probes say about its forwarding path to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkHealth {
    /// The verdict, with hysteresis (see the daemon's probe settings).
    pub state: PathHealth,
    /// Each target's latest result.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, TargetHealth>))]
    pub targets: BTreeMap<std::net::IpAddr, TargetHealth>,
}

pub use nanami_control::verdict::PathHealth;

/// One probe target's latest result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TargetHealth {
    /// Round-trip time of the latest successful probe, in microseconds.
    #[serde(default)]
    pub last_rtt_us: Option<u64>,
    /// Probes failed in a row since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// A stored report with the time the manager received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ObservedRecord {
    /// Unix time in milliseconds the report arrived.
    pub received_unix_ms: u64,
    /// The report.
    pub report: ObservedReport,
}

/// Whether the manager hears from a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Reports arrive.
    Online,
    /// Too many reports were missed; its clients fail over.
    Offline,
    /// No longer in the topology: it is served the empty state (its daemon removes
    /// everything Nanami owns) and carries no clients.
    Removed,
}

/// A gateway whose daemon runs a generation this manager did not issue with that
/// content: the manager's history forked (an older store was restored, or a change
/// was served but could not be stored before a restart). The manager then issues
/// its current state at a generation above the daemon's, so numbers never repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GenerationFork {
    /// The generation the daemon reported applied.
    pub reported_generation: u64,
    /// The generation the manager held for the gateway when it noticed.
    pub manager_generation: u64,
    /// The generation the manager re-issued its state at.
    pub reissued_generation: u64,
    /// When it was noticed (Unix ms).
    pub detected_unix_ms: u64,
    /// Whether the daemon has since applied the re-issued generation.
    pub resolved: bool,
}

/// One gateway as `nanami status` and the oversight API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayStatus {
    /// The gateway.
    pub id: GatewayId,
    /// Its workspace (`None` once it left the topology).
    pub workspace: Option<String>,
    /// Its region.
    pub region: Option<String>,
    /// Online or offline, from heartbeats.
    pub health: Liveness,
    /// Networks whose forwarding path through this gateway is down (its probes of
    /// the network's health targets fail) while it still reports: their clients
    /// use another gateway if the network has a healthy one.
    #[serde(default)]
    pub unhealthy_networks: BTreeSet<NetworkId>,
    /// The reconciler's condition as last reported (`None`: never reported).
    pub condition: Option<nanami_reconcile::Condition>,
    /// The generation the manager wants.
    pub desired_generation: u64,
    /// The generation the gateway last reported applied.
    pub observed_generation: Option<u64>,
    /// Peers in the desired state.
    pub peers: usize,
    /// Peers the gateway reported.
    pub observed_peers: usize,
    /// The newest handshake over all its peers.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<nanami_model::openapi::UnixTime>))]
    pub newest_handshake: Option<SystemTime>,
    /// When the last report arrived (Unix ms).
    pub last_report_unix_ms: Option<u64>,
    /// Whether the enrolled key differs from the topology's key for the gateway's
    /// node (clients then cannot handshake; fix the topology).
    pub key_mismatch: bool,
    /// Machine facts from the last report.
    pub facts: Facts,
    /// The newest generation fork noticed for this gateway since the manager
    /// started (see [`GenerationFork`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_fork: Option<GenerationFork>,
    /// Set while this gateway's served state (its generation or liveness verdict)
    /// is not in the store because the store cannot write: what is served is
    /// right, but a restart now would lose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

/// `PUT /v1/topology`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TopologyResponse {
    /// The stored revision (unchanged when the document was identical).
    pub revision: u64,
    /// Gateways whose compiled state changed, with their new generation.
    pub changed: BTreeMap<GatewayId, u64>,
}

/// `GET /v1/oversight/regions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegionView {
    /// Region id.
    pub id: String,
    /// Human name.
    pub display_name: String,
    /// `active`, `draining` or `retired`.
    pub state: String,
    /// Workspaces allowed to use it.
    pub workspaces: Vec<String>,
    /// Gateways placed in it.
    pub gateways: Vec<GatewayId>,
}

/// `GET /v1/oversight/workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkspaceView {
    /// Workspace id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Regions it may use, in preference order.
    pub regions: Vec<String>,
    /// Its gateways.
    pub gateways: Vec<GatewayId>,
    /// Active nodes (clients and gateways).
    pub active_nodes: usize,
}

/// An object of the object API with its revision (served as its `ETag` too; send
/// it back in `If-Match` to change the object only if nobody else did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Versioned<T> {
    /// The object's revision: a digest of its content.
    pub revision: String,
    /// The object, in its topology-document form.
    pub object: T,
}

/// A list of objects, each with its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Listed<T> {
    /// The objects, by id.
    pub items: Vec<Versioned<T>>,
}

/// The answer to an accepted write of the object API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WriteResponse {
    /// The object written.
    pub object: AuditObject,
    /// Its new revision (`None`: deleted).
    pub revision: Option<String>,
    /// The topology's revision after the write (unchanged when the write changed
    /// nothing).
    pub topology_revision: u64,
    /// Gateways whose compiled state changed, with their new generation.
    pub changed: BTreeMap<GatewayId, u64>,
}

/// `POST /v1/workspaces/{ws}/nodes/{id}/rotate-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// The node's new public key (base64); the node made the private key itself.
    pub public_key: String,
}

/// `POST /v1/workspaces/{ws}/credentials` (platform credential): a new
/// workspace credential, shown once (only its digest is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CredentialResponse {
    /// The credential (`nmw_...`).
    pub credential: String,
    /// The workspace it administers.
    pub workspace: String,
    /// Its id in the audit trail (a digest prefix, not the secret).
    pub credential_id: String,
}

/// `GET /v1/oversight/audit?after=N&limit=M`: a page of the audit trail, oldest
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditPage {
    /// Entries after `after`, at most `limit`.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; `None` when this page is the last.
    pub next_after: Option<u64>,
}
