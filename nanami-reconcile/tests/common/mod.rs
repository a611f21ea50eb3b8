//! Generators and helpers shared by the law, simulation and state-machine tests.
//!
//! States are drawn from tiny pools (three owned interface names, six keys, eight
//! prefixes) so that desired and observed states overlap often: most generated pairs
//! have peers that are equal, changed in place, added and removed at once.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use nanami_model::state::{NANAMI_PROTO, NANAMI_TABLE};
use nanami_model::{
    Destination, FilterRule, FilterSet, GatewayState, InterfaceName, InterfaceState, IpFamily,
    NatRule, PeerState, PublicKey, Route, Rule,
};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;

pub const OWNED: [&str; 3] = ["nm-a", "nm-b", "nm-c"];
pub const FOREIGN: [&str; 2] = ["eth0", "wg0"];
pub const NETS: [&str; 8] = [
    "100.80.0.1/32",
    "100.80.0.2/32",
    "100.80.0.3/32",
    "100.80.0.0/22",
    "10.20.0.0/16",
    "10.30.0.0/16",
    "fd00::1/128",
    "0.0.0.0/0",
];
pub const ENDPOINTS: [&str; 2] = ["198.51.100.7:51820", "203.0.113.9:4500"];

pub fn key(i: u8) -> PublicKey {
    // [i; 32] for i >= 2 is never one of the low-order points the model refuses.
    PublicKey::from_bytes([i.wrapping_add(2).max(2); 32]).unwrap()
}

pub fn owned(i: u8) -> InterfaceName {
    InterfaceName::new(OWNED[usize::from(i) % OWNED.len()]).unwrap()
}

pub fn foreign(i: u8) -> InterfaceName {
    InterfaceName::new(FOREIGN[usize::from(i) % FOREIGN.len()]).unwrap()
}

pub fn net(i: u8) -> IpNet {
    NETS[usize::from(i) % NETS.len()].parse().unwrap()
}

pub fn endpoint(i: u8) -> SocketAddr {
    ENDPOINTS[usize::from(i) % ENDPOINTS.len()].parse().unwrap()
}

pub fn arb_net() -> impl Strategy<Value = IpNet> {
    (0..NETS.len() as u8).prop_map(net)
}

pub fn arb_nets(max: usize) -> impl Strategy<Value = BTreeSet<IpNet>> {
    btree_set(arb_net(), 0..=max)
}

pub fn arb_peer() -> impl Strategy<Value = PeerState> {
    (
        option::of((0..2u8).prop_map(endpoint)),
        arb_nets(2),
        option::of(Just(25u16)),
    )
        .prop_map(|(endpoint, allowed_ips, persistent_keepalive)| PeerState {
            endpoint,
            allowed_ips,
            persistent_keepalive,
        })
}

pub fn arb_interface() -> impl Strategy<Value = InterfaceState> {
    (
        option::of(prop_oneof![Just(51820u16), Just(51821u16)]),
        prop_oneof![Just(1420u32), Just(1380u32)],
        arb_nets(2),
        btree_map((0..6u8).prop_map(key), arb_peer(), 0..=4),
    )
        .prop_map(|(listen_port, mtu, addresses, peers)| InterfaceState {
            listen_port,
            mtu,
            addresses,
            peers,
        })
}

pub fn arb_destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        arb_net().prop_map(Destination::Prefix),
        Just(Destination::Internet)
    ]
}

pub fn arb_filter() -> impl Strategy<Value = FilterSet> {
    (
        btree_set(
            ((0..3u8).prop_map(owned), arb_net(), arb_destination()).prop_map(
                |(interface, source, destination)| FilterRule {
                    interface,
                    source,
                    destination,
                },
            ),
            0..=2,
        ),
        btree_set(
            (arb_net(), arb_destination()).prop_map(|(source, destination)| NatRule {
                source,
                destination,
            }),
            0..=1,
        ),
    )
        .prop_map(|(accept, masquerade)| FilterSet { accept, masquerade })
}

pub fn arb_family() -> impl Strategy<Value = IpFamily> {
    prop_oneof![Just(IpFamily::V4), Just(IpFamily::V6)]
}

/// A fully owned state: what a desired state looks like.
pub fn arb_owned_state() -> impl Strategy<Value = GatewayState> {
    (
        btree_map((0..3u8).prop_map(owned), arb_interface(), 0..=3),
        btree_set(
            ((0..3u8).prop_map(owned), arb_net()).prop_map(|(i, n)| Route::nanami(n, i)),
            0..=3,
        ),
        btree_set(arb_net().prop_map(Rule::nanami), 0..=2),
        option::of(arb_filter()),
        btree_set(arb_family(), 0..=2),
    )
        .prop_map(
            |(interfaces, routes, rules, filter, forwarding)| GatewayState {
                interfaces,
                routes,
                rules,
                filter,
                forwarding,
            },
        )
}

