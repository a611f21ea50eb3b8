//! Explanations: why a client is on the gateways it is on, and which clients a
//! gateway carries and why.
//!
//! An explanation is not a second implementation of the assignment rules. The
//! per-gateway checks are [`crate::assign::verdict`], the one function
//! [`crate::assign::assign`] itself decides eligibility with, and the preference
//! orders, capacity skips and choices are recorded from a run of the assignment
//! itself: what an explanation says was chosen is what [`crate::assign::assign`]
//! (and so [`crate::compile_node`]) chose.
//!
//! For each network of a client, every gateway of the network (those serving it,
//! and for `manual` those named in the list) is listed in the client's policy
//! order (the `manual` list then the others; region then id for `auto`; the
//! rendezvous ranking, with its [`BalancedScore`]s, for `balanced`) with:
//! - its [`Verdict`]: eligible, or the first check it fails;
//! - its [`Outcome`] for this client: primary, standby, skipped because full,
//!   not needed (redundancy reached before its turn), not in the manual list, or
//!   ineligible (the verdict says why).
//!
//! A gateway with [`Verdict::Unhealthy`] can still be primary or standby: when no
//! gateway of the network is eligible, those only unhealthy for it stay candidates
//! (the safety rule of [`crate::assign`]); [`NetworkExplanation::safety_rule`] says
//! when that happened.
//!
//! Like everything in this crate, an explanation is a pure function of the
//! topology and the [`Health`]: ordered collections only, ids only (no keys), so
//! the same input serializes to the same bytes.
//!
//! ```
//! use nanami_model::assign::Verdict;
//! use nanami_model::explain::Outcome;
//! use nanami_model::{explain_gateway, explain_node, GatewayId, Health, NetworkId, NodeId, Topology};
//! let topology = Topology::from_yaml(include_str!("../../examples/topology.yaml")).unwrap();
//! let mut health = Health::all_up();
//! health.offline.insert(GatewayId::new("gw-fra-1").unwrap());
//! let why = explain_node(&topology, &health, &NodeId::new("laptop-ana").unwrap()).unwrap();
//! let corp = why.network(&NetworkId::new("corp").unwrap()).unwrap();
//! // In region order gw-fra-1 comes first, but it is offline.
//! assert_eq!(corp.gateways[0].verdict, Verdict::Offline);
//! assert_eq!(corp.gateways[0].outcome, Outcome::Ineligible);
//! assert_eq!(corp.primary, Some(GatewayId::new("gw-nyc-1").unwrap()));
//! // The only exit gateway is offline: no exit.
//! assert_eq!(why.exit.as_ref().unwrap().network, None);
//! let nyc = explain_gateway(&topology, &health, &GatewayId::new("gw-nyc-1").unwrap()).unwrap();
//! assert!(nyc.carried().iter().any(|(node, _)| node.as_str() == "laptop-ana"));
//! println!("{}", serde_json::to_string_pretty(&why).unwrap());
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::assign::{
    assign_traced, candidates_and_rule, preference, region_order, role_weights, verdict, weights,
    BalancedScore, Duty, Step, Trace, Verdict, Walk,
};
use crate::health::Health;
use crate::id::{GatewayId, NetworkId, NodeId, WorkspaceId};
use crate::topology::{Gateway, Network, Node, NodeStatus, Policy, Role, Topology, Workspace};

/// Why there is no explanation for the id asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExplainError {
    /// No node has this id; check the id against the topology.
    #[error("no node {0:?} in the topology")]
    UnknownNode(NodeId),
    /// No gateway has this id; check the id against the topology.
    #[error("no gateway {0:?} in the topology")]
    UnknownGateway(GatewayId),
    /// The node exists but is not active: assignment places only active nodes, so
    /// it is on no gateway. Activate it to have it placed.
    #[error("node {id:?} is {status:?}; only active nodes are placed on gateways")]
    NodeNotActive {
        /// The node.
        id: NodeId,
        /// Its status.
        status: NodeStatus,
    },
    /// The node is a gateway's own machine, not a client: explain the gateway
    /// instead.
    #[error("node {node:?} is the machine of gateway {gateway:?}; explain the gateway instead")]
    NodeIsGateway {
        /// The node.
        node: NodeId,
        /// The (first, by id) gateway that runs on it.
        gateway: GatewayId,
    },
}

