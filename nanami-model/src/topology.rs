//! The validated topology: what [`crate::validate`] makes of a [`crate::doc::Document`].
//!
//! Every reference in it resolves, every address is allocated, and every collection
//! is ordered by id, so two documents that differ only in the order of their lists
//! give equal values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::doc::{Document, ParseError};
use crate::id::{GatewayId, InterfaceName, NetworkId, NodeId, RegionId, WorkspaceId};
use crate::key::PublicKey;
use crate::validate::{validate, ValidationErrors};

/// State of a catalog region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    /// In service.
    Active,
    /// Being emptied: its gateways are not eligible, as if each had `drain: true`.
    Draining,
    /// Out of service: no gateway may be placed in it.
    Retired,
}

/// Lifecycle of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Enrolled but not yet approved.
    Pending,
    /// In service: the only status that appears in compiled state.
    Active,
    /// Switched off by an operator.
    Disabled,
    /// Its key is no longer trusted.
    Revoked,
}

/// What a gateway does for a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Clients tunnel into the workspace network through it.
    Ingress,
    /// It forwards network traffic to the network's routes on its LAN.
    Egress,
    /// It forwards clients' default route to the internet, masqueraded.
    Exit,
}

/// How clients of a network are placed on its gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "policy", content = "gateways")]
pub enum Policy {
    /// The first eligible gateway in workspace region order, then gateway id.
    Auto,
    /// Clients spread over all eligible gateways by weighted rendezvous hashing
    /// (see [`crate::assign`]): all of them carry traffic at once.
    Balanced,
    /// The first eligible gateway of this list.
    Manual(Vec<GatewayId>),
}

/// A catalog region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    /// Its id.
    pub id: RegionId,
    /// Human name.
    pub display_name: String,
    /// Its state.
    pub state: RegionState,
}

/// A network of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Its id.
    pub id: NetworkId,
    /// Member prefixes, at most one per family, IPv4 first.
    pub overlay: Vec<IpNet>,
    /// Private subnets behind its egress gateways.
    pub routes: BTreeSet<IpNet>,
    /// Gateways may act as exit nodes.
    pub exit: bool,
    /// Masquerade toward `routes`.
    pub nat: bool,
    /// Assignment policy.
    pub policy: Policy,
    /// Gateways holding each client: a primary and `redundancy - 1` standbys.
    pub redundancy: u32,
    /// Addresses behind the gateways, inside `routes`, that probe the forwarding path.
    pub health_targets: BTreeSet<IpAddr>,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its lifecycle status.
    pub status: NodeStatus,
    /// Where it can be reached, most preferred first.
    pub endpoints: Vec<SocketAddr>,
    /// Its overlay addresses in each network it belongs to (explicit or allocated).
    pub memberships: BTreeMap<NetworkId, Vec<IpAddr>>,
    /// It wants its default route through an exit gateway.
    pub exit: bool,
}

impl Node {
    /// Whether it appears in compiled state.
    pub fn is_active(&self) -> bool {
        self.status == NodeStatus::Active
    }
}

/// A gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// Its id.
    pub id: GatewayId,
    /// The node whose key and addresses it uses.
    pub node: NodeId,
    /// Where it runs.
    pub region: RegionId,
    /// Networks it serves.
    pub networks: BTreeSet<NetworkId>,
    /// What it does for them.
    pub roles: BTreeSet<Role>,
    /// The address clients dial.
    pub endpoint: SocketAddr,
    /// Its UDP port.
    pub listen_port: u16,
    /// Most clients it takes.
    pub capacity: Option<u32>,
    /// Maintenance mode: not eligible, so no new clients, and the clients it holds
    /// move at the next generation.
    pub drain: bool,
    /// Its WireGuard interface, `nm-<id>`.
    pub interface: InterfaceName,
    /// Hosting: the interface to its LAN on a machine shared by several workspaces'
    /// gateways; the gateway then runs in the network namespace `nm-<id>` (see
    /// [`Gateway::namespace`]). `None`: the machine's own namespace.
    pub uplink: Option<InterfaceName>,
}

