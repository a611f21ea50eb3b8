//! Liveness and forwarding-path verdicts from heartbeats and reports, as pure
//! functions of `now`: which gateways are offline (silent longer than the limit)
//! and which (gateway, network) paths are down. The manager feeds them its clock
//! and its latest reports; the compiled state follows from the verdicts
//! ([`nanami_model::Health`]).

use std::collections::{BTreeMap, BTreeSet};

use nanami_model::{health_targets, GatewayId, Health, NetworkId, Topology, WorkspaceId};
use serde::{Deserialize, Serialize};

/// A network's forwarding-path verdict, as a gateway reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PathHealth {
    /// Probes succeed (or have not failed long enough to say otherwise).
    Healthy,
    /// Every target failed for several rounds in a row: clients should use
    /// another gateway for this network.
    Unhealthy,
    /// Nothing certain yet (the daemon just started) or the daemon cannot probe:
    /// the verdict in force is kept.
    Unknown,
}

/// The gateways of `topology` that are offline at `now_ms`: never seen, or last
/// seen more than `limit_ms` before (times in milliseconds on one monotonic clock).
pub fn offline(
    topology: &Topology,
    last_seen_ms: &BTreeMap<GatewayId, u64>,
    now_ms: u64,
    limit_ms: u64,
) -> BTreeSet<GatewayId> {
    topology
        .gateway_ids()
        .filter(|id| {
            last_seen_ms
                .get(*id)
                .is_none_or(|seen| now_ms.saturating_sub(*seen) > limit_ms)
        })
        .cloned()
        .collect()
}

/// The networks whose forwarding path `gateway`'s latest report says is down,
/// among those it probes now (a verdict about a network it no longer probes does
/// not count). A network the report says nothing certain about keeps its verdict
/// in `before`, so a daemon restart does not bounce clients back to a gateway
/// whose path is still down.
pub fn reported_unhealthy(
    topology: &Topology,
    gateway: &GatewayId,
    report: &BTreeMap<NetworkId, PathHealth>,
    before: &BTreeSet<(GatewayId, NetworkId)>,
) -> BTreeSet<NetworkId> {
    health_targets(topology, gateway)
        .into_keys()
        .filter(|network| match report.get(network) {
            Some(PathHealth::Unhealthy) => true,
            Some(PathHealth::Healthy) => false,
            Some(PathHealth::Unknown) | None => {
                before.contains(&(gateway.clone(), network.clone()))
            }
        })
        .collect()
}

/// [`Health::unhealthy`] from the latest `reports`, for gateways of the topology
/// that are online (an offline gateway's last report is stale, and it is out
/// anyway).
pub fn unhealthy_pairs<'a>(
    topology: &Topology,
    reports: impl IntoIterator<Item = (&'a GatewayId, &'a BTreeMap<NetworkId, PathHealth>)>,
    offline: &BTreeSet<GatewayId>,
    before: &BTreeSet<(GatewayId, NetworkId)>,
) -> BTreeSet<(GatewayId, NetworkId)> {
    reports
        .into_iter()
        .filter(|(gateway, _)| !offline.contains(*gateway) && topology.gateway(gateway).is_some())
        .flat_map(|(gateway, report)| {
            reported_unhealthy(topology, gateway, report, before)
                .into_iter()
                .map(move |network| (gateway.clone(), network))
        })
        .collect()
}

/// The verdicts at `now_ms`, and whether they differ from `before`: what a health
/// tick decides.
pub fn handle_tick<'a>(
    topology: &Topology,
    last_seen_ms: &BTreeMap<GatewayId, u64>,
    reports: impl IntoIterator<Item = (&'a GatewayId, &'a BTreeMap<NetworkId, PathHealth>)>,
    before: &Health,
    now_ms: u64,
    limit_ms: u64,
) -> (Health, bool) {
    let offline = offline(topology, last_seen_ms, now_ms, limit_ms);
    let unhealthy = unhealthy_pairs(topology, reports, &offline, &before.unhealthy);
    let changed = offline != before.offline || unhealthy != before.unhealthy;
    (Health { offline, unhealthy }, changed)
}

