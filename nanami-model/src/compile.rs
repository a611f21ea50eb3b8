//! Compilation: the topology, as seen under a given [`Health`], becomes the exact
//! state of one gateway ([`compile`]) or the configuration of one client
//! ([`compile_node`]).
//!
//! What a gateway gets, for each network it serves (its interface is `nm-<id>`):
//! - its node's overlay addresses as host prefixes (`/32`, `/128`) on the interface;
//! - one peer per active client it holds, as primary or standby (see
//!   [`crate::assign`]), AllowedIPs = the client's addresses in the networks it
//!   holds the client in: a standby is provisioned before it is needed, so failover
//!   changes nothing on the gateways;
//! - a route for each overlay prefix to the interface, in Nanami's table, and a rule
//!   sending the overlay to that table;
//! - filter accepts: overlay → overlay (`ingress`), overlay → each route (`egress`),
//!   overlay → internet (`exit`, when the network allows it); masquerade toward the
//!   routes when `nat` and toward the internet always;
//! - forwarding for the families it carries.
//!
//! Only objects of the gateway's own workspace are read. That, not address
//! disjointness, is what keeps workspaces apart: two workspaces may use the same
//! overlays and routes (tenants choose their private ranges), so nothing here ever
//! looks a node, key or peer up by address or across workspaces; a gateway's state
//! and a client's configuration are built from one [`Workspace`] and its
//! [`Assignment`] alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::assign::{assign, Assignment};
use crate::config::{peers_for, ExitChoice, GatewayChoice, NodeConfig};
use crate::health::Health;
use crate::id::{GatewayId, NetworkId, NodeId, WorkspaceId};
use crate::state::{
    Destination, FilterRule, FilterSet, GatewayState, InterfaceState, IpFamily, NatRule, PeerState,
    Route, Rule, DEFAULT_MTU,
};
use crate::topology::{Gateway, Node, NodeStatus, Role, Topology, Workspace};

/// Why nothing could be compiled for the id asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// No gateway has this id; check the id against the topology.
    #[error("no gateway {0:?} in the topology")]
    UnknownGateway(GatewayId),
    /// No node has this id; check the id against the topology.
    #[error("no node {0:?} in the topology")]
    UnknownNode(NodeId),
    /// The node exists but is not active, so it gets no configuration.
    #[error("node {id:?} is {status:?}; only active nodes get a configuration")]
    NodeNotActive {
        /// The node.
        id: NodeId,
        /// Its status.
        status: NodeStatus,
    },
    /// The node is a gateway's machine: compile the gateway instead.
    #[error("node {0:?} is a gateway's machine; compile its gateway instead")]
    NodeIsGateway(NodeId),
}

/// A single address as a host prefix.
pub fn host_prefix(addr: IpAddr) -> IpNet {
    // ipnet turns an address into its full-length prefix.
    IpNet::from(addr)
}

/// Compiles the desired state of `gateway`.
///
/// A gateway whose node is not active compiles to the empty state: Nanami removes
/// everything it owns there.
pub fn compile(
    topology: &Topology,
    health: &Health,
    gateway: &GatewayId,
) -> Result<GatewayState, CompileError> {
    let (ws, gw) = topology
        .gateway(gateway)
        .ok_or_else(|| CompileError::UnknownGateway(gateway.clone()))?;
    let assignment = assign(topology, ws, health);
    Ok(gateway_state(ws, gw, &assignment))
}

/// Compiles every gateway, assigning each workspace once.
pub fn compile_all(topology: &Topology, health: &Health) -> BTreeMap<GatewayId, GatewayState> {
    let mut out = BTreeMap::new();
    for ws in topology.workspaces.values() {
        let assignment = assign(topology, ws, health);
        for gw in ws.gateways.values() {
            out.insert(gw.id.clone(), gateway_state(ws, gw, &assignment));
        }
    }
    out
}

/// Compiles the gateways of one workspace (one assignment): what a change confined
/// to that workspace must recompile. Empty for an unknown workspace.
pub fn compile_workspace(
    topology: &Topology,
    health: &Health,
    workspace: &WorkspaceId,
) -> BTreeMap<GatewayId, GatewayState> {
    let Some(ws) = topology.workspaces.get(workspace) else {
        return BTreeMap::new();
    };
    let assignment = assign(topology, ws, health);
    ws.gateways
        .values()
        .map(|gw| (gw.id.clone(), gateway_state(ws, gw, &assignment)))
        .collect()
}

