//! The validated topology: what [`crate::validate`] makes of a [`crate::doc::Document`].
//!
//! Every reference in it resolves, every address is allocated, and every collection
//! is ordered by id, so two documents that differ only in the order of their lists
//! give equal values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::OrdMap;
use ipnet::IpNet;
use serde::Serialize;

use crate::doc::{Document, ParseError, WorkspaceDoc};
use crate::id::{GatewayId, InterfaceName, NetworkId, NodeId, RegionId, WorkspaceId};
use crate::key::PublicKey;
use crate::validate::{validate, validate_workspace, ValidationErrors};

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
/// Its maps are persistent ([`imbl::OrdMap`], workspaces behind [`Arc`]): a clone
/// costs nothing, and a topology with one workspace replaced
/// ([`Topology::with_workspace`]) shares everything else with the one before, so a
/// change to one workspace of a platform with a million nodes costs what that
/// workspace costs.
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
    pub workspaces: OrdMap<WorkspaceId, Arc<Workspace>>,
    /// Which workspace each node id belongs to.
    #[serde(skip)]
    pub(crate) node_index: OrdMap<NodeId, WorkspaceId>,
    /// Which workspace each gateway id belongs to.
    #[serde(skip)]
    pub(crate) gateway_index: OrdMap<GatewayId, WorkspaceId>,
    /// Which node holds each public key (keys are unique across workspaces).
    #[serde(skip)]
    pub(crate) key_index: OrdMap<PublicKey, NodeId>,
    /// Which gateway each endpoint belongs to (endpoints are sockets of the
    /// platform's machines: unique across workspaces).
    #[serde(skip)]
    pub(crate) endpoint_index: OrdMap<SocketAddr, GatewayId>,
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
        let mut t = Self {
            regions,
            workspaces: OrdMap::new(),
            node_index: OrdMap::new(),
            gateway_index: OrdMap::new(),
            key_index: OrdMap::new(),
            endpoint_index: OrdMap::new(),
        };
        for (_, ws) in workspaces {
            t.index(&ws);
            t.workspaces.insert(ws.id.clone(), Arc::new(ws));
        }
        t
    }

    /// Adds `ws`'s ids, keys and endpoints to the indexes.
    fn index(&mut self, ws: &Workspace) {
        for node in ws.nodes.values() {
            self.node_index.insert(node.id.clone(), ws.id.clone());
            self.key_index.insert(node.public_key, node.id.clone());
        }
        for gw in ws.gateways.values() {
            self.gateway_index.insert(gw.id.clone(), ws.id.clone());
            self.endpoint_index.insert(gw.endpoint, gw.id.clone());
        }
    }

    /// Removes `ws`'s ids, keys and endpoints from the indexes.
    fn unindex(&mut self, ws: &Workspace) {
        for node in ws.nodes.values() {
            self.node_index.remove(&node.id);
            self.key_index.remove(&node.public_key);
        }
        for gw in ws.gateways.values() {
            self.gateway_index.remove(&gw.id);
            self.endpoint_index.remove(&gw.endpoint);
        }
    }

    /// This topology with the workspace `doc` added or replaced, validated against
    /// the rest: the workspace's own rules, the region catalog, and the ids, keys
    /// and endpoints of every other workspace (which must stay unique). It costs
    /// what the one workspace costs, not what the platform does. A change to the
    /// region catalog is not a workspace change: validate the whole document then.
    ///
    /// The result equals `Topology::from_document` of the document with that
    /// workspace replaced; on a refusal, a clash with another workspace is reported
    /// at the replaced workspace's path (whatever the two workspaces' order in a
    /// document).
    pub fn with_workspace(&self, doc: &WorkspaceDoc) -> Result<Self, ValidationErrors> {
        let ws = validate_workspace(self, doc)?;
        let mut next = self.clone();
        if let Some(old) = next.workspaces.get(&ws.id).cloned() {
            next.unindex(&old);
        }
        next.index(&ws);
        next.workspaces.insert(ws.id.clone(), Arc::new(ws));
        Ok(next)
    }

    /// This topology without workspace `id` (unchanged when it has none).
    pub fn without_workspace(&self, id: &WorkspaceId) -> Self {
        let mut next = self.clone();
        if let Some(old) = next.workspaces.remove(id) {
            next.unindex(&old);
        }
        next
    }

    /// The workspace that holds `key` and the node, if any holds it.
    pub fn key_holder(&self, key: &PublicKey) -> Option<(&WorkspaceId, &NodeId)> {
        let node = self.key_index.get(key)?;
        Some((self.node_index.get(node)?, node))
    }

    /// The gateway whose endpoint is `addr`, with its workspace.
    pub fn endpoint_holder(&self, addr: &SocketAddr) -> Option<(&WorkspaceId, &GatewayId)> {
        let gw = self.endpoint_index.get(addr)?;
        Some((self.gateway_index.get(gw)?, gw))
    }

    /// How many gateways there are (constant time).
    pub fn gateway_count(&self) -> usize {
        self.gateway_index.len()
    }

    /// How many nodes there are (constant time).
    pub fn node_count(&self) -> usize {
        self.node_index.len()
    }

    /// The workspace node `id` belongs to.
    pub fn node_workspace(&self, id: &NodeId) -> Option<&WorkspaceId> {
        self.node_index.get(id)
    }

    /// The workspace gateway `id` belongs to.
    pub fn gateway_workspace(&self, id: &GatewayId) -> Option<&WorkspaceId> {
        self.gateway_index.get(id)
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
