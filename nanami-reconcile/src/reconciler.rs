//! The controller loop: level-triggered passes against a [`Platform`] (feature
//! `driver`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::RngCore;
use tokio::sync::{mpsc, watch};
use tracing::{debug, field, info, info_span, warn, Instrument, Span};

use crate::plan::plan;
use crate::platform::{Platform, PlatformEvent};
use crate::status::{
    backoff_delay, Action, Condition, Config, Desired, OpError, PassError, Status,
};

/// How a pass that did not fail ended.
enum Outcome {
    /// The machine matches (after `applied` ops).
    Converged { applied: usize },
    /// A newer desired state arrived after `applied` ops; the pass stopped there.
    Superseded { applied: usize },
}

/// Makes a [`Platform`] match the latest desired state, kube-style.
///
/// Drive it either with [`Reconciler::run`] (tokio, real clock), or by hand, as
/// tests do with a virtual clock:
/// 1. feed inputs: send desired states on the `watch` channel given to
///    [`Reconciler::new`] and call [`Reconciler::handle_desired_changed`]; pass
///    platform events to [`Reconciler::handle_event`];
/// 2. when `now >= `[`Reconciler::next_pass_at`], call [`Reconciler::pass`]`(now)`;
/// 3. read [`Reconciler::status`] (or [`Reconciler::subscribe_status`]).
///
/// Nothing here reads the clock or draws randomness of its own: time is the `now`
/// parameter, randomness (backoff jitter) the injected RNG.
pub struct Reconciler<P: Platform> {
    platform: P,
    rng: Box<dyn RngCore + Send>,
    config: Config,
    desired_rx: watch::Receiver<Option<Arc<Desired>>>,
    desired: Option<Arc<Desired>>,
    status: Status,
    status_tx: watch::Sender<Status>,
    events: Option<mpsc::Receiver<PlatformEvent>>,
    desired_open: bool,
    next_pass_at: Instant,
    /// While failing, events do not cut the backoff short (a platform that echoes
    /// events for every op would otherwise spin); a new desired state does.
    retry_not_before: Option<Instant>,
}

impl<P: Platform> std::fmt::Debug for Reconciler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("config", &self.config)
            .field("status", &self.status)
            .field("next_pass_at", &self.next_pass_at)
            .finish_non_exhaustive()
    }
}

impl<P: Platform> Reconciler<P> {
    /// A reconciler for `platform`, reading desired states from `desired` (a `watch`
    /// channel keeps only the latest one, which is what a level-triggered loop
    /// wants) and taking the platform's event receiver. The first pass is due at
    /// `now`.
    pub fn new(
        mut platform: P,
        desired: watch::Receiver<Option<Arc<Desired>>>,
        rng: Box<dyn RngCore + Send>,
        config: Config,
        now: Instant,
    ) -> Self {
        let status = Status::default();
        let (status_tx, _) = watch::channel(status.clone());
        let events = platform.events();
        Self {
            platform,
            events,
            desired_open: true,
            rng,
            config,
            desired_rx: desired,
            desired: None,
            status,
            status_tx,
            next_pass_at: now,
            retry_not_before: None,
        }
    }

    // --- getters ---

