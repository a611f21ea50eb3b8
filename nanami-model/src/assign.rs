//! Assignment: which gateways hold each client in each network, in order.
//!
//! Assignment is stateless: it is a pure function of the topology and [`Health`],
//! recomputed at every generation. It remembers nothing, so "takes no new clients"
//! and "is not eligible" are the same thing, and the clients of a gateway that stops
//! being eligible move at the next generation.
//!
//! A gateway is *eligible* for a network when it serves it with the `ingress` role,
//! its node is active, it is not draining (`drain: true`), its region is `active`
//! (a `draining` region drains all its gateways), and [`Health`] says it is up for
//! that network (neither [`Health::offline`] nor [`Health::unhealthy`] for the
//! pair). These checks are made in one place, [`verdict`], which says which one a
//! gateway fails; [`crate::explain`] reports it.
//!
//! **Safety rule.** When no gateway is eligible for a network but some are only
//! [`Health::unhealthy`] for it (online, not draining: eligible in every other
//! respect), those stay eligible: if every gateway's probes of a network fail, the
//! probe target itself is most likely down, not every forwarding path, and moving
//! the clients nowhere would strand them. A network that still has one healthy
//! gateway uses only its healthy ones. See [`candidates`].
//!
//! Each (client, network) gets the eligible gateways in a *preference order*:
//! - `auto`: the order of the workspace's `regions`, then gateway id;
//! - `manual`: the order of the `manual` list;
//! - `balanced`: weighted rendezvous hashing, see below.
//!
//! Clients are placed in node-id order, and within a client its networks in id
//! order. For each, the preference order is walked and a gateway is taken when it
//! already holds the client or has room left, until `redundancy` gateways are taken:
//! the first is the client's *primary*, the others its *standbys*, in that order.
//! Every one of them holds the client as a peer, so failing over is a change on the
//! client only. `capacity` bounds the clients a gateway holds, as primary or standby
//! (a client counts once per gateway however many of its networks that gateway
//! holds it in), so a failover can never push a gateway above it. A client that no
//! eligible gateway has room for is left unassigned in that network, and its config
//! says so; one that finds fewer than `redundancy` gets fewer standbys.
//!
//! ## Exits
//!
//! A client with `exit: true` gets its exit separately from its networks, so the
//! exit does not depend on which gateway carries a network's routes. Its *exit
//! network* is the first of its networks (by id) with `exit: true` that has an
//! exit-eligible gateway with room; the exit gateways are that network's
//! [`exit_candidates`] in the network's policy order (ranked for the client by the
//! same rendezvous hashing when `balanced`), walked like the network's own list
//! until `redundancy` are taken: the first is the client's exit, the others its
//! exit standbys. Each holds the client as a peer in the exit network (counted
//! against `capacity` like any other holder), so an exit gateway that is not the
//! network's primary can still forward the client's default route.
//!
//! ## Balanced: weighted rendezvous (highest-random-weight) hashing
//!
//! For client `c` and gateway `g`:
//! - `x = mix64(FNV-1a-64("<c>/<g>"))`, where `mix64` is the SplitMix64 finalizer
//!   (FNV-1a alone mixes short keys poorly in its high bits);
//! - `u = (2x + 1) / 2^65`, strictly inside (0, 1);
//! - `L = -log2(u)`, computed in integer fixed point with [`LOG_FRACTION_BITS`]
//!   fractional bits, truncated ([`neg_log2_fixed`]): no floating point, so every
//!   platform gets the same bits;
//! - score = `w / L`, with `w` the gateway's weight. Gateways are ranked by score,
//!   highest first (compared exactly as `w_a * L_b` against `w_b * L_a`), ties by
//!   gateway id.
//!
//! This is the classic `-w / ln(u)` up to the constant factor `ln 2`, so a gateway's
//! share of first choices is `w / Σw`. The weight is the gateway's `capacity`; a
//! gateway without one weighs as much as the largest capacity among the gateways
//! serving the network with `ingress` (1 when none has one). The network is not in
//! the key: a client whose networks share gateways tends to use the same one for all.
//!
//! Because each client ranks every gateway independently of the others, adding a
//! gateway only takes the clients that now rank it first (about `w / Σw` of them),
//! and removing one only moves the clients it held; nobody else moves. Capacity is
//! the exception: when a gateway is full, the clients after it in node-id order
//! overflow to their next choice, and a change that frees or fills room can move a
//! few of those. Changing this rule would move every client: it is pinned by a test.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::alloc::fnv1a;
use crate::health::Health;
use crate::id::{GatewayId, NetworkId, NodeId};
use crate::topology::{
    Gateway, Network, NodeStatus, Policy, RegionState, Role, Topology, Workspace,
};

