//! A client's exit: chosen among the exit-capable gateways of its exit network in
//! that network's policy order, with its own standbys, whichever gateway carries
//! the network's routes; and validation that says why a client can get none.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use ipnet::IpNet;
use nanami_model::{
    compile, compile_node, Destination, GatewayId, Health, InterfaceName, NetworkId, NodeConfig,
    NodeId, Topology, TopologyError,
};

/// One network `corp` (`exit: true` unless `net_exit` says otherwise) with
/// `policy`, gateways `gw-a` (ingress + egress, no exit, first in policy order),
/// then `gw-b` and `gw-c` with `roles_bc`, and a client `laptop` with `exit: true`.
fn doc(policy: &str, roles_bc: &str, capacity_b: Option<u32>, net_exit: bool) -> String {
    let k = common::keys(4);
    let cap = capacity_b
        .map(|c| format!(", capacity: {c}"))
        .unwrap_or_default();
    format!(
        r#"
version: 1
regions: [{{ id: lab, state: active }}]
workspaces:
  - id: w
    tenant: t
    regions: [lab]
    networks:
      - {{ id: corp, overlay: 100.80.0.0/24, routes: [10.20.0.0/24], exit: {net_exit}, gateways: {policy} }}
    nodes:
      - {{ id: gw-a, public_key: "{}", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}] }}
      - {{ id: gw-b, public_key: "{}", status: active, memberships: [{{ network: corp, address: 100.80.0.2 }}] }}
      - {{ id: gw-c, public_key: "{}", status: active, memberships: [{{ network: corp, address: 100.80.0.3 }}] }}
      - {{ id: laptop, public_key: "{}", status: active, exit: true, memberships: [{{ network: corp, address: 100.80.0.11 }}] }}
    gateways:
      - {{ id: gw-a, node: gw-a, region: lab, networks: [corp], roles: [ingress, egress], endpoint: "198.51.100.1:51820", listen_port: 51820 }}
      - {{ id: gw-b, node: gw-b, region: lab, networks: [corp], roles: {roles_bc}, endpoint: "198.51.100.2:51820", listen_port: 51820{cap} }}
      - {{ id: gw-c, node: gw-c, region: lab, networks: [corp], roles: {roles_bc}, endpoint: "198.51.100.3:51820", listen_port: 51820 }}
"#,
        k[0], k[1], k[2], k[3]
    )
}

fn gw(id: &str) -> GatewayId {
    GatewayId::new(id).unwrap()
}

fn laptop(t: &Topology, h: &Health) -> NodeConfig {
    compile_node(t, h, &NodeId::new("laptop").unwrap()).unwrap()
}

fn exit_ids(config: &NodeConfig) -> Vec<&str> {
    config
        .exit
        .iter()
        .flat_map(|e| e.gateways.iter().map(|c| c.gateway.as_str()))
        .collect()
}

fn default_route() -> IpNet {
    "0.0.0.0/0".parse().unwrap()
}

/// The peer holding the default route, if any.
fn exit_peer(config: &NodeConfig) -> Option<&str> {
    let holders: Vec<&str> = config
        .peers
        .iter()
        .filter(|p| p.allowed_ips.contains(&default_route()))
        .map(|p| p.gateway.as_str())
        .collect();
    assert!(holders.len() <= 1, "{holders:?}");
    let flagged: Vec<&str> = config
        .peers
        .iter()
        .filter(|p| p.exit)
        .map(|p| p.gateway.as_str())
        .collect();
    assert_eq!(holders, flagged);
    holders.first().copied()
}

