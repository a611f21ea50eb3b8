//! `nanami explain node|gateway|history`: the manager's answer to "why is this client on
//! that gateway?" (and "which clients does this gateway carry?"), as tables.
//!
//! The tables are rendered from the JSON the manager serves (the model's
//! `NodeExplanation` and `GatewayExplanation`), so the CLI reads whatever the
//! manager says: a verdict or outcome this version does not know is shown by its
//! name and fields rather than refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Subcommand;
use nanami_model::assign::LOG_FRACTION_BITS;
use nanami_model::{GatewayId, NodeId};
use serde_json::Value;

use crate::status::{block_on, ManagerArgs};

/// What to explain.
#[derive(Subcommand, Debug, Clone)]
pub enum ExplainCommand {
    /// Why a client is on the gateways it is on: per network, every gateway in the
    /// client's policy order with its verdict and outcome; then its exit.
    Node {
        /// The client's node id.
        id: String,
        #[command(flatten)]
        manager: ManagerArgs,
        /// The manager's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A client's movement history: its recent changes of primary gateway,
    /// newest first, with when, the revision, the trigger and the cause.
    History {
        /// The client's node id.
        id: String,
        #[command(flatten)]
        manager: ManagerArgs,
        /// The manager's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Which clients a gateway carries: per network, its own verdict and the
    /// clients it holds with its place in their failover order.
    Gateway {
        /// The gateway id.
        id: String,
        #[command(flatten)]
        manager: ManagerArgs,
        /// The manager's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `nanami explain …`: asks the manager (operator credential) and prints the table
/// or, with `--json`, the manager's JSON.
pub fn explain(command: &ExplainCommand) -> anyhow::Result<()> {
    let (answer, json) = match command {
        ExplainCommand::Node { id, manager, json } => {
            let id = NodeId::new(id).context("node id")?;
            let client = manager.client()?;
            let answer = block_on(async { client.explain_node(&id).await })?
                .with_context(|| format!("explaining node {id}"))?;
            (answer, *json)
        }
        ExplainCommand::History { id, manager, json } => {
            let id = NodeId::new(id).context("node id")?;
            let client = manager.client()?;
            let answer = block_on(async { client.node_movements(&id).await })?
                .with_context(|| format!("reading the movements of node {id}"))?;
            (answer, *json)
        }
        ExplainCommand::Gateway { id, manager, json } => {
            let id = GatewayId::new(id).context("gateway id")?;
            let client = manager.client()?;
            let answer = block_on(async { client.explain_gateway(&id).await })?
                .with_context(|| format!("explaining gateway {id}"))?;
            (answer, *json)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        match command {
            ExplainCommand::Node { .. } => print!("{}", node_table(&answer)),
            ExplainCommand::History { id, .. } => {
                print!("{}", history_table(id, &answer, SystemTime::now()));
            }
            ExplainCommand::Gateway { .. } => print!("{}", gateway_table(&answer)),
        }
    }
    Ok(())
}

/// A string field, or `-`.
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `a_b` as `a b`.
fn words(tag: &str) -> String {
    tag.replace('_', " ")
}

/// The fields of an object other than `skip`, as `key value` pairs: what an
/// unknown verdict or outcome carries.
fn extra_fields(v: &Value, skip: &[&str]) -> String {
    let Some(map) = v.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| match v.as_str() {
            Some(s) => format!(" {} {s}", words(k)),
            None => format!(" {} {v}", words(k)),
        })
        .collect()
}

/// A [`Verdict`](nanami_model::assign::Verdict) (an object tagged `verdict`) in
/// words: `eligible`, or the check it fails.
fn verdict(v: &Value) -> String {
    let tag = text(&v["verdict"]);
    match tag {
        "eligible" => "eligible".into(),
        "not_served" => "does not serve the network".into(),
        "missing_role" => format!("lacks the {} role", text(&v["role"])),
        "node_not_active" => format!("its node is {}", text(&v["status"])),
        "node_unknown" => "its node is not in the workspace".into(),
        "drained" => "drained (maintenance)".into(),
        "region_draining" => "its region is draining".into(),
        "region_retired" => "its region is retired".into(),
        "region_unknown" => "its region is not in the catalog".into(),
        "offline" => "OFFLINE".into(),
        "unhealthy" => "PATH DOWN to the network".into(),
        other => format!(
            "{}{}",
            words(other),
            extra_fields(
                v,
                &["verdict", "gateway", "outcome", "score", "position", "capacity", "load"]
            )
        ),
    }
}

/// An [`Outcome`](nanami_model::explain::Outcome) (an object tagged `outcome`) in
/// words.
fn outcome(v: &Value) -> String {
    match text(&v["outcome"]) {
        "primary" => "primary".into(),
        "standby" => format!("standby {}", v["position"]),
        "capacity_full" => format!("capacity full ({}/{})", v["load"], v["capacity"]),
        "not_needed" => "not needed (redundancy reached)".into(),
        "not_in_manual_list" => "not in the manual list".into(),
        "ineligible" => "not a candidate".into(),
        other => words(other),
    }
}

/// A balanced score: the weight and `-log2(u)`; the list is ordered by
/// `weight / -log2(u)`, highest first.
fn score(v: &Value) -> String {
    let (Some(weight), Some(neg_log2)) = (v["weight"].as_u64(), v["neg_log2"].as_u64()) else {
        return "-".into();
    };
    // Display only: the ranking itself is exact integer arithmetic in the model.
    #[allow(clippy::cast_precision_loss)]
    let l = neg_log2 as f64 / f64::from(LOG_FRACTION_BITS).exp2();
    format!("weight {weight}, -log2(u) {l:.4}")
}

/// `1st`, `2nd`, … for a 0-based place.
fn ordinal(place: u64) -> String {
    let n = place + 1;
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default()
}

/// One network of a client's explanation (or one tried exit network).
fn network_section(n: &Value, exit: bool) -> String {
    let mut out = format!(
        "{} {}: policy {}",
        if exit { "exit in" } else { "network" },
        text(&n["network"]),
        text(&n["policy"]),
    );
    let manual = list(&n["manual"]);
    if !manual.is_empty() {
        out.push_str(&format!(" [{}]", manual.join(", ")));
    }
    out.push_str(&format!(", redundancy {}\n", n["redundancy"]));
    if n["safety_rule"].as_bool() == Some(true) {
        out.push_str(
            "  no gateway was eligible: those whose only fault is the path to the network \
             stay candidates (safety rule)\n",
        );
    }
    let gateways = n["gateways"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let balanced = gateways.iter().any(|g| !g["score"].is_null());
    let mut rows = vec![{
        let mut h = vec!["GATEWAY".to_string(), "VERDICT".into(), "OUTCOME".into()];
        if balanced {
            h.push("SCORE".into());
        }
        h
    }];
    for g in gateways {
        let mut row = vec![text(&g["gateway"]).to_owned(), verdict(g), outcome(g)];
        if balanced {
            row.push(score(&g["score"]));
        }
        rows.push(row);
    }
    if gateways.is_empty() {
        out.push_str("  no gateway serves the network\n");
    } else {
        out.push_str(&crate::table::columns(&rows, "  "));
    }
    let standbys = list(&n["standbys"]);
    out.push_str(&format!(
        "  {}: {}; standbys: {}\n",
        if exit { "exit" } else { "primary" },
        n["primary"]
            .as_str()
            .unwrap_or("NONE (no candidate had room)"),
        if standbys.is_empty() {
            "none".to_owned()
        } else {
            standbys.join(", ")
        }
    ));
    out
}

/// The table of a client's explanation (`NodeExplanation` as JSON).
pub fn node_table(why: &Value) -> String {
    let mut out = format!(
        "node {} (workspace {})\n",
        text(&why["node"]),
        text(&why["workspace"])
    );
    for n in why["networks"].as_array().into_iter().flatten() {
        out.push('\n');
        out.push_str(&network_section(n, false));
    }
    out.push('\n');
    match why["exit"].as_object() {
        None => out.push_str("exit: not wanted (exit: false)\n"),
        Some(_) => {
            let exit = &why["exit"];
            let tried = exit["tried"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match exit["network"].as_str() {
                Some(net) => out.push_str(&format!("exit: through network {net}\n")),
                None if tried.is_empty() => {
                    out.push_str("exit: NONE (none of its networks has exit: true)\n");
                }
                None => out.push_str("exit: NONE (no exit gateway could take the client)\n"),
            }
            for t in tried {
                out.push('\n');
                out.push_str(&network_section(t, true));
            }
        }
    }
    out
}

/// A movement's cause (an object tagged `cause`) in words.
fn cause(v: &Value) -> String {
    match text(&v["cause"]) {
        "left" => format!(
            "{} can no longer hold it: {}",
            text(&v["gateway"]),
            verdict(&v["verdict"])
        ),
        "removed" => format!("{} left the topology", text(&v["gateway"])),
        "returned" => format!(
            "{} can hold it again (was: {})",
            text(&v["gateway"]),
            verdict(&v["was"])
        ),
        "topology" => "the topology changed the choice".into(),
        other => format!("{}{}", words(other), extra_fields(v, &["cause"])),
    }
}

/// `ms` (Unix milliseconds) as an age at `now`.
fn age(ms: Option<u64>, now: SystemTime) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    match now.duration_since(at) {
        Ok(d) if d < Duration::from_secs(120) => format!("{}s ago", d.as_secs()),
        Ok(d) if d < Duration::from_secs(7200) => format!("{}m ago", d.as_secs() / 60),
        Ok(d) if d < Duration::from_secs(172_800) => format!("{}h ago", d.as_secs() / 3600),
        Ok(d) => format!("{}d ago", d.as_secs() / 86_400),
        Err(_) => "now".into(),
    }
}

/// The table of a client's movements (the manager's records as JSON, newest
/// first).
pub fn history_table(node: &str, records: &Value, now: SystemTime) -> String {
    let records = records.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if records.is_empty() {
        return format!(
            "node {node}: no movements (since the manager started, its gateways have not changed)\n"
        );
    }
    let mut rows = vec![vec![
        "WHEN".to_string(),
        "REVISION".into(),
        "PLACEMENT".into(),
        "FROM".into(),
        "TO".into(),
        "TRIGGER".into(),
        "CAUSE".into(),
    ]];
    for r in records {
        let placement = match text(&r["slot"]) {
            "network" => format!("network {}", text(&r["network"])),
            other => other.to_owned(),
        };
        rows.push(vec![
            age(r["at_unix_ms"].as_u64(), now),
            r["revision"].to_string(),
            placement,
            r["from"].as_str().unwrap_or("none").to_owned(),
            r["to"].as_str().unwrap_or("NONE").to_owned(),
            words(text(&r["trigger"])),
            cause(r),
        ]);
    }
    format!(
        "node {node}: {} movement{}, newest first\n{}",
        records.len(),
        if records.len() == 1 { "" } else { "s" },
        crate::table::columns(&rows, "")
    )
}

/// Rows for the clients a gateway carries in one network, as a network gateway
/// or as an exit.
fn carried_rows(rows: &mut Vec<Vec<String>>, clients: &Value, role: &str) {
    for c in clients.as_array().into_iter().flatten() {
        let position = match c["position"].as_u64() {
            Some(0) => "primary".to_owned(),
            Some(p) => format!("standby {p}"),
            None => "-".to_owned(),
        };
        let preference = c["preference"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), ordinal);
        rows.push(vec![
            text(&c["node"]).to_owned(),
            role.to_owned(),
            position,
            preference,
        ]);
    }
}

/// The table of a gateway's explanation (`GatewayExplanation` as JSON).
pub fn gateway_table(why: &Value) -> String {
    let capacity = why["capacity"]
        .as_u64()
        .map_or_else(|| "unbounded".to_owned(), |c| c.to_string());
    let load = why["load"].as_u64().unwrap_or(0);
    let mut out = format!(
        "gateway {} (workspace {}): carries {load} client{}, capacity {capacity}\n",
        text(&why["gateway"]),
        text(&why["workspace"]),
        if load == 1 { "" } else { "s" },
    );
    for n in why["networks"].as_array().into_iter().flatten() {
        out.push('\n');
        out.push_str(&format!(
            "network {}: {}",
            text(&n["network"]),
            verdict(&n["verdict"])
        ));
        if !n["exit_verdict"].is_null() {
            out.push_str(&format!("; as exit: {}", verdict(&n["exit_verdict"])));
        }
        out.push('\n');
        if n["safety_rule"].as_bool() == Some(true) {
            out.push_str(
                "  no gateway of the network was eligible: the safety rule keeps those \
                 whose only fault is the path\n",
            );
        }
        let mut rows = vec![vec![
            "CLIENT".to_string(),
            "AS".into(),
            "POSITION".into(),
            "IN ITS POLICY ORDER".into(),
        ]];
        carried_rows(&mut rows, &n["clients"], "gateway");
        carried_rows(&mut rows, &n["exit_clients"], "exit");
        if rows.len() == 1 {
            out.push_str("  no clients\n");
        } else {
            out.push_str(&crate::table::columns(&rows, "  "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nanami_model::{explain_gateway, explain_node, Health, Topology};

    /// One workspace: `corp` balanced over three gateways with redundancy 2 (gw-c
    /// drained), `lab` manual [gw-b, gw-a] with an exit; laptop-1 in both, wanting
    /// an exit.
    const DOC: &str = "version: 1
regions:
  - { id: eu, state: active }
workspaces:
  - id: acme
    tenant: acme-corp
    regions: [eu]
    networks:
      - { id: corp, overlay: 100.80.0.0/22, routes: [10.20.0.0/16], gateways: { policy: balanced, redundancy: 2 } }
      - { id: lab, overlay: 100.81.0.0/22, routes: [10.30.0.0/16], exit: true, gateways: { policy: manual, manual: [gw-b, gw-a] } }
    nodes:
      - { id: gw-a, public_key: \"8X4C2QwIBaOpONJxT0R3eWUCPX5oEfyQOroEBMH2I04=\", status: active, memberships: [{ network: corp }, { network: lab }] }
      - { id: gw-b, public_key: \"qQ5LmjFqsnm1m6NR9KVOi/RWUQzlE8nyzhI6OJck9ww=\", status: active, memberships: [{ network: corp }, { network: lab }] }
      - { id: gw-c, public_key: \"5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ=\", status: active, memberships: [{ network: corp }] }
      - { id: laptop-1, public_key: \"0f9iE4KjyCGVSj+comoVDFBsdl5b1eq/4kXMiJ1oKiU=\", status: active, exit: true, memberships: [{ network: corp }, { network: lab }] }
    gateways:
      - { id: gw-a, node: gw-a, region: eu, networks: [corp, lab], roles: [ingress, egress, exit], endpoint: \"192.0.2.1:51820\", listen_port: 51820 }
      - { id: gw-b, node: gw-b, region: eu, networks: [corp, lab], roles: [ingress, egress], endpoint: \"192.0.2.2:51820\", listen_port: 51820 }
      - { id: gw-c, node: gw-c, region: eu, networks: [corp], roles: [ingress, egress], endpoint: \"192.0.2.3:51820\", listen_port: 51820, drain: true }
";

    fn fixture() -> (Topology, Health) {
        let topology = Topology::from_yaml(DOC).unwrap();
        let mut health = Health::all_up();
        health.offline.insert(GatewayId::new("gw-b").unwrap());
        (topology, health)
    }

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
    }

    #[test]
    fn explain_node_table_lists_every_gateway_with_its_verdict_and_outcome() {
        let (topology, health) = fixture();
        let why = explain_node(&topology, &health, &NodeId::new("laptop-1").unwrap()).unwrap();
        let text = node_table(&serde_json::to_value(&why).unwrap());
        assert!(
            text.starts_with("node laptop-1 (workspace acme)\n"),
            "{text}"
        );
        assert!(
            text.contains("network corp: policy balanced, redundancy 2\n"),
            "{text}"
        );
        assert!(
            text.contains("network lab: policy manual [gw-b, gw-a], redundancy 1\n"),
            "{text}"
        );
        // corp: balanced, so a SCORE column; gw-b offline, gw-c drained, gw-a the
        // only candidate: primary, no standby.
        let corp = text.split("network corp").nth(1).unwrap();
        let corp = corp.split("\n\n").next().unwrap();
        assert!(line(corp, "GATEWAY").contains("SCORE"), "{text}");
        let a = line(corp, "gw-a");
        assert!(
            a.contains("eligible") && a.contains("primary") && a.contains("weight 1, -log2(u) "),
            "{text}"
        );
        let b = line(corp, "gw-b");
        assert!(
            b.contains("OFFLINE") && b.contains("not a candidate"),
            "{text}"
        );
        assert!(
            line(corp, "gw-c").contains("drained (maintenance)"),
            "{text}"
        );
        assert!(
            line(corp, "primary:").contains("primary: gw-a; standbys: none"),
            "{text}"
        );
        // lab: manual order gw-b first (offline), then gw-a; no SCORE column.
        let lab = text.split("network lab").nth(1).unwrap();
        let lab = lab.split("\n\n").next().unwrap();
        assert!(!line(lab, "GATEWAY").contains("SCORE"), "{text}");
        let order: Vec<&str> = lab
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.starts_with("gw-"))
            .collect();
        assert_eq!(order, ["gw-b", "gw-a"], "{text}");
        // The exit: only gw-a has the exit role.
        assert!(text.contains("exit: through network lab\n"), "{text}");
        let exit = text.split("exit in lab").nth(1).unwrap();
        assert!(line(exit, "gw-b").contains("lacks the exit role"), "{text}");
        assert!(line(exit, "exit:").contains("exit: gw-a"), "{text}");
    }

    #[test]
    fn explain_gateway_table_lists_the_clients_it_carries_and_its_place() {
        let (topology, health) = fixture();
        let why = explain_gateway(&topology, &health, &GatewayId::new("gw-a").unwrap()).unwrap();
        let text = gateway_table(&serde_json::to_value(&why).unwrap());
        assert!(
            text.starts_with(
                "gateway gw-a (workspace acme): carries 1 client, capacity unbounded\n"
            ),
            "{text}"
        );
        assert!(text.contains("network corp: eligible\n"), "{text}");
        assert!(
            text.contains("network lab: eligible; as exit: eligible\n"),
            "{text}"
        );
        let lab = text.split("network lab").nth(1).unwrap();
        let rows: Vec<&str> = lab.lines().filter(|l| l.contains("laptop-1")).collect();
        assert_eq!(rows.len(), 2, "as gateway and as exit: {text}");
        assert!(
            rows[0].contains("gateway") && rows[0].contains("primary") && rows[0].contains("2nd"),
            "gw-a is second in the manual list: {text}"
        );
        assert!(
            rows[1].contains("exit") && rows[1].contains("primary"),
            "{text}"
        );
        // An offline gateway says so and carries nobody.
        let why = explain_gateway(&topology, &health, &GatewayId::new("gw-b").unwrap()).unwrap();
        let text = gateway_table(&serde_json::to_value(&why).unwrap());
        assert!(text.contains(": carries 0 clients,"), "{text}");
        assert!(text.contains("network corp: OFFLINE\n"), "{text}");
        assert!(text.contains("  no clients\n"), "{text}");
    }

    #[test]
    fn unknown_verdicts_and_outcomes_are_shown_by_name() {
        let v = serde_json::json!({
            "gateway": "gw-x", "verdict": "quarantined", "since": "monday",
            "outcome": "postponed"
        });
        assert_eq!(verdict(&v), "quarantined since monday");
        assert_eq!(outcome(&v), "postponed");
        assert_eq!(ordinal(0), "1st");
        assert_eq!(ordinal(10), "11th");
        assert_eq!(ordinal(21), "22nd");
    }

    #[test]
    fn history_table_says_when_where_and_why_newest_first() {
        let (topology, offline_b) = fixture();
        let mut a_down = Health::all_up();
        a_down.offline.insert(GatewayId::new("gw-a").unwrap());
        let moved = nanami_model::movement::movements(
            &topology,
            &offline_b,
            &topology,
            &a_down,
            topology.workspaces.keys(),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let records: Vec<Value> = moved
            .iter()
            .map(|m| {
                let mut r = serde_json::to_value(m).unwrap();
                r["at_unix_ms"] = 999_990_000_u64.into();
                r["revision"] = 7.into();
                r["generation"] = 3.into();
                r["trigger"] = "health".into();
                r
            })
            .collect();
        let text = history_table("laptop-1", &Value::Array(records), now);
        assert!(
            text.starts_with("node laptop-1: 3 movements, newest first\n"),
            "{text}"
        );
        let lab = line(&text, "10s ago  7         network lab");
        assert!(lab.contains("gw-a  gw-b  health"), "{text}");
        assert!(
            lab.ends_with("gw-a can no longer hold it: OFFLINE"),
            "{text}"
        );
        // gw-a was the only exit gateway: the exit has none now.
        let exit = line(&text, "10s ago  7         exit");
        assert!(exit.contains("gw-a  NONE"), "{text}");
        let empty = history_table("laptop-1", &Value::Array(vec![]), now);
        assert!(empty.contains("no movements"), "{empty}");
    }
}
