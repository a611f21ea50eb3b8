//! The state machine: [`Agent`], its inputs (`handle_*`) and its outputs
//! ([`Action`]). See the [crate](crate) docs for the rules and the driver's
//! contract.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use nanami_model::{Failover, GatewayId, ProbePolicy};
use nanami_reconcile::backoff::SplitMix64;
use nanami_reconcile::Backoff;

use crate::desired::{DesiredState, Freshness};

/// The first wait after a round of failures is drawn from 100–200 ms: a manager
/// restarting, or a switch to another, is barely noticed.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest wait is drawn from 5–10 s: a fleet retrying a dead manager stays a
/// light load, and one that comes back is found within 10 s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How an agent behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How many managers there are (at least one; more are counted as one).
    pub managers: usize,
    /// The first backoff wait's upper bound ([`BACKOFF_FIRST`]).
    pub backoff_first: Duration,
    /// The longest backoff wait ([`BACKOFF_MAX`]).
    pub backoff_max: Duration,
    /// Report at least this often once enrolled (a gateway's heartbeat); `None`:
    /// never report (a client).
    pub report_every: Option<Duration>,
    /// Probe the gateways of the failover lists and route around dead ones (a
    /// client); `None`: no failover (a gateway).
    pub failover: Option<ProbePolicy>,
    /// Apply a newer desired state even when saving it as the last-known-good one
    /// failed (a client: the manager, which just answered, has it too). `false`
    /// (a gateway): the agent waits for the save ([`Agent::handle_persisted`])
    /// before applying, and a failed save ([`Agent::handle_persist_failed`])
    /// refuses the state ([`Refusal::Unsaved`]): a gateway only ever runs a state
    /// it would come back to after a restart.
    pub apply_unsaved: bool,
}

impl Config {
    /// `managers` managers, the default backoff, no reports, no failover.
    pub fn new(managers: usize) -> Self {
        Self {
            managers: managers.max(1),
            backoff_first: BACKOFF_FIRST,
            backoff_max: BACKOFF_MAX,
            report_every: None,
            failover: None,
            apply_unsaved: true,
        }
    }
}

/// The credential an enrolment yields. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(pub String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

/// What the agent finds on start (read by the driver from its state directory).
#[derive(Debug, Clone)]
pub struct Start<D> {
    /// The saved credential, if enrolled before.
    pub credential: Option<Credential>,
    /// The saved last-known-good desired state.
    pub lkg: Option<D>,
    /// Whether a one-time enrolment token was given.
    pub token: bool,
}

/// Why a request to a manager failed, as far as the agent's rules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The manager could not be reached, did not answer in time, or is
    /// unavailable (503): try the next manager.
    Unreachable,
    /// The manager refuses the credential or the token (401, 403).
    Unauthorized,
    /// Any other refusal or an answer that makes no sense: the manager answered,
    /// so the agent stays with it.
    Rejected,
}

/// Why a desired state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Older than the one held (no rollback).
    #[error("older than the one in force (no rollback)")]
    Older,
    /// The same version with other content: the manager's history forked.
    #[error("the same version as the one in force with other content (a forked history)")]
    Forked,
    /// It fails its checks.
    #[error("{0}")]
    Invalid(String),
    /// It could not be saved as the last-known-good state (with
    /// [`Config::apply_unsaved`] off): not applied either.
    #[error("saving it failed: {0}")]
    Unsaved(String),
}

/// Why the agent stopped for good: the driver ends its run with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// No credential was saved and no enrolment token given.
    #[error("not enrolled yet: give a one-time enrolment token")]
    NotEnrolled,
    /// The manager refused the enrolment token (spent, expired, for someone
    /// else): a new token is needed.
    #[error("manager {manager} refused the enrolment token: a new token is needed")]
    EnrolmentRefused {
        /// The manager's index.
        manager: usize,
    },
}

