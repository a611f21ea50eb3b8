//! An in-memory, deterministic [`Platform`] with fault injection, for simulation
//! tests of the reconciler and of anything that embeds it.
//!
//! It applies ops with their model semantics ([`Op::apply`]) but, like a kernel,
//! refuses an op on an interface that does not exist, so a plan in the wrong order
//! fails here too. It also refuses any op on an object Nanami does not own, which
//! turns a violation of the ownership law into a visible test failure.

use nanami_model::ErrorKind;
use std::collections::{BTreeMap, BTreeSet};

use nanami_model::{GatewayState, InterfaceName, PublicKey};
use tokio::sync::mpsc;

use crate::observed::{Observed, PeerTelemetry};
use crate::op::{Op, OpKind};
use crate::platform::{ObjectKind, Platform, PlatformEvent};

/// Capacity of the event channel. Small on purpose: when it is full, events are
/// dropped (as a real netlink socket drops them), and the periodic resync must
/// cover for them.
const EVENT_CAPACITY: usize = 16;

/// Why a simulated call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A failure the test asked for; retrying is expected to work once the fault is
    /// cleared.
    #[error("injected failure of `{op}` (attempt {attempt})")]
    Injected {
        /// The op, rendered.
        op: String,
        /// Which `apply` call it was (1-based).
        attempt: u64,
    },
    /// An observation failure the test asked for.
    #[error("injected observe failure")]
    InjectedObserve,
    /// The op needs an interface that does not exist (a plan ordering bug, or the
    /// interface vanished out of band).
    #[error("no such interface {interface}")]
    NoSuchInterface {
        /// The interface.
        interface: InterfaceName,
    },
    /// The op touches an object Nanami does not own: a bug in whatever planned it.
    #[error("refusing `{op}`: Nanami does not own its object")]
    NotOwned {
        /// The op, rendered.
        op: String,
    },
}

impl SimError {
    /// Injected faults are [`ErrorKind::Environment`]; an op on an interface
    /// that is missing or not Nanami's is a [`ErrorKind::Bug`] of the plan.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SimError::Injected { .. } | SimError::InjectedObserve => ErrorKind::Environment,
            SimError::NoSuchInterface { .. } | SimError::NotOwned { .. } => ErrorKind::Bug,
        }
    }
}

type ApplyHook = Box<dyn FnMut(u64, &Op) + Send>;

/// The in-memory platform.
pub struct SimPlatform {
    state: GatewayState,
    telemetry: BTreeMap<InterfaceName, BTreeMap<PublicKey, PeerTelemetry>>,
    attempts: u64,
    fail_at: BTreeSet<u64>,
    fail_kinds: BTreeSet<OpKind>,
    fail_observes: u32,
    applied: Vec<Op>,
    events_tx: mpsc::Sender<PlatformEvent>,
    events_rx: Option<mpsc::Receiver<PlatformEvent>>,
    dropped_events: u64,
    hook: Option<ApplyHook>,
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .field("fail_at", &self.fail_at)
            .field("fail_kinds", &self.fail_kinds)
            .finish_non_exhaustive()
    }
}

impl Default for SimPlatform {
    fn default() -> Self {
        Self::new(GatewayState::default())
    }
}

impl SimPlatform {
    /// A machine in `state`, which may hold foreign objects (another program's
    /// interfaces, routes, rules).
    pub fn new(state: GatewayState) -> Self {
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        Self {
            state,
            telemetry: BTreeMap::new(),
            attempts: 0,
            fail_at: BTreeSet::new(),
            fail_kinds: BTreeSet::new(),
            fail_observes: 0,
            applied: Vec::new(),
            events_tx,
            events_rx: Some(events_rx),
            dropped_events: 0,
            hook: None,
        }
    }

    /// The machine's state now.
    pub fn state(&self) -> &GatewayState {
        &self.state
    }

    /// Every op applied successfully, in order.
    pub fn applied(&self) -> &[Op] {
        &self.applied
    }

    /// Number of `apply` calls so far, failed ones included.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Events dropped because the channel was full (or its receiver gone).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Reports this telemetry for a peer (while the peer exists).
    pub fn set_telemetry(&mut self, interface: InterfaceName, key: PublicKey, t: PeerTelemetry) {
        self.telemetry.entry(interface).or_default().insert(key, t);
    }

    // --- faults ---

    /// The `n`-th `apply` call from now (1 = the next one) fails, once.
    pub fn fail_nth_op(&mut self, n: u64) {
        self.fail_at.insert(self.attempts.saturating_add(n));
    }

    /// Every op of this kind fails until [`SimPlatform::clear_faults`].
    pub fn fail_kind(&mut self, kind: OpKind) {
        self.fail_kinds.insert(kind);
    }

    /// The next `n` observations fail.
    pub fn fail_observes(&mut self, n: u32) {
        self.fail_observes = n;
    }

    /// Whether any fault is armed (an `n`-th op not reached yet, a failing kind, a
    /// failing observation).
    pub fn faults_armed(&self) -> bool {
        !self.fail_at.is_empty() || !self.fail_kinds.is_empty() || self.fail_observes > 0
    }

    /// Clears every armed fault.
    pub fn clear_faults(&mut self) {
        self.fail_at.clear();
        self.fail_kinds.clear();
        self.fail_observes = 0;
    }

