//! Explanations of placement: each ineligibility reason from its smallest topology,
//! agreement with `assign` and the compiled configurations over generated
//! topologies and health, and determinism.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use nanami_model::assign::{
    assign, eligible, exit_eligible, neg_log2_fixed, rendezvous_hash, Duty, Verdict,
};
use nanami_model::explain::{GatewayVerdict, NetworkExplanation, Outcome, PolicyName};
use nanami_model::topology::{NodeStatus, RegionState, Role};
use nanami_model::{
    compile_node, explain_gateway, explain_node, CompileError, ExplainError, GatewayId, Health,
    NetworkId, NodeId, RegionId, Topology,
};
use proptest::prelude::*;

/// A gateway of the test topology: it serves `corp` in region `lab`; its node
/// (same id) has `status`.
struct G {
    id: &'static str,
    roles: &'static str,
    extra: &'static str,
    status: &'static str,
}

fn g(id: &'static str) -> G {
    G {
        id,
        roles: "[ingress]",
        extra: "",
        status: "active",
    }
}

/// One region `lab` in `region_state`, one workspace, one network `corp`
/// (`exit: true`, `gateways: policy`), the gateways `gws`, and active clients
/// `c0`, `c1`, … with the extra fields `clients` gives (`status: active` unless
/// they set one).
fn topology(policy: &str, region_state: &str, gws: &[G], clients: &[&str]) -> Topology {
    let k = common::keys(gws.len() + clients.len());
    let mut nodes = String::new();
    let mut gateways = String::new();
    for (i, gw) in gws.iter().enumerate() {
        nodes.push_str(&format!(
            "      - {{ id: {}, public_key: \"{}\", status: {}, memberships: [{{ network: corp }}] }}\n",
            gw.id, k[i], gw.status
        ));
        gateways.push_str(&format!(
            "      - {{ id: {0}, node: {0}, region: lab, networks: [corp], roles: {1}, endpoint: \"198.51.100.{2}:51820\", listen_port: 51820{3} }}\n",
            gw.id, gw.roles, i + 1, gw.extra
        ));
    }
    for (i, extra) in clients.iter().enumerate() {
        let status = if extra.contains("status:") {
            ""
        } else {
            ", status: active"
        };
        nodes.push_str(&format!(
            "      - {{ id: c{i}, public_key: \"{}\", memberships: [{{ network: corp }}]{status}{extra} }}\n",
            k[gws.len() + i]
        ));
    }
    let yaml = format!(
        r#"
version: 1
regions: [{{ id: lab, state: {region_state} }}]
workspaces:
  - id: w
    tenant: t
    regions: [lab]
    networks:
      - {{ id: corp, overlay: 100.80.0.0/24, exit: true, gateways: {policy} }}
    nodes:
{nodes}    gateways:
{gateways}"#
    );
    Topology::from_yaml(&yaml).unwrap()
}

