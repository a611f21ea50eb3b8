//! The async driver: runs an [`Agent`] with real time, the manager's client
//! ([`nanami_api::Client`], one per manager so the agent chooses which), and the
//! files of a [`StateDir`].
//!
//! A program plugs in what it follows ([`Follow`]: how to long-poll and report)
//! and what it does with it ([`Wiring`]: hand the desired state to its
//! reconciler, route around dead gateways, send probes), and feeds back what its
//! reconciler and prober see through an [`Input`] channel. [`run`] does the
//! rest: enrolment, the long-poll, the backoff, the last-known-good file, the
//! reports, the failover timers.

pub mod client;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use nanami_api::client::ApiError;
use nanami_api::wire::{EnrolRequest, EnrolResponse, GatewayDesired, Subject};
use nanami_api::Client;
use nanami_model::{GatewayId, PublicKey};
use rand_core::{OsRng, RngCore as _};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::{
    by_generation, Action, Agent, Config, Credential, DesiredState, Event, Failure, Fatal,
    Freshness, Start,
};
pub use store::{StateDir, StoreError};

/// A future the driver holds across its loop.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a program follows, and how it speaks to the manager about it.
pub trait Follow: Send + Sync {
    /// The desired state (saved as JSON as the last-known-good one).
    type Desired: DesiredState + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Who enrols (a token for anyone else is refused before it is spent).
    fn subject(&self) -> Subject;

    /// One long-poll: a desired state other than `after` (`None`: the current one
    /// at once), waiting up to `wait`; `Ok(None)` when nothing changed.
    fn poll<'a>(
        &'a self,
        client: Client,
        after: Option<<Self::Desired as DesiredState>::Version>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<Self::Desired>, ApiError>>;

    /// One report (never called without [`Config::report_every`]).
    fn report(&self, _client: Client) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What a program does with what the agent decides.
pub trait Wiring<D>: Send {
    /// Hand `desired` to the reconciler.
    fn apply(&mut self, desired: &D);
    /// Route around exactly these gateways from now on.
    fn switch_gateways(&mut self, _down: &BTreeSet<GatewayId>) {}
    /// Probe these gateways; each answer comes back as [`Input::ProbeReply`].
    fn probe(&mut self, _targets: &BTreeMap<GatewayId, BTreeSet<IpAddr>>) {}
}

/// What a program feeds back to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The reconciler applied a desired state ([`Agent::handle_applied`]).
    Applied,
    /// Something worth reporting changed ([`Agent::handle_status_changed`]).
    StatusChanged,
    /// A gateway answered a probe ([`Agent::handle_probe_reply`]).
    ProbeReply(GatewayId),
}

/// Why [`run`] ended before its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The agent stopped for good.
    #[error(transparent)]
    Fatal(#[from] Fatal),
    /// A state file could not be written (the credential, which must be saved
    /// before it is used).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No manager was given.
    #[error("no manager given")]
    NoManager,
    /// The manager refused the enrolment token ([`Fatal::EnrolmentRefused`]),
    /// with the manager's word on why.
    #[error("{manager} refused the enrolment token: {reason}")]
    EnrolmentRefused {
        /// The manager's URL.
        manager: String,
        /// Why (the manager's error, or the subject the token was for).
        reason: String,
    },
}

/// How [`run`] runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One client per manager, in order, without a credential.
    pub managers: Vec<Client>,
    /// The one-time enrolment token, if any.
    pub token: Option<String>,
    /// The public key to enrol.
    pub public_key: PublicKey,
    /// How long one long-poll may wait.
    pub poll_wait: Duration,
    /// The agent's behaviour (its `managers` is set from [`Settings::managers`]).
    pub agent: Config,
}

/// One client per manager of `urls` (each its own [`Client`], so the agent
/// decides which is asked), trusting `ca`.
pub fn clients<S: AsRef<str>>(
    urls: &[S],
    ca: Option<&std::path::Path>,
) -> Result<Vec<Client>, ApiError> {
    urls.iter()
        .map(|u| Client::with_urls(&[u.as_ref()], ca))
        .collect()
}

/// What one request to a manager brought.
enum Outcome<D> {
    Enrolled(usize, Result<EnrolResponse, ApiError>),
    Polled(usize, Result<Option<D>, ApiError>),
}