/// Fractional bits of the fixed-point logarithm in the balanced score: 2^-32 is far
/// below the spacing of scores that matter, and the products stay well inside `u128`.
pub const LOG_FRACTION_BITS: u32 = 32;

/// The outcome for one workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// For each client, its primary gateway in each of its networks.
    pub by_node: BTreeMap<NodeId, BTreeMap<NetworkId, GatewayId>>,
    /// For each gateway, the clients it holds (as primary or standby) and the
    /// networks it holds each in.
    pub by_gateway: BTreeMap<GatewayId, BTreeMap<NodeId, Vec<NetworkId>>>,
    /// For each client and each of its assigned networks, its gateways in failover
    /// order: the primary first, then the standbys. Never empty, never repeats.
    pub ordered: BTreeMap<NodeId, BTreeMap<NetworkId, Vec<GatewayId>>>,
    /// For each client with `exit: true` that could get one, its exit network and
    /// its exit gateways in failover order (see "Exits" in the module docs). Never
    /// empty, never repeats.
    pub exits: BTreeMap<NodeId, (NetworkId, Vec<GatewayId>)>,
}

impl Assignment {
    /// The standbys of `node` in `network`, in failover order.
    pub fn standbys(&self, node: &NodeId, network: &NetworkId) -> &[GatewayId] {
        self.ordered
            .get(node)
            .and_then(|m| m.get(network))
            .and_then(|list| list.get(1..))
            .unwrap_or(&[])
    }
}

/// What a gateway is judged for by [`verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Duty {
    /// Holding clients of a network (primary or standby): needs the `ingress` role
    /// and a healthy forwarding path to the network.
    Network,
    /// Being clients' exit in a network: needs the `exit` role; the forwarding path
    /// to the network's routes is not consulted (it says nothing of the internet).
    Exit,
}

/// Whether a gateway may serve a duty in a network and, when not, the first check
/// it fails, in the order [`verdict`] makes them. Capacity and the manual list are
/// not here: they depend on the client and on placement order, see
/// [`crate::explain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "verdict")]
#[non_exhaustive]
pub enum Verdict {
    /// Every check passes.
    Eligible,
    /// The gateway does not list the network in its `networks`.
    NotServed,
    /// The gateway lacks the role the duty needs (`ingress` or `exit`).
    MissingRole {
        /// The role it lacks.
        role: Role,
    },
    /// The gateway's own node is not `active`.
    NodeNotActive {
        /// Its node's status.
        status: NodeStatus,
    },
    /// The gateway's node is not in the workspace (never so in a validated topology).
    NodeUnknown,
    /// The gateway is in maintenance mode (`drain: true`).
    Drained,
    /// The gateway's region is `draining`.
    RegionDraining,
    /// The gateway's region is `retired` (validation refuses this; a topology
    /// edited after validation may still hold it).
    RegionRetired,
    /// The gateway's region is not in the catalog (never so in a validated topology).
    RegionUnknown,
    /// [`Health::offline`] names the gateway.
    Offline,
    /// [`Health::unhealthy`] names the gateway with this network ([`Duty::Network`]
    /// only). The safety rule may still make it a candidate, see [`candidates`].
    Unhealthy,
}