fn auto(gws: &[G]) -> Topology {
    topology("{ policy: auto }", "active", gws, &[""])
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn gw(id: &str) -> GatewayId {
    GatewayId::new(id).unwrap()
}

fn corp() -> NetworkId {
    NetworkId::new("corp").unwrap()
}

/// `c0`'s explanation of `corp`.
fn c0(t: &Topology, h: &Health) -> NetworkExplanation {
    explain_node(t, h, &node("c0"))
        .unwrap()
        .network(&corp())
        .unwrap()
        .clone()
}

/// The one gateway of `expl`, asserted alone.
fn only(expl: &NetworkExplanation) -> &GatewayVerdict {
    assert_eq!(expl.gateways.len(), 1, "{expl:#?}");
    &expl.gateways[0]
}

/// The one gateway is ineligible for exactly `want`, and the client is left
/// unassigned.
fn assert_ineligible(t: &Topology, h: &Health, want: Verdict) {
    let expl = c0(t, h);
    let v = only(&expl);
    assert_eq!(v.verdict, want);
    assert_eq!(v.outcome, Outcome::Ineligible);
    assert_eq!(expl.primary, None);
    assert!(expl.standbys.is_empty());
    assert!(!expl.safety_rule);
    let config = compile_node(t, h, &node("c0")).unwrap();
    assert!(config.unassigned.contains(&corp()));
}

#[test]
fn an_eligible_gateway_is_the_primary() {
    let t = auto(&[g("gw-a")]);
    let expl = c0(&t, &Health::all_up());
    assert_eq!(expl.policy, PolicyName::Auto);
    assert_eq!(expl.duty, Duty::Network);
    assert_eq!(expl.redundancy, 1);
    let v = only(&expl);
    assert_eq!(
        (v.verdict, v.outcome, v.score),
        (Verdict::Eligible, Outcome::Primary, None)
    );
    assert_eq!(expl.primary, Some(gw("gw-a")));
}

#[test]
fn reason_missing_ingress_role() {
    let t = auto(&[G {
        roles: "[egress]",
        ..g("gw-a")
    }]);
    assert_ineligible(
        &t,
        &Health::all_up(),
        Verdict::MissingRole {
            role: Role::Ingress,
        },
    );
}

#[test]
fn reason_missing_exit_role() {
    // The client wants an exit; gw-b can hold it in corp but cannot be its exit.
    let t = topology(
        "{ policy: auto }",
        "active",
        &[
            G {
                roles: "[ingress, exit]",
                ..g("gw-a")
            },
            g("gw-b"),
        ],
        &[", exit: true"],
    );
    let e = explain_node(&t, &Health::all_up(), &node("c0")).unwrap();
    let exit = e.exit.unwrap();
    assert_eq!(exit.network, Some(corp()));
    let tried = &exit.tried[0];
    assert_eq!(tried.duty, Duty::Exit);
    let b = tried
        .gateways
        .iter()
        .find(|v| v.gateway == gw("gw-b"))
        .unwrap();
    assert_eq!(b.verdict, Verdict::MissingRole { role: Role::Exit });
    assert_eq!(b.outcome, Outcome::Ineligible);
    assert_eq!(tried.primary, Some(gw("gw-a")));
    assert_eq!(exit.chosen(), vec![gw("gw-a")]);
}

#[test]
fn reason_not_served() {
    // Validation refuses a manual list naming a gateway that does not serve the
    // network; a topology edited afterwards can still hold one.
    let mut t = topology(
        "{ policy: manual, manual: [gw-a] }",
        "active",
        &[g("gw-a")],
        &[""],
    );
    let id = t.workspaces.keys().next().unwrap().clone();
    let ws = std::sync::Arc::make_mut(t.workspaces.get_mut(&id).unwrap());
    ws.gateways.get_mut(&gw("gw-a")).unwrap().networks.clear();
    assert_ineligible(&t, &Health::all_up(), Verdict::NotServed);
}

#[test]
fn reason_gateway_node_not_active() {
    let t = auto(&[G {
        status: "disabled",
        ..g("gw-a")
    }]);
    assert_ineligible(
        &t,
        &Health::all_up(),
        Verdict::NodeNotActive {
            status: NodeStatus::Disabled,
        },
    );
}

#[test]
fn reason_gateway_node_unknown() {
    let mut t = auto(&[g("gw-a")]);
    let id = t.workspaces.keys().next().unwrap().clone();
    let ws = std::sync::Arc::make_mut(t.workspaces.get_mut(&id).unwrap());
    ws.nodes.remove(&node("gw-a"));
    assert_ineligible(&t, &Health::all_up(), Verdict::NodeUnknown);
}

#[test]
fn reason_drained() {
    let t = auto(&[G {
        extra: ", drain: true",
        ..g("gw-a")
    }]);
    assert_ineligible(&t, &Health::all_up(), Verdict::Drained);
}

#[test]
fn reason_region_draining() {
    let t = topology("{ policy: auto }", "draining", &[g("gw-a")], &[""]);
    assert_ineligible(&t, &Health::all_up(), Verdict::RegionDraining);
}

#[test]
fn reason_region_retired() {
    // Validation refuses gateways in a retired region; retiring it afterwards is
    // still judged.
    let mut t = auto(&[g("gw-a")]);
    let lab = RegionId::new("lab").unwrap();
    t.regions.get_mut(&lab).unwrap().state = RegionState::Retired;
    assert_ineligible(&t, &Health::all_up(), Verdict::RegionRetired);
}

#[test]
fn reason_region_unknown() {
    let mut t = auto(&[g("gw-a")]);
    t.regions.clear();
    assert_ineligible(&t, &Health::all_up(), Verdict::RegionUnknown);
}

#[test]
fn reason_offline() {
    let t = auto(&[g("gw-a")]);
    let mut h = Health::default();
    h.offline.insert(gw("gw-a"));
    assert_ineligible(&t, &h, Verdict::Offline);
}

#[test]
fn reason_unhealthy_while_another_gateway_is_healthy() {
    let t = auto(&[g("gw-a"), g("gw-b")]);
    let mut h = Health::default();
    h.unhealthy.insert((gw("gw-a"), corp()));
    let expl = c0(&t, &h);
    let a = &expl.gateways[0];
    assert_eq!(a.gateway, gw("gw-a"));
    assert_eq!(
        (a.verdict, a.outcome),
        (Verdict::Unhealthy, Outcome::Ineligible)
    );
    assert_eq!(expl.primary, Some(gw("gw-b")));
    assert!(!expl.safety_rule);
}

#[test]
fn the_safety_rule_keeps_an_unhealthy_gateway_when_all_are() {
    let t = auto(&[g("gw-a")]);
    let mut h = Health::default();
    h.unhealthy.insert((gw("gw-a"), corp()));
    let expl = c0(&t, &h);
    let v = only(&expl);
    assert_eq!(
        (v.verdict, v.outcome),
        (Verdict::Unhealthy, Outcome::Primary)
    );
    assert!(expl.safety_rule);
    let ge = explain_gateway(&t, &h, &gw("gw-a")).unwrap();
    assert!(ge.networks[0].safety_rule);
    assert_eq!(ge.networks[0].verdict, Verdict::Unhealthy);
}

#[test]
fn reason_capacity_full() {
    // c0 comes first (node-id order) and fills gw-a; c1 finds it full.
    let t = topology(
        "{ policy: auto }",
        "active",
        &[G {
            extra: ", capacity: 1",
            ..g("gw-a")
        }],
        &["", ""],
    );
    let e = explain_node(&t, &Health::all_up(), &node("c1")).unwrap();
    let expl = e.network(&corp()).unwrap();
    let v = only(expl);
    assert_eq!(v.verdict, Verdict::Eligible);
    assert_eq!(
        v.outcome,
        Outcome::CapacityFull {
            capacity: 1,
            load: 1
        }
    );
    assert_eq!(expl.primary, None);
    assert_eq!(c0(&t, &Health::all_up()).primary, Some(gw("gw-a")));
}

#[test]
fn reason_not_in_the_manual_list() {
    let t = topology(
        "{ policy: manual, manual: [gw-b] }",
        "active",
        &[g("gw-a"), g("gw-b")],
        &[""],
    );
    let expl = c0(&t, &Health::all_up());
    assert_eq!(expl.policy, PolicyName::Manual);
    assert_eq!(expl.manual, vec![gw("gw-b")]);
    // The list first, then the others.
    let got: Vec<(&str, Verdict, Outcome)> = expl
        .gateways
        .iter()
        .map(|v| (v.gateway.as_str(), v.verdict, v.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("gw-b", Verdict::Eligible, Outcome::Primary),
            ("gw-a", Verdict::Eligible, Outcome::NotInManualList),
        ]
    );
}

#[test]
fn standbys_and_gateways_not_needed() {
    let t = topology(
        "{ policy: auto, redundancy: 2 }",
        "active",
        &[g("gw-a"), g("gw-b"), g("gw-c")],
        &[""],
    );
    let expl = c0(&t, &Health::all_up());
    let outcomes: Vec<Outcome> = expl.gateways.iter().map(|v| v.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Primary,
            Outcome::Standby { position: 1 },
            Outcome::NotNeeded
        ]
    );
    assert_eq!(expl.chosen(), vec![gw("gw-a"), gw("gw-b")]);
    let b = explain_gateway(&t, &Health::all_up(), &gw("gw-b")).unwrap();
    assert_eq!(b.load, 1);
    let carried = &b.networks[0].clients;
    assert_eq!(carried.len(), 1);
    assert_eq!((carried[0].position, carried[0].preference), (1, 1));
    let c = explain_gateway(&t, &Health::all_up(), &gw("gw-c")).unwrap();
    assert_eq!(c.load, 0);
    assert_eq!(c.networks[0].verdict, Verdict::Eligible);
    assert!(c.networks[0].clients.is_empty());
}

