//! The agent's wiring: [`nanami_agent`] enrols, follows the manager(s), keeps the
//! last-known-good configuration and decides failover; this turns its decisions
//! into the desired state of the reconciler that drives this machine, and sends
//! its probes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use nanami_agent::driver::client::{NodeFollow, Prober};
use nanami_agent::driver::{self, DriverError, Input, StateDir, Wiring};
use nanami_agent::{Fatal, VersionedConfig};
use nanami_model::{GatewayId, GatewayState, NetworkId, NodeConfig, NodeId};
use nanami_reconcile::{Desired, Reconciler};
use nanami_wg::linux::{LinuxConfig, LinuxPlatform};
use rand::SeedableRng as _;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, info_span, warn, Instrument as _};

use super::Settings;

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
        let dir = super::state_dir(settings.state_dir.clone());
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
        let mut status_rx = reconciler.subscribe_status();
        let mut stop = stop_rx.clone();
        let reconciling = tokio::spawn(
            reconciler
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .instrument(tracing::Span::current()),
        );

        // The tunnel's first pass starts the probes.
        let (inputs_tx, inputs_rx) = mpsc::channel(256);
        let applied_tx = inputs_tx.clone();
        tokio::spawn(async move {
            if status_rx
                .wait_for(|s| s.applied_generation.is_some())
                .await
                .is_ok()
            {
                info!("tunnel up: probing the gateways");
                let _ = applied_tx.send(Input::Applied).await;
            }
        });
        let prober = match Prober::new(inputs_tx, settings.policy.dead_after) {
            Ok(p) => Some(p),
            Err(e) => {
                error!(error = %e, "cannot probe the gateways (needs CAP_NET_RAW): no failover without the manager");
                None
            }
        };
        let mut wiring = Tunnel {
            settings: &settings,
            dir: &dir,
            port,
            current: None,
            down: BTreeSet::new(),
            generation: 0,
            last_state: None,
            desired_tx,
            prober,
        };
        let lkg = load_config(&dir, &settings.node);
        let follow = NodeFollow(settings.node.clone());
        let driving = driver::run(
            driver::Settings {
                managers: settings.managers.clone(),
                token: settings.token.clone(),
                public_key,
                poll_wait: settings.poll_wait,
                agent: nanami_agent::Config {
                    failover: Some(settings.policy),
                    ..nanami_agent::Config::new(settings.managers.len())
                },
            },
            &follow,
            &dir,
            lkg,
            &mut wiring,
            inputs_rx,
            shutdown,
        )
        .await;
        let result = match driving {
            Ok(()) => Ok(()),
            Err(DriverError::Fatal(Fatal::NotEnrolled)) => Err(anyhow!(
                "not enrolled yet: give an enrolment token (--token-file) for node {} and public key {public_key}",
                settings.node
            )),
            Err(e @ (DriverError::Fatal(Fatal::EnrolmentRefused { .. }) | DriverError::EnrolmentRefused { .. })) => Err(anyhow::Error::from(e)
                .context("enrolment refused (is this node's public key the one in the topology?)")),
            Err(e) => Err(e.into()),
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

/// The last-known-good configuration for `node`, if one was saved and is
/// readable (an unreadable one is ignored: the manager's next answer replaces it).
fn load_config(dir: &StateDir<VersionedConfig>, node: &NodeId) -> Option<VersionedConfig> {
    match dir.load_lkg() {
        Ok(Some(saved)) if &saved.config.node == node => Some(saved),
        Ok(Some(saved)) => {
            warn!(saved = %saved.config.node, "ignoring a saved configuration of another node");
            None
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable saved configuration");
            None
        }
    }
}

/// The local tunnel: the configuration in force with the failover's down set,
/// as the reconciler's desired state.
struct Tunnel<'a> {
    settings: &'a Settings,
    dir: &'a StateDir<VersionedConfig>,
    port: u16,
    /// The manager's configuration in force.
    current: Option<VersionedConfig>,
    /// Gateways treated as dead.
    down: BTreeSet<GatewayId>,
    generation: u64,
    last_state: Option<GatewayState>,
    desired_tx: watch::Sender<Option<Arc<Desired>>>,
    prober: Option<Prober>,
}

impl Wiring<VersionedConfig> for Tunnel<'_> {
    fn apply(&mut self, desired: &VersionedConfig) {
        if desired.config.peers.iter().any(|p| p.exit) {
            warn!("the configuration routes the internet through an exit gateway; nanami connect does not install default routes yet (only the networks' prefixes)");
        }
        self.current = Some(desired.clone());
        self.publish();
    }

    fn switch_gateways(&mut self, down: &BTreeSet<GatewayId>) {
        down.clone_into(&mut self.down);
        self.publish();
    }

    fn probe(&mut self, targets: &BTreeMap<GatewayId, BTreeSet<IpAddr>>) {
        if let Some(prober) = &self.prober {
            prober.probe(targets);
        }
    }
}

impl Tunnel<'_> {
    /// Sends the reconciler the state for the configuration in force under the
    /// current failover, if it changed.
    fn publish(&mut self) {
        let Some(saved) = &self.current else { return };
        let config: &NodeConfig = &saved.config;
        let down = &self.down;
        let state = config.client_state(&self.settings.interface, self.port, down);
        if self.last_state.as_ref() == Some(&state) {
            return;
        }
        self.generation += 1;
        let active = config.active_gateways(down);
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
            down,
        };
        if let Err(e) = serde_json::to_vec_pretty(&status)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                self.dir
                    .write("status.json", &json)
                    .map_err(|e| e.to_string())
            })
        {
            warn!(error = %e, "cannot write status.json");
        }
        self.desired_tx.send_replace(Some(Arc::new(Desired {
            generation: self.generation,
            state: state.clone(),
        })));
        self.last_state = Some(state);
    }
}