impl Verdict {
    /// Whether every check passed.
    pub fn is_eligible(&self) -> bool {
        *self == Verdict::Eligible
    }
}

/// The one place the checks of eligibility are made: whether `gateway` may serve
/// `duty` in `network`, or the first check it fails. [`eligible`],
/// [`eligible_but_for_its_path`] and [`exit_eligible`] are thin wrappers over it,
/// and [`crate::explain`] reports it.
pub fn verdict(
    topology: &Topology,
    ws: &Workspace,
    gateway: &Gateway,
    network: &NetworkId,
    duty: Duty,
    health: &Health,
) -> Verdict {
    let role = match duty {
        Duty::Network => Role::Ingress,
        Duty::Exit => Role::Exit,
    };
    if !gateway.has(role) {
        return Verdict::MissingRole { role };
    }
    if !gateway.networks.contains(network) {
        return Verdict::NotServed;
    }
    if gateway.drain {
        return Verdict::Drained;
    }
    match ws.nodes.get(&gateway.node) {
        None => return Verdict::NodeUnknown,
        Some(n) if !n.is_active() => return Verdict::NodeNotActive { status: n.status },
        Some(_) => {}
    }
    match topology.regions.get(&gateway.region).map(|r| r.state) {
        None => return Verdict::RegionUnknown,
        Some(RegionState::Draining) => return Verdict::RegionDraining,
        Some(RegionState::Retired) => return Verdict::RegionRetired,
        Some(RegionState::Active) => {}
    }
    if health.offline.contains(&gateway.id) {
        return Verdict::Offline;
    }
    if duty == Duty::Network && !health.is_up(&gateway.id, network) {
        return Verdict::Unhealthy;
    }
    Verdict::Eligible
}

/// Whether `gateway` may take clients of `network`: its [`verdict`] for
/// [`Duty::Network`] is [`Verdict::Eligible`].
pub fn eligible(
    topology: &Topology,
    ws: &Workspace,
    gateway: &Gateway,
    network: &NetworkId,
    health: &Health,
) -> bool {
    verdict(topology, ws, gateway, network, Duty::Network, health).is_eligible()
}

/// Whether `gateway` may be the exit of clients of `network`: the network has
/// `exit: true`, the gateway serves it with the `exit` role, its node is active, it
/// is not draining, its region is active and it is not [`Health::offline`]
/// ([`verdict`] for [`Duty::Exit`]). [`Health::unhealthy`] is not consulted: it
/// judges the path to the network's routes, not to the internet.
pub fn exit_eligible(
    topology: &Topology,
    ws: &Workspace,
    gateway: &Gateway,
    network: &Network,
    health: &Health,
) -> bool {
    network.exit && verdict(topology, ws, gateway, &network.id, Duty::Exit, health).is_eligible()
}

/// The gateways that may be the exit of clients of `network` ([`exit_eligible`]),
/// in the policy's static order (as [`candidates`]).
pub fn exit_candidates<'a>(
    topology: &Topology,
    ws: &'a Workspace,
    network: &Network,
    health: &Health,
) -> Vec<&'a Gateway> {
    policy_order(ws, network, |g: &&Gateway| {
        exit_eligible(topology, ws, g, network, health)
    })
}

/// Whether `gateway` would be [`eligible`] for `network` if its forwarding path to
/// it were healthy: everything but [`Health::unhealthy`] is checked (it is online,
/// not draining, …). These gateways serve a network none of whose gateways is
/// eligible (the safety rule in the module docs).
pub fn eligible_but_for_its_path(
    topology: &Topology,
    ws: &Workspace,
    gateway: &Gateway,
    network: &NetworkId,
    health: &Health,
) -> bool {
    matches!(
        verdict(topology, ws, gateway, network, Duty::Network, health),
        Verdict::Eligible | Verdict::Unhealthy
    )
}