/// What happened, for logs and status: the driver logs these; nothing depends on
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<V> {
    /// Serving the saved desired state from start, before any manager answers.
    ServingLastKnownGood {
        /// Its version.
        version: V,
    },
    /// Enrolled with the manager: the credential is to be saved.
    Enrolled {
        /// The manager's index.
        manager: usize,
    },
    /// A newer desired state was taken: saved, then applied.
    Accepted {
        /// Its version.
        version: V,
    },
    /// A desired state was refused; the one held stays in force.
    Refused {
        /// The offered version.
        offered: V,
        /// Why.
        why: Refusal,
    },
    /// A manager could not be reached; the next one is tried.
    Unreachable {
        /// The manager that failed.
        manager: usize,
        /// The one tried next.
        next: usize,
        /// The wait before it is tried, when every manager failed in a row.
        retry_in: Option<Duration>,
    },
    /// A manager other than the one that answered last answers now.
    SwitchedManager {
        /// The one that answered before (`None`: none had).
        from: Option<usize>,
        /// The one that answers now.
        to: usize,
    },
    /// The manager refuses the saved credential (401/403). The agent keeps
    /// serving its last-known-good state and asks again after the backoff; it
    /// never enrols again on its own (the token is spent): an operator must give
    /// a new token.
    CredentialRefused {
        /// The manager's index.
        manager: usize,
        /// The wait before the next try.
        retry_in: Duration,
    },
    /// The manager answered with another error; asked again after the backoff.
    Rejected {
        /// The manager's index.
        manager: usize,
        /// The wait before the next try.
        retry_in: Duration,
    },
}

/// What the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<D: DesiredState> {
    /// Enrol with the token at `manager`, then call [`Agent::handle_enrolled`] or
    /// [`Agent::handle_enrol_failed`].
    Enrol {
        /// The manager's index.
        manager: usize,
    },
    /// Long-poll `manager` for a desired state other than `after` (`None`: the
    /// current one at once), then call [`Agent::handle_desired`],
    /// [`Agent::handle_unchanged`] or [`Agent::handle_poll_failed`].
    Poll {
        /// The manager's index.
        manager: usize,
        /// The version to wait past.
        after: Option<D::Version>,
    },
    /// Save the credential (0600, atomically) before using it.
    PersistCredential(Credential),
    /// Save this as the last-known-good desired state (atomically), before
    /// applying it; then call [`Agent::handle_persisted`] or
    /// [`Agent::handle_persist_failed`].
    PersistLkg(D),
    /// Hand this desired state to the reconciler.
    Apply(D),
    /// Report to `manager` (status, observed state); a failed report needs no
    /// input back.
    Report {
        /// The manager's index.
        manager: usize,
    },
    /// Probe each gateway at its addresses; each answer is
    /// [`Agent::handle_probe_reply`].
    Probe {
        /// Gateways and their addresses.
        targets: BTreeMap<GatewayId, BTreeSet<IpAddr>>,
    },
    /// Route around exactly these gateways from now on (failover): the
    /// reconciler's state is the desired one with them treated as dead.
    SwitchGateways {
        /// The gateways treated as dead.
        down: BTreeSet<GatewayId>,
    },
    /// Something to log.
    Notify(Event<D::Version>),
    /// Stop for good.
    Stop(Fatal),
    /// Call [`Agent::handle_tick`] at `until` (or on the next input, whichever
    /// comes first). Always the last action when present; the last one given
    /// replaces any earlier.
    Wait {
        /// When, on the agent's clock.
        until: Duration,
    },
}

/// What the agent waits for from the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Enrol,
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Nothing (not started, or stopped).
    Idle,
    /// A request is out at the current manager.
    InFlight(Request),
    /// The request goes out at this time.
    RetryAt(Request, Duration),
    /// A newer desired state is being saved; it is applied once saved
    /// ([`Config::apply_unsaved`] off).
    Saving,
}

/// Failover's part of the state.
#[derive(Debug, Clone)]
struct Probing {
    failover: Failover,
    /// Probing has begun (after the first desired state was applied).
    started: bool,
    next_probe: Duration,
    /// The down set last handed out.
    down: BTreeSet<GatewayId>,
}

