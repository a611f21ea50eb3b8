//! The agent's loops: enrolment, following the manager, probing the gateways, and
//! turning configuration plus local failover into the desired state of the
//! reconciler that drives this machine.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nanami_api::client::Backoff;
use nanami_api::wire::{EnrolRequest, Subject};
use nanami_model::{Failover, GatewayId, GatewayState, NetworkId, NodeConfig, PublicKey};
use nanami_reconcile::{Desired, Reconciler};
use nanami_wg::linux::{LinuxConfig, LinuxPlatform};
use nanami_wg::probe::Pinger;
use rand::SeedableRng as _;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, info_span, warn, Instrument as _};

use super::saved::{Saved, StateDir};
use super::Settings;

/// How often the agent re-evaluates its gateways between probes: the resolution of
/// failover decisions.
const EVALUATE_EVERY: Duration = Duration::from_millis(100);

/// What `status.json` in the state directory says, rewritten at each change.
#[derive(Debug, Serialize)]
struct AgentStatus<'a> {
    /// Generation of the local desired state.
    generation: u64,
    /// The manager's version of the configuration in force.
    version: &'a str,
    /// Each network's active gateway (`None`: no gateway answers).
    active: BTreeMap<&'a NetworkId, Option<&'a GatewayId>>,
    /// Gateways treated as dead.
    down: &'a BTreeSet<GatewayId>,
}

/// Runs the agent until `shutdown` completes, then removes what it created.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let span = info_span!("connect", node = %settings.node);
    async move {
        let dir = StateDir(settings.state_dir.clone());
        let public_key = dir.ensure_key()?;
        let port = dir.listen_port(settings.listen_port)?;
        info!(%public_key, port, interface = %settings.interface, "starting");
        let platform = LinuxPlatform::new(LinuxConfig {
            uapi_dir: Some(settings.uapi_dir.clone()),
            ..LinuxConfig::in_dir(&settings.state_dir)
        })?;

        let (desired_tx, desired_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let reconciler = Reconciler::new(
            platform,
            desired_rx,
            Box::new(rand::rngs::StdRng::from_entropy()),
            nanami_reconcile::Config::default(),
            Instant::now(),
        );
        let status_rx = reconciler.subscribe_status();
        let mut stop = stop_rx.clone();
        let reconciling = tokio::spawn(
            reconciler
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .instrument(tracing::Span::current()),
        );

        let mut agent = Agent {
            settings: &settings,
            dir: &dir,
            port,
            failover: Failover::new(settings.policy),
            current: dir.load_config(&settings.node),
            probing: false,
            generation: 0,
            last_state: None,
            desired_tx,
            start: Instant::now(),
        };
        if let Some(saved) = &agent.current {
            info!(version = %saved.version, "serving the last-known-good configuration");
            agent.publish();
        }
        tokio::pin!(shutdown);
        let result = tokio::select! {
            r = agent.follow(public_key, status_rx) => r,
            () = &mut shutdown => Ok(()),
        };
        let _ = stop_tx.send(true);
        let mut reconciler = reconciling.await.context("the reconciler panicked")?;
        if let Err(e) = reconciler.platform_mut().teardown().await {
            error!(error = %e, "removing the tunnel failed");
        }
        result
    }
    .instrument(span)
    .await
}

struct Agent<'a> {
    settings: &'a Settings,
    dir: &'a StateDir,
    port: u16,
    failover: Failover,
    /// The manager's configuration in force.
    current: Option<Saved>,
    /// Whether probing has started (after the tunnel's first pass).
    probing: bool,
    generation: u64,
    last_state: Option<GatewayState>,
    desired_tx: watch::Sender<Option<Arc<Desired>>>,
    start: Instant,
}

