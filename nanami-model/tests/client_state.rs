//! A client agent's own machine state (`NodeConfig::client_state`) and the bulk
//! client compile (`compile_nodes`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use nanami_model::compile::host_prefix;
use nanami_model::state::{NANAMI_PROTO, NANAMI_TABLE};
use nanami_model::{
    compile_node, compile_nodes, GatewayId, Health, InterfaceName, NetworkId, NodeId, Topology,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn compile_nodes_is_compile_node_for_every_client(doc in common::document(), mask: u64) {
        let t = Topology::from_document(&doc).expect("generated documents are valid");
        let mut h = Health::default();
        for (i, g) in t.gateway_ids().enumerate() {
            if mask & (1 << (i % 64)) != 0 {
                h.offline.insert(g.clone());
            }
        }
        let bulk = compile_nodes(&t, &h);
        let mut expected = 0;
        for ws in t.workspaces.values() {
            for node in ws.nodes.keys() {
                match compile_node(&t, &h, node) {
                    Ok(config) => {
                        expected += 1;
                        prop_assert_eq!(Some(&config), bulk.get(node));
                    }
                    Err(_) => prop_assert!(!bulk.contains_key(node)),
                }
            }
        }
        prop_assert_eq!(bulk.len(), expected);
    }
}

#[test]
fn client_state_routes_the_active_gateway_and_probes_every_gateway() {
    let doc = common::fleet(11, "balanced", 2, 3, 4, None);
    let t = Topology::from_document(&doc).unwrap();
    let config = compile_node(&t, &Health::all_up(), &NodeId::new("c11-0").unwrap()).unwrap();
    let net = NetworkId::new("net").unwrap();
    let list = config.gateways[&net].clone();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|c| c.addresses.len() == 1), "{list:?}");
    let overlay = *t.workspaces.values().next().unwrap().networks[&net]
        .overlay
        .first()
        .unwrap();
    let ifname = InterfaceName::new("nm-client").unwrap();

    let state = config.client_state(&ifname, 51900, &BTreeSet::new());
    assert!(state.filter.is_none() && state.forwarding.is_empty());
    let iface = &state.interfaces[&ifname];
    assert_eq!(iface.listen_port, Some(51900));
    assert_eq!(iface.addresses, config.addresses);
    assert_eq!(iface.peers.len(), 2);
    let probe = |i: usize| host_prefix(*list[i].addresses.first().unwrap());
    let primary = &iface.peers[&list[0].public_key];
    let standby = &iface.peers[&list[1].public_key];
    assert!(primary.allowed_ips.contains(&overlay) && primary.allowed_ips.contains(&probe(0)));
    assert_eq!(standby.allowed_ips, BTreeSet::from([probe(1)]));
    assert_eq!(standby.endpoint, Some(list[1].endpoint));
    let routed: BTreeSet<_> = state.routes.iter().map(|r| r.destination).collect();
    assert!(routed.contains(&overlay) && routed.contains(&probe(0)) && routed.contains(&probe(1)));
    assert!(state
        .routes
        .iter()
        .all(|r| r.table == NANAMI_TABLE && r.protocol == NANAMI_PROTO && r.interface == ifname));
    let ruled: BTreeSet<_> = state.rules.iter().map(|r| r.destination).collect();
    assert_eq!(ruled, routed);

    // The primary dies: the overlay moves to the standby, the probes stay.
    let down: BTreeSet<GatewayId> = [list[0].gateway.clone()].into();
    let state = config.client_state(&ifname, 51900, &down);
    let iface = &state.interfaces[&ifname];
    assert_eq!(
        iface.peers[&list[0].public_key].allowed_ips,
        BTreeSet::from([probe(0)])
    );
    assert!(iface.peers[&list[1].public_key]
        .allowed_ips
        .contains(&overlay));

    // Both die: nothing routes the overlay, but both stay probed, so their return
    // is noticed.
    let all: BTreeSet<GatewayId> = list.iter().map(|c| c.gateway.clone()).collect();
    let state = config.client_state(&ifname, 51900, &all);
    let routed: BTreeSet<_> = state.routes.iter().map(|r| r.destination).collect();
    assert_eq!(routed, BTreeSet::from([probe(0), probe(1)]));
}