/// The bug: the network's first gateway (`gw-a`) lacks the exit role, so the client
/// got no exit although `gw-b` has it. Now `gw-b` is the exit, `gw-a` still carries
/// the network, and `gw-b` holds the client as a peer and forwards to the internet.
#[test]
fn the_exit_goes_to_an_exit_gateway_even_when_the_primary_has_no_exit_role() {
    let t = Topology::from_yaml(&doc(
        "{ policy: auto, redundancy: 1 }",
        "[ingress, exit]",
        None,
        true,
    ))
    .unwrap();
    let config = laptop(&t, &Health::all_up());
    let corp = NetworkId::new("corp").unwrap();
    let list: Vec<&str> = config.gateways[&corp]
        .iter()
        .map(|c| c.gateway.as_str())
        .collect();
    assert_eq!(list, ["gw-a"], "the network keeps its own primary");
    assert_eq!(config.exit.as_ref().unwrap().network, corp);
    assert_eq!(exit_ids(&config), ["gw-b"]);
    assert_eq!(exit_peer(&config), Some("gw-b"));
    let a = config
        .peers
        .iter()
        .find(|p| p.gateway.as_str() == "gw-a")
        .unwrap();
    assert!(a.allowed_ips.contains(&"10.20.0.0/24".parse().unwrap()));
    assert_eq!(config.active_exit(&BTreeSet::new()), Some(&gw("gw-b")));
    assert!(config.to_wg_quick(None).contains("0.0.0.0/0"));

    // gw-b holds the laptop as a peer with its address, and lets it out.
    let state = compile(&t, &Health::all_up(), &gw("gw-b")).unwrap();
    let iface = state.interfaces.values().next().unwrap();
    let peer = iface
        .peers
        .get(&config.public_key)
        .expect("the exit holds the client");
    assert_eq!(
        peer.allowed_ips,
        BTreeSet::from(["100.80.0.11/32".parse().unwrap()])
    );
    let filter = state.filter.unwrap();
    assert!(filter
        .accept
        .iter()
        .any(|r| r.destination == Destination::Internet));

    // The client's own state routes the default route through the tunnel.
    let ifname = InterfaceName::new("nm-client").unwrap();
    let client = config.client_state(&ifname, 51900, &BTreeSet::new());
    assert!(client
        .routes
        .iter()
        .any(|r| r.destination == default_route()));
    // And probes the exit gateway like any other.
    assert!(config.probe_addresses().contains_key(&gw("gw-b")));
}

/// The exit has its own standbys (`redundancy`), in the network's policy order,
/// and fails over on the client alone.
#[test]
fn the_exit_has_its_own_standbys_and_fails_over() {
    let t = Topology::from_yaml(&doc(
        "{ policy: auto, redundancy: 2 }",
        "[ingress, exit]",
        None,
        true,
    ))
    .unwrap();
    let config = laptop(&t, &Health::all_up());
    assert_eq!(exit_ids(&config), ["gw-b", "gw-c"]);
    assert_eq!(exit_peer(&config), Some("gw-b"));
    let down = BTreeSet::from([gw("gw-b")]);
    let moved = config.failed_over(&down);
    assert_eq!(exit_peer(&moved), Some("gw-c"));
    assert_eq!(moved.active_exit(&down), Some(&gw("gw-c")));
    let all = BTreeSet::from([gw("gw-b"), gw("gw-c")]);
    assert_eq!(exit_peer(&config.failed_over(&all)), None);
    assert!(config
        .to_wg_quick(None)
        .contains("# exit order (through corp"));
    // Offline in Health: the manager compiles the exit onto gw-c at once.
    let mut h = Health::all_up();
    h.offline.insert(gw("gw-b"));
    assert_eq!(exit_ids(&laptop(&t, &h)), ["gw-c"]);
}

