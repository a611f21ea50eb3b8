//! Forwarding-path health: every [`ProbeConfig::interval`] the daemon pings each of
//! its health targets (the addresses behind it that the manager lists per network)
//! and decides, with hysteresis, whether its path to each network works.
//!
//! A round is *good* for a network when any of its targets answered, *bad* when none
//! did, *blind* when none could be probed (no `CAP_NET_RAW`, no socket for the
//! address family). A network turns [`PathHealth::Unhealthy`] after
//! [`ProbeConfig::fail_after`] bad rounds in a row, and [`PathHealth::Healthy`] again
//! after [`ProbeConfig::recover_after`] good rounds in a row, so a flapping LAN does
//! not bounce clients between gateways. A network starts, and after a blind round
//! stays, [`PathHealth::Unknown`], on which the manager keeps its previous verdict
//! (healthy when it has none): a daemon that cannot probe must not strand clients,
//! and a restarted one must not pull them back before it knows its path works.
//!
//! [`Tracker`] is the pure state machine (results in, verdicts out, no clock); the
//! [`probe_loop`] is its I/O shell.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use nanami_api::wire::{NetworkHealth, PathHealth, TargetHealth};
use nanami_model::{HealthTargets, NetworkId};
use nanami_wg::probe::{Pinger, ProbeError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Probe timing and hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between rounds. 2 s: with `fail_after` 3 a dead path is noticed in about
    /// 6 s (plus one timeout), well inside the 30 s a lost gateway takes to be
    /// declared offline, at one small echo per target per 2 s.
    pub interval: Duration,
    /// How long one ping waits for its reply. 1 s is far above any LAN round trip
    /// and leaves half the interval free.
    pub timeout: Duration,
    /// Bad rounds in a row (every target silent) before a network is unhealthy.
    /// 3 rides out a lost echo or a short ARP hiccup.
    pub fail_after: u32,
    /// Good rounds in a row before an unhealthy network is healthy again. 3 (about
    /// 6 s) keeps a flapping LAN from bouncing clients back and forth.
    pub recover_after: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fail_after: 3,
            recover_after: 3,
        }
    }
}

/// What one probe of one target found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer, after this round trip.
    Reply(Duration),
    /// No answer in time (or the send failed: no route, filtered): the path failed.
    NoReply,
    /// The target could not be probed at all: says nothing about the path.
    Unusable,
}

/// A probe in flight.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Something that probes a target: ICMP echo on a real machine ([`IcmpProber`]), a
/// script in tests.
pub trait Prober: Send + Sync + std::fmt::Debug {
    /// Probes `target` once, waiting at most `timeout`.
    fn probe(&self, target: IpAddr, timeout: Duration) -> ProbeFuture;
}

/// ICMP echo through [`Pinger`], opened on first use. If it cannot be opened (no
/// `CAP_NET_RAW`), every probe is [`Outcome::Unusable`] and the error is logged once;
/// opening is tried again each round.
#[derive(Debug, Default)]
pub struct IcmpProber {
    pinger: Mutex<Option<Pinger>>,
    failed_once: std::sync::atomic::AtomicBool,
    /// The network namespace to probe from (a hosted gateway's LAN is there).
    namespace: Option<String>,
}

impl IcmpProber {
    /// A prober whose sockets live in the network namespace `name` (a hosted
    /// gateway's `nm-<gateway>`, which holds its uplink to the LAN).
    pub fn in_namespace(name: impl Into<String>) -> Self {
        Self {
            namespace: Some(name.into()),
            ..Self::default()
        }
    }

