//! Simulation: the real `Reconciler` against `SimPlatform` with injected faults.
// Test helpers outside #[test] functions may unwrap too: a panic is a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ipnet::IpNet;
use nanami_model::state::{NANAMI_PROTO, NANAMI_TABLE};
use nanami_model::{
    Destination, FilterRule, FilterSet, GatewayState, InterfaceName, InterfaceState, IpFamily,
    NatRule, PeerState, Route, Rule,
};
use nanami_reconcile::sim::{SimError, SimPlatform};
use nanami_reconcile::{
    backoff_delay, plan, Condition, Config, Desired, ObjectKind, Observed, Op, OpKind, Platform,
    Reconciler,
};
use tokio::sync::{oneshot, watch};

type DesiredTx = watch::Sender<Option<Arc<Desired>>>;

fn n(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn iface(name: &str) -> InterfaceName {
    InterfaceName::new(name).unwrap()
}

/// A gateway with two interfaces, 30 peers, routes, rules, filter and forwarding.
fn desired_v1() -> GatewayState {
    let mut s = GatewayState::default();
    for (name, port, count, base) in [("nm-a", 51820, 20u8, 10u8), ("nm-b", 51821, 10, 40)] {
        let mut i = InterfaceState {
            listen_port: Some(port),
            ..InterfaceState::default()
        };
        i.addresses.insert(n(&format!("100.80.{base}.1/24")));
        for p in 0..count {
            i.peers.insert(
                key(base + p),
                PeerState {
                    endpoint: (p % 3 == 0).then(|| endpoint(p)),
                    allowed_ips: [n(&format!("100.80.{base}.{}/32", p + 10))].into(),
                    persistent_keepalive: (p % 2 == 0).then_some(25),
                },
            );
        }
        s.interfaces.insert(iface(name), i);
    }
    s.routes
        .insert(Route::nanami(n("10.20.0.0/16"), iface("nm-a")));
    s.routes
        .insert(Route::nanami(n("10.30.0.0/16"), iface("nm-b")));
    s.rules.insert(Rule::nanami(n("100.80.10.0/24")));
    s.rules.insert(Rule::nanami(n("100.80.40.0/24")));
    s.filter = Some(FilterSet {
        accept: [FilterRule {
            interface: iface("nm-a"),
            source: n("100.80.10.0/24"),
            destination: Destination::Prefix(n("10.20.0.0/16")),
        }]
        .into(),
        masquerade: [NatRule {
            source: n("100.80.10.0/24"),
            destination: Destination::Internet,
        }]
        .into(),
    });
    s.forwarding = [IpFamily::V4, IpFamily::V6].into();
    s
}

/// Foreign objects any machine here starts with.
fn foreign_objects() -> Foreign {
    let mut f = Foreign::default();
    f.interfaces
        .insert(iface("eth0"), InterfaceState::default());
    let mut wg0 = InterfaceState::default();
    wg0.peers.insert(key(200), PeerState::default());
    f.interfaces.insert(iface("wg0"), wg0);
    f.routes.insert(Route {
        table: 254,
        destination: n("0.0.0.0/0"),
        interface: iface("eth0"),
        protocol: 4,
    });
    f.routes.insert(Route {
        table: NANAMI_TABLE,
        destination: n("10.99.0.0/16"),
        interface: iface("wg0"),
        protocol: 3,
    });
    f.routes.insert(Route {
        table: 254,
        destination: n("100.80.10.0/24"),
        interface: iface("nm-a"),
        protocol: NANAMI_PROTO,
    });
    f.rules.insert(Rule {
        priority: 100,
        destination: n("10.0.0.0/8"),
        table: 254,
        protocol: 0,
        suppress_prefix_len: None,
    });
    f
}

/// The machine before the first pass: foreign objects, plus stale and drifted
/// objects of Nanami's, so the first plan removes, updates and creates.
fn machine_v0() -> GatewayState {
    let mut s = desired_v1();
    // Stale interface with a route and a rule.
    let mut old = InterfaceState::default();
    old.peers.insert(key(90), PeerState::default());
    s.interfaces.insert(iface("nm-old"), old);
    s.routes
        .insert(Route::nanami(n("10.40.0.0/16"), iface("nm-old")));
    s.rules.insert(Rule::nanami(n("10.40.0.0/16")));
    // nm-b does not exist yet, and neither do its route, the filter or v6 forwarding.
    s.interfaces.remove(&iface("nm-b"));
    s.routes
        .remove(&Route::nanami(n("10.30.0.0/16"), iface("nm-b")));
    s.filter = None;
    s.forwarding.remove(&IpFamily::V6);
    // nm-a drifted: MTU, a stale peer, a changed endpoint, a missing peer.
    let a = s.interfaces.get_mut(&iface("nm-a")).unwrap();
    a.mtu = 1380;
    a.peers.insert(key(91), PeerState::default());
    a.peers.get_mut(&key(11)).unwrap().endpoint = Some(endpoint(1));
    a.peers.remove(&key(12));
    for k in 14..=19 {
        a.peers.remove(&key(k));
    }
    for k in 92..=95 {
        a.peers.insert(key(k), PeerState::default());
    }
    for k in 20..=27 {
        a.peers
            .get_mut(&key(k))
            .unwrap()
            .allowed_ips
            .insert(n("10.66.0.0/24"));
    }
    foreign_objects().seed(&mut s);
    s
}

struct Harness {
    rec: Reconciler<SimPlatform>,
    tx: Arc<DesiredTx>,
    now: Instant,
}

impl Harness {
    fn new(machine: GatewayState, desired: Option<Desired>) -> Self {
        let (tx, rx) = watch::channel(desired.map(Arc::new));
        let now = Instant::now();
        let rec = Reconciler::new(
            SimPlatform::new(machine),
            rx,
            Box::new(TestRng(7)),
            Config::default(),
            now,
        );
        Self {
            rec,
            tx: Arc::new(tx),
            now,
        }
    }

    /// Moves the virtual clock to the next due pass and runs it.
    async fn next_pass(&mut self) -> nanami_reconcile::Action {
        self.now = self.now.max(self.rec.next_pass_at());
        self.rec.pass(self.now).await
    }

    fn send(&self, generation: u64, state: GatewayState) {
        self.tx
            .send_replace(Some(Arc::new(Desired { generation, state })));
    }

    fn state(&self) -> &GatewayState {
        self.rec.platform().state()
    }

    fn assert_converged_to(&self, desired: &GatewayState) {
        let st = self.state();
        assert_eq!(
            st.owned(),
            expected_after(desired, st),
            "{:?}",
            self.rec.status()
        );
        assert!(plan(desired, &Observed::from(st.clone())).is_empty());
        assert!(foreign_objects().all_in(st), "foreign objects changed");
    }
}

fn v1() -> Option<Desired> {
    Some(Desired {
        generation: 1,
        state: desired_v1(),
    })
}

#[tokio::test]
async fn converges_in_one_pass_without_faults() {
    let mut h = Harness::new(machine_v0(), v1());
    let first = plan(&desired_v1(), &Observed::from(machine_v0()));
    let action = h.next_pass().await;
    assert_eq!(h.rec.status().condition, Condition::Ready);
    assert_eq!(h.rec.status().applied_generation, Some(1));
    assert_eq!(h.rec.status().last_plan_len, first.len());
    assert_eq!(action.requeue_after(), Duration::from_secs(30));
    assert_eq!(h.rec.platform().applied(), first.ops());
    h.assert_converged_to(&desired_v1());
    // The next pass finds nothing to do.
    h.next_pass().await;
    assert_eq!(h.rec.status().last_plan_len, 0);
    assert_eq!(h.rec.platform().applied().len(), first.len());
}

#[tokio::test]
async fn converges_after_a_single_failed_op_at_every_position() {
    let first = plan(&desired_v1(), &Observed::from(machine_v0()));
    assert!(first.len() >= 40, "a sizable plan: {}", first.len());
    for nth in 1..=first.len() {
        let mut h = Harness::new(machine_v0(), v1());
        h.rec.platform_mut().fail_nth_op(nth as u64);
        let action = h.next_pass().await;
        let status = h.rec.status().clone();
        assert!(
            matches!(status.condition, Condition::Degraded { .. }),
            "op {nth}: {status:?}"
        );
        assert_eq!(status.op_errors.len(), 1);
        assert_eq!(status.op_errors[0].op, first.ops()[nth - 1], "op {nth}");
        assert_eq!(status.applied_generation, None);
        // First retry: 250 ms with equal jitter.
        assert!(action.requeue_after() >= Duration::from_millis(125));
        assert!(action.requeue_after() <= Duration::from_millis(250));
        assert!(foreign_objects().all_in(h.state()));

        h.next_pass().await;
        assert_eq!(h.rec.status().condition, Condition::Ready, "op {nth}");
        assert_eq!(h.rec.status().consecutive_failures, 0);
        assert!(h.rec.status().op_errors.is_empty());
        h.assert_converged_to(&desired_v1());
    }
}

#[tokio::test]
async fn converges_after_out_of_band_deletion_of_each_kind() {
    let mut h = Harness::new(machine_v0(), v1());
    h.next_pass().await;
    h.assert_converged_to(&desired_v1());
    for kind in [
        ObjectKind::Route,
        ObjectKind::Rule,
        ObjectKind::Filter,
        ObjectKind::Peer,
        ObjectKind::Address,
        ObjectKind::Interface,
        ObjectKind::Forwarding,
    ] {
        assert!(h.rec.platform_mut().delete_owned(kind), "{kind:?}");
        assert_ne!(h.state().owned(), expected_after(&desired_v1(), h.state()));
        // The event makes a pass due now rather than at the 30 s resync.
        h.now += Duration::from_secs(1);
        assert_eq!(h.rec.handle_pending_events(h.now), 1);
        assert_eq!(h.rec.next_pass_at(), h.now);
        h.next_pass().await;
        assert_eq!(h.rec.status().condition, Condition::Ready, "{kind:?}");
        assert!(h.rec.status().last_plan_len >= 1);
        h.assert_converged_to(&desired_v1());
    }
}

fn desired_v2() -> GatewayState {
    let mut s = desired_v1();
    let a = s.interfaces.get_mut(&iface("nm-a")).unwrap();
    a.peers.remove(&key(10));
    a.peers
        .get_mut(&key(13))
        .unwrap()
        .allowed_ips
        .insert(n("10.77.0.0/24"));
    a.peers.insert(key(99), PeerState::default());
    s.interfaces.remove(&iface("nm-b"));
    s.routes
        .remove(&Route::nanami(n("10.30.0.0/16"), iface("nm-b")));
    s
}

#[tokio::test]
async fn desired_state_arriving_mid_pass_is_picked_up() {
    let mut h = Harness::new(machine_v0(), v1());
    let tx = Arc::clone(&h.tx);
    let sent = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&sent);
    h.rec.platform_mut().on_apply(move |attempt, _op| {
        if attempt == 3 {
            tx.send_replace(Some(Arc::new(Desired {
                generation: 2,
                state: desired_v2(),
            })));
            *flag.lock().unwrap() = true;
        }
    });
    let action = h.next_pass().await;
    assert!(*sent.lock().unwrap());
    // The pass stopped after the op during which generation 2 arrived...
    assert_eq!(h.rec.platform().attempts(), 3);
    assert_eq!(h.rec.status().condition, Condition::Progressing);
    assert_eq!(action.requeue_after(), Duration::ZERO);
    assert_eq!(h.rec.status().applied_generation, None);
    // ...and the next pass, due at once, applies generation 2.
    assert_eq!(h.rec.next_pass_at(), h.now);
    h.next_pass().await;
    assert_eq!(h.rec.status().condition, Condition::Ready);
    assert_eq!(h.rec.status().applied_generation, Some(2));
    h.assert_converged_to(&desired_v2());
}