#[test]
fn balanced_lists_the_scores_it_ranks_by() {
    let t = topology(
        "{ policy: balanced }",
        "active",
        &[g("gw-a"), g("gw-b"), g("gw-c")],
        &[""],
    );
    let expl = c0(&t, &Health::all_up());
    assert_eq!(expl.policy, PolicyName::Balanced);
    let scores: Vec<_> = expl.gateways.iter().map(|v| v.score.unwrap()).collect();
    // Equal weights: ranked by the fixed-point -log2, smallest first.
    assert!(scores.windows(2).all(|w| w[0].neg_log2 <= w[1].neg_log2));
    assert!(scores.iter().all(|s| s.weight == 1));
    assert_eq!(expl.gateways[0].outcome, Outcome::Primary);
}

#[test]
fn nodes_that_are_not_placed_get_an_error() {
    let t = topology(
        "{ policy: auto }",
        "active",
        &[g("gw-a")],
        &["", ", status: pending"],
    );
    let h = Health::all_up();
    assert_eq!(
        explain_node(&t, &h, &node("nobody")),
        Err(ExplainError::UnknownNode(node("nobody")))
    );
    assert_eq!(
        explain_node(&t, &h, &node("gw-a")),
        Err(ExplainError::NodeIsGateway {
            node: node("gw-a"),
            gateway: gw("gw-a")
        })
    );
    assert_eq!(
        explain_gateway(&t, &h, &gw("nowhere")),
        Err(ExplainError::UnknownGateway(gw("nowhere")))
    );
    let err = explain_node(&t, &h, &node("c1")).unwrap_err();
    assert_eq!(
        err,
        ExplainError::NodeNotActive {
            id: node("c1"),
            status: NodeStatus::Pending
        }
    );
    assert!(err.to_string().contains("only active nodes"), "{err}");
}