/// A network's assignment policy, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Region order, then gateway id.
    Auto,
    /// Weighted rendezvous hashing per client.
    Balanced,
    /// The network's `manual` list.
    Manual,
}

/// What happened to one gateway for one client: the placement's side of the
/// story, next to the gateway's [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "outcome")]
#[non_exhaustive]
pub enum Outcome {
    /// The client's primary (for an exit: its exit).
    Primary,
    /// One of the client's standbys.
    Standby {
        /// Its place in the failover order: 1 is the first standby.
        position: usize,
    },
    /// A candidate, skipped because it was at its capacity when the client's turn
    /// came (clients are placed in node-id order) and did not hold it already.
    CapacityFull {
        /// Its capacity.
        capacity: u32,
        /// The clients it held at that moment.
        load: u64,
    },
    /// A candidate, not needed: `redundancy` gateways were taken before its turn.
    NotNeeded,
    /// The policy is `manual` and its list does not name the gateway.
    NotInManualList,
    /// Not a candidate: its [`Verdict`] says why.
    Ineligible,
}

impl Outcome {
    /// The gateway's place in the client's failover order when it was chosen
    /// (0 is the primary).
    pub fn position(&self) -> Option<usize> {
        match self {
            Outcome::Primary => Some(0),
            Outcome::Standby { position } => Some(*position),
            Outcome::CapacityFull { .. }
            | Outcome::NotNeeded
            | Outcome::NotInManualList
            | Outcome::Ineligible => None,
        }
    }
}

/// One gateway of a network, for one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayVerdict {
    /// The gateway.
    pub gateway: GatewayId,
    /// Whether it passes the checks of eligibility for the duty, or the first it
    /// fails.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// What became of it for this client.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Its rendezvous score for this client, when the policy is `balanced`: the
    /// list is ordered by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<BalancedScore>,
}

/// How one client was placed in one network, or given its exit in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkExplanation {
    /// The network.
    pub network: NetworkId,
    /// What was placed: the client in the network, or its exit.
    pub duty: Duty,
    /// The network's policy.
    pub policy: PolicyName,
    /// The `manual` list, in order (empty unless the policy is `manual`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manual: Vec<GatewayId>,
    /// How many gateways hold the client: a primary and `redundancy - 1` standbys.
    pub redundancy: u32,
    /// No gateway was eligible, so those only unhealthy for the network were the
    /// candidates (the safety rule). Always false for an exit.
    pub safety_rule: bool,
    /// Every gateway of the network, in the client's policy order.
    pub gateways: Vec<GatewayVerdict>,
    /// The primary (for an exit: the exit); none when no candidate had room.
    pub primary: Option<GatewayId>,
    /// The standbys, in failover order.
    pub standbys: Vec<GatewayId>,
}

impl NetworkExplanation {
    /// The chosen gateways in failover order: the primary, then the standbys.
    pub fn chosen(&self) -> Vec<GatewayId> {
        self.primary
            .iter()
            .chain(self.standbys.iter())
            .cloned()
            .collect()
    }
}

/// How a client's exit was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExitExplanation {
    /// The client's networks with `exit: true` that were tried, in id order: each
    /// until one had an exit gateway with room (the last one then), or all of them.
    pub tried: Vec<NetworkExplanation>,
    /// The exit network; none when no exit gateway could take the client.
    pub network: Option<NetworkId>,
}

impl ExitExplanation {
    /// The chosen exit gateways in failover order (empty when none).
    pub fn chosen(&self) -> Vec<GatewayId> {
        self.tried
            .iter()
            .find(|t| Some(&t.network) == self.network.as_ref())
            .map(NetworkExplanation::chosen)
            .unwrap_or_default()
    }
}

