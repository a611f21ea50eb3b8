//! # nanami-gateway-daemon
//!
//! The daemon on every gateway: generates its WireGuard key on first start (0600,
//! only the public key is ever sent), enrols with a one-time token, then watches
//! its desired state (long-poll), keeps the last-known-good one on disk, runs the
//! reconciler against a [`Platform`], and reports status, observed state, telemetry
//! and machine facts after each pass and every few seconds. Given several managers
//! (active-active, one store), it follows whichever answers, keeping its credential
//! and last-known-good state across a switch.
//!
//! Following the manager is [`nanami_agent`]'s: enrolment, the long-poll over one
//! client per manager, the backoff, the last-known-good file (`desired.json`,
//! refusing older generations and forked ones, and refusing a state it could not
//! save) and when to report. This crate is its wiring: what a gateway follows and
//! reports ([`Follow`]), and the reconciler, the health prober and the metrics it
//! feeds ([`Wiring`]).
//!
//! The binary (`main.rs`) picks the platform: the Linux one or, for tests and the
//! fleet benchmark, [`nanami_reconcile::sim::SimPlatform`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod facts;
pub mod metrics;
pub mod probe;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nanami_agent::driver::{self, BoxFuture, DriverError, Follow, Input, StateDir, Wiring};
use nanami_agent::{DesiredState as _, Fatal, Freshness};
use nanami_api::client::ApiError;
use nanami_api::wire::{Facts, GatewayDesired, NetworkHealth, ObservedReport, Subject};
use nanami_api::Client;
use nanami_model::{GatewayId, HealthTargets, InterfaceName, NetworkId, PublicKey};
use nanami_reconcile::{Desired, Observed, Op, Platform, PlatformEvent, Reconciler};
use rand::SeedableRng as _;
use tokio::sync::{mpsc, watch};
use tracing::{info, info_span, Instrument as _};

pub use probe::{IcmpProber, Outcome, ProbeConfig, ProbeFuture, Prober};

/// How the daemon is set up.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The manager's URL (`https://host:port`), or several managers serving the
    /// same API separated by commas: the client moves to the next when one cannot
    /// be reached (see [`nanami_api::Client`]), keeping its credential and the
    /// last-known-good state.
    pub manager: String,
    /// The CA certificate that signed the manager's certificate.
    pub ca: Option<PathBuf>,
    /// This gateway's id.
    pub gateway: GatewayId,
    /// Where the key, credential and last-known-good state live.
    pub state_dir: PathBuf,
    /// A one-time enrolment token, used if there is no credential yet.
    pub token: Option<String>,
    /// Report at least this often (heartbeat).
    pub report_every: Duration,
    /// How long one long-poll may wait.
    pub poll_wait: Duration,
    /// The reconciler's timing.
    pub reconcile: nanami_reconcile::Config,
    /// Facts to report instead of reading them from this machine (simulation).
    pub facts: Option<Facts>,
    /// Where to publish the reconciler's status too (tests, embedding).
    pub status_out: Option<Arc<watch::Sender<nanami_reconcile::Status>>>,
    /// Forwarding-path probe timing and hysteresis.
    pub probe: ProbeConfig,
    /// What probes the health targets instead of ICMP echo (tests, simulation);
    /// `None`: [`IcmpProber`] (needs `CAP_NET_RAW`; without it the networks are
    /// reported unknown).
    pub prober: Option<Arc<dyn Prober>>,
    /// The hosting this run serves (see [`hosting`]): the gateway's uplink when it
    /// runs in its own network namespace. A desired state with another one ends
    /// the run with [`HostingChanged`].
    pub uplink: Option<InterfaceName>,
    /// Where to serve the daemon's own `/metrics` (see [`metrics`]): a listener
    /// bound by the caller (`--metrics-listen`; a test binds port 0); `None`: no
    /// metrics.
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
}