/// Objects Nanami does not own, to seed into observed states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Foreign {
    pub interfaces: BTreeMap<InterfaceName, InterfaceState>,
    pub routes: BTreeSet<Route>,
    pub rules: BTreeSet<Rule>,
}

impl Foreign {
    /// Adds these objects to `state`.
    pub fn seed(&self, state: &mut GatewayState) {
        for (n, i) in &self.interfaces {
            state.interfaces.insert(n.clone(), i.clone());
        }
        state.routes.extend(self.routes.iter().cloned());
        state.rules.extend(self.rules.iter().cloned());
    }

    /// Whether `state` still holds every one of them, unchanged.
    pub fn all_in(&self, state: &GatewayState) -> bool {
        self.interfaces
            .iter()
            .all(|(n, i)| state.interfaces.get(n) == Some(i))
            && self.routes.iter().all(|r| state.routes.contains(r))
            && self.rules.iter().all(|r| state.rules.contains(r))
    }

    /// The foreign part of `state`.
    pub fn of(state: &GatewayState) -> Self {
        Self {
            interfaces: state
                .interfaces
                .iter()
                .filter(|(n, _)| !n.is_owned())
                .map(|(n, i)| (n.clone(), i.clone()))
                .collect(),
            routes: state
                .routes
                .iter()
                .filter(|r| !r.is_owned())
                .cloned()
                .collect(),
            rules: state
                .rules
                .iter()
                .filter(|r| !r.is_owned())
                .cloned()
                .collect(),
        }
    }
}

pub fn arb_foreign_route() -> impl Strategy<Value = Route> {
    // Foreign three ways: the main table with Nanami's protocol, Nanami's table
    // with another protocol, and the main table on an `nm-` interface.
    (
        prop_oneof![(0..2u8).prop_map(foreign), (0..3u8).prop_map(owned)],
        arb_net(),
        prop_oneof![
            Just((254u32, NANAMI_PROTO)),
            Just((NANAMI_TABLE, 4u8)),
            Just((254u32, 2u8))
        ],
    )
        .prop_map(|(interface, destination, (table, protocol))| Route {
            table,
            destination,
            interface,
            protocol,
        })
}

pub fn arb_foreign_rule() -> impl Strategy<Value = Rule> {
    (arb_net(), prop_oneof![Just(0u8), Just(4u8)]).prop_map(|(destination, protocol)| Rule {
        priority: 100,
        destination,
        table: NANAMI_TABLE,
        protocol,
        suppress_prefix_len: None,
    })
}

pub fn arb_foreign() -> impl Strategy<Value = Foreign> {
    (
        btree_map((0..2u8).prop_map(foreign), arb_interface(), 0..=2),
        btree_set(arb_foreign_route(), 0..=3),
        btree_set(arb_foreign_rule(), 0..=2),
    )
        .prop_map(|(interfaces, routes, rules)| Foreign {
            interfaces,
            routes,
            rules,
        })
}

/// An edit of a state: desired-state changes in the state-machine test, drift on
/// the machine, and the mutations that relate observed to desired in the laws.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Set or remove an owned interface.
    Interface(u8, Option<InterfaceState>),
    /// Set or remove a peer of an owned interface (if it exists).
    Peer(u8, u8, Option<PeerState>),
    /// Change only an existing peer's endpoint.
    Endpoint(u8, u8, Option<SocketAddr>),
    /// Change only an existing peer's AllowedIPs.
    AllowedIps(u8, u8, BTreeSet<IpNet>),
    /// Listen port of an existing interface.
    Port(u8, Option<u16>),
    /// MTU of an existing interface.
    Mtu(u8, u32),
    /// Add or remove an address of an existing interface.
    Address(u8, IpNet, bool),
    /// Add or remove an owned route.
    Route(u8, IpNet, bool),
    /// Add or remove an owned rule.
    Rule(IpNet, bool),
    /// Set the filter.
    Filter(Option<FilterSet>),
    /// Turn a forwarding family on or off.
    Forwarding(IpFamily, bool),
}