/// Why a client is on the gateways it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeExplanation {
    /// The client.
    pub node: NodeId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Each of its networks, in id order.
    pub networks: Vec<NetworkExplanation>,
    /// Its exit; none when it does not want one (`exit: false`).
    pub exit: Option<ExitExplanation>,
}

impl NodeExplanation {
    /// The explanation of `network`, when the client belongs to it.
    pub fn network(&self, network: &NetworkId) -> Option<&NetworkExplanation> {
        self.networks.iter().find(|n| &n.network == network)
    }
}

/// A client a gateway carries in a network, and where the gateway stands for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CarriedClient {
    /// The client.
    pub node: NodeId,
    /// The gateway's place in the client's failover order: 0 is the primary (or
    /// the exit), then the standbys.
    pub position: usize,
    /// The gateway's place in the client's policy order
    /// ([`NetworkExplanation::gateways`], 0 first): the gateways before it were
    /// chosen too, or were not candidates or full (that explanation says which).
    pub preference: usize,
}

/// One network of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayNetworkExplanation {
    /// The network.
    pub network: NetworkId,
    /// Whether the gateway may hold clients of the network.
    pub verdict: Verdict,
    /// No gateway of the network was eligible, so those only unhealthy for it were
    /// the candidates (the safety rule).
    pub safety_rule: bool,
    /// Whether it may be the exit of clients of the network; none when the
    /// network has no `exit: true`.
    pub exit_verdict: Option<Verdict>,
    /// The clients it holds in the network, by node id.
    pub clients: Vec<CarriedClient>,
    /// The clients it holds as their exit (or exit standby) in the network, by
    /// node id.
    pub exit_clients: Vec<CarriedClient>,
}

/// Which clients a gateway carries, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayExplanation {
    /// The gateway.
    pub gateway: GatewayId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Most clients it takes (none: unbounded).
    pub capacity: Option<u32>,
    /// The clients it holds, counted once however many networks (what capacity
    /// bounds).
    pub load: usize,
    /// Each network it serves, in id order.
    pub networks: Vec<GatewayNetworkExplanation>,
}

impl GatewayExplanation {
    /// Every (client, network) pair the gateway holds, as a network's gateway or
    /// as an exit: what [`crate::Assignment::by_gateway`] says it holds.
    pub fn carried(&self) -> BTreeSet<(NodeId, NetworkId)> {
        self.networks
            .iter()
            .flat_map(|n| {
                n.clients
                    .iter()
                    .chain(n.exit_clients.iter())
                    .map(move |c| (c.node.clone(), n.network.clone()))
            })
            .collect()
    }
}

/// Explains the placement of client `node`: per network, every gateway's verdict
/// and outcome in the client's policy order, and the chosen primary and standbys;
/// and its exit when it wants one.
pub fn explain_node(
    topology: &Topology,
    health: &Health,
    node: &NodeId,
) -> Result<NodeExplanation, ExplainError> {
    let (ws, rec) = topology
        .node(node)
        .ok_or_else(|| ExplainError::UnknownNode(node.clone()))?;
    if let Some(gw) = ws.gateways.values().find(|g| &g.node == node) {
        return Err(ExplainError::NodeIsGateway {
            node: node.clone(),
            gateway: gw.id.clone(),
        });
    }
    if !rec.is_active() {
        return Err(ExplainError::NodeNotActive {
            id: node.clone(),
            status: rec.status,
        });
    }
    let (_, trace) = assign_traced(topology, ws, health);
    let ctx = Context::new(topology, ws, health, &trace);
    Ok(ctx.node(rec))
}