#[tokio::test]
async fn failing_observe_changes_nothing_and_backs_off() {
    let mut h = Harness::new(machine_v0(), v1());
    h.rec.platform_mut().fail_observes(1);
    h.next_pass().await;
    assert!(
        matches!(&h.rec.status().condition, Condition::Degraded { reason } if reason.contains("observ"))
    );
    assert_eq!(h.rec.platform().attempts(), 0);
    assert_eq!(h.state(), &machine_v0());
    h.next_pass().await;
    h.assert_converged_to(&desired_v1());
}

#[tokio::test]
async fn no_desired_state_means_no_change() {
    let mut h = Harness::new(machine_v0(), None);
    let action = h.next_pass().await;
    assert_eq!(h.rec.status().condition, Condition::Progressing);
    assert_eq!(action.requeue_after(), Duration::from_secs(30));
    assert_eq!(h.rec.platform().attempts(), 0);
    h.send(1, desired_v1());
    h.rec.handle_desired_changed(h.now);
    h.next_pass().await;
    h.assert_converged_to(&desired_v1());
}

#[tokio::test]
async fn an_older_generation_is_refused() {
    let mut h = Harness::new(machine_v0(), v1());
    h.send(5, desired_v2());
    h.next_pass().await;
    assert_eq!(h.rec.status().applied_generation, Some(5));
    h.send(3, desired_v1());
    h.rec.handle_desired_changed(h.now);
    h.next_pass().await;
    assert_eq!(h.rec.desired().map(|d| d.generation), Some(5));
    h.assert_converged_to(&desired_v2());
}