impl Edit {
    pub fn apply(&self, s: &mut GatewayState) {
        match self {
            Edit::Interface(i, Some(state)) => {
                s.interfaces.insert(owned(*i), state.clone());
            }
            Edit::Interface(i, None) => {
                s.interfaces.remove(&owned(*i));
            }
            Edit::Peer(i, k, peer) => {
                if let Some(iface) = s.interfaces.get_mut(&owned(*i)) {
                    match peer {
                        Some(p) => {
                            iface.peers.insert(key(*k), p.clone());
                        }
                        None => {
                            iface.peers.remove(&key(*k));
                        }
                    }
                }
            }
            Edit::Endpoint(i, k, e) => {
                if let Some(p) = peer_mut(s, *i, *k) {
                    p.endpoint = *e;
                }
            }
            Edit::AllowedIps(i, k, nets) => {
                if let Some(p) = peer_mut(s, *i, *k) {
                    p.allowed_ips = nets.clone();
                }
            }
            Edit::Port(i, port) => {
                if let Some(iface) = s.interfaces.get_mut(&owned(*i)) {
                    iface.listen_port = *port;
                }
            }
            Edit::Mtu(i, mtu) => {
                if let Some(iface) = s.interfaces.get_mut(&owned(*i)) {
                    iface.mtu = *mtu;
                }
            }
            Edit::Address(i, n, on) => {
                if let Some(iface) = s.interfaces.get_mut(&owned(*i)) {
                    if *on {
                        iface.addresses.insert(*n);
                    } else {
                        iface.addresses.remove(n);
                    }
                }
            }
            Edit::Route(i, n, on) => {
                let r = Route::nanami(*n, owned(*i));
                if *on {
                    s.routes.insert(r);
                } else {
                    s.routes.remove(&r);
                }
            }
            Edit::Rule(n, on) => {
                let r = Rule::nanami(*n);
                if *on {
                    s.rules.insert(r);
                } else {
                    s.rules.remove(&r);
                }
            }
            Edit::Filter(f) => s.filter = f.clone(),
            Edit::Forwarding(f, on) => {
                if *on {
                    s.forwarding.insert(*f);
                } else {
                    s.forwarding.remove(f);
                }
            }
        }
    }
}

fn peer_mut(s: &mut GatewayState, i: u8, k: u8) -> Option<&mut PeerState> {
    s.interfaces.get_mut(&owned(i))?.peers.get_mut(&key(k))
}

pub fn arb_edit() -> impl Strategy<Value = Edit> {
    let i = 0..3u8;
    let k = 0..6u8;
    prop_oneof![
        1 => (i.clone(), option::of(arb_interface())).prop_map(|(i, s)| Edit::Interface(i, s)),
        3 => (i.clone(), k.clone(), option::of(arb_peer())).prop_map(|(i, k, p)| Edit::Peer(i, k, p)),
        2 => (i.clone(), k.clone(), option::of((0..2u8).prop_map(endpoint)))
            .prop_map(|(i, k, e)| Edit::Endpoint(i, k, e)),
        2 => (i.clone(), k, arb_nets(2)).prop_map(|(i, k, n)| Edit::AllowedIps(i, k, n)),
        1 => (i.clone(), option::of(prop_oneof![Just(51820u16), Just(51822u16)]))
            .prop_map(|(i, p)| Edit::Port(i, p)),
        1 => (i.clone(), prop_oneof![Just(1420u32), Just(1280u32)]).prop_map(|(i, m)| Edit::Mtu(i, m)),
        1 => (i.clone(), arb_net(), any::<bool>()).prop_map(|(i, n, b)| Edit::Address(i, n, b)),
        2 => (i, arb_net(), any::<bool>()).prop_map(|(i, n, b)| Edit::Route(i, n, b)),
        1 => (arb_net(), any::<bool>()).prop_map(|(n, b)| Edit::Rule(n, b)),
        1 => option::of(arb_filter()).prop_map(Edit::Filter),
        1 => (arb_family(), any::<bool>()).prop_map(|(f, b)| Edit::Forwarding(f, b)),
    ]
}

/// A desired state that a real platform can reach: every route's interface is one
/// of its interfaces (the kernel refuses a route on a missing device).
pub fn consistent(mut s: GatewayState) -> GatewayState {
    let names: BTreeSet<InterfaceName> = s.interfaces.keys().cloned().collect();
    s.routes.retain(|r| names.contains(&r.interface));
    s
}

/// A (desired, observed) pair: unrelated, or observed derived from desired by a few
/// edits (so most objects are shared and some differ), with foreign objects seeded
/// into observed either way.
pub fn arb_pair() -> impl Strategy<Value = (GatewayState, GatewayState, Foreign)> {
    let related = (arb_owned_state(), vec(arb_edit(), 0..6)).prop_map(|(d, edits)| {
        let mut o = d.clone();
        for e in &edits {
            e.apply(&mut o);
        }
        (d, o)
    });
    let unrelated = (arb_owned_state(), arb_owned_state());
    (prop_oneof![3 => related, 1 => unrelated], arb_foreign()).prop_map(|((d, mut o), f)| {
        f.seed(&mut o);
        (d, o, f)
    })
}

/// `d` with forwarding `o.forwarding ∪ d.forwarding`: what law 2 expects.
pub fn expected_after(d: &GatewayState, o: &GatewayState) -> GatewayState {
    let mut e = d.owned();
    e.forwarding.extend(o.forwarding.iter().copied());
    e
}

/// SplitMix64: a deterministic RNG for backoff jitter in tests.
#[allow(unused_imports)] // not every suite uses it
pub use nanami_reconcile::backoff::SplitMix64 as TestRng;