/// Explains which clients `gateway` carries in each network it serves, where it
/// stands in each one's failover and policy order, and its own verdicts.
pub fn explain_gateway(
    topology: &Topology,
    health: &Health,
    gateway: &GatewayId,
) -> Result<GatewayExplanation, ExplainError> {
    let (ws, gw) = topology
        .gateway(gateway)
        .ok_or_else(|| ExplainError::UnknownGateway(gateway.clone()))?;
    let (assignment, trace) = assign_traced(topology, ws, health);
    let ctx = Context::new(topology, ws, health, &trace);
    let mut clients: BTreeMap<&NetworkId, Vec<CarriedClient>> = BTreeMap::new();
    let mut exit_clients: BTreeMap<&NetworkId, Vec<CarriedClient>> = BTreeMap::new();
    let carried = assignment.by_gateway.get(gateway);
    for node_id in carried.into_iter().flat_map(BTreeMap::keys) {
        let Some(rec) = ws.nodes.get(node_id) else {
            continue;
        };
        let expl = ctx.node(rec);
        let exits = expl.exit.iter().flat_map(|e| {
            e.tried
                .iter()
                .filter(|t| Some(&t.network) == e.network.as_ref())
        });
        for (net, is_exit) in expl
            .networks
            .iter()
            .map(|n| (n, false))
            .chain(exits.map(|n| (n, true)))
        {
            let Some(net_id) = gw.networks.get(&net.network) else {
                continue;
            };
            let found = net.gateways.iter().enumerate().find_map(|(i, v)| {
                let position = v.outcome.position()?;
                (&v.gateway == gateway).then_some(CarriedClient {
                    node: node_id.clone(),
                    position,
                    preference: i,
                })
            });
            if let Some(c) = found {
                let bucket = if is_exit {
                    &mut exit_clients
                } else {
                    &mut clients
                };
                bucket.entry(net_id).or_default().push(c);
            }
        }
    }
    let networks = gw
        .networks
        .iter()
        .map(|net| {
            let network = ws.networks.get(net);
            GatewayNetworkExplanation {
                network: net.clone(),
                verdict: verdict(topology, ws, gw, net, Duty::Network, health),
                safety_rule: ctx.nets.get(net).is_some_and(|c| c.safety_rule),
                exit_verdict: network
                    .filter(|n| n.exit)
                    .map(|_| verdict(topology, ws, gw, net, Duty::Exit, health)),
                clients: clients.remove(net).unwrap_or_default(),
                exit_clients: exit_clients.remove(net).unwrap_or_default(),
            }
        })
        .collect();
    Ok(GatewayExplanation {
        gateway: gateway.clone(),
        workspace: ws.id.clone(),
        capacity: gw.capacity,
        load: carried.map_or(0, BTreeMap::len),
        networks,
    })
}

/// What a network's explanations share across clients.
struct NetContext<'a> {
    network: &'a Network,
    safety_rule: bool,
    weights: BTreeMap<GatewayId, u32>,
    exit_weights: BTreeMap<GatewayId, u32>,
    /// The gateways listed: those serving the network, and those its manual list
    /// names, in the static order (the manual list first, then region and id).
    listed: Vec<&'a Gateway>,
}

/// One workspace's explanations under one health, from one traced assignment.
struct Context<'a> {
    topology: &'a Topology,
    ws: &'a Workspace,
    health: &'a Health,
    trace: &'a Trace,
    nets: BTreeMap<&'a NetworkId, NetContext<'a>>,
}

impl<'a> Context<'a> {
    fn new(
        topology: &'a Topology,
        ws: &'a Workspace,
        health: &'a Health,
        trace: &'a Trace,
    ) -> Self {
        let nets = ws
            .networks
            .values()
            .map(|n| {
                let (_, safety_rule) = candidates_and_rule(topology, ws, n, health);
                let manual: &[GatewayId] = match &n.policy {
                    Policy::Manual(ids) => ids,
                    Policy::Auto | Policy::Balanced => &[],
                };
                let mut listed: Vec<&Gateway> =
                    manual.iter().filter_map(|id| ws.gateways.get(id)).collect();
                let rest: Vec<&Gateway> = ws
                    .gateways
                    .values()
                    .filter(|g| g.networks.contains(&n.id) && !manual.contains(&g.id))
                    .collect();
                listed.extend(region_order(ws, rest));
                let ctx = NetContext {
                    network: n,
                    safety_rule,
                    weights: weights(ws, &n.id),
                    exit_weights: role_weights(ws, &n.id, Role::Exit),
                    listed,
                };
                (&n.id, ctx)
            })
            .collect();
        Self {
            topology,
            ws,
            health,
            trace,
            nets,
        }
    }