    /// Opens the sockets, inside the namespace when there is one (raw sockets
    /// belong to the namespace of the thread that creates them).
    fn open(&self) -> Result<Pinger, String> {
        let Some(name) = &self.namespace else {
            return Pinger::new().map_err(|e| e.to_string());
        };
        let ns = nanami_wg::netns::Netns::open(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("network namespace {name} does not exist (yet)"))?;
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        ns.run(move || {
            let _runtime = handle.enter();
            Pinger::new()
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    fn pinger(&self) -> Option<Pinger> {
        let mut slot = self.pinger.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match self.open() {
                Ok(p) => {
                    info!("ICMP prober ready");
                    *slot = Some(p);
                }
                Err(e) => {
                    if !self
                        .failed_once
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        error!(error = %e, "cannot open ICMP sockets (the daemon needs CAP_NET_RAW): health targets are reported as unknown");
                    }
                }
            }
        }
        slot.clone()
    }
}

impl Prober for IcmpProber {
    fn probe(&self, target: IpAddr, timeout: Duration) -> ProbeFuture {
        let pinger = self.pinger();
        Box::pin(async move {
            let Some(pinger) = pinger else {
                return Outcome::Unusable;
            };
            match pinger.ping(target, timeout).await {
                Ok(rtt) => Outcome::Reply(rtt),
                Err(ProbeError::Timeout | ProbeError::Io(_)) => Outcome::NoReply,
                Err(e) => {
                    warn!(%target, error = %e, "cannot probe");
                    Outcome::Unusable
                }
            }
        })
    }
}

/// One network's hysteresis.
#[derive(Debug, Clone)]
struct Track {
    state: PathHealth,
    /// Rounds in a row that point away from `state`.
    streak: u32,
    targets: BTreeMap<IpAddr, TargetHealth>,
}

impl Track {
    fn new(targets: &BTreeSet<IpAddr>) -> Self {
        Self {
            state: PathHealth::Unknown,
            streak: 0,
            targets: targets.iter().map(|t| (*t, fresh_target())).collect(),
        }
    }
}

fn fresh_target() -> TargetHealth {
    TargetHealth {
        last_rtt_us: None,
        consecutive_failures: 0,
    }
}

/// The forwarding-path verdict of every probed network (pure: no clock, no I/O).
#[derive(Debug, Clone)]
pub struct Tracker {
    fail_after: u32,
    recover_after: u32,
    networks: BTreeMap<NetworkId, Track>,
}

impl Tracker {
    /// A tracker with `config`'s hysteresis (thresholds below 1 count as 1) and
    /// nothing to probe.
    pub fn new(config: &ProbeConfig) -> Self {
        Self {
            fail_after: config.fail_after.max(1),
            recover_after: config.recover_after.max(1),
            networks: BTreeMap::new(),
        }
    }

    /// Follows a new set of targets: networks and targets that stay keep their
    /// history, new ones start unknown. Returns whether the set of networks changed.
    pub fn set_targets(&mut self, targets: &HealthTargets) -> bool {
        let before: Vec<NetworkId> = self.networks.keys().cloned().collect();
        self.networks.retain(|id, _| targets.contains_key(id));
        for (id, addrs) in targets {
            let track = self
                .networks
                .entry(id.clone())
                .or_insert_with(|| Track::new(addrs));
            track.targets.retain(|t, _| addrs.contains(t));
            for t in addrs {
                track.targets.entry(*t).or_insert_with(fresh_target);
            }
        }
        !self.networks.keys().eq(before.iter())
    }

    /// Records one round of `network`'s results; returns whether its verdict
    /// changed. Results for targets it does not probe are ignored.
    pub fn record(&mut self, network: &NetworkId, results: &BTreeMap<IpAddr, Outcome>) -> bool {
        let (fail_after, recover_after) = (self.fail_after, self.recover_after);
        let Some(track) = self.networks.get_mut(network) else {
            return false;
        };
        let (mut good, mut bad) = (false, false);
        for (target, health) in &mut track.targets {
            match results.get(target) {
                Some(Outcome::Reply(rtt)) => {
                    good = true;
                    health.last_rtt_us = Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
                    health.consecutive_failures = 0;
                }
                Some(Outcome::NoReply) => {
                    bad = true;
                    health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                }
                Some(Outcome::Unusable) | None => {}
            }
        }
        let before = track.state;
        let (next, streak) = match (track.state, good, bad) {
            // Blind round: nothing known.
            (_, false, false) => (PathHealth::Unknown, 0),
            (PathHealth::Unknown, true, _) => (PathHealth::Healthy, 0),
            (PathHealth::Healthy, true, _) | (PathHealth::Unhealthy, false, true) => {
                (track.state, 0)
            }
            (PathHealth::Unknown | PathHealth::Healthy, false, true) => {
                let streak = track.streak + 1;
                if streak >= fail_after {
                    (PathHealth::Unhealthy, 0)
                } else {
                    (track.state, streak)
                }
            }
            (PathHealth::Unhealthy, true, _) => {
                let streak = track.streak + 1;
                if streak >= recover_after {
                    (PathHealth::Healthy, 0)
                } else {
                    (track.state, streak)
                }
            }
        };
        track.state = next;
        track.streak = streak;
        next != before
    }

    /// Every network's verdict and its targets' latest results, for the report.
    pub fn report(&self) -> BTreeMap<NetworkId, NetworkHealth> {
        self.networks
            .iter()
            .map(|(id, t)| {
                (
                    id.clone(),
                    NetworkHealth {
                        state: t.state,
                        targets: t.targets.clone(),
                    },
                )
            })
            .collect()
    }

