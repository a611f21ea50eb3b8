//! Assignment and redundancy: balanced (weighted rendezvous) placement, capacity,
//! drain, health, standbys and client-side failover.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use nanami_model::assign::{assign, eligible, eligible_but_for_its_path, Assignment};
use nanami_model::compile::host_prefix;
use nanami_model::doc::Document;
use nanami_model::{
    compile, compile_all, compile_node, GatewayId, Health, NetworkId, NodeId, Topology,
};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn assignments(t: &Topology, h: &Health) -> BTreeMap<String, Assignment> {
    t.workspaces
        .values()
        .map(|ws| (ws.id.to_string(), assign(t, ws, h)))
        .collect()
}

fn primaries(a: &Assignment) -> BTreeMap<NodeId, GatewayId> {
    let net = NetworkId::new("net").unwrap();
    a.by_node
        .iter()
        .filter_map(|(n, m)| Some((n.clone(), m.get(&net)?.clone())))
        .collect()
}

fn fleet_assignment(doc: &Document, h: &Health) -> Assignment {
    let t = Topology::from_document(doc).unwrap();
    let ws = t.workspaces.values().next().unwrap();
    assign(&t, ws, h)
}

#[test]
fn balanced_rule_is_pinned() {
    // Pinned test vector: changing the hash, the score or the tie-break moves every
    // balanced client, so it must be a deliberate change of this test.
    let doc = common::fleet(7, "balanced", 2, 4, 6, None);
    let a = fleet_assignment(&doc, &Health::all_up());
    let net = NetworkId::new("net").unwrap();
    let got: Vec<String> = a
        .ordered
        .iter()
        .map(|(n, m)| {
            let ids: Vec<&str> = m[&net].iter().map(|g| g.as_str()).collect();
            format!("{n}: {}", ids.join(" "))
        })
        .collect();
    assert_eq!(
        got,
        [
            // Computed independently with floating point: -1/ln(u), u = (2x+1)/2^65.
            "c7-0: g7-2 g7-0",
            "c7-1: g7-3 g7-2",
            "c7-2: g7-0 g7-3",
            "c7-3: g7-1 g7-3",
            "c7-4: g7-2 g7-3",
            "c7-5: g7-2 g7-0",
        ]
    );
}

#[test]
fn weights_follow_capacity() {
    // Two gateways weighted 1:3 (capacities far above the load, so none binds):
    // their shares of 1200 clients are 300 and 900 in expectation, sd 15.
    let mut doc = common::fleet(11, "balanced", 1, 2, 1200, None);
    doc.workspaces[0].gateways[0].capacity = Some(10_000);
    doc.workspaces[0].gateways[1].capacity = Some(30_000);
    let a = fleet_assignment(&doc, &Health::all_up());
    let on = |g: &str| a.by_gateway[&GatewayId::new(g).unwrap()].len();
    let (small, big) = (on("g11-0"), on("g11-1"));
    assert_eq!(small + big, 1200);
    assert!((225..=375).contains(&small), "{small} / {big}");
}

#[test]
fn drain_and_draining_regions_move_clients_away() {
    let doc = common::fleet(3, "auto", 1, 2, 5, None);
    let first = GatewayId::new("g3-0").unwrap();
    let second = GatewayId::new("g3-1").unwrap();
    let a = fleet_assignment(&doc, &Health::all_up());
    assert!(primaries(&a).values().all(|g| *g == first));

    // Maintenance mode: not eligible, so every client is on the other gateway at the
    // next generation (assignment is stateless).
    let mut drained = doc.clone();
    drained.workspaces[0].gateways[0].drain = true;
    let a = fleet_assignment(&drained, &Health::all_up());
    assert_eq!(primaries(&a).len(), 5);
    assert!(primaries(&a).values().all(|g| *g == second));
    assert!(!a.by_gateway.contains_key(&first));

    // A draining region drains all its gateways: nothing left to take the clients.
    let mut region = doc.clone();
    region.regions[0].state = "draining".into();
    let a = fleet_assignment(&region, &Health::all_up());
    assert!(a.by_node.is_empty());
    let t = Topology::from_document(&region).unwrap();
    let config = compile_node(&t, &Health::all_up(), &NodeId::new("c3-0").unwrap()).unwrap();
    assert!(config.unassigned.contains(&NetworkId::new("net").unwrap()));
}