#[test]
fn the_json_names_verdict_and_outcome_side_by_side() {
    let t = auto(&[
        G {
            extra: ", drain: true",
            ..g("gw-a")
        },
        g("gw-b"),
    ]);
    let e = explain_node(&t, &Health::all_up(), &node("c0")).unwrap();
    let json = serde_json::to_string(&e).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"node":"c0","workspace":"w","networks":[{"network":"corp","duty":"network","#,
            r#""policy":"auto","redundancy":1,"safety_rule":false,"gateways":["#,
            r#"{"gateway":"gw-a","verdict":"drained","outcome":"ineligible"},"#,
            r#"{"gateway":"gw-b","verdict":"eligible","outcome":"primary"}],"#,
            r#""primary":"gw-b","standbys":[]}],"exit":null}"#
        )
    );
    // Public keys never appear.
    assert!(!json.contains(&common::keys(3)[2]));
}

/// A `balanced` list is ranked by its scores (highest `weight / neg_log2` first,
/// ties by id), each score is the rendezvous hash of (client, gateway), and each
/// weight is the gateway's capacity for the duty's role (for one without a
/// capacity, the largest among the gateways serving the network with that role, or
/// 1; for one without the role, 1). Other policies have no scores.
fn check_scores(
    ws: &nanami_model::topology::Workspace,
    client: &NodeId,
    n: &NetworkExplanation,
) -> Result<(), TestCaseError> {
    if n.policy != PolicyName::Balanced {
        prop_assert!(n.gateways.iter().all(|v| v.score.is_none()));
        return Ok(());
    }
    let role = match n.duty {
        Duty::Network => Role::Ingress,
        Duty::Exit => Role::Exit,
    };
    let serving: Vec<_> = ws
        .gateways
        .values()
        .filter(|g| g.networks.contains(&n.network) && g.roles.contains(&role))
        .collect();
    let unbounded = serving.iter().filter_map(|g| g.capacity).max().unwrap_or(1);
    let mut previous: Option<(u128, u128, &GatewayId)> = None;
    for v in &n.gateways {
        let score = v.score.unwrap();
        let g = &ws.gateways[&v.gateway];
        let weight = if serving.iter().any(|s| s.id == g.id) {
            g.capacity.unwrap_or(unbounded)
        } else {
            1
        };
        prop_assert_eq!(score.weight, weight, "{:?}", v);
        prop_assert_eq!(score.hash, rendezvous_hash(client, &v.gateway));
        prop_assert_eq!(score.neg_log2, neg_log2_fixed(score.hash));
        let (w, l) = (u128::from(score.weight), u128::from(score.neg_log2));
        if let Some((pw, pl, pid)) = previous {
            // previous before this one: pw / pl > w / l, or equal and a smaller id.
            let ordered = pw * l > w * pl || (pw * l == w * pl && pid < &v.gateway);
            prop_assert!(ordered, "{:?} after {}", v, pid);
        }
        previous = Some((w, l, &v.gateway));
    }
    Ok(())
}