/// The workspaces whose gateways' verdicts differ between `before` and `after`:
/// the only ones a change of verdicts can move clients in (assignment never
/// crosses workspaces), so the only ones to recompile.
pub fn moved_workspaces(
    topology: &Topology,
    before: &Health,
    after: &Health,
) -> BTreeSet<WorkspaceId> {
    before
        .offline
        .symmetric_difference(&after.offline)
        .chain(
            before
                .unhealthy
                .symmetric_difference(&after.unhealthy)
                .map(|(g, _)| g),
        )
        .filter_map(|g| topology.gateway_workspace(g).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let key = |n: u8| {
            let mut seed = [n; 32];
            seed[0] = 1;
            nanami_model::PrivateKey::from_bytes(seed)
                .public_key()
                .to_base64()
        };
        Topology::from_yaml(&format!(
            "version: 1
regions: [{{id: lab, state: active}}]
workspaces:
  - id: acme
    tenant: acme
    regions: [lab]
    networks:
      - {{id: corp, overlay: 100.64.0.0/24, routes: [10.0.0.0/24], health_targets: [10.0.0.1]}}
    nodes:
      - {{id: gw-a, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
    gateways:
      - {{id: gw-a, node: gw-a, region: lab, networks: [corp], roles: [ingress, egress], endpoint: '192.0.2.1:51820', listen_port: 51820}}
",
            key(2)
        ))
        .expect("valid topology")
    }

    fn gw() -> GatewayId {
        GatewayId::new("gw-a").expect("valid id")
    }

    fn corp() -> NetworkId {
        NetworkId::new("corp").expect("valid id")
    }

    #[test]
    fn silence_past_the_limit_is_offline_on_a_virtual_clock() {
        let t = topology();
        let seen = BTreeMap::from([(gw(), 1_000)]);
        assert!(
            offline(&t, &seen, 31_000, 30_000).is_empty(),
            "exactly the limit"
        );
        assert_eq!(offline(&t, &seen, 31_001, 30_000), BTreeSet::from([gw()]));
        assert_eq!(
            offline(&t, &BTreeMap::new(), 0, 30_000),
            BTreeSet::from([gw()]),
            "never seen"
        );
    }

    #[test]
    fn a_path_verdict_holds_through_unknown_and_needs_a_report_to_change() {
        let t = topology();
        let down = BTreeMap::from([(corp(), PathHealth::Unhealthy)]);
        let unknown = BTreeMap::from([(corp(), PathHealth::Unknown)]);
        let up = BTreeMap::from([(corp(), PathHealth::Healthy)]);
        let none: BTreeSet<(GatewayId, NetworkId)> = BTreeSet::new();
        let online = BTreeSet::new();
        let pairs = unhealthy_pairs(&t, [(&gw(), &down)], &online, &none);
        assert_eq!(pairs, BTreeSet::from([(gw(), corp())]));
        assert_eq!(
            unhealthy_pairs(&t, [(&gw(), &unknown)], &online, &pairs),
            pairs
        );
        assert!(unhealthy_pairs(&t, [(&gw(), &up)], &online, &pairs).is_empty());
        // An offline gateway's stale report does not count.
        let off = BTreeSet::from([gw()]);
        assert!(unhealthy_pairs(&t, [(&gw(), &down)], &off, &none).is_empty());
    }

    #[test]
    fn only_the_workspaces_of_gateways_whose_verdicts_changed_move() {
        let t = topology();
        let none = Health::default();
        assert!(moved_workspaces(&t, &none, &none).is_empty());
        let off = Health {
            offline: BTreeSet::from([gw()]),
            ..Health::default()
        };
        let acme = WorkspaceId::new("acme").expect("valid id");
        assert_eq!(
            moved_workspaces(&t, &none, &off),
            BTreeSet::from([acme.clone()])
        );
        assert_eq!(
            moved_workspaces(&t, &off, &none),
            BTreeSet::from([acme.clone()])
        );
        let down = Health {
            unhealthy: BTreeSet::from([(gw(), corp())]),
            ..Health::default()
        };
        assert_eq!(moved_workspaces(&t, &none, &down), BTreeSet::from([acme]));
        // A gateway the topology does not have moves nothing.
        let stranger = Health {
            offline: BTreeSet::from([GatewayId::new("gw-x").expect("valid id")]),
            ..Health::default()
        };
        assert!(moved_workspaces(&t, &none, &stranger).is_empty());
    }

    #[test]
    fn a_tick_says_whether_anything_changed() {
        let t = topology();
        let seen = BTreeMap::from([(gw(), 0)]);
        let reports: BTreeMap<GatewayId, BTreeMap<NetworkId, PathHealth>> = BTreeMap::new();
        let (health, changed) = handle_tick(&t, &seen, &reports, &Health::default(), 10, 100);
        assert!(!changed);
        assert_eq!(health, Health::default());
        let (health, changed) = handle_tick(&t, &seen, &reports, &health, 101, 100);
        assert!(changed);
        assert_eq!(health.offline, BTreeSet::from([gw()]));
    }
}