impl Gateway {
    /// Whether it has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The network namespace a hosted gateway runs in (`nm-<id>`, the same name
    /// as its interface), or `None` when it is not hosted (no uplink).
    pub fn namespace(&self) -> Option<&str> {
        self.uplink.as_ref().map(|_| self.interface.as_str())
    }
}

/// A tenant's workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workspace {
    /// Its id.
    pub id: WorkspaceId,
    /// The tenant that owns it.
    pub tenant: String,
    /// Regions it may use, in order of preference.
    pub regions: Vec<RegionId>,
    /// Its networks.
    pub networks: BTreeMap<NetworkId, Network>,
    /// Its nodes.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Its gateways.
    pub gateways: BTreeMap<GatewayId, Gateway>,
}

impl Workspace {
    /// Whether `node` is the machine of one of this workspace's gateways.
    pub fn is_gateway_node(&self, node: &NodeId) -> bool {
        self.gateways.values().any(|g| &g.node == node)
    }
}

/// Why a document did not become a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The text could not be read; fix the syntax or shape it names.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The document was read but is not valid; every problem is listed.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// A validated topology.
///
/// ```
/// use nanami_model::Topology;
/// let t = Topology::from_yaml("version: 1\nregions: []\nworkspaces: []\n").unwrap();
/// assert!(t.workspaces.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// The region catalog.
    pub regions: BTreeMap<RegionId, Region>,
    /// The workspaces.
    pub workspaces: BTreeMap<WorkspaceId, Workspace>,
    /// Which workspace each node id belongs to.
    pub(crate) node_index: BTreeMap<NodeId, WorkspaceId>,
    /// Which workspace each gateway id belongs to.
    pub(crate) gateway_index: BTreeMap<GatewayId, WorkspaceId>,
}

impl Topology {
    /// Parses and validates YAML.
    pub fn from_yaml(text: &str) -> Result<Self, TopologyError> {
        Ok(validate(&Document::from_yaml(text)?)?)
    }

    /// Parses and validates JSON.
    pub fn from_json(text: &str) -> Result<Self, TopologyError> {
        Ok(validate(&Document::from_json(text)?)?)
    }

    /// Validates an already parsed document.
    pub fn from_document(doc: &Document) -> Result<Self, ValidationErrors> {
        validate(doc)
    }

    pub(crate) fn from_parts(
        regions: BTreeMap<RegionId, Region>,
        workspaces: BTreeMap<WorkspaceId, Workspace>,
    ) -> Self {
        let mut node_index = BTreeMap::new();
        let mut gateway_index = BTreeMap::new();
        for ws in workspaces.values() {
            for id in ws.nodes.keys() {
                node_index.insert(id.clone(), ws.id.clone());
            }
            for id in ws.gateways.keys() {
                gateway_index.insert(id.clone(), ws.id.clone());
            }
        }
        Self {
            regions,
            workspaces,
            node_index,
            gateway_index,
        }
    }

    /// The workspace a node belongs to, with the node.
    pub fn node(&self, id: &NodeId) -> Option<(&Workspace, &Node)> {
        let ws = self.workspaces.get(self.node_index.get(id)?)?;
        Some((ws, ws.nodes.get(id)?))
    }

    /// The workspace a gateway belongs to, with the gateway.
    pub fn gateway(&self, id: &GatewayId) -> Option<(&Workspace, &Gateway)> {
        let ws = self.workspaces.get(self.gateway_index.get(id)?)?;
        Some((ws, ws.gateways.get(id)?))
    }

    /// Every gateway id, in order.
    pub fn gateway_ids(&self) -> impl Iterator<Item = &GatewayId> {
        self.gateway_index.keys()
    }

    /// Every node id, in order.
    pub fn node_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.node_index.keys()
    }
}
