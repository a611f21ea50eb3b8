//! The five laws of `plan` (DESIGN.md), each a proptest of at least 1,000 cases.
// Test helpers outside #[test] functions may unwrap too: a panic is a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use common::*;
use nanami_model::GatewayState;
use nanami_reconcile::{plan, Observed, Op, OpKind, PeerTelemetry, Plan};
use proptest::prelude::*;

fn obs(s: &GatewayState) -> Observed {
    Observed::from(s.clone())
}

/// The size of the difference between `d` and the owned part of `o`, counting each
/// differing object once (a deleted interface counts with its contents, an upper
/// bound since its deletion is one op).
fn diff_size(d: &GatewayState, o: &GatewayState) -> usize {
    let o = o.owned();
    let mut n = 0;
    let names: BTreeSet<_> = d.interfaces.keys().chain(o.interfaces.keys()).collect();
    for name in names {
        match (d.interfaces.get(name), o.interfaces.get(name)) {
            (Some(w), None) => n += 1 + w.addresses.len() + w.peers.len(),
            (None, Some(h)) => n += 1 + h.addresses.len() + h.peers.len(),
            (Some(w), Some(h)) => {
                n += usize::from(w.listen_port != h.listen_port) + usize::from(w.mtu != h.mtu);
                n += w.addresses.symmetric_difference(&h.addresses).count();
                let keys: BTreeSet<_> = w.peers.keys().chain(h.peers.keys()).collect();
                n += keys
                    .into_iter()
                    .filter(|k| w.peers.get(*k) != h.peers.get(*k))
                    .count();
            }
            (None, None) => {}
        }
    }
    n += d.routes.symmetric_difference(&o.routes).count();
    n += d.rules.symmetric_difference(&o.rules).count();
    n += usize::from(d.filter != o.filter);
    n += d.forwarding.difference(&o.forwarding).count();
    n
}

/// The object an op touches, to check that no object is touched twice.
fn target(op: &Op) -> String {
    match op {
        Op::CreateInterface { interface, .. } | Op::DeleteInterface { interface } => {
            format!("interface {interface}")
        }
        Op::SetListenPort { interface, .. } => format!("port {interface}"),
        Op::SetMtu { interface, .. } => format!("mtu {interface}"),
        Op::AddAddress { interface, address } | Op::RemoveAddress { interface, address } => {
            format!("address {interface} {address}")
        }
        Op::AddPeer {
            interface,
            public_key,
            ..
        }
        | Op::UpdatePeer {
            interface,
            public_key,
            ..
        }
        | Op::RemovePeer {
            interface,
            public_key,
        } => format!("peer {interface} {public_key}"),
        Op::ReplaceFilter { .. } | Op::DeleteFilter => "filter".into(),
        Op::AddRoute { route } | Op::RemoveRoute { route } => format!("route {route:?}"),
        Op::AddRule { rule } | Op::RemoveRule { rule } => format!("rule {rule:?}"),
        Op::EnableForwarding { family } => format!("forwarding {family:?}"),
        // `Op` is non-exhaustive: a new op must be added to this test.
        #[allow(clippy::wildcard_enum_match_arm)]
        _ => unreachable!("a new op needs a target in this test"),
    }
}