/// The gateways that take clients of `network`, in the policy's static order:
/// region order then id for `auto` and `balanced` (which then ranks them per
/// client, see [`balanced_order`]), list order for `manual`. These are the
/// [`eligible`] ones or, when there are none, those [`eligible_but_for_its_path`]
/// (the safety rule in the module docs).
pub fn candidates<'a>(
    topology: &Topology,
    ws: &'a Workspace,
    network: &Network,
    health: &Health,
) -> Vec<&'a Gateway> {
    candidates_and_rule(topology, ws, network, health).0
}

/// [`candidates`], and whether the safety rule chose them (no gateway was
/// [`eligible`], so those only unhealthy for the network were taken).
pub(crate) fn candidates_and_rule<'a>(
    topology: &Topology,
    ws: &'a Workspace,
    network: &Network,
    health: &Health,
) -> (Vec<&'a Gateway>, bool) {
    let strict = |g: &&Gateway| eligible(topology, ws, g, &network.id, health);
    let found = policy_order(ws, network, strict);
    if !found.is_empty() {
        return (found, false);
    }
    let lenient = |g: &&Gateway| eligible_but_for_its_path(topology, ws, g, &network.id, health);
    let found = policy_order(ws, network, lenient);
    let rule = !found.is_empty();
    (found, rule)
}

/// The gateways of `ws` that pass `ok`, in `network`'s policy's static order.
fn policy_order<'a>(
    ws: &'a Workspace,
    network: &Network,
    ok: impl FnMut(&&'a Gateway) -> bool,
) -> Vec<&'a Gateway> {
    match &network.policy {
        Policy::Manual(ids) => ids
            .iter()
            .filter_map(|id| ws.gateways.get(id))
            .filter(ok)
            .collect(),
        Policy::Auto | Policy::Balanced => {
            region_order(ws, ws.gateways.values().filter(ok).collect())
        }
    }
}

/// `gateways` in the workspace's region order, then by id: the static order of
/// `auto` and `balanced`.
pub(crate) fn region_order<'a>(ws: &Workspace, mut gateways: Vec<&'a Gateway>) -> Vec<&'a Gateway> {
    let rank = |g: &Gateway| ws.regions.iter().position(|r| *r == g.region);
    gateways.sort_by(|a, b| (rank(a), &a.id).cmp(&(rank(b), &b.id)));
    gateways
}

/// The balanced weight of each gateway serving `network` with `ingress`: its
/// capacity, or for a gateway without one the largest capacity among them (1 when
/// none has one). It depends on the document only, not on health or drain, so a
/// failure never re-weights the survivors.
pub fn weights(ws: &Workspace, network: &NetworkId) -> BTreeMap<GatewayId, u32> {
    role_weights(ws, network, Role::Ingress)
}

