//! Property tests of the pure core: determinism, workspace isolation, and validation
#![allow(clippy::unwrap_used)]
//! that never panics and reports every injected fault.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use nanami_model::{
    compile_all, compile_node, compile_nodes, Destination, GatewayId, GatewayState, Health,
    InterfaceName, NodeConfig, NodeId, PublicKey, Topology, WorkspaceId,
};
use proptest::prelude::*;

/// Everything compiled from a topology, as bytes.
fn compiled_bytes(t: &Topology, health: &Health) -> String {
    let mut out = serde_json::to_string(&compile_all(t, health)).unwrap();
    for id in t.node_ids() {
        match compile_node(t, health, id) {
            Ok(c) => out.push_str(&c.to_json().unwrap()),
            Err(e) => out.push_str(&e.to_string()),
        }
    }
    out
}

fn health_from(t: &Topology, mask: u64) -> Health {
    let mut h = Health::default();
    for (i, g) in t.gateway_ids().enumerate() {
        if mask & (1 << (i % 64)) != 0 {
            h.offline.insert(g.clone());
        }
    }
    h
}

/// The prefixes a workspace owns.
fn owned_prefixes(t: &Topology, ws: &WorkspaceId) -> Vec<IpNet> {
    let w = &t.workspaces[ws];
    w.networks
        .values()
        .flat_map(|n| n.overlay.iter().chain(n.routes.iter()).copied())
        .collect()
}

fn is_default(n: &IpNet) -> bool {
    n.prefix_len() == 0
}

/// `net` lies inside the workspace's own space. (Other workspaces may use the same
/// space: tenants choose their ranges, so isolation is checked on keys and ids.)
fn check_in_own_space(t: &Topology, ws: &WorkspaceId, net: &IpNet) -> Result<(), TestCaseError> {
    if is_default(net) {
        return Ok(());
    }
    let mine = owned_prefixes(t, ws);
    prop_assert!(
        mine.iter().any(|p| p.contains(net)),
        "{net} is not in workspace {ws}'s space"
    );
    Ok(())
}

/// The public keys of a workspace's nodes.
fn keys_of(t: &Topology, ws: &WorkspaceId) -> BTreeSet<PublicKey> {
    t.workspaces[ws]
        .nodes
        .values()
        .map(|n| n.public_key)
        .collect()
}

/// A gateway's compiled state holds only its own workspace's keys, peers and
/// prefixes: every peer is a node of the workspace, with AllowedIPs among that
/// node's own addresses.
fn check_gateway_state(
    t: &Topology,
    gw: &GatewayId,
    state: &GatewayState,
) -> Result<(), TestCaseError> {
    let (ws, gateway) = t.gateway(gw).unwrap();
    let ws_id = ws.id.clone();
    let by_key: BTreeMap<PublicKey, &nanami_model::topology::Node> =
        ws.nodes.values().map(|n| (n.public_key, n)).collect();
    for iface in state.interfaces.values() {
        let own: BTreeSet<IpNet> = ws.nodes[&gateway.node]
            .memberships
            .values()
            .flatten()
            .map(|a| IpNet::from(*a))
            .collect();
        for a in &iface.addresses {
            prop_assert!(own.contains(a), "{gw}: address {a} is not its node's");
            check_in_own_space(t, &ws_id, a)?;
        }
        for (k, p) in &iface.peers {
            let Some(node) = by_key.get(k) else {
                return Err(TestCaseError::fail(format!(
                    "peer {k} on {gw} is not a node of workspace {ws_id}"
                )));
            };
            let addrs: BTreeSet<IpNet> = node
                .memberships
                .values()
                .flatten()
                .map(|a| IpNet::from(*a))
                .collect();
            for a in &p.allowed_ips {
                prop_assert!(
                    addrs.contains(a),
                    "{gw}: peer {} has {a}, not its own address",
                    node.id
                );
                check_in_own_space(t, &ws_id, a)?;
            }
        }
    }
    for r in &state.routes {
        check_in_own_space(t, &ws_id, &r.destination)?;
    }
    for r in &state.rules {
        check_in_own_space(t, &ws_id, &r.destination)?;
    }
    if let Some(f) = &state.filter {
        for r in &f.accept {
            check_in_own_space(t, &ws_id, &r.source)?;
            if let Destination::Prefix(p) = &r.destination {
                check_in_own_space(t, &ws_id, p)?;
            }
        }
        for r in &f.masquerade {
            check_in_own_space(t, &ws_id, &r.source)?;
            if let Destination::Prefix(p) = &r.destination {
                check_in_own_space(t, &ws_id, p)?;
            }
        }
    }
    Ok(())
}

