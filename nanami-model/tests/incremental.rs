//! `Topology::with_workspace` and `without_workspace` against whole-document
//! validation: replacing one workspace incrementally accepts exactly what
//! validating the whole resulting document accepts, and builds the same topology.
#![allow(clippy::unwrap_used)]

mod common;

use nanami_model::doc::{Document, WorkspaceDoc};
use nanami_model::{Topology, WorkspaceId};
use proptest::prelude::*;

/// `doc` with its workspace `at` replaced by `ws`.
fn replaced(doc: &Document, at: usize, ws: &WorkspaceDoc) -> Document {
    let mut d = doc.clone();
    d.workspaces[at] = ws.clone();
    d
}

/// Small edits of one workspace, each of which can break a rule that spans
/// workspaces or one inside it.
fn edit(ws: &WorkspaceDoc, other: &WorkspaceDoc, kind: u8, pick: usize) -> WorkspaceDoc {
    let mut w = ws.clone();
    match kind % 7 {
        // A node's status changes (what the API's lifecycle requests do).
        0 if !w.nodes.is_empty() => {
            let i = pick % w.nodes.len();
            w.nodes[i].status = ["active", "disabled", "revoked", "pending"][pick % 4].into();
        }
        // A node leaves.
        1 if !w.nodes.is_empty() => {
            w.nodes.remove(pick % w.nodes.len());
        }
        // A node takes another workspace's node's key.
        2 if !w.nodes.is_empty() && !other.nodes.is_empty() => {
            let i = pick % w.nodes.len();
            w.nodes[i].public_key = other.nodes[pick % other.nodes.len()].public_key.clone();
        }
        // A node takes another workspace's node's id.
        3 if !w.nodes.is_empty() && !other.nodes.is_empty() => {
            let i = pick % w.nodes.len();
            w.nodes[i].id = other.nodes[pick % other.nodes.len()].id.clone();
        }
        // A gateway takes another workspace's gateway's endpoint.
        4 if !w.gateways.is_empty() && !other.gateways.is_empty() => {
            let i = pick % w.gateways.len();
            w.gateways[i].endpoint = other.gateways[pick % other.gateways.len()].endpoint.clone();
        }
        // A gateway drains.
        5 if !w.gateways.is_empty() => {
            let i = pick % w.gateways.len();
            w.gateways[i].drain = !w.gateways[i].drain;
        }
        // A network's overlay is broken.
        6 if !w.networks.is_empty() => {
            let i = pick % w.networks.len();
            w.networks[i].overlay = nanami_model::doc::OneOrMany::One("10.0.0.1/8".into());
        }
        _ => {}
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replacing_one_workspace_agrees_with_validating_the_whole_document(
        doc in common::document(),
        at in 0usize..4,
        from in 0usize..4,
        kind in 0u8..7,
        pick in 0usize..64,
    ) {
        let base = Topology::from_document(&doc).unwrap();
        let at = at % doc.workspaces.len();
        let other = &doc.workspaces[from % doc.workspaces.len()];
        let new_ws = edit(&doc.workspaces[at], other, kind, pick);
        let whole = Topology::from_document(&replaced(&doc, at, &new_ws));
        let incremental = base.with_workspace(&new_ws);
        match (whole, incremental) {
            (Ok(w), Ok(i)) => prop_assert_eq!(w, i),
            (Err(_), Err(i)) => prop_assert!(!i.0.is_empty()),
            (w, i) => prop_assert!(false, "whole {:?} but incremental {:?}", w.map(|_| ()), i.map(|_| ())),
        }
    }

    #[test]
    fn removing_a_workspace_agrees_with_validating_the_whole_document(
        doc in common::document(),
        at in 0usize..4,
    ) {
        let base = Topology::from_document(&doc).unwrap();
        let at = at % doc.workspaces.len();
        let id = WorkspaceId::new(&doc.workspaces[at].id).unwrap();
        let mut d = doc.clone();
        d.workspaces.remove(at);
        prop_assert_eq!(Topology::from_document(&d).unwrap(), base.without_workspace(&id));
    }
}

#[test]
fn a_clash_with_another_workspace_is_reported_at_the_changed_one() {
    let doc = Document::from_yaml(&format!(
        "version: 1
regions: [{{id: lab, state: active}}]
workspaces:
  - id: acme
    tenant: acme
    regions: [lab]
    networks: [{{id: corp, overlay: 10.0.0.0/24}}]
    nodes:
      - {{id: n1, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
  - id: globex
    tenant: globex
    regions: [lab]
    networks: [{{id: corp, overlay: 10.0.0.0/24}}]
    nodes:
      - {{id: n2, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
",
        common::key(1),
        common::key(2)
    ))
    .unwrap();
    let t = Topology::from_document(&doc).unwrap();
    let mut globex = doc.workspaces[1].clone();
    globex.nodes[0].public_key = doc.workspaces[0].nodes[0].public_key.clone();
    globex.nodes[0].id = "n1".into();
    let issues = t.with_workspace(&globex).unwrap_err().0;
    let text: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        text,
        [
            "workspaces[globex].nodes[n1].id: duplicate node id \"n1\" (first at workspaces[acme].nodes[n1])",
            "workspaces[globex].nodes[n1].public_key: public key already used by workspaces[acme].nodes[n1]",
        ]
    );
    // The same addresses in two workspaces are fine (tenants pick their own).
    let mut again = doc.workspaces[1].clone();
    again.nodes[0].memberships[0].address =
        Some(nanami_model::doc::OneOrMany::One("10.0.0.1".into()));
    assert!(t.with_workspace(&again).is_ok());
}
