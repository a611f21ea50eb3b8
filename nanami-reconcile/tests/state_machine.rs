//! The strongest test (STYLE.md, habit 6): a reference model on `BTreeMap`s and the
//! real `Reconciler` on `SimPlatform`, over random sequences of desired-state edits,
//! drift, failed ops and clock ticks, on a virtual clock. After every step the
//! invariants hold; after every successful pass the machine matches the model and
//! `plan` is empty; any ERROR-level log fails the case.
// Test helpers outside #[test] functions may unwrap too: a panic is a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ipnet::IpNet;
use nanami_model::{FilterSet, GatewayState, InterfaceState, IpFamily, PeerState, Route, Rule};
use nanami_reconcile::sim::SimPlatform;
use nanami_reconcile::{
    plan, Condition, Config, Desired, ObjectKind, OpKind, Platform, Reconciler,
};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::sync::watch;

/// The reference: the desired state as the test means it, in plain maps keyed by
/// the generators' small indices, and the foreign objects the machine must keep.
#[derive(Debug, Clone, Default)]
struct Model {
    generation: u64,
    interfaces: BTreeMap<u8, ModelInterface>,
    routes: BTreeSet<(u8, IpNet)>,
    rules: BTreeSet<IpNet>,
    filter: Option<FilterSet>,
    forwarding: BTreeSet<IpFamily>,
    foreign: Foreign,
}

#[derive(Debug, Clone)]
struct ModelInterface {
    port: Option<u16>,
    mtu: u32,
    addresses: BTreeSet<IpNet>,
    peers: BTreeMap<u8, ModelPeer>,
}

/// Endpoint, AllowedIPs, keepalive.
type ModelPeer = (Option<SocketAddr>, BTreeSet<IpNet>, Option<u16>);

impl ModelInterface {
    fn from_state(s: &InterfaceState) -> Self {
        let index = |k| (0..=255u8).find(|i| key(*i) == k).unwrap();
        Self {
            port: s.listen_port,
            mtu: s.mtu,
            addresses: s.addresses.clone(),
            peers: s
                .peers
                .iter()
                .map(|(k, p)| {
                    (
                        index(*k),
                        (p.endpoint, p.allowed_ips.clone(), p.persistent_keepalive),
                    )
                })
                .collect(),
        }
    }
}

impl Model {
    fn edit(&mut self, e: &Edit) {
        match e {
            Edit::Interface(i, Some(s)) => {
                self.interfaces.insert(*i, ModelInterface::from_state(s));
            }
            Edit::Interface(i, None) => {
                self.interfaces.remove(i);
            }
            Edit::Peer(i, k, p) => {
                if let Some(m) = self.interfaces.get_mut(i) {
                    match p {
                        Some(p) => {
                            m.peers.insert(
                                *k,
                                (p.endpoint, p.allowed_ips.clone(), p.persistent_keepalive),
                            );
                        }
                        None => {
                            m.peers.remove(k);
                        }
                    }
                }
            }
            Edit::Endpoint(i, k, e) => {
                if let Some(p) = self.interfaces.get_mut(i).and_then(|m| m.peers.get_mut(k)) {
                    p.0 = *e;
                }
            }
            Edit::AllowedIps(i, k, nets) => {
                if let Some(p) = self.interfaces.get_mut(i).and_then(|m| m.peers.get_mut(k)) {
                    p.1 = nets.clone();
                }
            }
            Edit::Port(i, port) => {
                if let Some(m) = self.interfaces.get_mut(i) {
                    m.port = *port;
                }
            }
            Edit::Mtu(i, mtu) => {
                if let Some(m) = self.interfaces.get_mut(i) {
                    m.mtu = *mtu;
                }
            }
            Edit::Address(i, a, on) => {
                if let Some(m) = self.interfaces.get_mut(i) {
                    if *on {
                        m.addresses.insert(*a);
                    } else {
                        m.addresses.remove(a);
                    }
                }
            }
            Edit::Route(i, d, on) => {
                if *on {
                    self.routes.insert((*i, *d));
                } else {
                    self.routes.remove(&(*i, *d));
                }
            }
            Edit::Rule(d, on) => {
                if *on {
                    self.rules.insert(*d);
                } else {
                    self.rules.remove(d);
                }
            }
            Edit::Filter(f) => self.filter = f.clone(),
            Edit::Forwarding(f, on) => {
                if *on {
                    self.forwarding.insert(*f);
                } else {
                    self.forwarding.remove(f);
                }
            }
        }
    }