/// A client's configuration (and the state its agent derives from it) holds only
/// its own workspace's gateways, keys and prefixes.
fn check_node_config(t: &Topology, config: &NodeConfig) -> Result<(), TestCaseError> {
    let (ws, node) = t.node(&config.node).unwrap();
    prop_assert_eq!(&config.workspace, &ws.id);
    prop_assert_eq!(config.public_key, node.public_key);
    let keys = keys_of(t, &ws.id);
    let gateway_key = |g: &GatewayId| {
        ws.gateways
            .get(g)
            .and_then(|gw| ws.nodes.get(&gw.node))
            .map(|n| n.public_key)
    };
    for a in &config.addresses {
        check_in_own_space(t, &ws.id, a)?;
    }
    for p in &config.peers {
        prop_assert!(keys.contains(&p.public_key));
        prop_assert_eq!(gateway_key(&p.gateway), Some(p.public_key));
        for a in &p.allowed_ips {
            check_in_own_space(t, &ws.id, a)?;
        }
    }
    for choice in config.gateways.values().flatten() {
        prop_assert_eq!(gateway_key(&choice.gateway), Some(choice.public_key));
        for a in &choice.addresses {
            check_in_own_space(t, &ws.id, &IpNet::from(*a))?;
        }
    }
    let ifname = InterfaceName::new("nm-client").unwrap();
    let down: BTreeSet<GatewayId> = config
        .gateways
        .values()
        .flatten()
        .take(1)
        .map(|c| c.gateway.clone())
        .collect();
    let state = config.client_state(&ifname, 51900, &down);
    for iface in state.interfaces.values() {
        for (k, p) in &iface.peers {
            prop_assert!(
                keys.contains(k),
                "client state of {} has a foreign peer",
                config.node
            );
            for a in &p.allowed_ips {
                check_in_own_space(t, &ws.id, a)?;
            }
        }
    }
    for r in &state.routes {
        check_in_own_space(t, &ws.id, &r.destination)?;
    }
    Ok(())
}

