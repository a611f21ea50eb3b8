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
//! The binary (`main.rs`) picks the platform: the Linux one or, for tests and the
//! fleet benchmark, [`nanami_reconcile::sim::SimPlatform`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod facts;
pub mod lkg;
pub mod metrics;
pub mod probe;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nanami_api::client::Backoff;
use nanami_api::wire::{EnrolRequest, Facts, NetworkHealth, ObservedReport, Subject};
use nanami_api::Client;
use nanami_model::{GatewayId, HealthTargets, InterfaceName, NetworkId, PublicKey};
use nanami_reconcile::{Observed, Op, Platform, PlatformEvent, Reconciler};
use rand::SeedableRng as _;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, info_span, warn, Instrument as _};

pub use lkg::{LastKnownGood, Offer};
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
#[derive(Debug, thiserror::Error)]
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
    let mut lkg = LastKnownGood::load(&config.desired_file())?;
    if lkg.current().is_some() {
        return Ok(lkg.uplink().cloned());
    }
    let anonymous = client(config)?;
    let credential = credential_with(&anonymous, config, key).await?;
    let client = anonymous.with_credential(credential);
    let mut backoff = Backoff::new();
    loop {
        match client
            .desired(&config.gateway, None, config.poll_wait)
            .await
        {
            Ok(Some(desired)) => {
                lkg.offer(desired)
                    .context("the first desired state was refused")?;
                return Ok(lkg.uplink().cloned());
            }
            Ok(None) => {}
            Err(e) => {
                if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) {
                    bail!("the manager refuses this gateway's credential: {e}");
                }
                warn!(error = %e, retry_in = ?backoff.delay(), "waiting for the first desired state");
            }
        }
        tokio::time::sleep(backoff.advance()).await;
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
    let key = nanami_wg::linux::keyfile::load_or_generate(path, &mut rand_core::OsRng)?;
    Ok(key.public_key())
}

fn client(config: &DaemonConfig) -> anyhow::Result<Client> {
    Ok(Client::new(&config.manager, config.ca.as_deref())?)
}

/// The credential, enrolling with the token if there is none yet. Retries while
/// the manager is unreachable; fails at once if the token is refused.
pub async fn credential(config: &DaemonConfig, key: PublicKey) -> anyhow::Result<String> {
    credential_with(&client(config)?, config, key).await
}