/// Law 3's "untouched objects never appear": the object of every op differs
/// between desired and observed, and the op sets it to the desired value.
fn touches_only_differences(op: &Op, d: &GatewayState, o: &GatewayState) -> bool {
    let di = |n| d.interfaces.get(n);
    let oi = |n| o.interfaces.get(n);
    match op {
        Op::CreateInterface {
            interface,
            listen_port,
            mtu,
        } => {
            di(interface).is_some_and(|w| w.listen_port == *listen_port && w.mtu == *mtu)
                && oi(interface).is_none()
        }
        Op::DeleteInterface { interface } => di(interface).is_none() && oi(interface).is_some(),
        Op::SetListenPort {
            interface,
            listen_port,
        } => {
            di(interface).is_some_and(|w| w.listen_port == *listen_port)
                && oi(interface).is_some_and(|h| h.listen_port != *listen_port)
        }
        Op::SetMtu { interface, mtu } => {
            di(interface).is_some_and(|w| w.mtu == *mtu)
                && oi(interface).is_some_and(|h| h.mtu != *mtu)
        }
        Op::AddAddress { interface, address } => {
            di(interface).is_some_and(|w| w.addresses.contains(address))
                && !oi(interface).is_some_and(|h| h.addresses.contains(address))
        }
        Op::RemoveAddress { interface, address } => {
            di(interface).is_some_and(|w| !w.addresses.contains(address))
                && oi(interface).is_some_and(|h| h.addresses.contains(address))
        }
        Op::AddPeer {
            interface,
            public_key,
            peer,
        } => {
            di(interface).is_some_and(|w| w.peers.get(public_key) == Some(peer))
                && !oi(interface).is_some_and(|h| h.peers.contains_key(public_key))
        }
        Op::UpdatePeer {
            interface,
            public_key,
            peer,
        } => {
            di(interface).is_some_and(|w| w.peers.get(public_key) == Some(peer))
                && oi(interface)
                    .and_then(|h| h.peers.get(public_key))
                    .is_some_and(|have| have != peer)
        }
        Op::RemovePeer {
            interface,
            public_key,
        } => {
            di(interface).is_some_and(|w| !w.peers.contains_key(public_key))
                && oi(interface).is_some_and(|h| h.peers.contains_key(public_key))
        }
        Op::ReplaceFilter { filter } => {
            d.filter.as_ref() == Some(filter) && o.filter.as_ref() != Some(filter)
        }
        Op::DeleteFilter => d.filter.is_none() && o.filter.is_some(),
        Op::AddRoute { route } => d.routes.contains(route) && !o.routes.contains(route),
        Op::RemoveRoute { route } => !d.routes.contains(route) && o.routes.contains(route),
        Op::AddRule { rule } => d.rules.contains(rule) && !o.rules.contains(rule),
        Op::RemoveRule { rule } => !d.rules.contains(rule) && o.rules.contains(rule),
        Op::EnableForwarding { family } => {
            d.forwarding.contains(family) && !o.forwarding.contains(family)
        }
        #[allow(clippy::wildcard_enum_match_arm)]
        _ => false,
    }
}

/// Law 4: whether the op's object is one Nanami owns (every other op names its
/// interface, if any, through `Op::interface`).
#[allow(clippy::wildcard_enum_match_arm)]
fn is_owned(op: &Op) -> bool {
    match op {
        Op::AddRoute { route } | Op::RemoveRoute { route } => route.is_owned(),
        Op::AddRule { rule } | Op::RemoveRule { rule } => rule.is_owned(),
        _ => !matches!(op.interface(), Some(i) if !i.is_owned()),
    }
}