#[test]
fn unhealthy_forwarding_path_is_honoured() {
    let doc = common::fleet(5, "balanced", 1, 3, 30, None);
    let net = NetworkId::new("net").unwrap();
    let sick = GatewayId::new("g5-1").unwrap();
    let mut h = Health::default();
    h.unhealthy.insert((sick.clone(), net));
    let a = fleet_assignment(&doc, &h);
    assert_eq!(primaries(&a).len(), 30);
    assert!(!a.by_gateway.contains_key(&sick));
}

#[test]
fn clients_keep_their_gateways_when_every_one_is_unhealthy() {
    // Three gateways, redundancy 2. The probe target is down: every gateway reports
    // the network unhealthy. Nobody is stranded: the placement is the healthy one.
    let doc = common::fleet(11, "balanced", 2, 3, 30, None);
    let t = Topology::from_document(&doc).unwrap();
    let net = NetworkId::new("net").unwrap();
    let all_up = fleet_assignment(&doc, &Health::all_up());
    let mut sick = Health::default();
    for g in t.gateway_ids() {
        sick.unhealthy.insert((g.clone(), net.clone()));
    }
    assert_eq!(fleet_assignment(&doc, &sick), all_up);
    // One gateway healthy again: it alone takes the network's clients, with no
    // standby (the unhealthy ones are not eligible while a healthy one exists).
    let well = GatewayId::new("g11-2").unwrap();
    sick.unhealthy.remove(&(well.clone(), net.clone()));
    let a = fleet_assignment(&doc, &sick);
    assert_eq!(primaries(&a).len(), 30);
    assert!(primaries(&a).values().all(|g| *g == well));
    assert!(a.ordered.values().all(|m| m[&net].len() == 1));
    // Offline and draining gateways never come back through the safety rule.
    let mut offline = sick.clone();
    offline.unhealthy.insert((well.clone(), net.clone()));
    offline.offline = t.gateway_ids().cloned().collect();
    assert!(fleet_assignment(&doc, &offline).by_node.is_empty());
}

#[test]
fn standby_peers_render_without_allowed_ips() {
    let doc = common::fleet(9, "balanced", 2, 3, 4, None);
    let t = Topology::from_document(&doc).unwrap();
    let config = compile_node(&t, &Health::all_up(), &NodeId::new("c9-0").unwrap()).unwrap();
    let net = NetworkId::new("net").unwrap();
    let list = &config.gateways[&net];
    assert_eq!(list.len(), 2);
    assert_eq!(config.peers.len(), 2);
    let standby = config
        .peers
        .iter()
        .find(|p| p.gateway == list[1].gateway)
        .unwrap();
    assert!(standby.allowed_ips.is_empty() && standby.standby_for.contains(&net));
    let text = config.to_wg_quick(None);
    assert_eq!(text.matches("[Peer]").count(), 2);
    assert_eq!(text.matches("AllowedIPs = ").count(), 1, "{text}");
    assert!(text.contains(&format!(
        "#   net: {}, {}",
        list[0].gateway, list[1].gateway
    )));
    // Failing over moves the AllowedIPs, not the peers.
    let down: BTreeSet<GatewayId> = [list[0].gateway.clone()].into();
    let after = config.failed_over(&down);
    assert_eq!(after.active_gateway(&net, &down), Some(&list[1].gateway));
    let active = after
        .peers
        .iter()
        .find(|p| p.gateway == list[1].gateway)
        .unwrap();
    assert_eq!(active.allowed_ips, list[1].allowed_ips);
    assert_eq!(after.failed_over(&BTreeSet::new()), config);
}

#[test]
fn the_example_still_validates_and_balanced_fleets_too() {
    let t = Topology::from_yaml(include_str!("../../examples/topology.yaml")).unwrap();
    assert!(compile_all(&t, &Health::all_up()).len() == 3);
    let t = Topology::from_yaml(include_str!("../../examples/balanced.yaml")).unwrap();
    let states = compile_all(&t, &Health::all_up());
    // Three clients, each on two of the three undrained gateways.
    let held: usize = states.values().map(|s| s.peer_count()).sum();
    assert_eq!(held, 6);
    assert_eq!(states[&GatewayId::new("gw-dub-b").unwrap()].peer_count(), 0);
}

