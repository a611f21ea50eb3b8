//! The bodies of Nanami's fuzz targets, one function each, so every target in
//! `fuzz_targets/` is a line or two and a crash found by the fuzzer can be replayed
//! from a plain `#[test]` in the crate where the bug lives.
//!
//! Each function takes the fuzzer's bytes and either returns or panics; a panic (an
//! assertion of a law, or a bug) is the crash libFuzzer reports.
#![deny(missing_docs)]

use std::collections::BTreeMap;

use nanami_model::{compile_all, compile_node, Health, Topology};
use nanami_reconcile::{plan, Observed};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rtnetlink::packet_core::Parseable;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::rule::RuleMessage;

/// The reconciler's law-test generators, reused as they are.
#[allow(clippy::all, unused_imports)]
#[path = "../../nanami-reconcile/tests/common/mod.rs"]
mod reconcile_common;

/// Target `topology_yaml` / `topology_json`: parse and validate; on success compile
/// every gateway and every node (and render each client's configuration) with all
/// gateways up and with the first one offline. Nothing may panic.
pub fn topology(data: &[u8], json: bool) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = if json {
        Topology::from_json(text)
    } else {
        Topology::from_yaml(text)
    };
    let Ok(topology) = parsed else {
        return;
    };
    // All up, then the first gateway offline (failover).
    let mut failover = Health::all_up();
    failover
        .offline
        .extend(topology.gateway_ids().take(1).cloned());
    for health in [Health::all_up(), failover] {
        let states = compile_all(&topology, &health);
        // Compiling is deterministic: twice gives the same states.
        assert_eq!(states, compile_all(&topology, &health));
        for id in topology.node_ids() {
            if let Ok(config) = compile_node(&topology, &health, id) {
                let _ = config.to_wg_quick(None);
                let _ = config.to_wg(None);
                let _ = config.to_json().expect("a compiled configuration serializes");
            }
        }
    }
}

/// Target `plan`: the bytes seed the RNG that draws from the law tests'
/// `arb_pair()` (desired, observed with foreign objects); law 2 must hold:
/// one plan converges on the owned projection, forwarding only ever turned on, and
/// planning again from the result finds nothing.
pub fn plan_law(data: &[u8]) {
    // The input, folded into 32 bytes, seeds proptest's ChaCha RNG as a proptest
    // case is seeded. (Proptest's pass-through RNG would hand libFuzzer finer
    // control, but past the input's end it yields zeros, on which the generators'
    // retry-on-duplicate loops spin for seconds.)
    let mut seed = [0u8; 32];
    for (i, b) in data.iter().enumerate() {
        seed[i % 32] ^= b.rotate_left((i / 32) as u32 % 8);
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let Ok(tree) = reconcile_common::arb_pair().new_tree(&mut runner) else {
        return;
    };
    let (d, o, _foreign) = tree.current();
    let d = d.owned();
    let p = plan(&d, &Observed::from(o.clone()));
    let r = p.apply_to(&o);
    assert_eq!(
        r.owned(),
        reconcile_common::expected_after(&d, &o),
        "law 2, plan:\n{p}"
    );
    assert!(
        plan(&d, &Observed::from(r)).is_empty(),
        "second plan not empty"
    );
}

/// Target `uapi`: the bytes as a UAPI socket stream, framed and parsed as the
/// device's server does (every request in the stream).
pub fn uapi(data: &[u8]) {
    nanami_wg::device::fuzzing::uapi_requests(data);
}

/// Target `nft_list`: the bytes as `nft -j list table inet nanami` output.
pub fn nft_list(data: &[u8]) {
    let _ = nanami_wg::linux::nft::parse_list(&String::from_utf8_lossy(data));
}

/// Target `netlink`: the first byte picks a route or a rule message, the rest is
/// parsed by netlink-packet-route as the kernel's dump would be, then read back by
/// Nanami's `parse_route` / `parse_rule`.
pub fn netlink(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    if kind & 1 == 0 {
        let names: BTreeMap<u32, String> = [(1, "lo"), (2, "eth0"), (3, "nm-a"), (4, "nm-gw-1")]
            .into_iter()
            .map(|(i, n)| (i, n.to_owned()))
            .collect();
        if let Ok(msg) = RouteMessage::parse(bytes) {
            let _ = nanami_wg::linux::netlink::parse_route(&msg, &names);
        }
    } else if let Ok(msg) = RuleMessage::parse(bytes) {
        let _ = nanami_wg::linux::netlink::parse_rule(&msg);
    }
}

/// Target `manager_bodies`: the first byte picks a request body type of the
/// gateway manager's API (`nanami_api::wire`), the rest is read exactly as the
/// manager reads a body (`serde_json::from_slice`); what is accepted must survive
/// a round trip through its own JSON unchanged.
pub fn manager_bodies(data: &[u8]) {
    use nanami_api::wire::{EnrolRequest, ObservedReport, TokenRequest};
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => round_trip::<TokenRequest>(body),
        1 => round_trip::<EnrolRequest>(body),
        _ => round_trip::<ObservedReport>(body),
    }
}

fn round_trip<T>(body: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        let text = serde_json::to_vec(&value).expect("an accepted body serializes");
        let again: T = serde_json::from_slice(&text).expect("its own JSON is accepted");
        assert_eq!(value, again, "round trip changed the value");
    }
}

/// Target `dataplane`: the op list (an op byte, `% 5`: 0 raw datagram, 1 an inner
/// packet the remote seals, 2 the last genuine datagram corrupted by `(offset, xor)`
/// pairs, 3 timers after the clock moved on by the first byte in seconds, 4 a TUN
/// packet; `/ 5 % 2` picks one of two source addresses; then a length byte and the
/// bytes) run through the device's own per-packet code (`handle_datagram`,
/// `handle_tun`, `handle_timeout` of `nanami_wg`'s packet core) on a device with two
/// peers and an established session with the first. Nothing may panic; only packets
/// the remote really sealed, from peer 1's AllowedIPs, reach the TUN; each dropped
/// datagram is counted once and counters never go down; an authenticated datagram
/// moves the endpoint; what the remote opens is what the TUN gave.
pub fn dataplane(data: &[u8]) {
    nanami_wg::device::fuzzing::dataplane(data);
}

/// Target `probe_reply`: the first byte picks the family, the rest is a packet as
/// the prober's raw ICMP or ICMPv6 socket would deliver it.
pub fn probe_reply(data: &[u8]) {
    let Some((&kind, packet)) = data.split_first() else {
        return;
    };
    let family = if kind & 1 == 0 {
        nanami_wg::probe::Family::V4
    } else {
        nanami_wg::probe::Family::V6
    };
    if let Some((_, _, payload)) = nanami_wg::probe::parse_echo_reply(family, packet) {
        assert!(payload.len() < packet.len());
    }
}

/// Target `offload`: the bytes as one read of the device's TUN (`virtio_net_hdr` +
/// packet), split as the device splits it (`nanami_wg::device::offload::split`). A
/// refused frame appends nothing. Otherwise every packet of a TSO/USO frame is a
/// valid IP packet whose checksums verify (a completed partial checksum verifies
/// too), and coalescing the packets (with UDP and without) then splitting every
/// frame again gives back exactly the same packets, in order.
pub fn offload(data: &[u8]) {
    nanami_wg::device::fuzzing::offload(data);
}