/// The agent: enrolment, following the manager(s), last-known-good, reporting and
/// client failover as a state machine. Every input takes `now`, a [`Duration`]
/// since any fixed origin; every input returns the [`Action`]s to take.
#[derive(Debug, Clone)]
pub struct Agent<D: DesiredState> {
    config: Config,
    rng: SplitMix64,
    backoff: Backoff,
    pending: Pending,
    stopped: bool,
    /// Enrolled (a credential is saved).
    enrolled: bool,
    /// The last-known-good desired state.
    held: Option<D>,
    /// The newer desired state being saved (with [`Pending::Saving`]).
    unsaved: Option<D>,
    /// A manager has answered a long-poll since start (the first asks for the
    /// current state, so a manager that went back in time is noticed).
    answered_once: bool,
    /// The manager asked now, and the one that answered last.
    manager: usize,
    last_answered: Option<usize>,
    /// Managers that could not be reached in a row.
    unreachable_in_row: usize,
    next_report: Option<Duration>,
    probing: Option<Probing>,
}

impl<D: DesiredState> Agent<D> {
    /// A new agent; `seed` is its randomness (the backoff's jitter): the same
    /// seed and inputs give the same actions.
    pub fn new(config: Config, seed: u64) -> Self {
        let config = Config {
            managers: config.managers.max(1),
            ..config
        };
        Self {
            backoff: Backoff::new(config.backoff_first, config.backoff_max),
            probing: config.failover.map(|policy| Probing {
                failover: Failover::new(policy),
                started: false,
                next_probe: Duration::ZERO,
                down: BTreeSet::new(),
            }),
            config,
            rng: SplitMix64(seed),
            pending: Pending::Idle,
            stopped: false,
            enrolled: false,
            held: None,
            unsaved: None,
            answered_once: false,
            manager: 0,
            last_answered: None,
            unreachable_in_row: 0,
            next_report: None,
        }
    }

    /// The last-known-good desired state (the one in force).
    pub fn held(&self) -> Option<&D> {
        self.held.as_ref()
    }

    /// The manager asked now (the one that answered last, unless it failed since).
    pub fn manager(&self) -> usize {
        self.manager
    }

    /// Whether the agent stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The gateways treated as dead now (empty without failover).
    pub fn down(&self) -> BTreeSet<GatewayId> {
        self.probing
            .as_ref()
            .map(|p| p.down.clone())
            .unwrap_or_default()
    }