#[tokio::test]
async fn a_kind_that_always_fails_degrades_with_growing_capped_backoff() {
    let mut h = Harness::new(machine_v0(), v1());
    h.rec.platform_mut().fail_kind(OpKind::AddPeer);
    let mut delays = Vec::new();
    for _ in 0..16 {
        delays.push(h.next_pass().await.requeue_after());
        let st = h.rec.status();
        assert!(
            matches!(&st.condition, Condition::Degraded { reason } if reason.contains("+ peer"))
        );
        assert_eq!(st.op_errors[0].op.kind(), OpKind::AddPeer);
        assert!(foreign_objects().all_in(h.state()));
    }
    assert_eq!(h.rec.status().consecutive_failures, 16);
    for (i, d) in delays.iter().enumerate() {
        let base = Duration::from_millis(250)
            .saturating_mul(1 << i)
            .min(Duration::from_secs(60));
        assert!(
            *d >= base / 2 && *d <= base,
            "retry {i}: {d:?} for base {base:?}"
        );
    }
    h.rec.platform_mut().clear_faults();
    h.next_pass().await;
    h.assert_converged_to(&desired_v1());
}

#[test]
fn backoff_is_bounded_and_deterministic() {
    let config = Config::default();
    let mut a = TestRng(1);
    let mut b = TestRng(1);
    for failures in 0..100 {
        let d = backoff_delay(&config, failures, &mut a);
        assert_eq!(d, backoff_delay(&config, failures, &mut b));
        assert!(d <= config.backoff_max);
        assert!(d >= config.backoff_initial / 2);
    }
}