/// The manager moved the gateway between hosted (its own network namespace, with
/// an uplink) and not, or to another uplink: the platform is set up for one
/// placement, so the daemon must tear down and start again (the binary exits with
/// status 75 for its supervisor to restart it).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the gateway's hosting changed (uplink {from:?} -> {to:?}): tear down and restart to move it"
)]
pub struct HostingChanged {
    /// The uplink this run serves.
    pub from: Option<InterfaceName>,
    /// The uplink the manager now gives.
    pub to: Option<InterfaceName>,
}

/// The gateway's hosting, from its last-known-good state; without one (a first
/// start), enrols if needed and fetches the first desired state (retrying while the
/// manager is unreachable) and saves it, so the platform can be built for the right
/// placement before anything runs: `Some(uplink)` means the gateway runs in its
/// own network namespace `nm-<gateway>`.
pub async fn hosting(
    config: &DaemonConfig,
    key: PublicKey,
) -> anyhow::Result<Option<InterfaceName>> {
    if let Some(saved) = saved_desired(&config.state_dir)? {
        return Ok(saved.uplink);
    }
    let mut settings = settings(config, key)?;
    settings.agent.report_every = None;
    let follow = Gateway::new(config, key, None, None);
    let (first_tx, mut first_rx) = watch::channel(None);
    let mut wiring = First(first_tx);
    let (_inputs, inputs_rx) = mpsc::channel(1);
    let store = state(&config.state_dir);
    let taken = async {
        let _ = first_rx.wait_for(Option::is_some).await;
    };
    let result = driver::run(
        settings,
        &follow,
        &store,
        None,
        &mut wiring,
        inputs_rx,
        taken,
    )
    .await;
    ended(result, config)?;
    let first = wiring.0.borrow().clone();
    first.context("stopped before the first desired state")
}

/// The first desired state's uplink ([`hosting`]).
struct First(watch::Sender<Option<Option<InterfaceName>>>);

impl Wiring<GatewayDesired> for First {
    fn apply(&mut self, desired: &GatewayDesired) {
        self.0.send_replace(Some(desired.uplink.clone()));
    }
}

impl DaemonConfig {
    /// The private key file.
    pub fn key_file(&self) -> PathBuf {
        self.state_dir.join("private.key")
    }
    /// The credential file.
    pub fn credential_file(&self) -> PathBuf {
        self.state_dir.join("credential")
    }
    /// The last-known-good desired state.
    pub fn desired_file(&self) -> PathBuf {
        self.state_dir.join("desired.json")
    }
}

/// Loads the node's key, generating it (0600) on first start; returns the public
/// half, the only part that ever leaves this function's callers.
pub fn ensure_key(path: &Path) -> anyhow::Result<PublicKey> {
    let key = nanami_wg::keyfile::load_or_generate(path, &mut rand_core::OsRng)?;
    Ok(key.public_key())
}

/// The gateway's state directory `dir`: key, credential, listen port and the
/// last-known-good desired state (`desired.json`).
pub fn state(dir: &Path) -> StateDir<GatewayDesired> {
    StateDir::new(dir, "desired.json")
}

/// The last-known-good desired state saved in `dir`, if any. One that does not
/// parse or names objects Nanami does not own is an error: the daemon must not
/// guess.
pub fn saved_desired(dir: &Path) -> anyhow::Result<Option<GatewayDesired>> {
    let store = state(dir);
    let saved = store.load_lkg()?;
    if let Some(desired) = &saved {
        desired
            .check()
            .map_err(|e| anyhow!("{}: {e}", store.lkg_path().display()))?;
    }
    Ok(saved)
}

/// The agent's settings: one client per manager of `config.manager`, a report
/// every `report_every`, and a desired state that could not be saved refused.
fn settings(config: &DaemonConfig, key: PublicKey) -> anyhow::Result<driver::Settings> {
    if config.manager.trim().is_empty() {
        bail!("no manager given");
    }
    let urls: Vec<&str> = config.manager.split(',').collect();
    // The list as a whole first: a duplicate is an error, as for `--manager`.
    Client::with_urls(&urls, config.ca.as_deref())?;
    Ok(driver::Settings {
        managers: driver::clients(&urls, config.ca.as_deref())?,
        token: config.token.clone(),
        public_key: key,
        poll_wait: config.poll_wait,
        agent: nanami_agent::Config {
            report_every: Some(config.report_every),
            apply_unsaved: false,
            ..nanami_agent::Config::new(urls.len())
        },
    })
}