/// [`credential`] through `client` (whose clones then ask first the manager that
/// enrolled it).
async fn credential_with(
    client: &Client,
    config: &DaemonConfig,
    key: PublicKey,
) -> anyhow::Result<String> {
    let file = config.credential_file();
    if let Ok(text) = std::fs::read_to_string(&file) {
        return Ok(text.trim().to_owned());
    }
    let Some(token) = config.token.clone() else {
        bail!(
            "not enrolled yet ({} is missing): give an enrolment token (--token-file)",
            file.display()
        );
    };
    let request = EnrolRequest {
        token,
        public_key: key,
        // A token for another gateway is refused before it is spent.
        subject: Some(Subject::Gateway(config.gateway.clone())),
    };
    let response = client
        .enrol_retrying(&request)
        .await
        .context("enrolment refused")?;
    if response.subject != Subject::Gateway(config.gateway.clone()) {
        bail!(
            "the token was for {}, not gateway {}",
            response.subject,
            config.gateway
        );
    }
    nanami_wg::linux::write_atomic(&file, format!("{}\n", response.credential).as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    info!(gateway = %config.gateway, public_key = %key, "enrolled");
    Ok(response.credential)
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
/// manager's desired state, reconciles `platform`, reports. Dropping the platform
/// at the end is the caller's platform's business (the Linux platform's devices
/// live in this process today).
pub async fn run<P: Platform + 'static>(
    config: DaemonConfig,
    public_key: PublicKey,
    platform: P,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let span = info_span!("daemon", gateway = %config.gateway);
    async move {
        let mut lkg = LastKnownGood::load(&config.desired_file())?;
        if let Some(d) = lkg.current() {
            info!(
                generation = d.generation,
                "serving the last-known-good desired state"
            );
        }
        let (desired_tx, desired_rx) = watch::channel(lkg.current());
        let (targets_tx, targets_rx) = watch::channel(lkg.targets().clone());
        let (digest_tx, digest_rx) = watch::channel(applied_digest(&lkg));
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

        let anonymous = client(&config)?;
        let enrolled = {
            let config = config.clone();
            let anonymous = anonymous.clone();
            let mut stop = stop_rx.clone();
            async move {
                tokio::select! {
                    c = credential_with(&anonymous, &config, public_key) => c,
                    _ = stop.wait_for(|s| *s) => bail!("stopped before enrolment"),
                }
            }
        };
        let work = async {
            let credential = enrolled.await?;
            let client = anonymous.with_credential(credential);
            let reporter = report_loop(
                client.clone(),
                config.clone(),
                public_key,
                Sources {
                    status: status_rx,
                    observed: observed_rx,
                    health: health_rx,
                    digest: digest_rx,
                },
                stopped(stop_rx.clone()),
            );
            let poller = poll_loop(
                client,
                &config,
                &mut lkg,
                Outputs {
                    desired: &desired_tx,
                    targets: &targets_tx,
                    digest: &digest_tx,
                    metrics: &daemon_metrics,
                },
                stopped(stop_rx.clone()),
            );
            // The reporter runs until shutdown; the poller also ends when the
            // gateway's hosting changes.
            tokio::select! {
                () = reporter => anyhow::Ok(()),
                r = poller => r.map_err(anyhow::Error::from),
            }
        };
        tokio::pin!(shutdown);
        let result = tokio::select! {
            r = work => r,
            () = &mut shutdown => Ok(()),
        };
        let _ = stop_tx.send(true);
        let reconciler = reconciling.await.context("the reconciler panicked")?;
        probing.await.context("the prober panicked")?;
        for task in background {
            task.await.context("a metrics task panicked")?;
        }
        info!(status = ?reconciler.status().condition, "stopped");
        result
    }
    .instrument(span)
    .await
}

/// Follows the desired state: each long-poll asks for a generation above the one
/// in force (`after`), whichever manager answers it, so after a switch to another
/// manager nothing is skipped; and [`LastKnownGood::offer`] refuses anything older
/// than the state in force and applies an equal one never twice, so a manager that
/// is behind cannot move the gateway backwards.
async fn poll_loop(
    client: Client,
    config: &DaemonConfig,
    lkg: &mut LastKnownGood,
    out: Outputs<'_>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HostingChanged> {
    let Outputs {
        desired: desired_tx,
        targets: targets_tx,
        digest: digest_tx,
        metrics,
    } = out;
    tokio::pin!(shutdown);
    // The first request asks for whatever the manager has, so that a manager that
    // went back in time (restored from an old backup) is noticed and refused.
    let mut first = true;
    let mut backoff = Backoff::new();
    loop {
        let after = if first { None } else { lkg.generation() };
        let answer = tokio::select! {
            () = &mut shutdown => return Ok(()),
            a = client.desired(&config.gateway, after, config.poll_wait) => a,
        };
        match answer {
            Ok(answer) => {
                first = false;
                let Some(desired) = answer else {
                    backoff.reset();
                    continue;
                };
                if desired.uplink != config.uplink {
                    return Err(HostingChanged {
                        from: config.uplink.clone(),
                        to: desired.uplink,
                    });
                }
                let generation = desired.generation;
                match lkg.offer(desired) {
                    Ok(Offer::Accepted) => {
                        backoff.reset();
                        info!(generation, "new desired state accepted and saved");
                        metrics.accepted(generation);
                        desired_tx.send_replace(lkg.current());
                        digest_tx.send_replace(applied_digest(lkg));
                        targets_tx.send_if_modified(|t| {
                            let changed = t != lkg.targets();
                            if changed {
                                lkg.targets().clone_into(t);
                            }
                            changed
                        });
                        continue;
                    }
                    Ok(Offer::Same) => {
                        backoff.reset();
                        digest_tx.send_if_modified(|d| {
                            let now = applied_digest(lkg);
                            let changed = *d != now;
                            *d = now;
                            changed
                        });
                        continue;
                    }
                    // Asked again at once, a manager would give the same refused
                    // state again: wait as after a failure.
                    Err(e) => {
                        warn!(generation, error = %e, retry_in = ?backoff.delay(), "desired state refused");
                    }
                }
            }
            Err(e) => match e.status() {
                Some(status) if status.as_u16() == 401 || status.as_u16() == 403 => {
                    error!(error = %e, "the manager refuses this gateway's credential; re-enrol with a new token");
                }
                Some(_) | None => {
                    warn!(error = %e, retry_in = ?backoff.delay(), "cannot fetch the desired state; serving the last-known-good one")
                }
            },
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(backoff.advance()) => {}
        }
    }
}

/// Where the poll loop publishes what it accepts.
struct Outputs<'a> {
    desired: &'a watch::Sender<Option<Arc<nanami_reconcile::Desired>>>,
    targets: &'a watch::Sender<HealthTargets>,
    /// The generation in force and the manager's digest of it.
    digest: &'a watch::Sender<Option<(u64, String)>>,
    /// Told when a generation is accepted (apply latency starts there).
    metrics: &'a metrics::DaemonMetrics,
}