impl Agent<'_> {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Watches the gateways that can be probed (a gateway without an overlay address
    /// in any of the client's networks cannot be, and is never judged dead).
    fn watch_gateways(&mut self) {
        let gateways: BTreeSet<GatewayId> = self
            .current
            .as_ref()
            .map(|s| {
                s.config
                    .probe_addresses()
                    .into_iter()
                    .filter(|(_, addresses)| !addresses.is_empty())
                    .map(|(gateway, _)| gateway)
                    .collect()
            })
            .unwrap_or_default();
        let now = self.now();
        self.failover.watch(gateways, now);
    }

    /// Enrols, then follows the manager and the probes until an error stops it.
    async fn follow(
        &mut self,
        public_key: PublicKey,
        mut status_rx: watch::Receiver<nanami_reconcile::Status>,
    ) -> anyhow::Result<()> {
        let pinger = match Pinger::new() {
            Ok(p) => Some(p),
            Err(e) => {
                error!(error = %e, "cannot probe the gateways (needs CAP_NET_RAW): no failover without the manager");
                None
            }
        };
        let (config_tx, mut config_rx) = mpsc::channel::<Saved>(4);
        let (reply_tx, mut reply_rx) = mpsc::channel::<GatewayId>(256);
        let poller = {
            let settings = self.settings.clone();
            let dir = self.dir.clone();
            let after = self.current.as_ref().map(|s| s.version.clone());
            tokio::spawn(
                async move {
                    let credential = credential(&settings, &dir, public_key).await?;
                    poll(settings, credential, after, config_tx).await;
                    anyhow::Ok(())
                }
                .instrument(tracing::Span::current()),
            )
        };
        let mut poller = AbortOnDrop(poller);
        let mut evaluate = tokio::time::interval(EVALUATE_EVERY);
        evaluate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_probe: Option<Instant> = None;
        loop {
            tokio::select! {
                ended = &mut poller.0 => {
                    // Enrolment failed for good (no token, token refused).
                    ended.context("the configuration task panicked")??;
                    bail!("the configuration task stopped");
                }
                Some(saved) = config_rx.recv() => self.accept(saved),
                Some(gateway) = reply_rx.recv() => {
                    let now = self.now();
                    self.failover.reply(&gateway, now);
                }
                changed = status_rx.changed() => {
                    if changed.is_err() {
                        bail!("the reconciler stopped");
                    }
                    let status = status_rx.borrow_and_update().clone();
                    if !self.probing && status.applied_generation.is_some() {
                        info!("tunnel up: probing the gateways");
                        self.probing = true;
                        self.watch_gateways();
                    }
                }
                _ = evaluate.tick() => {
                    if !self.probing {
                        continue;
                    }
                    if let Some(pinger) = &pinger {
                        if last_probe.is_none_or(|t| t.elapsed() >= self.settings.policy.interval) {
                            last_probe = Some(Instant::now());
                            self.probe(pinger, &reply_tx);
                        }
                    }
                    let now = self.now();
                    self.failover.evaluate(now);
                    self.publish();
                }
            }
        }
    }

    /// A configuration from the manager: saved, then in force.
    fn accept(&mut self, saved: Saved) {
        if !is_news(self.current.as_ref(), &saved) {
            return;
        }
        if let Err(e) = self.dir.save_config(&saved) {
            warn!(error = %e, "cannot save the configuration; using it anyway");
        }
        info!(version = %saved.version, "new configuration from the manager");
        if saved.config.peers.iter().any(|p| p.exit) {
            warn!("the configuration routes the internet through an exit gateway; nanami connect does not install default routes yet (only the networks' prefixes)");
        }
        self.current = Some(saved);
        if self.probing {
            self.watch_gateways();
        }
        self.publish();
    }

    /// One echo to each address of each gateway; an answer reports the gateway.
    fn probe(&self, pinger: &Pinger, replies: &mpsc::Sender<GatewayId>) {
        let Some(saved) = &self.current else { return };
        let timeout = self.settings.policy.dead_after;
        for (gateway, addresses) in saved.config.probe_addresses() {
            for address in addresses {
                let pinger = pinger.clone();
                let replies = replies.clone();
                let gateway = gateway.clone();
                tokio::spawn(async move {
                    if pinger.ping(address, timeout).await.is_ok() {
                        let _ = replies.send(gateway).await;
                    }
                });
            }
        }
    }

    /// Sends the reconciler the state for the configuration in force under the
    /// current failover, if it changed.
    fn publish(&mut self) {
        let Some(saved) = &self.current else { return };
        let config: &NodeConfig = &saved.config;
        let down = if self.probing {
            self.failover.down_for(&config.gateways)
        } else {
            BTreeSet::new()
        };
        let state = config.client_state(&self.settings.interface, self.port, &down);
        if self.last_state.as_ref() == Some(&state) {
            return;
        }
        self.generation += 1;
        let active: BTreeMap<&NetworkId, Option<&GatewayId>> = config
            .gateways
            .keys()
            .map(|n| (n, config.active_gateway(n, &down)))
            .collect();
        for (net, gateway) in &active {
            match gateway {
                Some(g) => {
                    info!(network = %net, gateway = %g, generation = self.generation, "network routed")
                }
                None => warn!(network = %net, "no gateway of the network answers"),
            }
        }
        let status = AgentStatus {
            generation: self.generation,
            version: &saved.version,
            active,
            down: &down,
        };
        let file = self.dir.0.join("status.json");
        if let Err(e) = serde_json::to_vec_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|json| nanami_wg::linux::write_atomic(&file, &json))
        {
            warn!(error = %e, "cannot write {}", file.display());
        }
        self.desired_tx.send_replace(Some(Arc::new(Desired {
            generation: self.generation,
            state: state.clone(),
        })));
        self.last_state = Some(state);
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The credential, enrolling with the token if there is none yet. Retries while
/// the manager is unreachable; fails at once if the token is refused.
async fn credential(
    settings: &Settings,
    dir: &StateDir,
    public_key: PublicKey,
) -> anyhow::Result<String> {
    if let Some(credential) = dir.credential() {
        return Ok(credential);
    }
    let Some(token) = settings.token.clone() else {
        bail!("not enrolled yet: give an enrolment token (--token-file) for node {} and public key {public_key}", settings.node);
    };
    let client = &settings.client;
    let request = EnrolRequest {
        token,
        public_key,
        // A token for another node is refused before it is spent.
        subject: Some(Subject::Node(settings.node.clone())),
    };
    let response = client
        .enrol_retrying(&request)
        .await
        .context("enrolment refused (is this node's public key the one in the topology?)")?;
    if response.subject != Subject::Node(settings.node.clone()) {
        bail!(
            "the token was for {}, not node {}",
            response.subject,
            settings.node
        );
    }
    dir.save_credential(&response.credential)?;
    info!(%public_key, "enrolled");
    Ok(response.credential)
}