/// The driver's end as the daemon's.
fn ended(result: Result<(), DriverError>, config: &DaemonConfig) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(DriverError::Fatal(Fatal::NotEnrolled)) => bail!(
            "not enrolled yet ({} is missing): give an enrolment token (--token-file)",
            config.credential_file().display()
        ),
        Err(
            e @ (DriverError::Fatal(Fatal::EnrolmentRefused { .. })
            | DriverError::EnrolmentRefused { .. }),
        ) => Err(anyhow::Error::from(e).context("enrolment refused")),
        Err(e) => Err(e.into()),
    }
}

/// What a gateway follows: its desired state (long-poll on the generation), and
/// what it reports.
struct Gateway {
    gateway: GatewayId,
    public_key: PublicKey,
    /// The hosting this run serves; `None`: any ([`hosting`]).
    serving: Option<Option<InterfaceName>>,
    /// Set when the manager gives another hosting: the run ends.
    hosting_changed: watch::Sender<Option<HostingChanged>>,
    /// The desired state in force (its digest is reported).
    in_force: Arc<watch::Sender<Option<Arc<GatewayDesired>>>>,
    /// What reports are made of; `None`: no reports ([`hosting`]).
    sources: Option<Sources>,
    facts: Option<Facts>,
}

/// What a report is made of.
struct Sources {
    status: watch::Receiver<nanami_reconcile::Status>,
    observed: watch::Receiver<Option<Observed>>,
    health: watch::Receiver<BTreeMap<NetworkId, NetworkHealth>>,
}

impl Gateway {
    fn new(
        config: &DaemonConfig,
        public_key: PublicKey,
        serving: Option<Option<InterfaceName>>,
        sources: Option<Sources>,
    ) -> Self {
        Self {
            gateway: config.gateway.clone(),
            public_key,
            serving,
            hosting_changed: watch::channel(None).0,
            in_force: Arc::new(watch::channel(None).0),
            sources,
            facts: config.facts.clone(),
        }
    }

    /// The manager gave the same generation again with a digest where the one in
    /// force has none (saved before managers gave digests): it is kept, so it is
    /// reported.
    fn adopt_digest(&self, offered: &GatewayDesired) {
        if offered.digest.is_none() {
            return;
        }
        self.in_force.send_if_modified(|held| match held {
            Some(h) if h.digest.is_none() && offered.freshness(h) == Freshness::Same => {
                *held = Some(Arc::new(GatewayDesired {
                    digest: offered.digest.clone(),
                    ..(**h).clone()
                }));
                true
            }
            _ => false,
        });
    }

    fn observed_report(&self, sources: &Sources) -> ObservedReport {
        let status = sources.status.borrow().clone();
        let observed = sources.observed.borrow().clone().unwrap_or_default();
        ObservedReport {
            public_key: self.public_key,
            state: observed.state.owned(),
            telemetry: observed.telemetry,
            facts: self.facts.clone().unwrap_or_else(facts::read),
            health: sources.health.borrow().clone(),
            // The digest of the generation in force, when that is the applied one.
            applied_digest: self
                .in_force
                .borrow()
                .as_ref()
                .filter(|d| Some(d.generation) == status.applied_generation)
                .and_then(|d| d.digest.clone()),
            status,
        }
    }
}

impl Follow for Gateway {
    type Desired = GatewayDesired;

    fn subject(&self) -> Subject {
        Subject::Gateway(self.gateway.clone())
    }

    fn poll<'a>(
        &'a self,
        client: Client,
        after: Option<u64>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<GatewayDesired>, ApiError>> {
        Box::pin(async move {
            let Some(desired) = client.desired(&self.gateway, after, wait).await? else {
                return Ok(None);
            };
            if let Some(serving) = &self.serving {
                if desired.uplink != *serving {
                    // Neither saved nor applied in this placement: the run ends.
                    self.hosting_changed.send_replace(Some(HostingChanged {
                        from: serving.clone(),
                        to: desired.uplink,
                    }));
                    return std::future::pending().await;
                }
            }
            self.adopt_digest(&desired);
            Ok(Some(desired))
        })
    }