    /// Calls `hook(attempt, op)` at the start of every `apply` (tests use it to
    /// send a new desired state mid-pass).
    pub fn on_apply(&mut self, hook: impl FnMut(u64, &Op) + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    // --- out-of-band changes ---

    /// Changes the machine behind Nanami's back and emits an event for it, as a
    /// platform watching netlink would.
    pub fn out_of_band(&mut self, kind: ObjectKind, change: impl FnOnce(&mut GatewayState)) {
        change(&mut self.state);
        self.emit(PlatformEvent::Changed { kind });
    }

    /// Changes the machine behind Nanami's back without any event (a missed event):
    /// only the periodic resync can notice.
    pub fn out_of_band_silent(&mut self, change: impl FnOnce(&mut GatewayState)) {
        change(&mut self.state);
    }

    /// Deletes the first object of `kind` that Nanami owns, out of band, with an
    /// event. Returns whether there was one. For forwarding, turns off the first
    /// family that is on.
    pub fn delete_owned(&mut self, kind: ObjectKind) -> bool {
        let s = &mut self.state;
        let deleted = match kind {
            ObjectKind::Interface => {
                let name = s.interfaces.keys().find(|n| n.is_owned()).cloned();
                name.is_some_and(|n| s.interfaces.remove(&n).is_some())
            }
            ObjectKind::Address => s
                .interfaces
                .iter_mut()
                .filter(|(n, _)| n.is_owned())
                .find_map(|(_, i)| i.addresses.pop_first())
                .is_some(),
            ObjectKind::Peer => s
                .interfaces
                .iter_mut()
                .filter(|(n, _)| n.is_owned())
                .find_map(|(_, i)| i.peers.pop_first())
                .is_some(),
            ObjectKind::Route => {
                let route = s.routes.iter().find(|r| r.is_owned()).cloned();
                route.is_some_and(|r| s.routes.remove(&r))
            }
            ObjectKind::Rule => {
                let rule = s.rules.iter().find(|r| r.is_owned()).cloned();
                rule.is_some_and(|r| s.rules.remove(&r))
            }
            ObjectKind::Filter => s.filter.take().is_some(),
            ObjectKind::Forwarding => s.forwarding.pop_first().is_some(),
        };
        if deleted {
            self.emit(PlatformEvent::Changed { kind });
        }
        deleted
    }

    fn emit(&mut self, event: PlatformEvent) {
        if self.events_tx.try_send(event).is_err() {
            self.dropped_events += 1;
        }
    }

    fn check(&self, op: &Op) -> Result<(), SimError> {
        let owned = match op {
            Op::AddRoute { route } | Op::RemoveRoute { route } => route.is_owned(),
            Op::AddRule { rule } | Op::RemoveRule { rule } => rule.is_owned(),
            Op::CreateInterface { .. }
            | Op::DeleteInterface { .. }
            | Op::SetListenPort { .. }
            | Op::SetMtu { .. }
            | Op::AddAddress { .. }
            | Op::RemoveAddress { .. }
            | Op::AddPeer { .. }
            | Op::UpdatePeer { .. }
            | Op::RemovePeer { .. }
            | Op::ReplaceFilter { .. }
            | Op::DeleteFilter
            | Op::EnableForwarding { .. } => !matches!(op.interface(), Some(i) if !i.is_owned()),
        };
        if !owned {
            return Err(SimError::NotOwned { op: op.to_string() });
        }
        // Adds and sets need their interface, as in the kernel; removals of
        // something whose interface is gone are "not found", which is success.
        let needs_interface = match op.kind() {
            OpKind::SetListenPort
            | OpKind::SetMtu
            | OpKind::AddAddress
            | OpKind::AddPeer
            | OpKind::UpdatePeer
            | OpKind::AddRoute => true,
            OpKind::CreateInterface
            | OpKind::DeleteInterface
            | OpKind::RemoveAddress
            | OpKind::RemovePeer
            | OpKind::ReplaceFilter
            | OpKind::DeleteFilter
            | OpKind::RemoveRoute
            | OpKind::AddRule
            | OpKind::RemoveRule
            | OpKind::EnableForwarding => false,
        };
        match op.interface() {
            Some(interface)
                if needs_interface && !self.state.interfaces.contains_key(interface) =>
            {
                Err(SimError::NoSuchInterface {
                    interface: interface.clone(),
                })
            }
            Some(_) | None => Ok(()),
        }
    }
}

impl Platform for SimPlatform {
    type Error = SimError;

    async fn observe(&mut self) -> Result<Observed, SimError> {
        if self.fail_observes > 0 {
            self.fail_observes -= 1;
            return Err(SimError::InjectedObserve);
        }
        // Telemetry only for peers that exist, as `wg show` would report it.
        let mut telemetry = BTreeMap::new();
        for (name, peers) in &self.telemetry {
            let Some(interface) = self.state.interfaces.get(name) else {
                continue;
            };
            let present: BTreeMap<_, _> = peers
                .iter()
                .filter(|(k, _)| interface.peers.contains_key(*k))
                .map(|(k, t)| (*k, *t))
                .collect();
            if !present.is_empty() {
                telemetry.insert(name.clone(), present);
            }
        }
        Ok(Observed {
            state: self.state.clone(),
            telemetry,
        })
    }

    async fn apply(&mut self, op: &Op) -> Result<(), SimError> {
        self.attempts += 1;
        let attempt = self.attempts;
        if let Some(hook) = self.hook.as_mut() {
            hook(attempt, op);
        }
        if self.fail_at.remove(&attempt) || self.fail_kinds.contains(&op.kind()) {
            return Err(SimError::Injected {
                op: op.to_string(),
                attempt,
            });
        }
        self.check(op)?;
        op.apply(&mut self.state);
        self.applied.push(op.clone());
        Ok(())
    }

    fn events(&mut self) -> Option<mpsc::Receiver<PlatformEvent>> {
        self.events_rx.take()
    }
}
