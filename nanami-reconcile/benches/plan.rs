//! `plan` on gateways of 1k, 10k and 100k peers: no-op (converged) and 1% churn.
//!
//! Run with `cargo bench -p nanami-reconcile`.
#![allow(clippy::unwrap_used)] // a benchmark's setup may panic

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use divan::{black_box, Bencher};
use ipnet::{IpNet, Ipv4Net};
use nanami_model::{
    Destination, FilterRule, FilterSet, GatewayState, InterfaceName, InterfaceState, IpFamily,
    NatRule, PeerState, PublicKey, Route, Rule,
};
use nanami_reconcile::{plan, Observed};

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn key(i: usize) -> PublicKey {
    let mut bytes = [0x55u8; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
    PublicKey::from_bytes(bytes).unwrap()
}

fn peer(i: usize, endpoint_port: u16) -> PeerState {
    let addr = Ipv4Addr::from(0x6450_0000u32 + i as u32); // 100.80.0.0 + i
    PeerState {
        endpoint: Some(SocketAddr::from((
            Ipv4Addr::new(198, 51, 100, 7),
            endpoint_port,
        ))),
        allowed_ips: [IpNet::V4(Ipv4Net::new(addr, 32).unwrap())].into(),
        persistent_keepalive: Some(25),
    }
}

/// A gateway with `peers` peers on one interface, and the machine it runs on with
/// `churn` of them differing: a third with a new endpoint, a third missing (to be
/// added), a third stale (to be removed).
fn states(peers: usize, churn: usize) -> (GatewayState, Observed) {
    let name = InterfaceName::owned("gw-a").unwrap();
    let mut want = InterfaceState {
        listen_port: Some(51820),
        ..InterfaceState::default()
    };
    want.addresses.insert("100.80.0.1/14".parse().unwrap());
    want.peers = (0..peers)
        .map(|i| (key(i), peer(i, 51820)))
        .collect::<BTreeMap<_, _>>();
    let mut desired = GatewayState::default();
    desired.interfaces.insert(name.clone(), want);
    let lan: IpNet = "10.20.0.0/16".parse().unwrap();
    let overlay: IpNet = "100.80.0.0/14".parse().unwrap();
    desired.routes = BTreeSet::from([Route::nanami(lan, name.clone())]);
    desired.rules = BTreeSet::from([Rule::nanami(overlay)]);
    desired.filter = Some(FilterSet {
        accept: [FilterRule {
            interface: name.clone(),
            source: overlay,
            destination: Destination::Prefix(lan),
        }]
        .into(),
        masquerade: [NatRule {
            source: overlay,
            destination: Destination::Internet,
        }]
        .into(),
    });
    desired.forwarding = [IpFamily::V4].into();

    let mut observed = desired.clone();
    let machine = observed.interfaces.get_mut(&name).unwrap();
    // Spread the churn over the whole key range.
    let stride = peers / churn.max(1);
    for c in 0..churn {
        let i = c * stride;
        match c % 3 {
            0 => {
                machine.peers.insert(key(i), peer(i, 4500));
            }
            1 => {
                machine.peers.remove(&key(i));
            }
            _ => {
                machine.peers.insert(key(peers + i), peer(peers + i, 51820));
            }
        }
    }
    (desired, Observed::from(observed))
}

#[divan::bench(args = SIZES)]
fn noop(bencher: Bencher, peers: usize) {
    let (desired, observed) = states(peers, 0);
    assert!(plan(&desired, &observed).is_empty());
    bencher.bench(|| plan(black_box(&desired), black_box(&observed)));
}

#[divan::bench(args = SIZES)]
fn churn_1_percent(bencher: Bencher, peers: usize) {
    let (desired, observed) = states(peers, peers / 100);
    assert_eq!(plan(&desired, &observed).len(), peers / 100);
    bencher.bench(|| plan(black_box(&desired), black_box(&observed)));
}