    /// The status after the last pass.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// A receiver of the status, updated after every pass (for the daemon's report
    /// while [`Reconciler::run`] owns the reconciler).
    pub fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status_tx.subscribe()
    }

    /// The desired state in force (the latest accepted).
    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_deref()
    }

    /// The timing configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When the next pass is due.
    pub fn next_pass_at(&self) -> Instant {
        self.next_pass_at
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The platform, mutably (tests inject faults through it).
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    // --- inputs ---

    /// A new desired state was sent: the next pass is due now, even during backoff
    /// (the new state may be what fixes the failure).
    pub fn handle_desired_changed(&mut self, now: Instant) {
        self.next_pass_at = self.next_pass_at.min(now);
    }

    /// The platform reported a change: a pass is due now, or when the current
    /// backoff ends.
    pub fn handle_event(&mut self, event: &PlatformEvent, now: Instant) {
        debug!(?event, "platform event");
        let due = match self.retry_not_before {
            Some(not_before) => now.max(not_before),
            None => now,
        };
        self.next_pass_at = self.next_pass_at.min(due);
    }

    /// Handles every platform event already queued, without waiting; returns how
    /// many there were. For callers that drive the reconciler by hand;
    /// [`Reconciler::run`] handles events as they come.
    pub fn handle_pending_events(&mut self, now: Instant) -> usize {
        let mut handled = 0;
        while let Some(event) = self.events.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.handle_event(&event, now);
            handled += 1;
        }
        handled
    }

    // --- the pass ---

    /// One level-triggered pass: take the latest desired state, observe, plan, apply
    /// op by op (stopping at the first failure, or when a newer desired state
    /// arrives), then observe again, because only an observation says whether the
    /// ops took effect. Returns when to run next (also stored as
    /// [`Reconciler::next_pass_at`], counted from `now`, the pass's start), and
    /// publishes the status.
    pub async fn pass(&mut self, now: Instant) -> Action {
        self.refresh_desired();
        self.status.passes += 1;
        let action = match self.desired.clone() {
            None => {
                // Nothing desired yet: changing nothing is the only safe choice (an
                // empty desired state would delete everything Nanami owns).
                self.status.condition = Condition::Progressing;
                Action::requeue(self.config.resync)
            }
            Some(desired) => {
                self.status.desired_generation = Some(desired.generation);
                self.status.op_errors.clear();
                let span = info_span!(
                    "reconcile",
                    generation = desired.generation,
                    planned = field::Empty,
                    applied = field::Empty,
                );
                let result = self.reconcile(&desired).instrument(span.clone()).await;
                span.in_scope(|| match result {
                    Ok(outcome) => self.on_success(&desired, outcome),
                    Err(err) => self.error_policy(&err),
                })
            }
        };
        self.next_pass_at = now + action.requeue_after();
        self.retry_not_before = (self.status.consecutive_failures > 0).then_some(self.next_pass_at);
        self.status_tx.send_replace(self.status.clone());
        action
    }

    /// The error policy: every failed pass comes here. Marks the status
    /// `Degraded`, records the failed op, and backs off exponentially with jitter.
    pub fn error_policy(&mut self, err: &PassError<P::Error>) -> Action {
        self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
        self.status.condition = Condition::Degraded {
            reason: err.to_string(),
        };
        match err {
            PassError::Apply { op, source } => self.status.op_errors.push(OpError {
                op: op.clone(),
                error: source.to_string(),
            }),
            PassError::Observe(_) | PassError::NotConverged { .. } => {}
        }
        let delay = backoff_delay(
            &self.config,
            self.status.consecutive_failures,
            self.rng.as_mut(),
        );
        warn!(error = %err, failures = self.status.consecutive_failures, retry_in = ?delay, "reconcile pass failed");
        Action::requeue(delay)
    }

    fn on_success(&mut self, desired: &Desired, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Converged { applied } => {
                Span::current().record("applied", applied);
                if applied > 0 {
                    info!(applied, "converged");
                }
                self.status.condition = Condition::Ready;
                self.status.applied_generation = Some(desired.generation);
                self.status.consecutive_failures = 0;
                Action::requeue(self.config.resync)
            }
            Outcome::Superseded { applied } => {
                Span::current().record("applied", applied);
                info!(
                    applied,
                    "a newer desired state arrived mid-pass; starting over"
                );
                self.status.condition = Condition::Progressing;
                Action::requeue(Duration::ZERO)
            }
        }
    }

    /// Takes the latest desired state from the channel, refusing an older
    /// generation than the one in force.
    fn refresh_desired(&mut self) {
        let latest = self.desired_rx.borrow_and_update().clone();
        let Some(latest) = latest else { return };
        match &self.desired {
            Some(current) if latest.generation < current.generation => warn!(
                offered = latest.generation,
                current = current.generation,
                "refusing an older desired state"
            ),
            Some(_) | None => self.desired = Some(latest),
        }
    }

    fn superseded(&self) -> bool {
        self.desired_rx.has_changed().unwrap_or(false)
    }

    async fn reconcile(&mut self, desired: &Desired) -> Result<Outcome, PassError<P::Error>> {
        let observed = self.platform.observe().await.map_err(PassError::Observe)?;
        let ops = plan(&desired.state, &observed);
        self.status.last_plan_len = ops.len();
        Span::current().record("planned", ops.len());
        if ops.is_empty() {
            return Ok(Outcome::Converged { applied: 0 });
        }
        for (applied, op) in ops.ops().iter().enumerate() {
            if self.superseded() {
                return Ok(Outcome::Superseded { applied });
            }
            debug!(%op, "apply");
            self.platform
                .apply(op)
                .await
                .map_err(|source| PassError::Apply {
                    op: op.clone(),
                    source,
                })?;
        }
        let observed = self.platform.observe().await.map_err(PassError::Observe)?;
        let rest = plan(&desired.state, &observed).into_ops();
        let remaining = rest.len();
        match rest.into_iter().next() {
            None => Ok(Outcome::Converged { applied: ops.len() }),
            Some(first) => Err(PassError::NotConverged {
                remaining,
                first: Box::new(first),
            }),
        }
    }

    // --- the driver ---

    /// Runs passes until `shutdown` completes, then returns the reconciler (so a
    /// caller can inspect it or run it again). The only place that reads the clock
    /// (tokio's, so tests can pause it). A pass runs when due: on a new desired
    /// state, on a platform event, after the last action's delay (resync or
    /// backoff). If the desired-state sender goes away, it keeps reconciling toward
    /// the last desired state (the last known good).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Self {
        tokio::pin!(shutdown);
        loop {
            let due = tokio::time::Instant::from_std(self.next_pass_at);
            tokio::select! {
                biased;
                () = &mut shutdown => return self,
                changed = self.desired_rx.changed(), if self.desired_open => match changed {
                    Ok(()) => self.handle_desired_changed(clock()),
                    Err(_) => self.desired_open = false,
                },
                event = next_event(&mut self.events) => match event {
                    Some(event) => self.handle_event(&event, clock()),
                    None => self.events = None,
                },
                () = tokio::time::sleep_until(due) => {
                    self.pass(clock()).await;
                }
            }
        }
    }
}

fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The next platform event, or never if the platform has none (any more).
async fn next_event(events: &mut Option<mpsc::Receiver<PlatformEvent>>) -> Option<PlatformEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
