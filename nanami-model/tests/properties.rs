//! Property tests of the pure core: determinism, workspace isolation, and validation
#![allow(clippy::unwrap_used)]
//! that never panics and reports every injected fault.

mod common;

use std::collections::BTreeSet;

use ipnet::IpNet;
use nanami_model::doc::Document;
use nanami_model::{
    compile_all, compile_node, Destination, Health, NodeId, PublicKey, Topology, WorkspaceId,
};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn shuffle(doc: &mut Document, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    doc.regions.shuffle(&mut rng);
    doc.workspaces.shuffle(&mut rng);
    for ws in &mut doc.workspaces {
        ws.networks.shuffle(&mut rng);
        ws.nodes.shuffle(&mut rng);
        ws.gateways.shuffle(&mut rng);
        for n in &mut ws.networks {
            n.routes.shuffle(&mut rng);
            n.health_targets.shuffle(&mut rng);
        }
        for n in &mut ws.nodes {
            n.memberships.shuffle(&mut rng);
        }
        for g in &mut ws.gateways {
            g.networks.shuffle(&mut rng);
            g.roles.shuffle(&mut rng);
        }
    }
}

/// Everything compiled from a topology, as bytes.
fn compiled_bytes(t: &Topology, health: &Health) -> String {
    let mut out = serde_json::to_string(&compile_all(t, health)).unwrap();
    for id in t.node_ids() {
        match compile_node(t, health, id) {
            Ok(c) => out.push_str(&c.to_json()),
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

/// `net` lies inside the workspace's own space and outside every other's.
fn check_isolated(t: &Topology, ws: &WorkspaceId, net: &IpNet) -> Result<(), TestCaseError> {
    if is_default(net) {
        return Ok(());
    }
    let mine = owned_prefixes(t, ws);
    prop_assert!(
        mine.iter().any(|p| p.contains(net)),
        "{net} is not in workspace {ws}'s space"
    );
    for other in t.workspaces.keys().filter(|o| *o != ws) {
        for p in owned_prefixes(t, other) {
            prop_assert!(
                !p.contains(net) && !net.contains(&p),
                "{net} of {ws} touches {p} of {other}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn compile_is_independent_of_list_order(doc in common::document(), seed: u64, mask: u64) {
        let t = Topology::from_document(&doc).expect("generated documents are valid");
        let mut shuffled = doc.clone();
        shuffle(&mut shuffled, seed);
        let t2 = Topology::from_document(&shuffled).expect("shuffled stays valid");
        prop_assert_eq!(&t, &t2);
        let h = health_from(&t, mask);
        prop_assert_eq!(compiled_bytes(&t, &h), compiled_bytes(&t2, &h));
    }

    #[test]
    fn no_state_holds_another_workspaces_addresses(doc in common::document(), mask: u64) {
        let t = Topology::from_document(&doc).expect("generated documents are valid");
        let h = health_from(&t, mask);
        for (gw, state) in compile_all(&t, &h) {
            let (ws, _) = t.gateway(&gw).unwrap();
            let ws = ws.id.clone();
            let keys: BTreeSet<PublicKey> =
                t.workspaces[&ws].nodes.values().map(|n| n.public_key).collect();
            for iface in state.interfaces.values() {
                for a in &iface.addresses {
                    check_isolated(&t, &ws, a)?;
                }
                for (k, p) in &iface.peers {
                    prop_assert!(keys.contains(k), "peer of another workspace on {gw}");
                    for a in &p.allowed_ips {
                        check_isolated(&t, &ws, a)?;
                    }
                }
            }
            for r in &state.routes {
                check_isolated(&t, &ws, &r.destination)?;
            }
            for r in &state.rules {
                check_isolated(&t, &ws, &r.destination)?;
            }
            if let Some(f) = &state.filter {
                for r in &f.accept {
                    check_isolated(&t, &ws, &r.source)?;
                    if let Destination::Prefix(p) = &r.destination {
                        check_isolated(&t, &ws, p)?;
                    }
                }
                for r in &f.masquerade {
                    check_isolated(&t, &ws, &r.source)?;
                    if let Destination::Prefix(p) = &r.destination {
                        check_isolated(&t, &ws, p)?;
                    }
                }
            }
        }
        let ids: Vec<NodeId> = t.node_ids().cloned().collect();
        for id in ids {
            let Ok(config) = compile_node(&t, &h, &id) else { continue };
            let ws = config.workspace.clone();
            let keys: BTreeSet<PublicKey> =
                t.workspaces[&ws].nodes.values().map(|n| n.public_key).collect();
            for a in &config.addresses {
                check_isolated(&t, &ws, a)?;
            }
            for p in &config.peers {
                prop_assert!(keys.contains(&p.public_key));
                for a in &p.allowed_ips {
                    check_isolated(&t, &ws, a)?;
                }
            }
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
        let mut bytes = doc.to_yaml().into_bytes();
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
        let json = doc.to_json();
        let cut = &json[..json.len() / 2];
        prop_assert!(Topology::from_json(cut).is_err());
    }
}