fn gateway_state(ws: &Workspace, gw: &Gateway, assignment: &Assignment) -> GatewayState {
    let mut state = GatewayState::default();
    let Some(own) = ws.nodes.get(&gw.node).filter(|n| n.is_active()) else {
        return state;
    };
    let ifname = gw.interface.clone();
    let mut iface = InterfaceState {
        listen_port: Some(gw.listen_port),
        mtu: DEFAULT_MTU,
        ..InterfaceState::default()
    };
    let mut filter = FilterSet::default();
    for net in gw.networks.iter().filter_map(|id| ws.networks.get(id)) {
        if let Some(addrs) = own.memberships.get(&net.id) {
            iface
                .addresses
                .extend(addrs.iter().map(|a| host_prefix(*a)));
        }
        for overlay in &net.overlay {
            state.forwarding.insert(IpFamily::of(overlay));
            state.routes.insert(Route::nanami(*overlay, ifname.clone()));
            state.rules.insert(Rule::nanami(*overlay));
            let accept = |destination| FilterRule {
                interface: ifname.clone(),
                source: *overlay,
                destination,
            };
            if gw.has(Role::Ingress) {
                filter.accept.insert(accept(Destination::Prefix(*overlay)));
            }
            if gw.has(Role::Egress) {
                for route in net.routes.iter().filter(|r| same_family(r, overlay)) {
                    filter.accept.insert(accept(Destination::Prefix(*route)));
                    if net.nat {
                        filter.masquerade.insert(NatRule {
                            source: *overlay,
                            destination: Destination::Prefix(*route),
                        });
                    }
                }
            }
            if gw.has(Role::Exit) && net.exit {
                filter.accept.insert(accept(Destination::Internet));
                filter.masquerade.insert(NatRule {
                    source: *overlay,
                    destination: Destination::Internet,
                });
            }
        }
    }
    if let Some(clients) = assignment.by_gateway.get(&gw.id) {
        for (node_id, nets) in clients {
            let Some(node) = ws.nodes.get(node_id) else {
                continue;
            };
            let allowed_ips: BTreeSet<IpNet> = nets
                .iter()
                .filter_map(|n| node.memberships.get(n))
                .flatten()
                .map(|a| host_prefix(*a))
                .collect();
            iface.peers.insert(
                node.public_key,
                PeerState {
                    endpoint: node.endpoints.first().copied(),
                    allowed_ips,
                    persistent_keepalive: None,
                },
            );
        }
    }
    state.interfaces.insert(ifname, iface);
    state.filter = Some(filter);
    state
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    a.addr().is_ipv4() == b.addr().is_ipv4()
}

/// Compiles the configuration of client `node`.
pub fn compile_node(
    topology: &Topology,
    health: &Health,
    node: &NodeId,
) -> Result<NodeConfig, CompileError> {
    let (ws, rec) = topology
        .node(node)
        .ok_or_else(|| CompileError::UnknownNode(node.clone()))?;
    if !rec.is_active() {
        return Err(CompileError::NodeNotActive {
            id: node.clone(),
            status: rec.status,
        });
    }
    if ws.is_gateway_node(node) {
        return Err(CompileError::NodeIsGateway(node.clone()));
    }
    Ok(node_config(ws, rec, &assign(topology, ws, health)))
}

/// Compiles the configuration of every active client, assigning each workspace
/// once: the bulk form of [`compile_node`] (which assigns the node's workspace at
/// every call), for a manager or a tool that needs all of them.
pub fn compile_nodes(topology: &Topology, health: &Health) -> BTreeMap<NodeId, NodeConfig> {
    topology
        .workspaces
        .values()
        .flat_map(|ws| workspace_nodes(topology, ws, health))
        .collect()
}

/// The configuration of every active client of one workspace (one assignment):
/// what a manager caches per workspace between changes. Empty for an unknown
/// workspace.
pub fn compile_workspace_nodes(
    topology: &Topology,
    health: &Health,
    workspace: &WorkspaceId,
) -> BTreeMap<NodeId, NodeConfig> {
    topology
        .workspaces
        .get(workspace)
        .map(|ws| workspace_nodes(topology, ws, health))
        .unwrap_or_default()
}

