//! `/metrics`: the manager's series in the Prometheus text format.
//!
//! - Fleet gauges and counters (`nanami_gateways_online`, `nanami_reports_total`,
//!   `nanami_long_polls_waiting{route}`, …): constant in size.
//! - Per gateway of the topology (`nanami_gateway_*`, labelled `gateway`, and
//!   `network` for path health): liveness, the path verdict of each network it
//!   probes, generation lag, desired and observed peers, bytes in and out, newest
//!   handshake. One small set per gateway.
//! - Per peer (`nanami_peer_*`, labelled `gateway`, `peer` (its public key) and
//!   `node` where the topology knows the key) only when the operator asks for
//!   them (`--metrics-per-peer`): they grow with the clients.
//!
//! `dist/grafana/nanami.json` is a dashboard over exactly these series; a test
//! checks that every series it queries is served.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use nanami_api::metrics::{count, Exposition, Kind};
use nanami_api::wire::Liveness;

use nanami_model::GatewayId;

use crate::manager::{GatewayTelemetry, Manager};

/// The exposition of `manager`'s series; per-peer series only with `per_peer`.
pub fn render(manager: &Manager, per_peer: bool) -> String {
    let mut e = Exposition::new();
    fleet(&mut e, manager);
    gateways(&mut e, manager, per_peer);
    e.finish()
}

fn fleet(e: &mut Exposition, manager: &Manager) {
    let s = manager.summary();
    let n = |v: usize| count(u64::try_from(v).unwrap_or(u64::MAX));
    e.single(
        "nanami_topology_revision",
        Kind::Gauge,
        "Topology revision in force.",
        count(s.revision),
    );
    e.single(
        "nanami_health_lease_held",
        Kind::Gauge,
        "1 when this manager decides health verdicts (always, with a store of its own; the lease holder, with a shared one).",
        u8::from(manager.leads()),
    );
    e.single(
        "nanami_gateways",
        Kind::Gauge,
        "Gateways with a desired state (removed ones included).",
        n(s.gateways),
    );
    e.single(
        "nanami_gateways_online",
        Kind::Gauge,
        "Gateways of the topology that report.",
        n(s.online),
    );
    e.single(
        "nanami_gateways_offline",
        Kind::Gauge,
        "Gateways of the topology that missed too many reports.",
        n(s.offline),
    );
    e.single(
        "nanami_gateways_removed",
        Kind::Gauge,
        "Gateways no longer in the topology (served the empty state).",
        n(s.removed),
    );
    e.single(
        "nanami_gateway_paths_unhealthy",
        Kind::Gauge,
        "(gateway, network) pairs whose forwarding path is down while the gateway reports.",
        n(s.paths_unhealthy),
    );
    e.single(
        "nanami_gateways_converged",
        Kind::Gauge,
        "Gateways whose observed generation is the desired one.",
        n(s.converged),
    );
    e.single(
        "nanami_store_ok",
        Kind::Gauge,
        "1 when everything served is stored; 0 while the store cannot write.",
        u8::from(s.store_ok),
    );
    let c = &manager.counters;
    let load =
        |a: &std::sync::atomic::AtomicU64| count(a.load(std::sync::atomic::Ordering::Relaxed));
    for (name, help, value) in [
        (
            "nanami_store_errors_total",
            "Store writes that failed.",
            &c.store_errors,
        ),
        (
            "nanami_generation_forks_total",
            "Reports of a generation this manager did not issue with that content.",
            &c.generation_forks,
        ),
        (
            "nanami_enrolments_total",
            "Successful enrolments.",
            &c.enrolments,
        ),
        (
            "nanami_enrolments_refused_total",
            "Refused enrolments.",
            &c.enrolments_refused,
        ),
        (
            "nanami_reports_total",
            "Observed reports accepted.",
            &c.reports,
        ),
        (
            "nanami_desired_served_total",
            "Desired states served.",
            &c.desired_served,
        ),
        (
            "nanami_auth_refused_total",
            "Requests refused with 401 or 403.",
            &c.auth_refused,
        ),
        (
            "nanami_bad_requests_total",
            "Malformed bodies and parameters refused.",
            &c.bad_requests,
        ),
    ] {
        e.single(name, Kind::Counter, help, load(value));
    }
    let name = "nanami_long_polls_waiting";
    e.family(
        name,
        Kind::Gauge,
        "Long-polls parked at this manager until something changes: daemons' desired states and clients' configurations.",
    );
    e.sample(name, &[("route", "desired")], load(&c.desired_waiting));
    e.sample(
        name,
        &[("route", "node_config")],
        load(&c.node_config_waiting),
    );
}