/// The balanced weights of the gateways serving `network` with `role`, as
/// [`weights`] does for `ingress` (exits are ranked with the `exit` role's).
pub(crate) fn role_weights(
    ws: &Workspace,
    network: &NetworkId,
    role: Role,
) -> BTreeMap<GatewayId, u32> {
    let serving: Vec<&Gateway> = ws
        .gateways
        .values()
        .filter(|g| g.networks.contains(network) && g.has(role))
        .collect();
    let unbounded = serving.iter().filter_map(|g| g.capacity).max().unwrap_or(1);
    serving
        .iter()
        .map(|g| (g.id.clone(), g.capacity.unwrap_or(unbounded)))
        .collect()
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every input bit over
/// every output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous hash of (`node`, `gateway`): `mix64(FNV-1a-64("<node>/<gateway>"))`.
pub fn rendezvous_hash(node: &NodeId, gateway: &GatewayId) -> u64 {
    mix64(fnv1a(&[node.as_str(), gateway.as_str()]))
}

/// `-log2(u)` for `u = (2x + 1) / 2^65`, in fixed point with [`LOG_FRACTION_BITS`]
/// fractional bits, truncated. Always at least 1 (u < 1), at most 65 · 2^32.
pub fn neg_log2_fixed(x: u64) -> u64 {
    // n = 2x + 1 is in [1, 2^65); log2(u) = log2(n) - 65.
    let n = (u128::from(x) << 1) | 1;
    let int = 127 - n.leading_zeros(); // floor(log2 n), 0..=64
                                       // m = n / 2^int in [1, 2), as fixed point with 63 fractional bits (< 2^64, so
                                       // m * m < 2^128 never overflows).
    let mut m: u128 = if int >= 63 {
        n >> (int - 63)
    } else {
        n << (63 - int)
    };
    let mut log = u128::from(int) << LOG_FRACTION_BITS;
    // Binary digits of log2(m) by repeated squaring: squaring doubles the log, and a
    // square of 2 or more means the next digit is 1.
    for bit in (0..LOG_FRACTION_BITS).rev() {
        m = (m * m) >> 63;
        if m >= 1u128 << 64 {
            m >>= 1;
            log |= 1u128 << bit;
        }
    }
    let full = 65u128 << LOG_FRACTION_BITS;
    // log <= log2(n) < 65 and truncation only lowers it, so this is >= 1.
    u64::try_from(full - log).unwrap_or(u64::MAX)
}

/// What weighted rendezvous hashing ranks a gateway by, for one client: the score
/// is `weight / neg_log2`, highest first (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BalancedScore {
    /// The gateway's weight ([`weights`]; 1 for a gateway missing from them).
    pub weight: u32,
    /// [`rendezvous_hash`] of (client, gateway).
    pub hash: u64,
    /// [`neg_log2_fixed`] of the hash: `-log2(u)` with [`LOG_FRACTION_BITS`]
    /// fractional bits.
    pub neg_log2: u64,
}

impl BalancedScore {
    /// The score of `gateway` for `node`, with `weights` as in [`balanced_order`].
    pub fn of(node: &NodeId, gateway: &GatewayId, weights: &BTreeMap<GatewayId, u32>) -> Self {
        let hash = rendezvous_hash(node, gateway);
        Self {
            weight: weights.get(gateway).copied().unwrap_or(1),
            hash,
            neg_log2: neg_log2_fixed(hash),
        }
    }

    /// Whether `self` ranks before `other` (ties are broken by gateway id, not
    /// here): `w_a * L_b` against `w_b * L_a`, exactly.
    fn cmp_rank(&self, other: &Self) -> std::cmp::Ordering {
        let (wa, la) = (u128::from(self.weight), u128::from(self.neg_log2));
        let (wb, lb) = (u128::from(other.weight), u128::from(other.neg_log2));
        (wb * la).cmp(&(wa * lb))
    }
}

/// `gateways` ranked for `node` by weighted rendezvous hashing, best first. A
/// gateway missing from `weights` weighs 1.
pub fn balanced_order<'a>(
    node: &NodeId,
    gateways: &[&'a Gateway],
    weights: &BTreeMap<GatewayId, u32>,
) -> Vec<&'a Gateway> {
    let mut scored: Vec<(BalancedScore, &'a Gateway)> = gateways
        .iter()
        .map(|g| (BalancedScore::of(node, &g.id, weights), *g))
        .collect();
    // score = w / L, highest first: a before b when w_a * L_b > w_b * L_a.
    scored.sort_by(|(sa, a), (sb, b)| sa.cmp_rank(sb).then(a.id.cmp(&b.id)));
    scored.into_iter().map(|(_, g)| g).collect()
}

/// Assigns every active client of `ws`.
pub fn assign(topology: &Topology, ws: &Workspace, health: &Health) -> Assignment {
    place(topology, ws, health, None)
}

/// What happened to one gateway of a client's preference order when assignment
/// walked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Taken: it holds the client (it already did, or had room).
    Taken,
    /// Skipped: it was at its capacity and did not hold the client yet.
    Full {
        /// Its capacity.
        capacity: u32,
        /// The clients it held when the client came.
        load: u64,
    },
    /// Not reached: `redundancy` gateways were taken before it.
    NotReached,
}