/// Every compiled gateway state and client configuration of `t` under `h` stays
/// inside its own workspace.
fn check_isolation(t: &Topology, h: &Health) -> Result<(), TestCaseError> {
    for (gw, state) in compile_all(t, h) {
        check_gateway_state(t, &gw, &state)?;
    }
    let ids: Vec<NodeId> = t.node_ids().cloned().collect();
    for id in ids {
        let Ok(config) = compile_node(t, h, &id) else {
            continue;
        };
        check_node_config(t, &config)?;
    }
    for config in compile_nodes(t, h).values() {
        check_node_config(t, config)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn compile_is_independent_of_list_order(doc in common::document(), seed: u64, mask: u64) {
        let t = Topology::from_document(&doc).expect("generated documents are valid");
        let mut shuffled = doc.clone();
        common::shuffle(&mut shuffled, seed);
        let t2 = Topology::from_document(&shuffled).expect("shuffled stays valid");
        prop_assert_eq!(&t, &t2);
        let h = health_from(&t, mask);
        prop_assert_eq!(compiled_bytes(&t, &h), compiled_bytes(&t2, &h));
    }

    #[test]
    fn no_state_holds_another_workspaces_nodes_keys_or_prefixes(doc in common::document(), mask: u64) {
        let t = Topology::from_document(&doc).expect("generated documents are valid");
        check_isolation(&t, &health_from(&t, mask))?;
    }

    /// Workspaces drawing their overlays and routes from one small pool reuse and
    /// nest each other's prefixes: the document still validates (each workspace's
    /// own prefixes are disjoint), and every compiled state keeps to its workspace.
    #[test]
    fn workspaces_sharing_prefixes_validate_and_stay_apart(doc in common::shared_pool_document(), mask: u64) {
        let t = match Topology::from_document(&doc) {
            Ok(t) => t,
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e}"))),
        };
        check_isolation(&t, &health_from(&t, mask))?;
        check_isolation(&t, &Health::all_up())?;
        // Shuffled lists compile to the same bytes here too.
        let mut shuffled = doc.clone();
        common::shuffle(&mut shuffled, mask);
        let t2 = Topology::from_document(&shuffled).expect("shuffled stays valid");
        let h = health_from(&t, mask);
        prop_assert_eq!(compiled_bytes(&t, &h), compiled_bytes(&t2, &h));
    }

    /// Every exit a client gets is a gateway of its workspace with the exit role,
    /// serving the client's exit network (which has `exit: true`), holding the
    /// client as a peer; exactly one peer carries the default route when any exit
    /// gateway is compiled in.
    #[test]
    fn exits_are_exit_gateways_that_hold_the_client(doc in common::document(), mask: u64) {
        let t = Topology::from_document(&doc).expect("generated documents are valid");
        let h = health_from(&t, mask);
        let states = compile_all(&t, &h);
        for config in compile_nodes(&t, &h).values() {
            let (ws, node) = t.node(&config.node).unwrap();
            let Some(exit) = &config.exit else {
                prop_assert!(config.peers.iter().all(|p| !p.exit));
                continue;
            };
            prop_assert!(node.exit);
            prop_assert!(node.memberships.contains_key(&exit.network));
            prop_assert!(ws.networks[&exit.network].exit);
            prop_assert!(!exit.gateways.is_empty());
            for choice in &exit.gateways {
                let gw = &ws.gateways[&choice.gateway];
                prop_assert!(gw.has(nanami_model::topology::Role::Exit));
                prop_assert!(gw.networks.contains(&exit.network));
                prop_assert!(!h.offline.contains(&gw.id));
                let holds = states[&gw.id]
                    .interfaces
                    .values()
                    .any(|i| i.peers.contains_key(&node.public_key));
                prop_assert!(holds, "{} does not hold {}", gw.id, node.id);
            }
            let carriers: Vec<&GatewayId> =
                config.peers.iter().filter(|p| p.exit).map(|p| &p.gateway).collect();
            prop_assert_eq!(carriers, vec![&exit.gateways[0].gateway]);
        }
    }

    #[test]
    fn only_active_nodes_appear(doc in common::document()) {
        let t = Topology::from_document(&doc).unwrap();
        let states = compile_all(&t, &Health::all_up());
        let inactive: BTreeSet<PublicKey> = t
            .workspaces
            .values()
            .flat_map(|w| w.nodes.values())
            .filter(|n| !n.is_active())
            .map(|n| n.public_key)
            .collect();
        for state in states.values() {
            for iface in state.interfaces.values() {
                for k in iface.peers.keys() {
                    prop_assert!(!inactive.contains(k));
                }
            }
        }
    }

    #[test]
    fn validation_reports_each_injected_fault(doc in common::document(), which in 0..common::FAULTS.len()) {
        let (name, fault) = common::FAULTS[which];
        let mut bad = doc.clone();
        if let Some(path) = fault(&mut bad) {
            let errors = Topology::from_document(&bad).expect_err(name);
            prop_assert!(
                errors.0.iter().any(|i| i.path.starts_with(&path)),
                "fault {name}: no issue at {path}; got {errors}"
            );
        }
    }

    #[test]
    fn all_faults_at_once_are_all_reported(doc in common::document()) {
        let mut bad = doc.clone();
        let mut expected = Vec::new();
        for (name, fault) in common::FAULTS {
            if let Some(path) = fault(&mut bad) {
                expected.push((name, path));
            }
        }
        let errors = Topology::from_document(&bad).expect_err("faulty");
        for (name, path) in expected {
            prop_assert!(
                errors.0.iter().any(|i| i.path.starts_with(&path)),
                "fault {name}: no issue at {path}; got {errors}"
            );
        }
    }

    #[test]
    fn mutated_text_never_panics(doc in common::document(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = doc.to_yaml().unwrap().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(t) = Topology::from_yaml(&text) {
            // Whatever validates must compile without panicking.
            let h = Health::all_up();
            let _ = compiled_bytes(&t, &h);
        }
        let json = doc.to_json().unwrap();
        let cut = &json[..json.len() / 2];
        prop_assert!(Topology::from_json(cut).is_err());
    }
}

/// The shared-pool generator does what it is for: most documents with several
/// workspaces have prefixes that overlap across workspaces.
#[test]
fn the_shared_pool_makes_workspaces_collide() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut several, mut colliding) = (0, 0);
    for _ in 0..200 {
        let doc = common::shared_pool_document()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        if doc.workspaces.len() < 2 {
            continue;
        }
        several += 1;
        let prefixes: Vec<Vec<IpNet>> = doc
            .workspaces
            .iter()
            .map(|w| {
                w.networks
                    .iter()
                    .flat_map(|n| n.overlay.as_slice().iter().chain(n.routes.iter()))
                    .map(|p| p.parse().unwrap())
                    .collect()
            })
            .collect();
        let collides = prefixes.iter().enumerate().any(|(i, a)| {
            prefixes[i + 1..].iter().any(|b| {
                a.iter()
                    .any(|x| b.iter().any(|y| x.contains(y) || y.contains(x)))
            })
        });
        if collides {
            colliding += 1;
        }
    }
    assert!(several >= 50, "{several} documents with several workspaces");
    assert!(
        colliding * 2 >= several,
        "only {colliding} of {several} documents reuse prefixes across workspaces"
    );
}