/// The agent's reading of a client error.
pub fn failure(error: &ApiError) -> Failure {
    match error.status().map(|s| s.as_u16()) {
        Some(401 | 403) => Failure::Unauthorized,
        Some(503) => Failure::Unreachable,
        Some(_) => Failure::Rejected,
        None => match error {
            ApiError::Connect(_) | ApiError::Timeout(_) => Failure::Unreachable,
            // Configuration errors, answers that make no sense: the next manager
            // would not do better.
            ApiError::Url(_)
            | ApiError::NoManager
            | ApiError::DuplicateManager(_)
            | ApiError::Tls(_)
            | ApiError::Status { .. }
            | ApiError::Decode(_) => Failure::Rejected,
            _ => Failure::Rejected,
        },
    }
}

async fn next<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Runs the agent until `shutdown` completes (`Ok`) or it stops for good: reads
/// the credential and the last-known-good state from `store`, serves the latter
/// at once, enrols if needed, follows the managers, saves and applies what is
/// newer, reports, and runs the failover's probes and timers through `wiring`.
pub async fn run<F: Follow, W: Wiring<F::Desired>>(
    settings: Settings,
    follow: &F,
    store: &StateDir<F::Desired>,
    lkg: Option<F::Desired>,
    wiring: &mut W,
    mut inputs: mpsc::Receiver<Input>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DriverError> {
    let span = info_span!("agent", subject = %follow.subject());
    async move {
        if settings.managers.is_empty() {
            return Err(DriverError::NoManager);
        }
        let urls: Vec<String> = settings
            .managers
            .iter()
            .map(|c| c.managers().collect::<Vec<_>>().join(","))
            .collect();
        let mut clients = settings.managers.clone();
        let credential = store.credential();
        if let Some(c) = &credential {
            clients = clients.into_iter().map(|m| m.with_credential(c.0.clone())).collect();
        }
        let config = Config {
            managers: clients.len(),
            ..settings.agent.clone()
        };
        let mut agent = Agent::<F::Desired>::new(config, OsRng.next_u64());
        let origin = Instant::now();
        let now = || origin.elapsed();
        let mut actions = agent.handle_start(
            now(),
            Start {
                credential,
                lkg,
                token: settings.token.is_some(),
            },
        );
        let mut request: Option<BoxFuture<'_, Outcome<F::Desired>>> = None;
        let mut report: Option<BoxFuture<'_, (usize, Result<(), ApiError>)>> = None;
        // A report asked for while one is out goes out when it is back.
        let mut report_again: Option<usize> = None;
        let mut wake: Option<Duration> = None;
        let mut reporting_failed = false;
        let mut inputs_open = true;
        // Why the last enrolment failed, for the error that ends the run.
        let mut enrol_error: Option<(usize, String)> = None;
        tokio::pin!(shutdown);
        loop {
            // The last wait given stands until another replaces it or it falls due
            // (a tick with nothing due gives none).
            let mut queue: std::collections::VecDeque<_> = actions.drain(..).collect();
            while let Some(action) = queue.pop_front() {
                match action {
                    Action::Enrol { manager } => {
                        let client = clients[manager].clone();
                        let request_body = EnrolRequest {
                            token: settings.token.clone().unwrap_or_default(),
                            public_key: settings.public_key,
                            subject: Some(follow.subject()),
                        };
                        let span = info_span!("enrol", manager = %urls[manager]);
                        request = Some(Box::pin(
                            async move { Outcome::Enrolled(manager, client.enrol(&request_body).await) }
                                .instrument(span),
                        ));
                    }
                    Action::Poll { manager, after } => {
                        let client = clients[manager].clone();
                        let span = info_span!("poll", manager = %urls[manager], after = ?after);
                        let poll = follow.poll(client, after, settings.poll_wait);
                        request = Some(Box::pin(
                            async move { Outcome::Polled(manager, poll.await) }.instrument(span),
                        ));
                    }
                    Action::PersistCredential(credential) => {
                        store.save_credential(&credential)?;
                        clients = clients
                            .into_iter()
                            .map(|m| m.with_credential(credential.0.clone()))
                            .collect();
                    }
                    Action::PersistLkg(desired) => {
                        let next = match store.save_lkg(&desired) {
                            Ok(()) => agent.handle_persisted(now()),
                            Err(e) => {
                                if settings.agent.apply_unsaved {
                                    warn!(error = %e, "cannot save the desired state; using it anyway");
                                } else {
                                    error!(error = %e, "cannot save the desired state; not using it");
                                }
                                agent.handle_persist_failed(now(), e.to_string())
                            }
                        };
                        // The rest of this batch (if any) comes first.
                        queue.extend(next);
                    }
                    Action::Apply(desired) => wiring.apply(&desired),
                    Action::Report { manager } => {
                        if report.is_some() {
                            report_again = Some(manager);
                        } else {
                            report = Some(send_report(follow, &clients, &urls, manager));
                        }
                    }
                    Action::Probe { targets } => wiring.probe(&targets),
                    Action::SwitchGateways { down } => {
                        if down.is_empty() {
                            info!("every gateway answers");
                        } else {
                            warn!(down = ?down, "routing around gateways that do not answer");
                        }
                        wiring.switch_gateways(&down);
                    }
                    Action::Notify(event) => {
                        log(&event, &urls, agent.held().map(DesiredState::version));
                    }
                    Action::Stop(fatal) => {
                        error!(error = %fatal, "stopping");
                        if let (Fatal::EnrolmentRefused { manager }, Some((m, reason))) =
                            (&fatal, enrol_error.take())
                        {
                            if *manager == m {
                                return Err(DriverError::EnrolmentRefused {
                                    manager: urls[m].clone(),
                                    reason,
                                });
                            }
                        }
                        return Err(fatal.into());
                    }
                    Action::Wait { until } => wake = Some(until),
                }
            }
            let sleep = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(origin + w).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                outcome = next(&mut request) => {
                    request = None;
                    let at = now();
                    actions = match outcome {
                        Outcome::Enrolled(manager, Ok(response)) => {
                            if response.subject == follow.subject() {
                                info!(public_key = %settings.public_key, "enrolled");
                                agent.handle_enrolled(at, manager, Credential(response.credential))
                            } else {
                                error!(subject = %response.subject, "the token was for someone else");
                                enrol_error = Some((manager, format!("the token was for {}, not {}", response.subject, follow.subject())));
                                agent.handle_enrol_failed(at, manager, Failure::Rejected)
                            }
                        }
                        Outcome::Enrolled(manager, Err(e)) => {
                            warn!(error = %e, manager = %urls[manager], "enrolment failed");
                            enrol_error = Some((manager, e.to_string()));
                            agent.handle_enrol_failed(at, manager, failure(&e))
                        }
                        Outcome::Polled(manager, Ok(Some(desired))) => agent.handle_desired(at, manager, desired),
                        Outcome::Polled(manager, Ok(None)) => agent.handle_unchanged(at, manager),
                        Outcome::Polled(manager, Err(e)) => {
                            warn!(error = %e, manager = %urls[manager], "cannot fetch the desired state; keeping the last-known-good one");
                            agent.handle_poll_failed(at, manager, failure(&e))
                        }
                    };
                }
                (manager, sent) = next(&mut report) => {
                    report = None;
                    if let Some(again) = report_again.take() {
                        report = Some(send_report(follow, &clients, &urls, again));
                    }
                    match sent {
                        Ok(()) if reporting_failed => {
                            info!(manager = %urls[manager], "reporting to the manager again");
                            reporting_failed = false;
                        }
                        Ok(()) => {}
                        Err(e) => {
                            if !reporting_failed {
                                warn!(error = %e, manager = %urls[manager], "cannot report to the manager");
                            }
                            reporting_failed = true;
                        }
                    }
                }
                input = inputs.recv(), if inputs_open => {
                    let at = now();
                    actions = match input {
                        Some(Input::Applied) => agent.handle_applied(at),
                        Some(Input::StatusChanged) => agent.handle_status_changed(at),
                        Some(Input::ProbeReply(gateway)) => agent.handle_probe_reply(at, &gateway),
                        None => {
                            inputs_open = false;
                            Vec::new()
                        }
                    };
                }
                () = sleep => {
                    wake = None;
                    actions = agent.handle_tick(now());
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// One report to `manager`.
fn send_report<'a, F: Follow>(
    follow: &'a F,
    clients: &[Client],
    urls: &[String],
    manager: usize,
) -> BoxFuture<'a, (usize, Result<(), ApiError>)> {
    let span = info_span!("report", manager = %urls[manager]);
    let sent = follow.report(clients[manager].clone());
    Box::pin(async move { (manager, sent.await) }.instrument(span))
}

/// Logs `event`; `held` is the version in force.
fn log<V: std::fmt::Debug>(event: &Event<V>, urls: &[String], held: Option<V>) {
    let url = |m: &usize| urls.get(*m).map_or("?", String::as_str);
    match event {
        Event::ServingLastKnownGood { version } => {
            info!(?version, "serving the last-known-good desired state");
        }
        Event::Enrolled { manager } => info!(manager = url(manager), "enrolled"),
        Event::Accepted { version } => info!(?version, "new desired state accepted and saved"),
        Event::Refused { offered, why } => match held {
            Some(in_force) => warn!(
                ?offered,
                ?in_force,
                %why,
                "desired state refused; keeping the one in force"
            ),
            None => warn!(?offered, %why, "desired state refused"),
        },
        Event::Unreachable {
            manager,
            next,
            retry_in,
        } => warn!(
            manager = url(manager),
            next = url(next),
            ?retry_in,
            "cannot reach the manager; trying the next"
        ),
        Event::SwitchedManager { from, to } => info!(
            from = from.as_ref().map_or("none", url),
            to = url(to),
            "switched to another manager"
        ),
        Event::CredentialRefused { manager, retry_in } => error!(
            manager = url(manager),
            ?retry_in,
            "the manager refuses this credential; re-enrol with a new token"
        ),
        Event::Rejected { manager, retry_in } => {
            warn!(
                manager = url(manager),
                ?retry_in,
                "the manager refused the request"
            );
        }
    }
}

impl DesiredState for GatewayDesired {
    type Version = u64;

    fn version(&self) -> u64 {
        self.generation
    }

    /// By generation; the same generation is the same state only with the same
    /// state, health targets and uplink (the digest may be missing on one side).
    fn freshness(&self, held: &Self) -> Freshness {
        let same = self.state == held.state
            && self.health_targets == held.health_targets
            && self.uplink == held.uplink;
        by_generation(self.generation, held.generation, same)
    }

    /// Only objects Nanami owns: interfaces `nm-*`, Nanami's routes and rules.
    fn check(&self) -> Result<(), String> {
        if self.state.owned() == self.state {
            Ok(())
        } else {
            Err("it names objects Nanami does not own (interfaces must be nm-*, routes and rules Nanami's)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use nanami_model::{GatewayState, HealthTargets, PrivateKey};

    use super::*;

    fn desired(generation: u64) -> GatewayDesired {
        GatewayDesired {
            generation,
            state: GatewayState::default(),
            health_targets: HealthTargets::new(),
            uplink: None,
            digest: None,
        }
    }

    /// A manager that answers from a script, then never again.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Option<GatewayDesired>, ApiError>>>,
        asked: Mutex<Vec<Option<u64>>>,
    }

    impl Follow for Scripted {
        type Desired = GatewayDesired;

        fn subject(&self) -> Subject {
            Subject::Gateway(GatewayId::new("gw-a").unwrap())
        }

        fn poll<'a>(
            &'a self,
            _client: Client,
            after: Option<u64>,
            _wait: Duration,
        ) -> BoxFuture<'a, Result<Option<GatewayDesired>, ApiError>> {
            self.asked.lock().unwrap().push(after);
            let answer = self.answers.lock().unwrap().pop_front();
            Box::pin(async move {
                match answer {
                    Some(a) => a,
                    None => std::future::pending().await,
                }
            })
        }
    }

    #[derive(Default)]
    struct Applied(Vec<u64>);

    impl Wiring<GatewayDesired> for Applied {
        fn apply(&mut self, desired: &GatewayDesired) {
            self.0.push(desired.generation);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn serves_the_lkg_saves_what_is_newer_and_refuses_what_is_older() {
        let dir = std::env::temp_dir().join(format!("nanami-agent-driver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateDir::<GatewayDesired>::new(&dir, "desired.json");
        let public_key = PrivateKey::from_bytes([3; 32]).public_key();
        store.ensure_key().unwrap();
        store.save_credential(&Credential("nmg_x".into())).unwrap();
        store.save_lkg(&desired(1)).unwrap();
        let follow = Scripted {
            answers: Mutex::new(VecDeque::from([
                Err(ApiError::Connect("refused".into())),
                Ok(Some(desired(2))),
                Ok(Some(desired(1))),
            ])),
            asked: Mutex::new(Vec::new()),
        };
        let settings = Settings {
            managers: clients(&["http://127.0.0.1:9"], None).unwrap(),
            token: None,
            public_key,
            poll_wait: Duration::from_secs(30),
            agent: Config::new(1),
        };
        let mut wiring = Applied::default();
        let (_tx, rx) = mpsc::channel(1);
        let lkg = store.load_lkg().unwrap();
        run(
            settings,
            &follow,
            &store,
            lkg,
            &mut wiring,
            rx,
            tokio::time::sleep(Duration::from_secs(60)),
        )
        .await
        .unwrap();
        assert_eq!(wiring.0, vec![1, 2]);
        assert_eq!(store.load_lkg().unwrap().map(|d| d.generation), Some(2));
        assert_eq!(
            *follow.asked.lock().unwrap(),
            vec![None, None, Some(2), Some(2)],
            "the first polls ask for the current state; generation 1 is refused and the \
             manager asked again after the backoff"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