/// One walk of a preference order: each gateway walked, in order, with its step.
pub(crate) type Walk = Vec<(GatewayId, Step)>;

/// A record of every walk [`assign`] made, for [`crate::explain`]: the same run,
/// so an explanation cannot disagree with the assignment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    /// For each client and network, the walk of its preference order.
    pub(crate) networks: BTreeMap<(NodeId, NetworkId), Walk>,
    /// For each client wanting an exit, the exit networks tried, in order, with
    /// the walk of each one's exit gateways; the last is the chosen one when the
    /// client got an exit.
    pub(crate) exits: BTreeMap<NodeId, Vec<(NetworkId, Walk)>>,
}

/// [`assign`], also recording every walk.
pub(crate) fn assign_traced(
    topology: &Topology,
    ws: &Workspace,
    health: &Health,
) -> (Assignment, Trace) {
    let mut trace = Trace::default();
    let out = place(topology, ws, health, Some(&mut trace));
    (out, trace)
}

/// The preference order of `node` over `gateways` (the network's candidates or exit
/// candidates, in static order): ranked by [`balanced_order`] when `balanced`.
pub(crate) fn preference<'a>(
    node: &NodeId,
    network: &Network,
    gateways: &[&'a Gateway],
    weights: &BTreeMap<GatewayId, u32>,
) -> Vec<&'a Gateway> {
    match network.policy {
        Policy::Balanced => balanced_order(node, gateways, weights),
        Policy::Auto | Policy::Manual(_) => gateways.to_vec(),
    }
}

fn place(
    topology: &Topology,
    ws: &Workspace,
    health: &Health,
    mut trace: Option<&mut Trace>,
) -> Assignment {
    struct Plan<'a> {
        network: &'a Network,
        candidates: Vec<&'a Gateway>,
        weights: BTreeMap<GatewayId, u32>,
        exit_candidates: Vec<&'a Gateway>,
        exit_weights: BTreeMap<GatewayId, u32>,
    }
    let plans: BTreeMap<&NetworkId, Plan<'_>> = ws
        .networks
        .values()
        .map(|n| {
            let (weights, exit_weights) = match n.policy {
                Policy::Balanced => (weights(ws, &n.id), role_weights(ws, &n.id, Role::Exit)),
                Policy::Auto | Policy::Manual(_) => (BTreeMap::new(), BTreeMap::new()),
            };
            let plan = Plan {
                network: n,
                candidates: candidates(topology, ws, n, health),
                weights,
                exit_candidates: exit_candidates(topology, ws, n, health),
                exit_weights,
            };
            (&n.id, plan)
        })
        .collect();
    let gateway_nodes: BTreeSet<&NodeId> = ws.gateways.values().map(|g| &g.node).collect();
    let mut placer = Placer::default();
    for node in ws.nodes.values() {
        if !node.is_active() || gateway_nodes.contains(&node.id) {
            continue;
        }
        for net in node.memberships.keys() {
            let Some(plan) = plans.get(net) else {
                continue;
            };
            let order = preference(&node.id, plan.network, &plan.candidates, &plan.weights);
            let mut walk = trace.as_ref().map(|_| Walk::new());
            let chosen = placer.take(&node.id, net, order, plan.network.redundancy, walk.as_mut());
            if let (Some(t), Some(w)) = (trace.as_deref_mut(), walk) {
                t.networks.insert((node.id.clone(), net.clone()), w);
            }
            let Some(primary) = chosen.first() else {
                continue;
            };
            placer
                .out
                .by_node
                .entry(node.id.clone())
                .or_default()
                .insert(net.clone(), primary.clone());
            placer
                .out
                .ordered
                .entry(node.id.clone())
                .or_default()
                .insert(net.clone(), chosen);
        }
        if !node.exit {
            continue;
        }
        // The first exit network (by id) where some exit gateway has room.
        for net in node.memberships.keys() {
            let Some(plan) = plans.get(net).filter(|p| p.network.exit) else {
                continue;
            };
            let order = preference(
                &node.id,
                plan.network,
                &plan.exit_candidates,
                &plan.exit_weights,
            );
            let mut walk = trace.as_ref().map(|_| Walk::new());
            let chosen = placer.take(&node.id, net, order, plan.network.redundancy, walk.as_mut());
            if let (Some(t), Some(w)) = (trace.as_deref_mut(), walk) {
                t.exits
                    .entry(node.id.clone())
                    .or_default()
                    .push((net.clone(), w));
            }
            if !chosen.is_empty() {
                placer
                    .out
                    .exits
                    .insert(node.id.clone(), (net.clone(), chosen));
                break;
            }
        }
    }
    placer.out
}