/// Follows the node's configuration (long-poll) and hands each new one over. Each
/// long-poll waits past the version last handed over, whichever manager answers
/// it, so a switch to another manager skips nothing; one that is behind answers
/// with another version, which [`is_news`] weighs.
async fn poll(
    settings: Settings,
    credential: String,
    mut after: Option<String>,
    tx: mpsc::Sender<Saved>,
) {
    let client = settings.client.clone().with_credential(credential);
    let mut backoff = Backoff::new();
    loop {
        match client
            .node_config_watch(&settings.node, after.as_deref(), settings.poll_wait)
            .await
        {
            Ok(Some((version, config))) => {
                backoff.reset();
                if config.node != settings.node {
                    warn!(got = %config.node, "the manager sent another node's configuration; ignored");
                } else {
                    after = Some(version.clone());
                    if tx.send(Saved { version, config }).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(None) => {
                backoff.reset();
                continue;
            }
            Err(e) => match e.status().map(|s| s.as_u16()) {
                Some(401 | 403) => {
                    error!(error = %e, "the manager refuses this node's credential; re-enrol with a new token")
                }
                Some(_) | None => {
                    warn!(error = %e, retry_in = ?backoff.delay(), "cannot fetch the configuration; keeping the last-known-good one")
                }
            },
        }
        tokio::time::sleep(backoff.advance()).await;
    }
}

/// Whether `offered` changes the configuration in force: not when it is the
/// version in force (the same version again, from the same manager or another
/// after a switch) or the same configuration. Versions are digests of the content,
/// not ordered: a manager that is behind and serves an older configuration is
/// not told apart from one whose topology went back to it; the next long-poll
/// (after the version just taken) brings the newer one again from whichever
/// manager is ahead.
fn is_news(current: Option<&Saved>, offered: &Saved) -> bool {
    current.is_none_or(|c| c.version != offered.version && c.config != offered.config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use nanami_model::{NodeId, WorkspaceId};

    use super::*;

    fn saved(version: &str, mtu: u32) -> Saved {
        Saved {
            version: version.into(),
            config: NodeConfig {
                node: NodeId::new("laptop-1").unwrap(),
                workspace: WorkspaceId::new("acme").unwrap(),
                public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
                    .parse()
                    .unwrap(),
                addresses: BTreeSet::new(),
                mtu,
                peers: Vec::new(),
                unassigned: BTreeSet::new(),
                gateways: BTreeMap::new(),
                exit: None,
            },
        }
    }

    #[test]
    fn a_version_already_in_force_is_ignored() {
        let current = saved("aa11", 1420);
        assert!(is_news(None, &current), "the first configuration");
        assert!(
            !is_news(Some(&current), &saved("aa11", 1420)),
            "the same version again (another manager, after a switch)"
        );
        assert!(
            !is_news(Some(&current), &saved("aa11", 1280)),
            "the version in force, whatever it carries"
        );
        assert!(
            !is_news(Some(&current), &saved("bb22", 1420)),
            "the same configuration under another version"
        );
        assert!(is_news(Some(&current), &saved("bb22", 1280)));
    }
}