fn shuffled(doc: &Document, seed: u64) -> Document {
    let mut doc = doc.clone();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for ws in &mut doc.workspaces {
        ws.nodes.shuffle(&mut rng);
        ws.gateways.shuffle(&mut rng);
    }
    doc
}

/// 5 standard deviations of a Binomial(m, 1/n) count, plus 1 for rounding: a
/// correct implementation exceeds it with probability below 3·10⁻⁷ per case.
fn slack(m: usize, n: usize) -> f64 {
    5.0 * (m as f64 / n as f64).sqrt() + 1.0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Same input, same output, whatever the document order; and the placement
    /// depends on the client and gateway ids only.
    #[test]
    fn balanced_is_deterministic(salt in 0u32..1_000_000, n in 2usize..7, m in 1usize..120, k in 1u32..3, seed: u64) {
        let doc = common::fleet(salt, "balanced", k.min(n as u32), n, m, None);
        let h = Health::all_up();
        let a = fleet_assignment(&doc, &h);
        prop_assert_eq!(&a, &fleet_assignment(&doc, &h));
        prop_assert_eq!(&a, &fleet_assignment(&shuffled(&doc, seed), &h));
    }

    /// Adding an (N+1)-th gateway of equal weight moves only the clients that now
    /// rank it first: each moved client moves *to* it, and their number is
    /// Binomial(M, 1/(N+1)), so at most M/(N+1) + 5·sqrt(M/(N+1)) + 1. Removing it
    /// moves exactly the clients it held, the same count. Capacity is unbounded
    /// here; see the module docs of `assign` for how capacity overflow adds moves.
    #[test]
    fn one_gateway_more_or_less_moves_about_one_nth(salt in 0u32..1_000_000, n in 1usize..6, m in 50usize..200) {
        let before = primaries(&fleet_assignment(&common::fleet(salt, "balanced", 1, n, m, None), &Health::all_up()));
        let after = primaries(&fleet_assignment(&common::fleet(salt, "balanced", 1, n + 1, m, None), &Health::all_up()));
        prop_assert_eq!(before.len(), m);
        prop_assert_eq!(after.len(), m);
        let added = GatewayId::new(format!("g{salt}-{n}")).unwrap();
        let moved: Vec<&NodeId> = before.keys().filter(|c| before[*c] != after[*c]).collect();
        for c in &moved {
            prop_assert_eq!(&after[*c], &added, "{} moved elsewhere than the new gateway", c);
        }
        // Going back (removing the gateway) moves exactly the same clients.
        let held = after.values().filter(|g| **g == added).count();
        prop_assert_eq!(held, moved.len());
        let bound = m as f64 / (n + 1) as f64 + slack(m, n + 1);
        prop_assert!((moved.len() as f64) <= bound, "moved {} of {m} with {n}+1 gateways, bound {bound}", moved.len());
    }

    /// Taking one of N gateways away through health (it goes offline) moves exactly
    /// its clients, and every client keeps a gateway.
    #[test]
    fn a_gateway_going_offline_moves_only_its_clients(salt in 0u32..1_000_000, n in 2usize..7, m in 20usize..150, which in 0usize..6) {
        let doc = common::fleet(salt, "balanced", 1, n, m, None);
        let before = primaries(&fleet_assignment(&doc, &Health::all_up()));
        let gone = GatewayId::new(format!("g{salt}-{}", which % n)).unwrap();
        let mut h = Health::default();
        h.offline.insert(gone.clone());
        let after = primaries(&fleet_assignment(&doc, &h));
        prop_assert_eq!(after.len(), m);
        for (c, g) in &before {
            if *g == gone {
                prop_assert_ne!(&after[c], &gone);
            } else {
                prop_assert_eq!(&after[c], g);
            }
        }
    }

    /// Capacity, counted over primaries and standbys, is never exceeded, in random
    /// topologies under random health and in tight balanced fleets.
    #[test]
    fn capacity_is_never_exceeded(doc in common::document(), offline: u64, unhealthy: u64, salt in 0u32..1000, cap in 1u32..20, k in 1u32..4) {
        let t = Topology::from_document(&doc).unwrap();
        let h = common::health_from(&t, offline, unhealthy);
        for (ws, a) in assignments(&t, &h) {
            let ws = &t.workspaces[&nanami_model::WorkspaceId::new(&ws).unwrap()];
            for (g, clients) in &a.by_gateway {
                if let Some(cap) = ws.gateways[g].capacity {
                    prop_assert!(clients.len() <= cap as usize, "{g} holds {} > {cap}", clients.len());
                }
            }
        }
        let fleet = common::fleet(salt, "balanced", k, 4, 60, Some(cap));
        let a = fleet_assignment(&fleet, &Health::all_up());
        for clients in a.by_gateway.values() {
            prop_assert!(clients.len() <= cap as usize);
        }
        // Room is used: a client is left out only when every gateway is full.
        if a.by_node.len() < 60 {
            prop_assert!(a.by_gateway.len() == 4 && a.by_gateway.values().all(|c| c.len() == cap as usize));
        }
    }

    /// Every chosen gateway (primary or standby) is eligible; lists never repeat a
    /// gateway, so a primary is never its own standby; a list is as long as the
    /// redundancy allows; and a client is unassigned only when every eligible gateway
    /// is full.
    #[test]
    fn chosen_gateways_are_eligible(doc in common::document(), offline: u64, unhealthy: u64) {
        let t = Topology::from_document(&doc).unwrap();
        let h = common::health_from(&t, offline, unhealthy);
        for ws in t.workspaces.values() {
            let a = assign(&t, ws, &h);
            for node in ws.nodes.values().filter(|n| n.is_active() && !ws.is_gateway_node(&n.id)) {
                for net in node.memberships.keys() {
                    let network = &ws.networks[net];
                    let list = a.ordered.get(&node.id).and_then(|m| m.get(net));
                    let mut ok: Vec<&GatewayId> = ws.gateways.values()
                        .filter(|g| eligible(&t, ws, g, net, &h) && network_allows(network, &g.id))
                        .map(|g| &g.id)
                        .collect();
                    if ok.is_empty() {
                        // The safety rule: no healthy gateway, the unhealthy ones serve.
                        ok = ws.gateways.values()
                            .filter(|g| eligible_but_for_its_path(&t, ws, g, net, &h))
                            .map(|g| &g.id)
                            .collect();
                    }
                    match list {
                        Some(list) => {
                            prop_assert!(!list.is_empty() && list.len() <= network.redundancy as usize);
                            prop_assert_eq!(&a.by_node[&node.id][net], &list[0]);
                            let distinct: BTreeSet<&GatewayId> = list.iter().collect();
                            prop_assert_eq!(distinct.len(), list.len());
                            for g in list {
                                prop_assert!(ok.contains(&g), "{g} is not eligible for {net}");
                            }
                            if list.len() < network.redundancy as usize {
                                for g in ok.iter().filter(|g| !list.contains(g)) {
                                    if network_allows(network, g) {
                                        let cap = ws.gateways[*g].capacity;
                                        prop_assert!(cap.is_some(), "{g} had room for a standby");
                                    }
                                }
                            }
                        }
                        None => {
                            for g in ok.iter().filter(|g| network_allows(network, g)) {
                                let cap = ws.gateways[*g].capacity;
                                let held = a.by_gateway.get(*g).map_or(0, |c| c.len());
                                prop_assert!(cap.is_some_and(|c| held >= c as usize), "{} unassigned in {net} while {g} had room", node.id);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forwarding-path health only ever moves clients between gateways: a network
    /// whose every gateway is unhealthy is placed exactly as if all were healthy, and
    /// with some healthy ones no client is unassigned that would otherwise be placed
    /// (capacity aside).
    #[test]
    fn unhealthy_paths_never_strand_clients(mut doc in common::document(), offline: u64, unhealthy: u64) {
        for ws in &mut doc.workspaces {
            for g in &mut ws.gateways {
                g.capacity = None;
            }
        }
        let t = Topology::from_document(&doc).unwrap();
        let base = common::health_from(&t, offline, 0);
        let mut all_sick = base.clone();
        for ws in t.workspaces.values() {
            for g in ws.gateways.values() {
                for n in &g.networks {
                    all_sick.unhealthy.insert((g.id.clone(), n.clone()));
                }
            }
        }
        prop_assert_eq!(assignments(&t, &all_sick), assignments(&t, &base));
        let some_sick = common::health_from(&t, offline, unhealthy);
        let (with, without) = (assignments(&t, &some_sick), assignments(&t, &base));
        for (ws, a) in &without {
            for (node, nets) in &a.ordered {
                for net in nets.keys() {
                    prop_assert!(
                        with[ws].ordered.get(node).is_some_and(|m| m.contains_key(net)),
                        "{node} lost {net} to unhealthy paths"
                    );
                }
            }
        }
    }

    /// Every gateway of a client's list has the client as a peer, with the client's
    /// addresses in that network among its AllowedIPs; the client's config lists the
    /// same gateways in the same order, routes each network to its primary only, and
    /// no address is routed to two peers.
    #[test]
    fn standbys_hold_the_clients_peer(doc in common::document(), offline: u64, unhealthy: u64) {
        let t = Topology::from_document(&doc).unwrap();
        let h = common::health_from(&t, offline, unhealthy);
        let states = compile_all(&t, &h);
        for ws in t.workspaces.values() {
            let a = assign(&t, ws, &h);
            for (node_id, nets) in &a.ordered {
                let node = &ws.nodes[node_id];
                let config = compile_node(&t, &h, node_id).unwrap();
                for (net, list) in nets {
                    let addrs: BTreeSet<_> = node.memberships[net].iter().map(|a| host_prefix(*a)).collect();
                    for g in list {
                        let state = &states[g];
                        let iface = &state.interfaces[&ws.gateways[g].interface];
                        let peer = iface.peers.get(&node.public_key);
                        prop_assert!(peer.is_some(), "{g} lacks {node_id}");
                        prop_assert!(peer.unwrap().allowed_ips.is_superset(&addrs));
                    }
                    let in_config: Vec<&GatewayId> = config.gateways[net].iter().map(|c| &c.gateway).collect();
                    prop_assert_eq!(in_config, list.iter().collect::<Vec<_>>());
                    for p in &config.peers {
                        prop_assert_eq!(p.networks.contains(net), p.gateway == list[0]);
                        prop_assert_eq!(p.standby_for.contains(net), list[1..].contains(&p.gateway));
                    }
                }
                let mut seen = BTreeSet::new();
                for p in &config.peers {
                    for ip in &p.allowed_ips {
                        prop_assert!(seen.insert(*ip), "{ip} on two peers of {node_id}");
                    }
                }
            }
        }
    }

    /// With no capacity in play, the client's own failover lands where the manager
    /// would put it: fail over away from the primary, and the new active gateway is
    /// the primary the manager computes once that gateway is offline.
    #[test]
    fn client_failover_matches_the_managers_next_choice(mut doc in common::document(), unhealthy: u64) {
        for ws in &mut doc.workspaces {
            for g in &mut ws.gateways {
                g.capacity = None;
            }
        }
        let t = Topology::from_document(&doc).unwrap();
        let h = common::health_from(&t, 0, unhealthy);
        for ws in t.workspaces.values() {
            let a = assign(&t, ws, &h);
            for (node_id, nets) in &a.ordered {
                let config = compile_node(&t, &h, node_id).unwrap();
                for (net, list) in nets.iter().filter(|(_, l)| l.len() > 1) {
                    let down: BTreeSet<GatewayId> = [list[0].clone()].into();
                    let after = config.failed_over(&down);
                    let mut h2 = h.clone();
                    h2.offline.insert(list[0].clone());
                    let again = compile_node(&t, &h2, node_id).unwrap();
                    prop_assert_eq!(after.active_gateway(net, &down), Some(&list[1]));
                    prop_assert_eq!(again.active_gateway(net, &BTreeSet::new()), Some(&list[1]));
                }
            }
        }
    }
}

/// Whether `network`'s policy may use gateway `g` at all (manual lists restrict).
fn network_allows(network: &nanami_model::topology::Network, g: &GatewayId) -> bool {
    match &network.policy {
        nanami_model::topology::Policy::Manual(ids) => ids.contains(g),
        nanami_model::topology::Policy::Auto | nanami_model::topology::Policy::Balanced => true,
    }
}

#[test]
fn compile_of_one_gateway_matches_compile_all() {
    let doc = common::fleet(21, "balanced", 2, 3, 20, Some(20));
    let t = Topology::from_document(&doc).unwrap();
    let all = compile_all(&t, &Health::all_up());
    for (g, state) in &all {
        assert_eq!(&compile(&t, &Health::all_up(), g).unwrap(), state);
    }
}
