//! Assignment: which gateway serves each client in each network.
//!
//! A gateway is *eligible* for a network when it serves it with the `ingress` role,
//! its node is active, it is not draining, its region is `active`, and [`Health`]
//! says it is up for that network. Then:
//! - `auto`: eligible gateways in the order of the workspace's `regions`, then by id;
//! - `manual`: eligible gateways in the order of the `manual` list.
//!
//! Clients are placed in node-id order on the first candidate that still has
//! capacity (a client counts once per gateway however many of its networks that
//! gateway serves). A client no candidate can take is left unassigned in that
//! network, and its config says so.

use std::collections::{BTreeMap, BTreeSet};

use crate::health::Health;
use crate::id::{GatewayId, NetworkId, NodeId};
use crate::topology::{Gateway, Network, Policy, RegionState, Role, Topology, Workspace};

/// The outcome for one workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// For each client, its gateway in each of its networks.
    pub by_node: BTreeMap<NodeId, BTreeMap<NetworkId, GatewayId>>,
    /// For each gateway, its clients and the networks it serves each in.
    pub by_gateway: BTreeMap<GatewayId, BTreeMap<NodeId, Vec<NetworkId>>>,
}

/// Whether `gateway` may take new clients of `network`.
pub fn eligible(
    topology: &Topology,
    ws: &Workspace,
    gateway: &Gateway,
    network: &NetworkId,
    health: &Health,
) -> bool {
    gateway.networks.contains(network)
        && gateway.has(Role::Ingress)
        && !gateway.drain
        && ws.nodes.get(&gateway.node).is_some_and(|n| n.is_active())
        && topology
            .regions
            .get(&gateway.region)
            .is_some_and(|r| r.state == RegionState::Active)
        && health.is_up(&gateway.id, network)
}

/// The eligible gateways of `network`, most preferred first.
pub fn candidates<'a>(
    topology: &Topology,
    ws: &'a Workspace,
    network: &Network,
    health: &Health,
) -> Vec<&'a Gateway> {
    let ok = |g: &&Gateway| eligible(topology, ws, g, &network.id, health);
    match &network.policy {
        Policy::Manual(ids) => ids
            .iter()
            .filter_map(|id| ws.gateways.get(id))
            .filter(ok)
            .collect(),
        Policy::Auto | Policy::Balanced => {
            let mut gws: Vec<&Gateway> = ws.gateways.values().filter(ok).collect();
            let rank = |g: &Gateway| ws.regions.iter().position(|r| *r == g.region);
            gws.sort_by(|a, b| (rank(a), &a.id).cmp(&(rank(b), &b.id)));
            gws
        }
    }
}

/// Assigns every active client of `ws`.
pub fn assign(topology: &Topology, ws: &Workspace, health: &Health) -> Assignment {
    let mut out = Assignment::default();
    let candidates: BTreeMap<&NetworkId, Vec<&Gateway>> = ws
        .networks
        .values()
        .map(|n| (&n.id, candidates(topology, ws, n, health)))
        .collect();
    let gateway_nodes: BTreeSet<&NodeId> = ws.gateways.values().map(|g| &g.node).collect();
    let mut load: BTreeMap<&GatewayId, u64> = BTreeMap::new();
    for node in ws.nodes.values() {
        if !node.is_active() || gateway_nodes.contains(&node.id) {
            continue;
        }
        for net in node.memberships.keys() {
            let Some(cands) = candidates.get(net) else {
                continue;
            };
            let chosen = cands.iter().find(|g| {
                let already = out
                    .by_gateway
                    .get(&g.id)
                    .is_some_and(|c| c.contains_key(&node.id));
                let used = load.get(&g.id).copied().unwrap_or(0);
                already || g.capacity.is_none_or(|cap| used < u64::from(cap))
            });
            let Some(g) = chosen else {
                continue;
            };
            let clients = out.by_gateway.entry(g.id.clone()).or_default();
            if !clients.contains_key(&node.id) {
                *load.entry(&g.id).or_insert(0) += 1;
            }
            clients
                .entry(node.id.clone())
                .or_default()
                .push(net.clone());
            out.by_node
                .entry(node.id.clone())
                .or_default()
                .insert(net.clone(), g.id.clone());
        }
    }
    out
}
