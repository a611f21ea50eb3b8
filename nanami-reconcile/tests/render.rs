//! The people's diff and the JSON form of a plan, as golden text.
#![allow(clippy::unwrap_used)] // test helpers

use nanami_model::{GatewayState, InterfaceName, InterfaceState, IpFamily, PeerState, Route, Rule};
use nanami_reconcile::{plan, Observed, Op, Plan};

fn state() -> GatewayState {
    let name = InterfaceName::owned("gw-a").unwrap();
    let mut i = InterfaceState {
        listen_port: Some(51820),
        ..InterfaceState::default()
    };
    i.addresses.insert("100.80.0.1/22".parse().unwrap());
    i.peers.insert(
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
            .parse()
            .unwrap(),
        PeerState {
            endpoint: None,
            allowed_ips: ["100.80.0.10/32".parse().unwrap()].into(),
            persistent_keepalive: None,
        },
    );
    let mut s = GatewayState::default();
    s.interfaces.insert(name.clone(), i);
    s.routes
        .insert(Route::nanami("10.20.0.0/16".parse().unwrap(), name));
    s.rules
        .insert(Rule::nanami("100.80.0.0/22".parse().unwrap()));
    s.filter = Some(Default::default());
    s.forwarding.insert(IpFamily::V4);
    s
}

#[test]
fn a_fresh_gateway_renders_one_line_per_op_in_safe_order() {
    let p = plan(&state(), &Observed::default());
    assert_eq!(
        p.to_string(),
        "\
+ interface nm-gw-a listen 51820 mtu 1420
+ address nm-gw-a 100.80.0.1/22
+ peer nm-gw-a HIgo9x…= allowed 100.80.0.10/32
~ filter inet nanami (0 accept, 0 masquerade)
+ route 10.20.0.0/16 dev nm-gw-a table 7373 proto 73
+ rule to 100.80.0.0/22 lookup 7373 priority 7373 proto 73
+ forwarding ipv4
"
    );
}

#[test]
fn teardown_of_everything_owned_renders_in_reverse_order() {
    let p = plan(&GatewayState::default(), &Observed::from(state()));
    assert_eq!(
        p.to_string(),
        "\
- rule to 100.80.0.0/22 lookup 7373 priority 7373 proto 73
- route 10.20.0.0/16 dev nm-gw-a table 7373 proto 73
- filter inet nanami
- interface nm-gw-a
"
    );
}

#[test]
fn converged_plan_renders_as_converged() {
    let s = state();
    let p = plan(&s, &Observed::from(s.clone()));
    assert!(p.is_converged());
    assert_eq!(p.to_string(), "= converged\n");
}

#[test]
fn json_form_is_tagged_by_op() {
    let p = Plan::from_ops(vec![
        Op::RemovePeer {
            interface: InterfaceName::owned("gw-a").unwrap(),
            public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
                .parse()
                .unwrap(),
        },
        Op::DeleteFilter,
        Op::EnableForwarding {
            family: IpFamily::V6,
        },
    ]);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"ops":[{"op":"remove_peer","interface":"nm-gw-a","public_key":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="},{"op":"delete_filter"},{"op":"enable_forwarding","family":"v6"}]}"#
    );
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
}

#[test]
fn an_exit_is_added_exceptions_first_and_removed_catch_all_first() {
    let mut exit = GatewayState::default();
    exit.rules.extend(Rule::exit(
        "0.0.0.0/0".parse().unwrap(),
        ["192.0.2.1/32".parse().unwrap()],
    ));
    let up = plan(&exit, &Observed::default());
    assert_eq!(
        up.to_string(),
        "\
+ rule to 0.0.0.0/0 lookup 254 priority 7374 proto 73 suppress_prefixlength 0
+ rule to 192.0.2.1/32 lookup 254 priority 7375 proto 73
+ rule to 0.0.0.0/0 lookup 7373 priority 7376 proto 73
"
    );
    let down = plan(&GatewayState::default(), &Observed::from(exit));
    assert_eq!(
        down.to_string(),
        "\
- rule to 0.0.0.0/0 lookup 7373 priority 7376 proto 73
- rule to 192.0.2.1/32 lookup 254 priority 7375 proto 73
- rule to 0.0.0.0/0 lookup 254 priority 7374 proto 73 suppress_prefixlength 0
"
    );
}