#[test]
fn an_exit_client_sends_its_default_route_to_the_active_exit_with_its_endpoints_outside() {
    let key = |b: u8| nanami_model::PrivateKey::from_bytes([b; 32]).public_key();
    let doc = format!(
        r#"version: 1
regions:
  - {{ id: lab, display_name: Lab, state: active }}
workspaces:
  - id: lab
    tenant: lab
    regions: [lab]
    networks:
      - {{ id: corp, overlay: 100.80.0.0/24, routes: [10.20.0.0/24], exit: true, gateways: {{ policy: auto, redundancy: 2 }} }}
    nodes:
      - {{ id: gw-a, public_key: "{}", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}] }}
      - {{ id: gw-b, public_key: "{}", status: active, memberships: [{{ network: corp, address: 100.80.0.2 }}] }}
      - {{ id: laptop, public_key: "{}", status: active, exit: true, memberships: [{{ network: corp, address: 100.80.0.11 }}] }}
    gateways:
      - {{ id: gw-a, node: gw-a, region: lab, networks: [corp], roles: [ingress, egress, exit], endpoint: "198.51.100.1:51820", listen_port: 51820 }}
      - {{ id: gw-b, node: gw-b, region: lab, networks: [corp], roles: [ingress, egress, exit], endpoint: "198.51.100.2:51820", listen_port: 51820 }}
"#,
        key(1),
        key(2),
        key(3)
    );
    let t = Topology::from_yaml(&doc).unwrap();
    let config = compile_node(&t, &Health::all_up(), &NodeId::new("laptop").unwrap()).unwrap();
    let ifname = InterfaceName::new("nm-client").unwrap();
    let default: ipnet::IpNet = "0.0.0.0/0".parse().unwrap();
    let endpoints: BTreeSet<ipnet::IpNet> = ["198.51.100.1/32", "198.51.100.2/32"]
        .iter()
        .map(|e| e.parse().unwrap())
        .collect();
    let expected = |exit: &nanami_model::PublicKey| {
        let state = config.client_state(
            &ifname,
            51900,
            &if *exit == key(1) {
                BTreeSet::new()
            } else {
                BTreeSet::from([GatewayId::new("gw-a").unwrap()])
            },
        );
        let iface = &state.interfaces[&ifname];
        let holders: Vec<_> = iface
            .peers
            .iter()
            .filter(|(_, p)| p.allowed_ips.contains(&default))
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(holders, vec![*exit], "one peer holds the default route");
        assert!(state
            .routes
            .iter()
            .any(|r| r.destination == default && r.table == NANAMI_TABLE));
        let rules: Vec<_> = state
            .rules
            .iter()
            .filter(|r| r.destination.prefix_len() == 0 || endpoints.contains(&r.destination))
            .map(|r| {
                (
                    r.priority,
                    r.destination.to_string(),
                    r.table,
                    r.suppress_prefix_len,
                )
            })
            .collect();
        assert_eq!(
            rules,
            vec![
                (7374, "0.0.0.0/0".to_owned(), 254, Some(0)),
                (7375, "198.51.100.1/32".to_owned(), 254, None),
                (7375, "198.51.100.2/32".to_owned(), 254, None),
                (7376, "0.0.0.0/0".to_owned(), NANAMI_TABLE, None),
            ],
            "main's specific routes, then the endpoints, stay outside; the rest goes in"
        );
        // The network's own routes still come first.
        assert!(state
            .rules
            .iter()
            .any(|r| r.priority == 7373 && r.destination == "10.20.0.0/24".parse().unwrap()));
        assert!(state.rules.iter().all(|r| r.protocol == NANAMI_PROTO));
    };
    expected(&key(1));
    // gw-a dies: the exit moves with the network to gw-b.
    expected(&key(2));
}