fn workspace_nodes(
    topology: &Topology,
    ws: &Workspace,
    health: &Health,
) -> BTreeMap<NodeId, NodeConfig> {
    let assignment = assign(topology, ws, health);
    ws.nodes
        .values()
        .filter(|n| n.is_active() && !ws.is_gateway_node(&n.id))
        .map(|rec| (rec.id.clone(), node_config(ws, rec, &assignment)))
        .collect()
}

/// Gateway `gw` (its machine `gw_node`) as a client's choice in `network`: its
/// key, endpoint and overlay addresses there, with what the client routes to it.
fn choice(
    gw: &Gateway,
    gw_node: &Node,
    network: &NetworkId,
    allowed_ips: BTreeSet<IpNet>,
    exit_routes: BTreeSet<IpNet>,
) -> GatewayChoice {
    GatewayChoice {
        gateway: gw.id.clone(),
        public_key: gw_node.public_key,
        endpoint: gw.endpoint,
        allowed_ips,
        exit_routes,
        addresses: gw_node
            .memberships
            .get(network)
            .into_iter()
            .flatten()
            .copied()
            .collect(),
    }
}

fn node_config(ws: &Workspace, rec: &Node, assignment: &Assignment) -> NodeConfig {
    let node = &rec.id;
    let mut gateways: BTreeMap<NetworkId, Vec<GatewayChoice>> = BTreeMap::new();
    let mut unassigned = BTreeSet::new();
    let mine = assignment.ordered.get(node);
    for (net_id, net) in rec
        .memberships
        .keys()
        .filter_map(|id| ws.networks.get(id).map(|n| (id, n)))
    {
        let list: Vec<GatewayChoice> = mine
            .and_then(|m| m.get(net_id))
            .into_iter()
            .flatten()
            .filter_map(|g| ws.gateways.get(g))
            .filter_map(|gw| {
                let gw_node = ws.nodes.get(&gw.node)?;
                let mut allowed_ips: BTreeSet<IpNet> = net.overlay.iter().copied().collect();
                if gw.has(Role::Egress) {
                    allowed_ips.extend(net.routes.iter().copied());
                }
                let exit_routes = if rec.exit && net.exit && gw.has(Role::Exit) {
                    net.overlay.iter().map(default_route).collect()
                } else {
                    BTreeSet::new()
                };
                Some(choice(gw, gw_node, net_id, allowed_ips, exit_routes))
            })
            .collect();
        if list.is_empty() {
            unassigned.insert(net_id.clone());
        } else {
            gateways.insert(net_id.clone(), list);
        }
    }
    // The exit is its own list (the exit network's exit gateways), independent of
    // which gateway carries the network's addresses.
    let exit = assignment.exits.get(node).and_then(|(net_id, ids)| {
        let net = ws.networks.get(net_id)?;
        let list: Vec<GatewayChoice> = ids
            .iter()
            .filter_map(|g| ws.gateways.get(g))
            .filter_map(|gw| {
                let gw_node = ws.nodes.get(&gw.node)?;
                Some(choice(
                    gw,
                    gw_node,
                    net_id,
                    BTreeSet::new(),
                    net.overlay.iter().map(default_route).collect(),
                ))
            })
            .collect();
        (!list.is_empty()).then(|| ExitChoice {
            network: net_id.clone(),
            gateways: list,
        })
    });
    let (peers, stranded) = peers_for(&gateways, exit.as_ref(), &BTreeSet::new());
    unassigned.extend(stranded);
    let addresses = rec
        .memberships
        .values()
        .flatten()
        .map(|a| host_prefix(*a))
        .collect();
    NodeConfig {
        node: rec.id.clone(),
        workspace: ws.id.clone(),
        public_key: rec.public_key,
        addresses,
        mtu: DEFAULT_MTU,
        peers,
        unassigned,
        gateways,
        exit,
    }
}

/// The default route of `overlay`'s family.
fn default_route(overlay: &IpNet) -> IpNet {
    match overlay {
        IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
    }
}