    fn node(&self, rec: &Node) -> NodeExplanation {
        let networks = rec
            .memberships
            .keys()
            .filter_map(|net| {
                let walk = self.trace.networks.get(&(rec.id.clone(), net.clone()));
                self.network(rec, net, Duty::Network, walk)
            })
            .collect();
        let exit = rec.exit.then(|| {
            let tried: Vec<NetworkExplanation> = self
                .trace
                .exits
                .get(&rec.id)
                .into_iter()
                .flatten()
                .filter_map(|(net, walk)| self.network(rec, net, Duty::Exit, Some(walk)))
                .collect();
            let network = tried
                .last()
                .filter(|t| t.primary.is_some())
                .map(|t| t.network.clone());
            ExitExplanation { tried, network }
        });
        NodeExplanation {
            node: rec.id.clone(),
            workspace: self.ws.id.clone(),
            networks,
            exit,
        }
    }

    fn network(
        &self,
        rec: &Node,
        net: &NetworkId,
        duty: Duty,
        walk: Option<&Walk>,
    ) -> Option<NetworkExplanation> {
        let ctx = self.nets.get(net)?;
        let network = ctx.network;
        let (policy, manual) = match &network.policy {
            Policy::Auto => (PolicyName::Auto, Vec::new()),
            Policy::Balanced => (PolicyName::Balanced, Vec::new()),
            Policy::Manual(ids) => (PolicyName::Manual, ids.clone()),
        };
        let weights = match duty {
            Duty::Network => &ctx.weights,
            Duty::Exit => &ctx.exit_weights,
        };
        // The client's policy order over every listed gateway: the walk assignment
        // made is this order restricted to the candidates, since the manual list and
        // the region order are fixed orders and the rendezvous ranking is a total
        // order on (score, id).
        let order = preference(&rec.id, network, &ctx.listed, weights);
        let steps: BTreeMap<&GatewayId, Step> = walk
            .into_iter()
            .flatten()
            .map(|(g, step)| (g, *step))
            .collect();
        let in_manual = |g: &GatewayId| match &network.policy {
            Policy::Manual(ids) => ids.contains(g),
            Policy::Auto | Policy::Balanced => true,
        };
        let mut chosen: Vec<GatewayId> = Vec::new();
        let mut gateways = Vec::with_capacity(order.len());
        for g in order {
            let outcome = match steps.get(&g.id) {
                Some(Step::Taken) => {
                    let position = chosen.len();
                    chosen.push(g.id.clone());
                    if position == 0 {
                        Outcome::Primary
                    } else {
                        Outcome::Standby { position }
                    }
                }
                Some(Step::Full { capacity, load }) => Outcome::CapacityFull {
                    capacity: *capacity,
                    load: *load,
                },
                Some(Step::NotReached) => Outcome::NotNeeded,
                None if !in_manual(&g.id) => Outcome::NotInManualList,
                None => Outcome::Ineligible,
            };
            gateways.push(GatewayVerdict {
                gateway: g.id.clone(),
                verdict: verdict(self.topology, self.ws, g, net, duty, self.health),
                outcome,
                score: matches!(network.policy, Policy::Balanced)
                    .then(|| BalancedScore::of(&rec.id, &g.id, weights)),
            });
        }
        let mut chosen = chosen.into_iter();
        Some(NetworkExplanation {
            network: net.clone(),
            duty,
            policy,
            manual,
            redundancy: network.redundancy,
            safety_rule: duty == Duty::Network && ctx.safety_rule,
            gateways,
            primary: chosen.next(),
            standbys: chosen.collect(),
        })
    }
}