    /// The desired state the model stands for: routes only on its interfaces.
    fn desired(&self) -> GatewayState {
        GatewayState {
            interfaces: self
                .interfaces
                .iter()
                .map(|(i, m)| {
                    (
                        owned(*i),
                        InterfaceState {
                            listen_port: m.port,
                            mtu: m.mtu,
                            addresses: m.addresses.clone(),
                            peers: m
                                .peers
                                .iter()
                                .map(|(k, (e, a, ka))| {
                                    (
                                        key(*k),
                                        PeerState {
                                            endpoint: *e,
                                            allowed_ips: a.clone(),
                                            persistent_keepalive: *ka,
                                        },
                                    )
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .filter(|(i, _)| self.interfaces.contains_key(i))
                .map(|(i, d)| Route::nanami(*d, owned(*i)))
                .collect(),
            rules: self.rules.iter().map(|d| Rule::nanami(*d)).collect(),
            filter: self.filter.clone(),
            forwarding: self.forwarding.clone(),
        }
    }
}

#[derive(Debug, Clone)]
enum Transition {
    /// The manager sends a new generation with these edits.
    EditDesired(Vec<Edit>),
    /// Someone changes Nanami's objects on the machine, with or without an event.
    Drift(Edit, bool),
    /// Someone adds objects Nanami does not own.
    ForeignDrift(Foreign),
    /// The n-th op from now fails.
    FailNth(u8),
    /// Every op of a kind fails.
    FailKind(OpKind),
    /// The next observation fails.
    FailObserve,
    /// Faults are cleared.
    ClearFaults,
    /// The clock advances (milliseconds); a due pass runs.
    Tick(u32),
    /// The clock jumps to the next due pass, which runs.
    Pass,
}

fn arb_kind() -> impl Strategy<Value = OpKind> {
    prop::sample::select(vec![
        OpKind::CreateInterface,
        OpKind::DeleteInterface,
        OpKind::SetMtu,
        OpKind::AddAddress,
        OpKind::AddPeer,
        OpKind::UpdatePeer,
        OpKind::RemovePeer,
        OpKind::ReplaceFilter,
        OpKind::AddRoute,
        OpKind::RemoveRoute,
        OpKind::AddRule,
        OpKind::EnableForwarding,
    ])
}

fn arb_transition() -> impl Strategy<Value = Transition> {
    prop_oneof![
        4 => vec(arb_edit(), 1..4).prop_map(Transition::EditDesired),
        3 => (arb_edit(), any::<bool>()).prop_map(|(e, ev)| Transition::Drift(e, ev)),
        1 => arb_foreign().prop_map(Transition::ForeignDrift),
        2 => (1..12u8).prop_map(Transition::FailNth),
        1 => arb_kind().prop_map(Transition::FailKind),
        1 => Just(Transition::FailObserve),
        2 => Just(Transition::ClearFaults),
        3 => (0..40_000u32).prop_map(Transition::Tick),
        4 => Just(Transition::Pass),
    ]
}

fn drift_kind(e: &Edit) -> ObjectKind {
    match e {
        Edit::Interface(..) | Edit::Port(..) | Edit::Mtu(..) => ObjectKind::Interface,
        Edit::Peer(..) | Edit::Endpoint(..) | Edit::AllowedIps(..) => ObjectKind::Peer,
        Edit::Address(..) => ObjectKind::Address,
        Edit::Route(..) => ObjectKind::Route,
        Edit::Rule(..) => ObjectKind::Rule,
        Edit::Filter(..) => ObjectKind::Filter,
        Edit::Forwarding(..) => ObjectKind::Forwarding,
    }
}

/// Counts ERROR-level events; nothing else. A few lines instead of a dependency.
struct ErrorCounter(Arc<AtomicUsize>);

impl tracing::Subscriber for ErrorCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

struct World {
    model: Model,
    rec: Reconciler<SimPlatform>,
    tx: watch::Sender<Option<Arc<Desired>>>,
    now: Instant,
}

impl World {
    fn send(&mut self) {
        self.tx.send_replace(Some(Arc::new(Desired {
            generation: self.model.generation,
            state: self.model.desired(),
        })));
        self.rec.handle_desired_changed(self.now);
    }

    async fn pass(&mut self) -> Result<(), TestCaseError> {
        let clean = !self.rec.platform().faults_armed();
        let before = self.rec.status().passes;
        let action = self.rec.pass(self.now).await;
        let st = self.rec.status().clone();
        prop_assert_eq!(st.passes, before + 1);
        prop_assert_eq!(self.rec.next_pass_at(), self.now + action.requeue_after());
        match &st.condition {
            Condition::Ready => {
                // A successful pass: the machine is the model, and there is nothing
                // left to plan.
                let desired = self.model.desired();
                let machine = self.rec.platform().state();
                prop_assert_eq!(st.applied_generation, Some(self.model.generation));
                prop_assert_eq!(machine.owned(), expected_after(&desired, machine));
                let observed = self.rec.platform_mut().observe().await.unwrap();
                prop_assert!(plan(&desired, &observed).is_empty());
                prop_assert!(st.op_errors.is_empty());
                prop_assert_eq!(st.consecutive_failures, 0);
                prop_assert_eq!(action.requeue_after(), Duration::from_secs(30));
            }
            Condition::Degraded { reason } => {
                prop_assert!(!clean, "failed without a fault: {}", reason);
                prop_assert!(!reason.is_empty());
                prop_assert!(st.op_errors.len() <= 1);
                prop_assert!(st.consecutive_failures >= 1);
                prop_assert!(action.requeue_after() <= Duration::from_secs(60));
                prop_assert!(action.requeue_after() >= Duration::from_millis(125));
            }
            Condition::Progressing => {
                prop_assert!(false, "no desired state arrives mid-pass here");
            }
            #[allow(clippy::wildcard_enum_match_arm)]
            _ => prop_assert!(false, "unknown condition"),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let machine = self.rec.platform().state();
        prop_assert_eq!(Foreign::of(machine), self.model.foreign.clone());
        let st = self.rec.status();
        prop_assert!(st.applied_generation.unwrap_or(0) <= self.model.generation);
        prop_assert!(st.desired_generation.unwrap_or(0) <= self.model.generation);
        prop_assert!(self.rec.next_pass_at() <= self.now + Duration::from_secs(60));
        Ok(())
    }

    async fn step(&mut self, t: &Transition) -> Result<(), TestCaseError> {
        match t {
            Transition::EditDesired(edits) => {
                for e in edits {
                    self.model.edit(e);
                }
                self.model.generation += 1;
                self.send();
            }
            Transition::Drift(e, with_event) => {
                let sim = self.rec.platform_mut();
                if *with_event {
                    sim.out_of_band(drift_kind(e), |s| e.apply(s));
                } else {
                    sim.out_of_band_silent(|s| e.apply(s));
                }
            }
            Transition::ForeignDrift(f) => {
                self.rec.platform_mut().out_of_band_silent(|s| f.seed(s));
                let mut machine = self.rec.platform().state().clone();
                f.seed(&mut machine);
                self.model.foreign = Foreign::of(&machine);
            }
            Transition::FailNth(n) => self.rec.platform_mut().fail_nth_op(u64::from(*n)),
            Transition::FailKind(k) => self.rec.platform_mut().fail_kind(*k),
            Transition::FailObserve => self.rec.platform_mut().fail_observes(1),
            Transition::ClearFaults => self.rec.platform_mut().clear_faults(),
            Transition::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.rec.handle_pending_events(self.now);
                if self.now >= self.rec.next_pass_at() {
                    self.pass().await?;
                }
            }
            Transition::Pass => {
                self.rec.handle_pending_events(self.now);
                self.now = self.now.max(self.rec.next_pass_at());
                self.pass().await?;
            }
        }
        self.check()
    }
}

async fn run_case(
    initial: GatewayState,
    machine: GatewayState,
    foreign: Foreign,
    transitions: Vec<Transition>,
) -> Result<(), TestCaseError> {
    let mut model = Model {
        generation: 1,
        ..Model::default()
    };
    for (name, i) in &initial.interfaces {
        let index = (0..3u8).find(|i| owned(*i) == *name).unwrap();
        model.edit(&Edit::Interface(index, Some(i.clone())));
    }
    for r in &initial.routes {
        let index = (0..3u8).find(|i| owned(*i) == r.interface).unwrap();
        model.routes.insert((index, r.destination));
    }
    model.rules = initial.rules.iter().map(|r| r.destination).collect();
    model.filter = initial.filter.clone();
    model.forwarding = initial.forwarding.clone();
    let mut machine = machine;
    foreign.seed(&mut machine);
    model.foreign = Foreign::of(&machine);

    let now = Instant::now();
    let (tx, rx) = watch::channel(None);
    let rec = Reconciler::new(
        SimPlatform::new(machine),
        rx,
        Box::new(TestRng(42)),
        Config::default(),
        now,
    );
    let mut w = World {
        model,
        rec,
        tx,
        now,
    };
    w.send();
    w.check()?;
    for t in &transitions {
        w.step(t).await?;
    }
    // Quiesce: without faults, one pass converges to the model.
    w.rec.platform_mut().clear_faults();
    w.rec.handle_pending_events(w.now);
    w.now = w.now.max(w.rec.next_pass_at());
    w.pass().await?;
    prop_assert_eq!(&w.rec.status().condition, &Condition::Ready);
    w.check()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn reconciler_matches_reference_model(
        initial in arb_owned_state(),
        machine in arb_owned_state(),
        foreign in arb_foreign(),
        transitions in vec(arb_transition(), 1..40),
    ) {
        let errors = Arc::new(AtomicUsize::new(0));
        let subscriber = ErrorCounter(Arc::clone(&errors));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let result = tracing::subscriber::with_default(subscriber, || {
            rt.block_on(run_case(initial, machine, foreign, transitions))
        });
        result?;
        prop_assert_eq!(errors.load(Ordering::Relaxed), 0, "an ERROR was logged");
    }
}