/// `manual` lists order the exits too; an exit-only gateway (no ingress) can be
/// an exit without carrying the network.
#[test]
fn exits_follow_the_manual_order_and_may_be_exit_only() {
    let policy = "{ policy: manual, manual: [gw-a, gw-c, gw-b], redundancy: 1 }";
    let t = Topology::from_yaml(&doc(policy, "[exit]", None, true)).unwrap();
    let config = laptop(&t, &Health::all_up());
    assert_eq!(exit_ids(&config), ["gw-c"]);
    let corp = NetworkId::new("corp").unwrap();
    let list: Vec<&str> = config.gateways[&corp]
        .iter()
        .map(|c| c.gateway.as_str())
        .collect();
    assert_eq!(
        list,
        ["gw-a"],
        "an exit-only gateway never carries the network"
    );
    let c = compile(&t, &Health::all_up(), &gw("gw-c")).unwrap();
    assert!(c
        .interfaces
        .values()
        .next()
        .unwrap()
        .peers
        .contains_key(&config.public_key));
    let b = compile(&t, &Health::all_up(), &gw("gw-b")).unwrap();
    assert!(b.interfaces.values().next().unwrap().peers.is_empty());
}

/// A full exit gateway is skipped like a full network gateway.
#[test]
fn a_full_exit_gateway_is_skipped() {
    let t = Topology::from_yaml(&doc(
        "{ policy: auto, redundancy: 1 }",
        "[ingress, exit]",
        Some(1),
        true,
    ))
    .unwrap();
    // gw-b (capacity 1) is not full: the laptop is its only client.
    assert_eq!(exit_ids(&laptop(&t, &Health::all_up())), ["gw-b"]);
    let text = doc("{ policy: auto, redundancy: 2 }", "[ingress, exit]", Some(1), true)
        .replace("memberships: [{ network: corp, address: 100.80.0.11 }] }", "memberships: [{ network: corp, address: 100.80.0.11 }] }\n      - { id: aaa-first, public_key: \"QTxJEM09TOmheofqz72QG2m9dVg93kXePes/b+VLH3c=\", status: active, memberships: [{ network: corp }] }");
    let t = Topology::from_yaml(&text).unwrap();
    // aaa-first (earlier in node-id order) takes gw-a and gw-b (redundancy 2):
    // gw-b is full, so the laptop's exits are gw-c only.
    assert_eq!(exit_ids(&laptop(&t, &Health::all_up())), ["gw-c"]);
}

/// Compiling twice gives the same bytes.
#[test]
fn exits_compile_deterministically() {
    let text = doc(
        "{ policy: balanced, redundancy: 2 }",
        "[ingress, exit]",
        None,
        true,
    );
    let a = laptop(&Topology::from_yaml(&text).unwrap(), &Health::all_up());
    let b = laptop(&Topology::from_yaml(&text).unwrap(), &Health::all_up());
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    assert_eq!(exit_ids(&a).len(), 2);
}

fn invalid(text: &str) -> nanami_model::ValidationErrors {
    match Topology::from_yaml(text) {
        Err(TopologyError::Invalid(e)) => e,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn validation_says_why_a_client_can_have_no_exit() {
    // No gateway of the exit network has the exit role.
    let errs = invalid(&doc(
        "{ policy: auto, redundancy: 1 }",
        "[ingress]",
        None,
        true,
    ));
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "workspaces[w].nodes[laptop].exit");
    assert_eq!(
        errs.0[0].message,
        "`exit: true`, but no gateway serving its exit network (corp) has the exit role"
    );

    // None of its networks has `exit: true` (and so no gateway may have the role).
    let errs = invalid(&doc(
        "{ policy: auto, redundancy: 1 }",
        "[ingress]",
        None,
        false,
    ));
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "workspaces[w].nodes[laptop].exit");
    assert!(
        errs.0[0]
            .message
            .contains("none of its networks (corp) has `exit: true`"),
        "{errs}"
    );

    // The exit gateways are left out of the manual list.
    let errs = invalid(&doc(
        "{ policy: manual, manual: [gw-a], redundancy: 1 }",
        "[ingress, exit]",
        None,
        true,
    ));
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "workspaces[w].nodes[laptop].exit");
    assert!(
        errs.0[0]
            .message
            .ends_with("are not in the network's manual list: gw-b, gw-c"),
        "{errs}"
    );
}