    /// Starts: serves the last-known-good state at once (it is not saved again),
    /// then follows the manager with the saved credential, or enrols first when
    /// there is none (which needs a token).
    pub fn handle_start(&mut self, now: Duration, start: Start<D>) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.stopped || self.pending != Pending::Idle {
            return out;
        }
        if let Some(lkg) = start.lkg {
            out.push(Action::Notify(Event::ServingLastKnownGood {
                version: lkg.version(),
            }));
            out.push(Action::Apply(lkg.clone()));
            self.held = Some(lkg);
        }
        if start.credential.is_some() {
            self.enrolled = true;
            self.next_report = self.config.report_every.map(|_| now);
            self.send(Request::Poll, &mut out);
        } else if start.token {
            self.send(Request::Enrol, &mut out);
        } else {
            self.stop(Fatal::NotEnrolled, &mut out);
            return out;
        }
        self.timers(now, &mut out);
        out
    }

    /// The enrolment at `manager` succeeded: the credential is saved, then the
    /// agent follows that manager.
    pub fn handle_enrolled(
        &mut self,
        now: Duration,
        manager: usize,
        credential: Credential,
    ) -> Vec<Action<D>> {
        self.answer(now, Request::Enrol, manager, |agent, out| {
            agent.answered(manager, out);
            agent.enrolled = true;
            out.push(Action::PersistCredential(credential));
            out.push(Action::Notify(Event::Enrolled { manager }));
            agent.next_report = agent.config.report_every.map(|_| now);
            agent.send(Request::Poll, out);
        })
    }

    /// The enrolment at `manager` failed: an unreachable manager is retried (the
    /// next one, with the backoff after a round; a token is redeemed once and
    /// atomically, so sending it again never enrols twice); a refusal stops the
    /// agent (the token is spent or wrong).
    pub fn handle_enrol_failed(
        &mut self,
        now: Duration,
        manager: usize,
        failure: Failure,
    ) -> Vec<Action<D>> {
        self.answer(now, Request::Enrol, manager, |agent, out| match failure {
            Failure::Unreachable => agent.unreachable(now, Request::Enrol, out),
            Failure::Unauthorized | Failure::Rejected => {
                agent.stop(Fatal::EnrolmentRefused { manager }, out);
            }
        })
    }

    /// `manager` answered the long-poll with `desired`. Newer: saved, applied,
    /// probed; the same: nothing; older or forked or failing its checks: refused,
    /// the held one stays in force, and the manager is asked again after the
    /// backoff (asked at once, it would give the same again).
    pub fn handle_desired(&mut self, now: Duration, manager: usize, desired: D) -> Vec<Action<D>> {
        self.answer(now, Request::Poll, manager, |agent, out| {
            agent.answered(manager, out);
            agent.answered_once = true;
            agent.offer(now, desired, out);
        })
    }

    /// A desired state from the manager, weighed against the one held.
    fn offer(&mut self, now: Duration, desired: D, out: &mut Vec<Action<D>>) {
        let freshness = match &self.held {
            Some(held) => desired.freshness(held),
            None => Freshness::Newer,
        };
        let refusal = match freshness {
            Freshness::Same => None,
            Freshness::Older => Some(Refusal::Older),
            Freshness::Forked => Some(Refusal::Forked),
            Freshness::Newer => desired.check().err().map(Refusal::Invalid),
        };
        if let Some(why) = refusal {
            out.push(Action::Notify(Event::Refused {
                offered: desired.version(),
                why,
            }));
            self.retry_later(now);
            return;
        }
        self.backoff.reset();
        if freshness == Freshness::Newer {
            if !self.config.apply_unsaved {
                // Applied once saved (handle_persisted).
                out.push(Action::PersistLkg(desired.clone()));
                self.unsaved = Some(desired);
                self.pending = Pending::Saving;
                return;
            }
            out.push(Action::Notify(Event::Accepted {
                version: desired.version(),
            }));
            out.push(Action::PersistLkg(desired.clone()));
            self.accept(now, desired, out);
        }
        self.send(Request::Poll, out);
    }

    /// `desired` (newer, saved or not) is put in force.
    fn accept(&mut self, now: Duration, desired: D, out: &mut Vec<Action<D>>) {
        out.push(Action::Apply(desired.clone()));
        self.held = Some(desired);
        if let Some(p) = &mut self.probing {
            if p.started {
                if let Some(held) = &self.held {
                    p.failover.watch(held.probe_targets().into_keys(), now);
                }
            }
        }
        self.evaluate(now, out);
    }

    /// The last [`Action::PersistLkg`] succeeded. With [`Config::apply_unsaved`]
    /// off, the state is now applied and the manager asked past it; otherwise
    /// nothing (it was applied already).
    pub fn handle_persisted(&mut self, now: Duration) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.stopped || self.pending != Pending::Saving {
            return out;
        }
        if let Some(desired) = self.unsaved.take() {
            out.push(Action::Notify(Event::Accepted {
                version: desired.version(),
            }));
            self.accept(now, desired, &mut out);
        }
        self.send(Request::Poll, &mut out);
        self.timers(now, &mut out);
        out
    }

    /// The last [`Action::PersistLkg`] failed (`error` says why). With
    /// [`Config::apply_unsaved`] off, the state is refused ([`Refusal::Unsaved`]):
    /// not applied, the one held stays in force, and the manager is asked again
    /// after the backoff (the save is tried again then). Otherwise nothing: the
    /// state was applied anyway.
    pub fn handle_persist_failed(&mut self, now: Duration, error: String) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.stopped || self.pending != Pending::Saving {
            return out;
        }
        if let Some(desired) = self.unsaved.take() {
            out.push(Action::Notify(Event::Refused {
                offered: desired.version(),
                why: Refusal::Unsaved(error),
            }));
        }
        self.retry_later(now);
        self.timers(now, &mut out);
        out
    }

    /// `manager` answered the long-poll with nothing new within its wait: ask again.
    pub fn handle_unchanged(&mut self, now: Duration, manager: usize) -> Vec<Action<D>> {
        self.answer(now, Request::Poll, manager, |agent, out| {
            agent.answered(manager, out);
            agent.answered_once = true;
            agent.backoff.reset();
            agent.send(Request::Poll, out);
        })
    }

    /// The long-poll at `manager` failed. Unreachable: the next manager is asked
    /// (at once, or after the backoff once every manager failed in a row). The
    /// credential refused: said so ([`Event::CredentialRefused`]), never a new
    /// enrolment; asked again after the backoff. Another error: the same manager
    /// after the backoff.
    pub fn handle_poll_failed(
        &mut self,
        now: Duration,
        manager: usize,
        failure: Failure,
    ) -> Vec<Action<D>> {
        self.answer(now, Request::Poll, manager, |agent, out| match failure {
            Failure::Unreachable => agent.unreachable(now, Request::Poll, out),
            Failure::Unauthorized => {
                let retry_in = agent.retry_later(now);
                out.push(Action::Notify(Event::CredentialRefused {
                    manager,
                    retry_in,
                }));
            }
            Failure::Rejected => {
                let retry_in = agent.retry_later(now);
                out.push(Action::Notify(Event::Rejected { manager, retry_in }));
            }
        })
    }

    /// The reconciler applied the desired state (the tunnel is up): probing starts
    /// (with failover), and a report goes out at once (when reporting).
    pub fn handle_applied(&mut self, now: Duration) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        if let (Some(p), Some(held)) = (&mut self.probing, &self.held) {
            if !p.started {
                p.started = true;
                p.next_probe = now;
                p.failover.watch(held.probe_targets().into_keys(), now);
            }
        }
        self.report_now(now);
        self.timers(now, &mut out);
        out
    }

    /// Something worth reporting changed (the reconciler's status, a health
    /// verdict): a report goes out at once (when reporting).
    pub fn handle_status_changed(&mut self, now: Duration) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        self.report_now(now);
        self.timers(now, &mut out);
        out
    }

    /// `gateway` answered a probe at `now`.
    pub fn handle_probe_reply(&mut self, now: Duration, gateway: &GatewayId) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        if let Some(p) = &mut self.probing {
            p.failover.reply(gateway, now);
        }
        self.timers(now, &mut out);
        out
    }

    /// Time passed: whatever is due (a retry, a report, a probe, a failover
    /// decision) happens.
    pub fn handle_tick(&mut self, now: Duration) -> Vec<Action<D>> {
        let mut out = Vec::new();
        self.timers(now, &mut out);
        out
    }

    /// Runs what is due at `now`, then says when to come back.
    fn timers(&mut self, now: Duration, out: &mut Vec<Action<D>>) {
        if self.stopped {
            return;
        }
        if let Pending::RetryAt(request, at) = self.pending {
            if now >= at {
                self.send(request, out);
            }
        }
        if let (Some(every), Some(at)) = (self.config.report_every, self.next_report) {
            if self.enrolled && now >= at {
                out.push(Action::Report {
                    manager: self.manager,
                });
                self.next_report = Some(now.saturating_add(every));
            }
        }
        if let (Some(p), Some(held)) = (&mut self.probing, &self.held) {
            if p.started && now >= p.next_probe {
                out.push(Action::Probe {
                    targets: held.probe_targets(),
                });
                let interval = p.failover.policy().interval.max(Duration::from_millis(1));
                p.next_probe = now.saturating_add(interval);
            }
        }
        self.evaluate(now, out);
        let deadlines = [
            match self.pending {
                Pending::RetryAt(_, at) => Some(at),
                Pending::Idle | Pending::InFlight(_) | Pending::Saving => None,
            },
            self.next_report
                .filter(|_| self.enrolled && self.config.report_every.is_some()),
            self.probing
                .as_ref()
                .filter(|p| p.started)
                .map(|p| p.next_probe),
        ];
        if let Some(until) = deadlines.into_iter().flatten().min() {
            out.push(Action::Wait { until });
        }
    }

    /// Failover: who is down at `now`, and a switch when that changed.
    fn evaluate(&mut self, now: Duration, out: &mut Vec<Action<D>>) {
        let (Some(p), Some(held)) = (&mut self.probing, &self.held) else {
            return;
        };
        if !p.started {
            return;
        }
        p.failover.evaluate(now);
        let down = match held.failover_lists() {
            Some(lists) => p.failover.down_for(lists),
            None => p.failover.down().clone(),
        };
        if down != p.down {
            p.down = down.clone();
            out.push(Action::SwitchGateways { down });
        }
    }

    fn report_now(&mut self, now: Duration) {
        if self.enrolled && self.config.report_every.is_some() {
            self.next_report = Some(now);
        }
    }

    /// An answer to `request` from `manager`: `f` takes it if it is the one
    /// awaited (a late answer to an earlier request is ignored), then whatever is
    /// due runs.
    fn answer(
        &mut self,
        now: Duration,
        request: Request,
        manager: usize,
        f: impl FnOnce(&mut Self, &mut Vec<Action<D>>),
    ) -> Vec<Action<D>> {
        let mut out = Vec::new();
        if self.expects(request, manager) {
            f(self, &mut out);
            self.timers(now, &mut out);
        }
        out
    }

    /// Whether an answer to `request` from `manager` is the one awaited (a late
    /// answer to an earlier request is ignored).
    fn expects(&self, request: Request, manager: usize) -> bool {
        !self.stopped && self.pending == Pending::InFlight(request) && manager == self.manager
    }

    /// `manager` answered: it stays the one asked.
    fn answered(&mut self, manager: usize, out: &mut Vec<Action<D>>) {
        self.unreachable_in_row = 0;
        if self.last_answered != Some(manager) && (self.last_answered.is_some() || manager != 0) {
            out.push(Action::Notify(Event::SwitchedManager {
                from: self.last_answered,
                to: manager,
            }));
        }
        self.last_answered = Some(manager);
    }

    /// Sends `request` to the current manager now.
    fn send(&mut self, request: Request, out: &mut Vec<Action<D>>) {
        let manager = self.manager;
        out.push(match request {
            Request::Enrol => Action::Enrol { manager },
            Request::Poll => Action::Poll {
                manager,
                after: if self.answered_once {
                    self.held.as_ref().map(DesiredState::version)
                } else {
                    None
                },
            },
        });
        self.pending = Pending::InFlight(request);
    }

    /// The current manager could not be reached: the next one is asked, at once
    /// unless every manager failed in a row, then after the backoff.
    fn unreachable(&mut self, now: Duration, request: Request, out: &mut Vec<Action<D>>) {
        let failed = self.manager;
        self.manager = (self.manager + 1) % self.config.managers;
        self.unreachable_in_row += 1;
        let retry_in = if self.unreachable_in_row % self.config.managers == 0 {
            let wait = self.backoff.next_wait(&mut self.rng);
            self.pending = Pending::RetryAt(request, now.saturating_add(wait));
            Some(wait)
        } else {
            None
        };
        out.push(Action::Notify(Event::Unreachable {
            manager: failed,
            next: self.manager,
            retry_in,
        }));
        if retry_in.is_none() {
            self.send(request, out);
        }
    }

    /// Asks the current manager again after the backoff; the wait.
    fn retry_later(&mut self, now: Duration) -> Duration {
        let wait = self.backoff.next_wait(&mut self.rng);
        self.pending = Pending::RetryAt(Request::Poll, now.saturating_add(wait));
        wait
    }

    fn stop(&mut self, fatal: Fatal, out: &mut Vec<Action<D>>) {
        self.stopped = true;
        self.pending = Pending::Idle;
        self.unsaved = None;
        out.push(Action::Stop(fatal));
    }
}