    fn report(&self, client: Client) -> BoxFuture<'_, Result<(), ApiError>> {
        let report = self.sources.as_ref().map(|s| self.observed_report(s));
        Box::pin(async move {
            match report {
                Some(report) => client.report(&self.gateway, &report).await,
                None => Ok(()),
            }
        })
    }
}

/// Where a desired state in force goes: the reconciler, the prober's targets,
/// the report's digest, the metrics.
struct Reconciling {
    desired: watch::Sender<Option<Arc<Desired>>>,
    targets: watch::Sender<HealthTargets>,
    in_force: Arc<watch::Sender<Option<Arc<GatewayDesired>>>>,
    metrics: Arc<metrics::DaemonMetrics>,
    /// The last-known-good generation served at start (not a new one for the
    /// apply-latency metric).
    served_at_start: Option<u64>,
}

impl Wiring<GatewayDesired> for Reconciling {
    fn apply(&mut self, desired: &GatewayDesired) {
        if self.served_at_start.take() != Some(desired.generation) {
            self.metrics.accepted(desired.generation);
        }
        self.in_force.send_replace(Some(Arc::new(desired.clone())));
        let (state, targets) = desired.clone().into_parts();
        self.desired.send_replace(Some(state));
        self.targets.send_if_modified(|t| {
            let changed = *t != targets;
            if changed {
                *t = targets;
            }
            changed
        });
    }
}

/// A platform that also publishes every observation (for the report's telemetry
/// and observed state) while the reconciler owns it.
struct Observing<P> {
    inner: P,
    tx: watch::Sender<Option<Observed>>,
    ops: Arc<metrics::OpCounts>,
}

impl<P: Platform> Platform for Observing<P> {
    type Error = P::Error;

    async fn observe(&mut self) -> Result<Observed, Self::Error> {
        let observed = self.inner.observe().await?;
        self.tx.send_replace(Some(observed.clone()));
        Ok(observed)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), Self::Error> {
        let result = self.inner.apply(op).await;
        self.ops.count(result.is_ok());
        result
    }

    fn events(&mut self) -> Option<mpsc::Receiver<PlatformEvent>> {
        self.inner.events()
    }
}