    /// Every target of every network, to probe in one round.
    fn targets(&self) -> BTreeSet<IpAddr> {
        self.networks
            .values()
            .flat_map(|t| t.targets.keys().copied())
            .collect()
    }
}

/// Probes the targets in `targets` every `config.interval` until `shutdown`,
/// publishing the verdicts in `health`; receivers are woken only when a verdict or
/// the set of networks changes (the report goes out at once then), while the
/// round-trip figures are updated every round.
pub async fn probe_loop(
    config: ProbeConfig,
    prober: std::sync::Arc<dyn Prober>,
    mut targets: watch::Receiver<HealthTargets>,
    health: watch::Sender<BTreeMap<NetworkId, NetworkHealth>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tracker = Tracker::new(&config);
    let mut ticks = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut targets_open = true;
    loop {
        // New targets are taken in at once; rounds stay on the interval's beat, so a
        // change cannot squeeze extra rounds into the hysteresis.
        let round_due = tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => true,
            changed = targets.changed(), if targets_open => {
                if changed.is_err() {
                    targets_open = false;
                }
                false
            }
        };
        let networks_changed = tracker.set_targets(&targets.borrow_and_update());
        if networks_changed {
            health.send_replace(tracker.report());
        }
        let all = tracker.targets();
        if !round_due || all.is_empty() {
            continue;
        }
        let mut round = JoinSet::new();
        for target in all {
            let probe = prober.probe(target, config.timeout);
            round.spawn(async move { (target, probe.await) });
        }
        let mut results = BTreeMap::new();
        let gather = async {
            while let Some(done) = round.join_next().await {
                if let Ok((target, outcome)) = done {
                    results.insert(target, outcome);
                }
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = gather => {}
        }
        let networks: Vec<NetworkId> = tracker.networks.keys().cloned().collect();
        let mut changed = false;
        for network in networks {
            if tracker.record(&network, &results) {
                changed = true;
                let state = tracker.networks.get(&network).map(|t| t.state);
                match state {
                    Some(PathHealth::Unhealthy) => {
                        warn!(%network, "forwarding path failed: every health target is silent")
                    }
                    Some(s) => info!(%network, state = ?s, "forwarding path health"),
                    None => {}
                }
            }
        }
        let report = tracker.report();
        health.send_if_modified(|h| {
            *h = report;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net() -> NetworkId {
        NetworkId::new("corp").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tracker(targets: &[&str]) -> Tracker {
        let mut t = Tracker::new(&ProbeConfig::default());
        let mut all = HealthTargets::new();
        all.insert(net(), targets.iter().map(|s| ip(s)).collect());
        assert!(t.set_targets(&all));
        t
    }

    fn round(t: &mut Tracker, outcomes: &[(&str, Outcome)]) -> (bool, PathHealth) {
        let results = outcomes.iter().map(|(a, o)| (ip(a), *o)).collect();
        let changed = t.record(&net(), &results);
        (changed, t.report()[&net()].state)
    }

    const OK: Outcome = Outcome::Reply(Duration::from_millis(1));
    const LOST: Outcome = Outcome::NoReply;
    const BLIND: Outcome = Outcome::Unusable;
    use PathHealth::{Healthy as H, Unhealthy as U, Unknown as N};

    /// Feeds one round per outcome for the single target 10.0.0.1; returns the
    /// verdict after each round, checking that a change is reported exactly when the
    /// verdict changes.
    fn script(t: &mut Tracker, outcomes: &[Outcome]) -> Vec<PathHealth> {
        outcomes
            .iter()
            .map(|o| {
                let before = t.report()[&net()].state;
                let (changed, after) = round(t, &[("10.0.0.1", *o)]);
                assert_eq!(changed, before != after);
                after
            })
            .collect()
    }

    #[test]
    fn unhealthy_after_three_silent_rounds_healthy_after_three_good_ones() {
        let mut t = tracker(&["10.0.0.1"]);
        assert_eq!(t.report()[&net()].state, N);
        assert_eq!(
            script(&mut t, &[OK, LOST, LOST, LOST]),
            [H, H, H, U],
            "the first answer makes it healthy; three silent rounds unhealthy"
        );
        assert_eq!(
            t.report()[&net()].targets[&ip("10.0.0.1")].consecutive_failures,
            3
        );
        assert_eq!(script(&mut t, &[OK, OK, OK]), [U, U, H]);
        let target = &t.report()[&net()].targets[&ip("10.0.0.1")];
        assert_eq!(
            (target.consecutive_failures, target.last_rtt_us),
            (0, Some(1000))
        );
    }

    #[test]
    fn a_flapping_path_does_not_flip_the_verdict() {
        let mut t = tracker(&["10.0.0.1"]);
        script(&mut t, &[OK]);
        let flapping = [LOST, LOST, OK].repeat(20);
        assert!(script(&mut t, &flapping).iter().all(|s| *s == H));
        script(&mut t, &[LOST, LOST, LOST]);
        let flapping = [OK, OK, LOST].repeat(20);
        assert!(script(&mut t, &flapping).iter().all(|s| *s == U));
    }

    #[test]
    fn one_answering_target_keeps_the_network_healthy() {
        let mut t = tracker(&["10.0.0.1", "10.0.0.2"]);
        for _ in 0..10 {
            assert_eq!(
                round(&mut t, &[("10.0.0.1", LOST), ("10.0.0.2", OK)]).1,
                PathHealth::Healthy
            );
        }
        for _ in 0..2 {
            round(&mut t, &[("10.0.0.1", LOST), ("10.0.0.2", LOST)]);
        }
        assert_eq!(
            round(&mut t, &[("10.0.0.1", LOST), ("10.0.0.2", LOST)]),
            (true, PathHealth::Unhealthy)
        );
    }

    #[test]
    fn a_path_that_never_worked_goes_unhealthy_and_blind_rounds_are_unknown() {
        let mut t = tracker(&["10.0.0.1"]);
        // The prober losing its sockets gives unknown (treated as healthy), never
        // unhealthy.
        assert_eq!(
            script(&mut t, &[LOST, LOST, LOST, BLIND, LOST, BLIND]),
            [N, N, U, N, N, N]
        );
        assert_eq!(round(&mut t, &[]), (false, N));
    }

    #[test]
    fn changing_targets_keeps_history_of_networks_that_stay() {
        let mut t = tracker(&["10.0.0.1"]);
        script(&mut t, &[LOST, LOST, LOST]);
        let mut all = HealthTargets::new();
        all.insert(net(), [ip("10.0.0.1"), ip("10.0.0.2")].into());
        assert!(!t.set_targets(&all), "same networks");
        assert_eq!(t.report()[&net()].state, PathHealth::Unhealthy);
        assert_eq!(t.report()[&net()].targets.len(), 2);
        assert!(t.set_targets(&HealthTargets::new()));
        assert!(t.report().is_empty());
        assert!(!t.record(&net(), &BTreeMap::new()), "not probed any more");
    }

    #[test]
    fn custom_thresholds() {
        let mut t = Tracker::new(&ProbeConfig {
            fail_after: 1,
            recover_after: 2,
            ..ProbeConfig::default()
        });
        let mut all = HealthTargets::new();
        all.insert(net(), [ip("10.0.0.1")].into());
        t.set_targets(&all);
        assert_eq!(script(&mut t, &[OK, LOST, OK, OK]), [H, U, U, H]);
    }

    /// Answers unless `down`; counts probes.
    #[derive(Debug, Default)]
    struct Switch {
        down: std::sync::atomic::AtomicBool,
        probes: std::sync::atomic::AtomicU32,
    }

    impl Prober for Switch {
        fn probe(&self, _target: IpAddr, _timeout: Duration) -> ProbeFuture {
            use std::sync::atomic::Ordering::Relaxed;
            self.probes.fetch_add(1, Relaxed);
            let outcome = if self.down.load(Relaxed) { LOST } else { OK };
            Box::pin(async move { outcome })
        }
    }

    /// The verdict at the next notification.
    async fn next(rx: &mut watch::Receiver<BTreeMap<NetworkId, NetworkHealth>>) -> PathHealth {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        rx.borrow_and_update()[&net()].state
    }

    #[tokio::test]
    async fn the_loop_publishes_each_verdict_change_once() {
        use std::sync::atomic::Ordering::Relaxed;
        let config = ProbeConfig {
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(5),
            ..ProbeConfig::default()
        };
        let switch = std::sync::Arc::new(Switch::default());
        let mut all = HealthTargets::new();
        all.insert(net(), [ip("10.0.0.1")].into());
        let (_targets_tx, targets_rx) = watch::channel(all);
        let (health_tx, mut health_rx) = watch::channel(BTreeMap::new());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(probe_loop(
            config,
            switch.clone(),
            targets_rx,
            health_tx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        // The network appears (unknown), then its first round answers; a watch
        // may fold the two together.
        let mut state = next(&mut health_rx).await;
        if state == N {
            state = next(&mut health_rx).await;
        }
        assert_eq!(state, H);
        // Rounds go on with no news: no notification until the verdict changes.
        switch.down.store(true, Relaxed);
        assert_eq!(next(&mut health_rx).await, U);
        let probes = switch.probes.load(Relaxed);
        switch.down.store(false, Relaxed);
        assert_eq!(next(&mut health_rx).await, H);
        assert!(
            switch.probes.load(Relaxed) >= probes + 3,
            "three good rounds to recover"
        );
        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }
}