/// The assignment being built, with each gateway's load.
#[derive(Default)]
struct Placer<'a> {
    out: Assignment,
    load: BTreeMap<&'a GatewayId, u64>,
}

impl<'a> Placer<'a> {
    /// Walks `order` and takes each gateway that already holds `node` or has room,
    /// until `redundancy` are taken; each taken gateway holds `node` in `net`. When
    /// `walk` is given, every gateway of `order` is recorded in it with its step.
    fn take(
        &mut self,
        node: &NodeId,
        net: &NetworkId,
        order: Vec<&'a Gateway>,
        redundancy: u32,
        mut walk: Option<&mut Walk>,
    ) -> Vec<GatewayId> {
        let wanted = usize::try_from(redundancy.max(1)).unwrap_or(usize::MAX);
        let mut chosen: Vec<GatewayId> = Vec::new();
        for g in order {
            if chosen.len() >= wanted {
                match walk.as_deref_mut() {
                    Some(w) => {
                        w.push((g.id.clone(), Step::NotReached));
                        continue;
                    }
                    None => break,
                }
            }
            let holds = self
                .out
                .by_gateway
                .get(&g.id)
                .is_some_and(|c| c.contains_key(node));
            let used = self.load.get(&g.id).copied().unwrap_or(0);
            if !holds {
                if let Some(capacity) = g.capacity.filter(|cap| used >= u64::from(*cap)) {
                    if let Some(w) = walk.as_deref_mut() {
                        w.push((
                            g.id.clone(),
                            Step::Full {
                                capacity,
                                load: used,
                            },
                        ));
                    }
                    continue;
                }
                *self.load.entry(&g.id).or_insert(0) += 1;
            }
            let nets = self
                .out
                .by_gateway
                .entry(g.id.clone())
                .or_default()
                .entry(node.clone())
                .or_default();
            if !nets.contains(net) {
                nets.push(net.clone());
            }
            if let Some(w) = walk.as_deref_mut() {
                w.push((g.id.clone(), Step::Taken));
            }
            chosen.push(g.id.clone());
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_and_hash_are_pinned() {
        // Pinned: changing the hash would move every balanced client.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        let node = NodeId::new("laptop-1").unwrap();
        let gw = GatewayId::new("gw-a").unwrap();
        assert_eq!(rendezvous_hash(&node, &gw), 0xa508_3d04_394c_fd2e);
    }

    #[test]
    fn neg_log2_matches_floating_point() {
        for x in [
            0u64,
            1,
            2,
            3,
            1000,
            1 << 32,
            1 << 62,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let u = (2.0 * x as f64 + 1.0) / 2f64.powi(65);
            let want = -u.log2() * 2f64.powi(32);
            let got = neg_log2_fixed(x) as f64;
            assert!(
                (got - want).abs() <= 2.0 + want * 1e-12,
                "x={x}: {got} vs {want}"
            );
            assert!(neg_log2_fixed(x) >= 1);
        }
        // The ends: u = 2^-65 exactly, and u just under 1.
        assert_eq!(neg_log2_fixed(0), 65 << 32);
        assert_eq!(neg_log2_fixed(u64::MAX), 1);
    }
}
