//! `Pinger` against real peers in network namespaces (root): IPv4 and IPv6 echo,
//! a silent address times out within its bound, and many concurrent pings to several
//! targets each resolve to their own reply.
//!
//! ```text
//! prober ──veth 10.77.0.1/24, fd77::1/64── peer (10.77.0.2, .3; fd77::2, ::3)
//! ```
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{require, veth, Netns};
use nanami_wg::probe::{Pinger, ProbeError};

/// The prober and its peer, connected by a veth pair with two v4 and two v6
/// addresses on the peer's side (`nodad`: usable at once).
fn lab() -> (Netns, Netns) {
    require(&[]);
    let prober = Netns::new("prb");
    let peer = Netns::new("prp");
    let (a, b) = veth(&prober, "10.77.0.1/24", &peer, "10.77.0.2/24");
    prober.ip(&["addr", "add", "fd77::1/64", "dev", &a, "nodad"]);
    peer.ip(&["addr", "add", "10.77.0.3/24", "dev", &b]);
    for addr in ["fd77::2/64", "fd77::3/64"] {
        peer.ip(&["addr", "add", addr, "dev", &b, "nodad"]);
    }
    (prober, peer)
}

/// Runs `f` on a current-thread runtime inside `ns`.
fn in_ns<R: Send, F: std::future::Future<Output = R>>(
    ns: &Netns,
    f: impl FnOnce() -> F + Send,
) -> R {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pings_v4_and_v6_peers_and_times_out_on_silence() {
    let (prober, _peer) = lab();
    in_ns(&prober, || async {
        let pinger = Pinger::new().unwrap();
        for target in ["10.77.0.2", "fd77::2", "10.77.0.1", "::1"] {
            let rtt = pinger
                .ping(ip(target), Duration::from_secs(2))
                .await
                .unwrap_or_else(|e| panic!("ping {target}: {e}"));
            assert!(rtt < Duration::from_secs(2), "{target}: {rtt:?}");
        }
        // No host has these (neighbour resolution fails): a timeout, within its bound.
        for silent in ["10.77.0.99", "fd77::99"] {
            let start = Instant::now();
            let got = pinger.ping(ip(silent), Duration::from_millis(500)).await;
            let took = start.elapsed();
            assert!(matches!(got, Err(ProbeError::Timeout)), "{silent}: {got:?}");
            assert!(
                took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
                "{silent}: timed out after {took:?}"
            );
        }
    });
}

#[test]
fn concurrent_pings_resolve_to_their_own_targets() {
    let (prober, peer) = lab();
    in_ns(&prober, || async {
        let pinger = Pinger::new().unwrap();
        // A second Pinger in the same namespace sees the first one's replies on its
        // own raw socket: they must not satisfy its pings.
        let other = Pinger::new().unwrap();
        let live = ["10.77.0.2", "10.77.0.3", "fd77::2", "fd77::3"];
        let mut pings = Vec::new();
        for i in 0..50 {
            let (p, target) = (pinger.clone(), ip(live[i % 2 + 2 * (i / 25)]));
            pings.push(tokio::spawn(async move {
                (target, p.ping(target, Duration::from_secs(3)).await)
            }));
        }
        let silent = ["10.77.0.98", "fd77::98"];
        let mut silent_pings = Vec::new();
        for i in 0..10 {
            let (p, target) = (other.clone(), ip(silent[i % 2]));
            silent_pings.push(tokio::spawn(async move {
                (target, p.ping(target, Duration::from_millis(800)).await)
            }));
        }
        for ping in pings {
            let (target, got) = ping.await.unwrap();
            assert!(got.is_ok(), "{target}: {got:?}");
        }
        for ping in silent_pings {
            let (target, got) = ping.await.unwrap();
            assert!(matches!(got, Err(ProbeError::Timeout)), "{target}: {got:?}");
        }
    });
    // Only the peer's addresses answered: removing one makes its pings time out
    // while the other's still succeed (no cross-matching between targets).
    peer.ip(&["addr", "flush", "to", "10.77.0.3"]);
    in_ns(&prober, || async {
        let pinger = Pinger::new().unwrap();
        // The prober still has the removed address's neighbour entry: the request
        // goes out, nothing answers.
        let (a, b) = tokio::join!(
            pinger.ping(ip("10.77.0.2"), Duration::from_secs(2)),
            pinger.ping(ip("10.77.0.3"), Duration::from_millis(800)),
        );
        assert!(a.is_ok(), "{a:?}");
        assert!(matches!(b, Err(ProbeError::Timeout)), "{b:?}");
    });
}

#[test]
fn pinger_needs_a_runtime() {
    assert!(matches!(Pinger::new(), Err(ProbeError::NoRuntime)));
}