/// Every explanation of `t` under `h`, as bytes.
fn explained_bytes(t: &Topology, h: &Health) -> String {
    let mut out = String::new();
    for id in t.node_ids() {
        match explain_node(t, h, id) {
            Ok(e) => out.push_str(&serde_json::to_string(&e).unwrap()),
            Err(e) => out.push_str(&e.to_string()),
        }
        out.push('\n');
    }
    for id in t.gateway_ids() {
        out.push_str(&serde_json::to_string(&explain_gateway(t, h, id).unwrap()).unwrap());
        out.push('\n');
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// What explanations say was chosen is what `assign` chose and what the
    /// compiled configurations hold; what a gateway says it carries is what the
    /// assignment puts on it; its verdicts are `eligible`'s and `exit_eligible`'s.
    #[test]
    fn explanations_agree_with_assign_and_compile(doc in common::document(), offline: u64, unhealthy: u64) {
        let t = Topology::from_document(&doc).unwrap();
        let h = common::health_from(&t, offline, unhealthy);
        for ws in t.workspaces.values() {
            let a = assign(&t, ws, &h);
            for rec in ws.nodes.values() {
                let got = explain_node(&t, &h, &rec.id);
                let config = compile_node(&t, &h, &rec.id);
                let e = match (got, config) {
                    (Ok(e), Ok(config)) => {
                        // The compiled lists, network by network, and the exit.
                        for n in &e.networks {
                            let compiled: Vec<GatewayId> = config
                                .gateways
                                .get(&n.network)
                                .into_iter()
                                .flatten()
                                .map(|c| c.gateway.clone())
                                .collect();
                            prop_assert_eq!(&n.chosen(), &compiled);
                            prop_assert_eq!(n.primary.is_none(), config.unassigned.contains(&n.network));
                        }
                        let compiled_exit = config.exit.as_ref().map(|x| {
                            (x.network.clone(), x.gateways.iter().map(|c| c.gateway.clone()).collect::<Vec<_>>())
                        });
                        let explained_exit = e.exit.as_ref().and_then(|x| Some((x.network.clone()?, x.chosen())));
                        prop_assert_eq!(&explained_exit, &compiled_exit);
                        prop_assert_eq!(e.exit.is_some(), rec.exit);
                        e
                    }
                    (Err(ExplainError::NodeNotActive { .. }), Err(CompileError::NodeNotActive { .. }))
                    | (Err(ExplainError::NodeIsGateway { .. }), Err(CompileError::NodeIsGateway(_))) => continue,
                    (got, config) => {
                        return Err(TestCaseError::fail(format!("{}: {got:?} vs {config:?}", rec.id)));
                    }
                };
                // The assignment's own lists.
                let networks: BTreeSet<&NetworkId> = e.networks.iter().map(|n| &n.network).collect();
                prop_assert_eq!(networks, rec.memberships.keys().collect::<BTreeSet<_>>());
                for n in &e.networks {
                    let ordered = a.ordered.get(&rec.id).and_then(|m| m.get(&n.network)).cloned().unwrap_or_default();
                    prop_assert_eq!(&n.chosen(), &ordered);
                    prop_assert_eq!(a.standbys(&rec.id, &n.network), n.standbys.as_slice());
                }
                let exit = a.exits.get(&rec.id).cloned();
                let explained = e.exit.as_ref().and_then(|x| Some((x.network.clone()?, x.chosen())));
                prop_assert_eq!(explained, exit);
                // Each list is in policy order: chosen ones appear in failover order;
                // a candidate (walked) is eligible, or only unhealthy under the
                // safety rule; an unwalked one that the policy lists is ineligible.
                for n in e.networks.iter().chain(e.exit.iter().flat_map(|x| x.tried.iter())) {
                    let positions: Vec<usize> = n.gateways.iter().filter_map(|v| v.outcome.position()).collect();
                    prop_assert_eq!(positions, (0..n.chosen().len()).collect::<Vec<_>>());
                    check_scores(ws, &rec.id, n)?;
                    for v in &n.gateways {
                        let walked = matches!(v.outcome, Outcome::Primary | Outcome::Standby { .. } | Outcome::CapacityFull { .. } | Outcome::NotNeeded);
                        if walked {
                            prop_assert!(v.verdict == Verdict::Eligible || (n.safety_rule && v.verdict == Verdict::Unhealthy), "{:?}", v);
                        }
                        if v.outcome == Outcome::Ineligible {
                            prop_assert!(v.verdict != Verdict::Eligible, "{:?}", v);
                        }
                        let g = &ws.gateways[&v.gateway];
                        let net = &ws.networks[&n.network];
                        let ok = match n.duty {
                            Duty::Network => eligible(&t, ws, g, &n.network, &h),
                            Duty::Exit => exit_eligible(&t, ws, g, net, &h),
                        };
                        prop_assert_eq!(ok, v.verdict.is_eligible());
                    }
                }
            }
            for g in ws.gateways.values() {
                let ge = explain_gateway(&t, &h, &g.id).unwrap();
                let want: BTreeSet<(NodeId, NetworkId)> = a
                    .by_gateway
                    .get(&g.id)
                    .into_iter()
                    .flatten()
                    .flat_map(|(c, nets)| nets.iter().map(move |n| (c.clone(), n.clone())))
                    .collect();
                prop_assert_eq!(ge.carried(), want);
                prop_assert_eq!(ge.load, a.by_gateway.get(&g.id).map_or(0, |c| c.len()));
                // And each carried client's explanation names this gateway at that place.
                for n in &ge.networks {
                    prop_assert_eq!(n.verdict.is_eligible(), eligible(&t, ws, g, &n.network, &h));
                    for c in &n.clients {
                        let e = explain_node(&t, &h, &c.node).unwrap();
                        let ne = e.network(&n.network).unwrap();
                        prop_assert_eq!(&ne.gateways[c.preference].gateway, &g.id);
                        prop_assert_eq!(ne.gateways[c.preference].outcome.position(), Some(c.position));
                    }
                }
            }
        }
    }

    /// The same input gives the same bytes, twice and whatever the order of the
    /// document's lists.
    #[test]
    fn explanations_are_deterministic(doc in common::document(), offline: u64, unhealthy: u64, seed: u64) {
        let t = Topology::from_document(&doc).unwrap();
        let h = common::health_from(&t, offline, unhealthy);
        let once = explained_bytes(&t, &h);
        prop_assert_eq!(&once, &explained_bytes(&t, &h));
        let mut shuffled = doc.clone();
        common::shuffle(&mut shuffled, seed);
        let t2 = Topology::from_document(&shuffled).expect("shuffled stays valid");
        prop_assert_eq!(&once, &explained_bytes(&t2, &h));
    }
}