/// Law 5, stated over op indices.
fn check_order(p: &Plan) -> Result<(), String> {
    let ops = p.ops();
    let idx = |f: &dyn Fn(&Op) -> bool| -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, o)| f(o))
            .map(|(i, _)| i)
            .collect()
    };
    let all_before = |a: &[usize], b: &[usize], what: &str| -> Result<(), String> {
        match (a.iter().max(), b.iter().min()) {
            (Some(x), Some(y)) if x >= y => {
                Err(format!("{what}: op {x} is not before op {y}\n{p}"))
            }
            _ => Ok(()),
        }
    };
    let kind = |k: OpKind| move |o: &Op| o.kind() == k;

    for w in ops.windows(2) {
        if w[0].phase() > w[1].phase() {
            return Err(format!("phases out of order: `{}` then `{}`", w[0], w[1]));
        }
    }
    let removals = idx(&|o| o.is_removal());
    let additions = idx(&|o| !o.is_removal());
    all_before(&removals, &additions, "removals before additions")?;

    // Removal: rules, then routes, then the filter, then peers/addresses, then links.
    let rm_rules = idx(&kind(OpKind::RemoveRule));
    let rm_routes = idx(&kind(OpKind::RemoveRoute));
    let rm_under = idx(&|o| {
        matches!(
            o.kind(),
            OpKind::RemovePeer
                | OpKind::RemoveAddress
                | OpKind::DeleteInterface
                | OpKind::DeleteFilter
        )
    });
    all_before(&rm_rules, &rm_routes, "rules removed before routes")?;
    all_before(
        &rm_routes,
        &rm_under,
        "routes removed before peers, addresses, links, filter",
    )?;
    let rm_peers = idx(&kind(OpKind::RemovePeer));
    let del_links = idx(&kind(OpKind::DeleteInterface));
    all_before(&rm_peers, &del_links, "peers removed before links")?;
    let del_filter = idx(&kind(OpKind::DeleteFilter));
    all_before(&del_filter, &rm_peers, "filter deleted before peers")?;

    // Creation: link, then its addresses, then its peers, filter, routes, rules.
    for (i, op) in ops.iter().enumerate() {
        let Some(name) = op.interface().filter(|_| !op.is_removal()) else {
            continue;
        };
        let created = ops
            .iter()
            .position(|o| matches!(o, Op::CreateInterface { interface, .. } if interface == name));
        if let Some(c) = created {
            if c > i {
                return Err(format!("`{op}` before its interface is created\n{p}"));
            }
        }
        if matches!(op.kind(), OpKind::AddPeer | OpKind::UpdatePeer) {
            let addr_after = ops[i..]
                .iter()
                .any(|o| matches!(o, Op::AddAddress { interface, .. } if interface == name));
            if addr_after {
                return Err(format!("`{op}` before the addresses of its interface\n{p}"));
            }
        }
        if let Op::RemoveRoute { route } = op {
            let deleted_before = ops[..i].iter().any(
                |o| matches!(o, Op::DeleteInterface { interface } if *interface == route.interface),
            );
            if deleted_before {
                return Err(format!("`{op}` after its interface is deleted\n{p}"));
            }
        }
    }
    let peers = idx(&|o| matches!(o.kind(), OpKind::AddPeer | OpKind::UpdatePeer));
    let filter = idx(&kind(OpKind::ReplaceFilter));
    let add_routes = idx(&kind(OpKind::AddRoute));
    let add_rules = idx(&kind(OpKind::AddRule));
    let forwarding = idx(&kind(OpKind::EnableForwarding));
    let not_forwarding = idx(&|o| o.kind() != OpKind::EnableForwarding);
    all_before(&peers, &filter, "peers before the filter")?;
    all_before(&filter, &add_routes, "filter before routes")?;
    all_before(&filter, &add_rules, "filter before rules")?;
    all_before(&add_routes, &add_rules, "routes before rules")?;
    all_before(&not_forwarding, &forwarding, "forwarding last")?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Law 1: `plan(s, s)` is empty, with or without foreign objects in either side.
    #[test]
    fn law1_equal_states_need_no_ops(s in arb_owned_state(), f in arb_foreign()) {
        prop_assert!(plan(&s, &obs(&s)).is_empty());
        let mut o = s.clone();
        f.seed(&mut o);
        prop_assert!(plan(&s, &obs(&o)).is_empty());
        // Foreign objects in desired are ignored too.
        prop_assert!(plan(&o, &obs(&o)).is_empty());
        prop_assert!(plan(&o, &obs(&s)).is_empty());
    }

    /// Law 2: one plan converges, on the owned projection, with forwarding only ever
    /// turned on; planning again from the result finds nothing to do.
    #[test]
    fn law2_apply_converges((d, o, _f) in arb_pair()) {
        let p = plan(&d, &obs(&o));
        let r = p.apply_to(&o);
        prop_assert_eq!(r.owned(), expected_after(&d, &o), "plan:\n{}", p);
        prop_assert!(plan(&d, &obs(&r)).is_empty());
    }

    /// Law 3: minimality. Every op touches a differing object, no object twice, and
    /// the plan is no larger than the difference.
    #[test]
    fn law3_plan_is_minimal((d, o, _f) in arb_pair()) {
        let p = plan(&d, &obs(&o));
        let owned_o = o.owned();
        let mut seen = BTreeSet::new();
        for op in p.ops() {
            prop_assert!(touches_only_differences(op, &d, &owned_o), "`{}` touches an equal object\n{}", op, p);
            prop_assert!(seen.insert(target(op)), "`{}` touches an object twice\n{}", op, p);
        }
        prop_assert!(p.len() <= diff_size(&d, &o), "{} ops for a difference of {}", p.len(), diff_size(&d, &o));
    }

    /// Law 3: a changed endpoint or AllowedIPs is exactly one `UpdatePeer`, and
    /// nothing else is touched.
    #[test]
    fn law3_peer_change_is_one_update(
        s in arb_owned_state(),
        f in arb_foreign(),
        which in any::<prop::sample::Index>(),
        change_endpoint in any::<bool>(),
        nets in arb_nets(3),
    ) {
        let peers: Vec<_> = s.interfaces.iter()
            .flat_map(|(n, i)| i.peers.keys().map(move |k| (n.clone(), *k)))
            .collect();
        prop_assume!(!peers.is_empty());
        let (name, k) = peers[which.index(peers.len())].clone();
        let mut o = s.clone();
        f.seed(&mut o);
        let peer = o.interfaces.get_mut(&name).unwrap().peers.get_mut(&k).unwrap();
        if change_endpoint {
            peer.endpoint = match peer.endpoint { Some(_) => None, None => Some(endpoint(0)) };
        } else {
            prop_assume!(peer.allowed_ips != nets);
            peer.allowed_ips = nets;
        }
        let p = plan(&s, &obs(&o));
        prop_assert_eq!(p.len(), 1, "{}", p);
        let is_update = matches!(
            &p.ops()[0],
            Op::UpdatePeer { interface, public_key, peer }
                if *interface == name && *public_key == k && Some(peer) == s.interfaces[&name].peers.get(&k)
        );
        prop_assert!(is_update, "{}", p);
    }

    /// Law 4: foreign objects seeded into observed are never in a plan and survive
    /// `apply_to` unchanged.
    #[test]
    fn law4_foreign_objects_untouched((d, o, f) in arb_pair()) {
        let p = plan(&d, &obs(&o));
        for op in p.ops() {
            prop_assert!(is_owned(op), "`{}` touches a foreign object", op);
        }
        let r = p.apply_to(&o);
        prop_assert!(f.all_in(&r));
        prop_assert_eq!(Foreign::of(&r), Foreign::of(&o));
    }

    /// Law 5: safe ordering, checked over the indices of the ops.
    #[test]
    fn law5_ordering_is_safe((d, o, _f) in arb_pair()) {
        let p = plan(&d, &obs(&o));
        if let Err(e) = check_order(&p) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// Telemetry never causes an op.
    #[test]
    fn telemetry_never_causes_ops((d, o, _f) in arb_pair(), rx in any::<u64>(), secs in any::<u32>()) {
        let mut with = obs(&o);
        for (name, iface) in &o.interfaces {
            for k in iface.peers.keys() {
                with.telemetry.entry(name.clone()).or_default().insert(*k, PeerTelemetry {
                    last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.into())),
                    rx_bytes: rx,
                    tx_bytes: rx / 2,
                });
            }
        }
        prop_assert_eq!(plan(&d, &with), plan(&d, &obs(&o)));
    }

    /// A plan is deterministic, renders one line per op, and survives JSON.
    #[test]
    fn plan_renders_and_round_trips((d, o, _f) in arb_pair()) {
        let p = plan(&d, &obs(&o));
        prop_assert_eq!(&p, &plan(&d.clone(), &obs(&o.clone())));
        let text = p.to_string();
        if p.is_empty() {
            prop_assert_eq!(text.as_str(), "= converged\n");
        } else {
            prop_assert_eq!(text.lines().count(), p.len());
            for (line, op) in text.lines().zip(p.ops()) {
                let sign = match (op.is_removal(), op.kind()) {
                    (true, _) => '-',
                    (false, OpKind::UpdatePeer | OpKind::SetMtu | OpKind::SetListenPort | OpKind::ReplaceFilter) => '~',
                    (false, _) => '+',
                };
                prop_assert!(line.starts_with(sign), "{}", line);
            }
        }
        let json = serde_json::to_string(&p).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, p);
    }
}