#[tokio::test]
async fn sim_refuses_foreign_objects_and_missing_interfaces() {
    let mut sim = SimPlatform::new(machine_v0());
    let foreign = Op::RemoveRoute {
        route: foreign_objects().routes.into_iter().next().unwrap(),
    };
    assert!(matches!(
        sim.apply(&foreign).await,
        Err(SimError::NotOwned { .. })
    ));
    let missing = Op::AddPeer {
        interface: iface("nm-zz"),
        public_key: key(1),
        peer: PeerState::default(),
    };
    assert!(matches!(
        sim.apply(&missing).await,
        Err(SimError::NoSuchInterface { .. })
    ));
    // Deleting what is not there is success.
    assert!(sim
        .apply(&Op::DeleteInterface {
            interface: iface("nm-zz")
        })
        .await
        .is_ok());
}

// --- the tokio driver, on a paused (virtual) clock ---

async fn wait_for(
    rx: &mut watch::Receiver<nanami_reconcile::Status>,
    f: impl Fn(&nanami_reconcile::Status) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(3600), rx.wait_for(|s| f(s)))
        .await
        .expect("virtual hour elapsed")
        .expect("status channel open");
}

#[tokio::test(start_paused = true)]
async fn driver_applies_new_states_resyncs_and_reacts_to_events() {
    let h = Harness::new(machine_v0(), None);
    let Harness { rec, tx, .. } = h;
    let mut status = rec.subscribe_status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(rec.run(async move {
        let _ = stopped.await;
    }));
    tx.send_replace(Some(Arc::new(Desired {
        generation: 1,
        state: desired_v1(),
    })));
    wait_for(&mut status, |s| s.applied_generation == Some(1)).await;
    // A new state mid-run is applied promptly.
    tx.send_replace(Some(Arc::new(Desired {
        generation: 2,
        state: desired_v2(),
    })));
    wait_for(&mut status, |s| {
        s.applied_generation == Some(2) && s.condition == Condition::Ready
    })
    .await;
    stop.send(()).unwrap();
    let mut rec = task.await.unwrap();
    assert!(foreign_objects().all_in(rec.platform().state()));

    // Drift without an event is found by the periodic resync, about 30 s later.
    rec.platform_mut().out_of_band_silent(|s| {
        s.interfaces
            .get_mut(&iface("nm-a"))
            .unwrap()
            .peers
            .pop_first();
    });
    let passes = rec.status().passes;
    let started = tokio::time::Instant::now();
    let mut status = rec.subscribe_status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(rec.run(async move {
        let _ = stopped.await;
    }));
    wait_for(&mut status, |s| s.passes > passes).await;
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(30), "{waited:?}");
    assert!(waited >= Duration::from_secs(25), "{waited:?}");
    assert_eq!(status.borrow().last_plan_len, 1);
    assert_eq!(status.borrow().condition, Condition::Ready);
    stop.send(()).unwrap();
    let mut rec = task.await.unwrap();

    // Drift with an event is repaired at once.
    assert!(rec.platform_mut().delete_owned(ObjectKind::Route));
    let passes = rec.status().passes;
    let started = tokio::time::Instant::now();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut status = rec.subscribe_status();
    let task = tokio::spawn(rec.run(async move {
        let _ = stopped.await;
    }));
    wait_for(&mut status, |s| s.passes > passes).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    stop.send(()).unwrap();
    let rec = task.await.unwrap();
    let st = rec.platform().state();
    assert_eq!(st.owned(), expected_after(&desired_v2(), st));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn driver_backs_off_while_failing_and_recovers() {
    let h = Harness::new(machine_v0(), v1());
    let Harness { mut rec, tx, .. } = h;
    rec.platform_mut().fail_kind(OpKind::ReplaceFilter);
    let mut status = rec.subscribe_status();
    let (stop, stopped) = oneshot::channel::<()>();
    let start = tokio::time::Instant::now();
    let task = tokio::spawn(rec.run(async move {
        let _ = stopped.await;
    }));
    wait_for(&mut status, |s| s.consecutive_failures >= 12).await;
    // 250 ms doubling, halved by jitter at worst: 11 retries take at least
    // (0.25 * (2^9 - 1) + 2 * 60) / 2 s... bounded below by the sum of half-bases.
    let lower: Duration = (0..11)
        .map(|i| {
            Duration::from_millis(250)
                .saturating_mul(1 << i)
                .min(Duration::from_secs(60))
                / 2
        })
        .sum();
    let upper: Duration = (0..11)
        .map(|i| {
            Duration::from_millis(250)
                .saturating_mul(1 << i)
                .min(Duration::from_secs(60))
        })
        .sum();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= lower && elapsed <= upper,
        "{elapsed:?} not in {lower:?}..{upper:?}"
    );
    stop.send(()).unwrap();
    let mut rec = task.await.unwrap();
    rec.platform_mut().clear_faults();
    let mut status = rec.subscribe_status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(rec.run(async move {
        let _ = stopped.await;
    }));
    wait_for(&mut status, |s| s.condition == Condition::Ready).await;
    stop.send(()).unwrap();
    let rec = task.await.unwrap();
    let st = rec.platform().state();
    assert_eq!(st.owned(), expected_after(&desired_v1(), st));
    assert!(foreign_objects().all_in(st));
    drop(tx);
}
