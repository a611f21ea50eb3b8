//! What each gateway probes to test its forwarding path: per network it serves with
//! the egress role, the network's `health_targets` (addresses behind the gateway,
//! inside the network's routes). A gateway whose probes of a network fail is
//! unhealthy for that network ([`crate::Health::unhealthy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::id::{GatewayId, NetworkId};
use crate::topology::{Role, Topology};

/// Per network, the addresses a gateway probes.
pub type HealthTargets = BTreeMap<NetworkId, BTreeSet<IpAddr>>;

/// The networks `gateway` serves with the egress role whose `health_targets` are
/// not empty, with those targets; empty for a gateway not in the topology, without
/// the egress role, or whose networks list no targets.
///
/// ```
/// use nanami_model::{health_targets, GatewayId, Topology};
/// let t = Topology::from_yaml(include_str!("../../examples/balanced.yaml")).unwrap();
/// let targets = health_targets(&t, &GatewayId::new("gw-fra-a").unwrap());
/// let office = &targets["office"];
/// assert_eq!(office.len(), 2);
/// ```
pub fn health_targets(topology: &Topology, gateway: &GatewayId) -> HealthTargets {
    let Some((ws, gw)) = topology.gateway(gateway) else {
        return HealthTargets::new();
    };
    if !gw.has(Role::Egress) {
        return HealthTargets::new();
    }
    gw.networks
        .iter()
        .filter_map(|id| ws.networks.get(id))
        .filter(|n| !n.health_targets.is_empty())
        .map(|n| (n.id.clone(), n.health_targets.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = "version: 1
regions: [{ id: r, state: active }]
workspaces:
  - id: w
    tenant: t
    regions: [r]
    networks:
      - { id: a, overlay: 100.64.0.0/24, routes: [10.1.0.0/16], health_targets: [10.1.0.1, 10.1.0.2] }
      - { id: b, overlay: 100.64.1.0/24, routes: [10.2.0.0/16] }
    nodes:
      - { id: g1, public_key: \"0TFxBlKHhHWPmIRcbXIDsPyOJg/xr68jHitQbAAIr3g=\", status: active, memberships: [{ network: a }, { network: b }] }
      - { id: g2, public_key: \"Ky3tYGxcTphtuNtH/KLI5t/knWhxvoha6ZhMUV9ntRk=\", status: active, memberships: [{ network: a }] }
    gateways:
      - { id: g1, node: g1, region: r, networks: [a, b], roles: [ingress, egress], endpoint: \"192.0.2.1:51820\", listen_port: 51820 }
      - { id: g2, node: g2, region: r, networks: [a], roles: [ingress], endpoint: \"192.0.2.2:51820\", listen_port: 51820 }
";

    #[test]
    fn egress_networks_with_targets_only() {
        let t = Topology::from_yaml(DOC).unwrap();
        let g1 = health_targets(&t, &GatewayId::new("g1").unwrap());
        assert_eq!(g1.len(), 1, "network b lists no targets");
        let a: Vec<String> = g1[&NetworkId::new("a").unwrap()]
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(a, ["10.1.0.1", "10.1.0.2"]);
        assert!(
            health_targets(&t, &GatewayId::new("g2").unwrap()).is_empty(),
            "an ingress-only gateway forwards nothing to probe"
        );
        assert!(health_targets(&t, &GatewayId::new("nope").unwrap()).is_empty());
    }
}