/// Runs the daemon until `shutdown` completes: enrols if needed, serves the
/// last-known-good state at once (also while the manager is down), follows the
/// manager's desired state, reconciles `platform`, reports. A desired state for
/// another hosting than [`DaemonConfig::uplink`] ends the run with
/// [`HostingChanged`]. Dropping the platform at the end is the caller's
/// platform's business (the Linux platform's devices live in this process today).
pub async fn run<P: Platform + 'static>(
    config: DaemonConfig,
    public_key: PublicKey,
    platform: P,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let span = info_span!("daemon", gateway = %config.gateway);
    async move {
        let lkg = saved_desired(&config.state_dir)?;
        let settings = settings(&config, public_key)?;
        let (desired_tx, desired_rx) = watch::channel(None);
        let (targets_tx, targets_rx) = watch::channel(HealthTargets::new());
        let (health_tx, health_rx) = watch::channel(BTreeMap::new());
        let prober = config
            .prober
            .clone()
            .unwrap_or_else(|| Arc::new(IcmpProber::default()));
        let (observed_tx, observed_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let ops = Arc::new(metrics::OpCounts::default());
        let platform = Observing {
            inner: platform,
            tx: observed_tx,
            ops: ops.clone(),
        };
        let reconciler = Reconciler::new(
            platform,
            desired_rx,
            Box::new(rand::rngs::StdRng::from_entropy()),
            config.reconcile,
            Instant::now(),
        );
        let status_rx = reconciler.subscribe_status();
        if let Some(out) = config.status_out.clone() {
            let mut rx = reconciler.subscribe_status();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    out.send_replace(rx.borrow_and_update().clone());
                }
            });
        }
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let daemon_metrics = Arc::new(metrics::DaemonMetrics::new(
            config.gateway.clone(),
            reconciler.subscribe_status(),
            observed_rx.clone(),
            ops,
        ));
        let mut background = vec![tokio::spawn(
            daemon_metrics
                .clone()
                .follow(stopped(stop_rx.clone()))
                .instrument(tracing::Span::current()),
        )];
        if let Some(listener) = &config.metrics_listener {
            let listener = listener
                .try_clone()
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                })
                .context("the metrics listener")?;
            info!(addr = ?listener.local_addr().ok(), "serving /metrics");
            background.push(tokio::spawn(
                metrics::serve(listener, daemon_metrics.clone(), stopped(stop_rx.clone()))
                    .instrument(tracing::Span::current()),
            ));
        }
        // A new status or a new forwarding-path verdict is reported at once.
        let (inputs_tx, inputs_rx) = mpsc::channel(16);
        background.push(tokio::spawn(changes(
            status_rx.clone(),
            health_rx.clone(),
            inputs_tx,
            stopped(stop_rx.clone()),
        )));
        let reconciling = tokio::spawn(
            reconciler
                .run(stopped(stop_rx.clone()))
                .instrument(tracing::Span::current()),
        );
        let probing = tokio::spawn(
            probe::probe_loop(
                config.probe,
                prober,
                targets_rx,
                health_tx,
                stopped(stop_rx.clone()),
            )
            .instrument(tracing::Span::current()),
        );

        let follow = Gateway::new(
            &config,
            public_key,
            Some(config.uplink.clone()),
            Some(Sources {
                status: status_rx,
                observed: observed_rx,
                health: health_rx,
            }),
        );
        let mut wiring = Reconciling {
            desired: desired_tx,
            targets: targets_tx,
            in_force: follow.in_force.clone(),
            metrics: daemon_metrics,
            served_at_start: lkg.as_ref().map(|d| d.generation),
        };
        let mut moved = follow.hosting_changed.subscribe();
        let until = async move {
            tokio::select! {
                () = shutdown => {}
                _ = moved.wait_for(Option::is_some) => {}
            }
        };
        let store = state(&config.state_dir);
        let driven = driver::run(
            settings,
            &follow,
            &store,
            lkg,
            &mut wiring,
            inputs_rx,
            until,
        )
        .await;
        let result =
            ended(driven, &config).and_then(|()| match follow.hosting_changed.borrow().clone() {
                Some(changed) => Err(changed.into()),
                None => Ok(()),
            });
        let _ = stop_tx.send(true);
        let reconciler = reconciling.await.context("the reconciler panicked")?;
        probing.await.context("the prober panicked")?;
        for task in background {
            task.await.context("a background task panicked")?;
        }
        info!(status = ?reconciler.status().condition, "stopped");
        result
    }
    .instrument(span)
    .await
}

/// Tells the agent of each new reconciler status and health verdict (a report
/// goes out at once).
async fn changes(
    mut status: watch::Receiver<nanami_reconcile::Status>,
    mut health: watch::Receiver<BTreeMap<NetworkId, NetworkHealth>>,
    inputs: mpsc::Sender<Input>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            changed = status.changed() => if changed.is_err() { return },
            changed = health.changed() => if changed.is_err() { return },
        }
        status.mark_unchanged();
        health.mark_unchanged();
        if inputs.send(Input::StatusChanged).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use nanami_model::GatewayState;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nanami-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_saved_state_loads_and_a_broken_one_is_an_error() {
        let d = dir("saved");
        assert!(saved_desired(&d).unwrap().is_none());
        let saved = GatewayDesired {
            generation: 3,
            state: GatewayState::default(),
            health_targets: HealthTargets::new(),
            uplink: None,
            digest: None,
        };
        state(&d).save_lkg(&saved).unwrap();
        assert_eq!(saved_desired(&d).unwrap(), Some(saved));
        std::fs::write(d.join("desired.json"), "{").unwrap();
        assert!(saved_desired(&d).is_err(), "the daemon must not guess");
        state(&d).remove_lkg().unwrap();
        state(&d).remove_lkg().unwrap();
        assert!(saved_desired(&d).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