/// The generation in force with the manager's digest of it, if it gave one.
fn applied_digest(lkg: &LastKnownGood) -> Option<(u64, String)> {
    lkg.generation().zip(lkg.digest().map(str::to_owned))
}

/// What a report is made of.
struct Sources {
    status: watch::Receiver<nanami_reconcile::Status>,
    observed: watch::Receiver<Option<Observed>>,
    health: watch::Receiver<BTreeMap<NetworkId, NetworkHealth>>,
    /// The generation in force and the manager's digest of it.
    digest: watch::Receiver<Option<(u64, String)>>,
}

async fn report_loop(
    client: Client,
    config: DaemonConfig,
    public_key: PublicKey,
    sources: Sources,
    shutdown: impl Future<Output = ()>,
) {
    let Sources {
        status: mut status_rx,
        observed: observed_rx,
        health: mut health_rx,
        digest: digest_rx,
    } = sources;
    tokio::pin!(shutdown);
    let mut failing = false;
    let mut status_open = true;
    let mut health_open = true;
    loop {
        // A new status or a new forwarding-path verdict is reported at once.
        tokio::select! {
            () = &mut shutdown => return,
            changed = status_rx.changed(), if status_open => {
                if changed.is_err() {
                    status_open = false;
                }
            }
            changed = health_rx.changed(), if health_open => {
                if changed.is_err() {
                    health_open = false;
                }
            }
            () = tokio::time::sleep(config.report_every) => {}
        }
        let status = status_rx.borrow_and_update().clone();
        let observed = observed_rx.borrow().clone().unwrap_or_default();
        let report = ObservedReport {
            public_key,
            status: status.clone(),
            state: observed.state.owned(),
            telemetry: observed.telemetry,
            facts: config.facts.clone().unwrap_or_else(facts::read),
            health: health_rx.borrow_and_update().clone(),
            // The digest of the generation in force, when that is the applied one.
            applied_digest: digest_rx
                .borrow()
                .as_ref()
                .filter(|(g, _)| Some(*g) == status.applied_generation)
                .map(|(_, d)| d.clone()),
        };
        match client.report(&config.gateway, &report).await {
            Ok(()) => {
                if failing {
                    info!("reporting to the manager again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot report to the manager");
                }
                failing = true;
            }
        }
    }
}