fn gateways(e: &mut Exposition, manager: &Manager, per_peer: bool) {
    // Gateways of the topology only: a removed one has no series.
    let status: Vec<_> = manager
        .status()
        .into_iter()
        .filter(|g| g.health != Liveness::Removed)
        .collect();
    let telemetry = manager.telemetry(per_peer);

    e.family(
        "nanami_gateway_up",
        Kind::Gauge,
        "1 while the gateway reports (online), 0 when it missed too many reports (offline).",
    );
    for g in &status {
        let labels = [
            ("gateway", g.id.as_str()),
            ("workspace", g.workspace.as_deref().unwrap_or("")),
            ("region", g.region.as_deref().unwrap_or("")),
        ];
        e.sample(
            "nanami_gateway_up",
            &labels,
            u8::from(g.health == Liveness::Online),
        );
    }
    e.family(
        "nanami_gateway_path_healthy",
        Kind::Gauge,
        "Forwarding-path health of a network through the gateway, as the manager decides it: 1 healthy, 0 down (its clients use another gateway). Networks the gateway probes.",
    );
    for g in &status {
        let Some(t) = telemetry.get(&g.id) else {
            continue;
        };
        for network in &t.probed {
            e.sample(
                "nanami_gateway_path_healthy",
                &[("gateway", g.id.as_str()), ("network", network.as_str())],
                u8::from(!g.unhealthy_networks.contains(network)),
            );
        }
    }
    e.family(
        "nanami_gateway_generation_lag",
        Kind::Gauge,
        "Generations between the desired state and the one the gateway last reported applied (the desired generation when it never did).",
    );
    for g in &status {
        let lag = g
            .desired_generation
            .saturating_sub(g.observed_generation.unwrap_or(0));
        e.sample(
            "nanami_gateway_generation_lag",
            &[("gateway", g.id.as_str())],
            count(lag),
        );
    }
    e.family(
        "nanami_gateway_peers",
        Kind::Gauge,
        "Peers in the gateway's desired state.",
    );
    for g in &status {
        let peers = count(u64::try_from(g.peers).unwrap_or(u64::MAX));
        e.sample("nanami_gateway_peers", &[("gateway", g.id.as_str())], peers);
    }
    e.family(
        "nanami_gateway_observed_peers",
        Kind::Gauge,
        "Peers the gateway last reported.",
    );
    for g in &status {
        let peers = count(u64::try_from(g.observed_peers).unwrap_or(u64::MAX));
        e.sample(
            "nanami_gateway_observed_peers",
            &[("gateway", g.id.as_str())],
            peers,
        );
    }
    for (name, help, rx) in [
        (
            "nanami_gateway_receive_bytes_total",
            "Bytes the gateway received from its peers (its WireGuard devices' counters, last report).",
            true,
        ),
        (
            "nanami_gateway_transmit_bytes_total",
            "Bytes the gateway sent to its peers (its WireGuard devices' counters, last report).",
            false,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for g in &status {
            let Some(t) = telemetry.get(&g.id) else { continue };
            let bytes = t
                .peers
                .iter()
                .map(|p| if rx { p.telemetry.rx_bytes } else { p.telemetry.tx_bytes })
                .fold(0u64, u64::saturating_add);
            e.sample(name, &[("gateway", g.id.as_str())], count(bytes));
        }
    }
    e.family(
        "nanami_gateway_last_handshake_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the newest handshake over the gateway's peers (absent: none yet).",
    );
    for g in &status {
        if let Some(at) = g
            .newest_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        {
            e.sample(
                "nanami_gateway_last_handshake_timestamp_seconds",
                &[("gateway", g.id.as_str())],
                count(at.as_secs()),
            );
        }
    }
    if per_peer {
        peers(e, &telemetry);
    }
}

fn peers(e: &mut Exposition, telemetry: &BTreeMap<GatewayId, GatewayTelemetry>) {
    type Pick = fn(&nanami_reconcile::PeerTelemetry) -> Option<u64>;
    let series: [(&str, Kind, &str, Pick); 3] = [
        (
            "nanami_peer_receive_bytes_total",
            Kind::Counter,
            "Bytes a gateway received from this peer.",
            |t| Some(t.rx_bytes),
        ),
        (
            "nanami_peer_transmit_bytes_total",
            Kind::Counter,
            "Bytes a gateway sent to this peer.",
            |t| Some(t.tx_bytes),
        ),
        (
            "nanami_peer_last_handshake_timestamp_seconds",
            Kind::Gauge,
            "Unix time of this peer's newest handshake with the gateway (absent: none yet).",
            |t| {
                t.last_handshake
                    .and_then(|h| h.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
            },
        ),
    ];
    for (name, kind, help, pick) in series {
        e.family(name, kind, help);
        for (gateway, t) in telemetry {
            for peer in &t.peers {
                let Some(value) = pick(&peer.telemetry) else {
                    continue;
                };
                let key = peer.key.to_string();
                let node = peer.node.as_ref().map_or("", |n| n.as_str());
                e.sample(
                    name,
                    &[
                        ("gateway", gateway.as_str()),
                        ("peer", &key),
                        ("node", node),
                    ],
                    count(value),
                );
            }
        }
    }
}
