//! A tunnel that follows its manager: [`nanami_agent::driver`] (the same agent
//! as `nanami connect` and the gateway daemon) on a thread of its own, wired to
//! the tunnel's device.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nanami_agent::driver::client::NodeFollow;
use nanami_agent::driver::{self, DriverError, Input, StateDir, Wiring};
use nanami_agent::{Fatal, VersionedConfig};
use nanami_model::{GatewayId, NodeId, PrivateKey, ProbePolicy};
use tokio::sync::{mpsc, oneshot};

use crate::error::NanamiError;
use crate::events::{StopReason, TunnelEvent};
use crate::state::TunnelState;
use crate::tunnel::{lock, open_device, Shared};

/// How long one long-poll of the manager waits.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// The agent's state file of the configuration in force (as `nanami connect`'s).
const LKG_FILE: &str = "config.json";

/// Where a following tunnel finds its manager and keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FollowSettings {
    /// The manager's URLs (`https://host:port`), in order; several for
    /// active-active managers sharing one store.
    pub managers: Vec<String>,
    /// A PEM file of the CA that signed the managers' certificates.
    pub ca_file: Option<String>,
    /// This node's id in the topology.
    pub node: String,
    /// The app's private directory for the key, the credential and the
    /// last-known-good configuration (created 0700; files 0600).
    pub state_dir: String,
    /// The one-time enrolment token; needed only until the first enrolment.
    pub enrolment_token: Option<String>,
    /// Milliseconds between two probes of each gateway.
    #[uniffi(default = 500)]
    pub probe_interval_ms: u32,
    /// Milliseconds without an answer after which a gateway is down.
    #[uniffi(default = 1500)]
    pub dead_after_ms: u32,
    /// Milliseconds of steady answers before a gateway that came back is used again.
    #[uniffi(default = 30000)]
    pub hold_down_ms: u32,
}

/// What the platform's VPN interface must be: asked of [`TunProvider`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TunRequest {
    /// The interface addresses (`100.80.0.10/32`).
    pub addresses: Vec<String>,
    /// The MTU.
    pub mtu: u32,
    /// Every prefix routed into the tunnel, sorted.
    pub routes: Vec<String>,
}

impl TunRequest {
    /// Whether a TUN made as `self` serves `wanted`: the same addresses and MTU,
    /// and every route wanted. A route no longer wanted stays on the TUN (its
    /// packets find no peer and are dropped) rather than cost a new TUN, whose
    /// making drops every session.
    fn serves(&self, wanted: &TunRequest) -> bool {
        self.addresses == wanted.addresses
            && self.mtu == wanted.mtu
            && wanted.routes.iter().all(|r| self.routes.contains(r))
    }
}

/// Implemented by the app: makes the VPN interface a following tunnel runs on
/// (Android: a `VpnService.Builder` with these addresses, MTU and routes, then
/// `establish().detachFd()`).
#[uniffi::export(callback_interface)]
pub trait TunProvider: Send + Sync {
    /// The fd of a new TUN configured as `request` says (the tunnel takes it
    /// over and closes the previous one), or a negative number if it cannot be
    /// made (an `Error` event follows; the next configuration asks again).
    fn open_tun(&self, request: TunRequest) -> i32;
}

/// One network's gateway in use.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ActiveGateway {
    /// The network.
    pub network: String,
    /// Its gateway in use; `None` when none of its gateways answers.
    pub gateway: Option<String>,
}

/// Creates `state_dir` (0700) and this node's key in it on first use (0600,
/// never leaving it) and returns the public key, base64: what the operator puts
/// in the topology for this node before it enrols.
#[uniffi::export]
pub fn state_dir_public_key(state_dir: String) -> Result<String, NanamiError> {
    Ok(store(&state_dir).ensure_key().map_err(system)?.to_base64())
}

fn store(dir: &str) -> StateDir<VersionedConfig> {
    StateDir::new(PathBuf::from(dir), LKG_FILE)
}

fn system(e: impl std::fmt::Display) -> NanamiError {
    NanamiError::System {
        reason: e.to_string(),
    }
}

/// The agent's thread.
pub(crate) struct AgentHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: JoinHandle<()>,
}

impl AgentHandle {
    /// Ends the agent and waits for it, unless called from the agent's own thread
    /// (an app's callback): then it ends by itself when the callback returns.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            // An error means the agent already ended.
            let _ = stop.send(());
        }
        if self.thread.thread().id() != std::thread::current().id() {
            let _ = self.thread.join();
        }
    }
}

/// Checks `settings`, reads the key, and starts the agent's thread, its handle
/// in `shared.agent`.
pub(crate) fn spawn(
    settings: FollowSettings,
    provider: Box<dyn TunProvider>,
    shared: Arc<Shared>,
) -> Result<(), NanamiError> {
    let node = NodeId::new(settings.node.clone())
        .map_err(|e| NanamiError::invalid_config(format!("node {:?}: {e}", settings.node)))?;
    let policy = ProbePolicy {
        interval: Duration::from_millis(u64::from(settings.probe_interval_ms)),
        dead_after: Duration::from_millis(u64::from(settings.dead_after_ms)),
        hold_down: Duration::from_millis(u64::from(settings.hold_down_ms)),
    };
    if policy.interval.is_zero() || policy.dead_after < policy.interval {
        return Err(NanamiError::invalid_config(
            "dead_after_ms must be at least probe_interval_ms, which must not be 0",
        ));
    }
    if settings.managers.is_empty() {
        return Err(NanamiError::invalid_config("no manager given"));
    }
    let ca = settings.ca_file.as_ref().map(PathBuf::from);
    let managers = driver::clients(&settings.managers, ca.as_deref())
        .map_err(|e| NanamiError::invalid_config(format!("managers: {e}")))?;
    let dir = store(&settings.state_dir);
    let private_key = dir.private_key().map_err(system)?;
    let public_key = private_key.public_key();
    let token = settings
        .enrolment_token
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let driver_settings = driver::Settings {
        agent: nanami_agent::Config {
            failover: Some(policy),
            ..nanami_agent::Config::new(managers.len())
        },
        managers,
        token,
        public_key,
        poll_wait: POLL_WAIT,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("nanami-agent-io")
        .build()
        .map_err(system)?;
    let (stop, stopped) = oneshot::channel();
    // Held until the handle is in place: an agent that fails at once finds it
    // there when it stops the tunnel.
    let mut slot = lock(&shared.agent);
    let agent_shared = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("nanami-agent".into())
        .spawn(move || {
            let (inputs_tx, inputs_rx) = mpsc::channel(256);
            let result = runtime.block_on(async {
                let mut wiring = Device {
                    shared: &agent_shared,
                    provider,
                    private_key,
                    current: None,
                    down: BTreeSet::new(),
                    prober: prober(inputs_tx.clone(), policy.dead_after),
                    inputs: inputs_tx,
                    tun: None,
                };
                let lkg = match dir.load_lkg() {
                    Ok(Some(saved)) if saved.config.node == node => Some(saved),
                    Ok(_) | Err(_) => None,
                };
                driver::run(
                    driver_settings,
                    &NodeFollow(node.clone()),
                    &dir,
                    lkg,
                    &mut wiring,
                    inputs_rx,
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            });
            drop(runtime);
            if let Err(e) = result {
                agent_shared.emit(TunnelEvent::Error {
                    message: describe(&e, &node),
                });
                // Nothing carries traffic without the agent's configuration.
                agent_shared.shut_down(StopReason::AgentFailed);
            }
        })
        .map_err(|e| system(format!("spawning the agent thread: {e}")))?;
    *slot = Some(AgentHandle {
        stop: Some(stop),
        thread,
    });
    Ok(())
}

fn describe(e: &DriverError, node: &NodeId) -> String {
    match e {
        DriverError::Fatal(Fatal::NotEnrolled) => format!(
            "not enrolled yet: give an enrolment token for node {node} (this app's key is in its state directory)"
        ),
        other @ (DriverError::Fatal(_)
        | DriverError::Store(_)
        | DriverError::NoManager
        | DriverError::EnrolmentRefused { .. }) => other.to_string(),
    }
}

#[cfg(target_os = "linux")]
type Prober = nanami_agent::driver::client::Prober;

/// The gateways are probed with raw ICMP sockets, on Linux (`CAP_NET_RAW`).
#[cfg(target_os = "linux")]
fn prober(replies: mpsc::Sender<Input>, timeout: Duration) -> Option<Prober> {
    Prober::new(replies, timeout).ok()
}

/// Elsewhere (an app has no raw sockets) there are no probes yet: the manager's
/// health checks move the client.
#[cfg(not(target_os = "linux"))]
struct Prober;

#[cfg(not(target_os = "linux"))]
impl Prober {
    fn probe(&self, _targets: &BTreeMap<GatewayId, BTreeSet<IpAddr>>) {}
}

#[cfg(not(target_os = "linux"))]
fn prober(_replies: mpsc::Sender<Input>, _timeout: Duration) -> Option<Prober> {
    None
}

/// The wiring: the agent's decisions, made the tunnel's device.
struct Device<'a> {
    shared: &'a Shared,
    provider: Box<dyn TunProvider>,
    private_key: PrivateKey,
    /// The manager's configuration in force.
    current: Option<VersionedConfig>,
    /// Gateways that do not answer.
    down: BTreeSet<GatewayId>,
    prober: Option<Prober>,
    inputs: mpsc::Sender<Input>,
    /// What the TUN in use was made as.
    tun: Option<TunRequest>,
}

impl Wiring<VersionedConfig> for Device<'_> {
    fn apply(&mut self, desired: &VersionedConfig) {
        self.current = Some(desired.clone());
        match self.publish() {
            // The agent starts probing once a configuration runs.
            Ok(()) => {
                let _ = self.inputs.try_send(Input::Applied);
            }
            Err(e) => self.shared.emit(TunnelEvent::Error {
                message: format!("applying configuration {}: {e}", desired.version),
            }),
        }
    }

    fn switch_gateways(&mut self, down: &BTreeSet<GatewayId>) {
        down.clone_into(&mut self.down);
        self.shared.emit(TunnelEvent::GatewaysDown {
            gateways: down.iter().map(ToString::to_string).collect(),
        });
        if let Err(e) = self.publish() {
            self.shared.emit(TunnelEvent::Error {
                message: format!("failing over: {e}"),
            });
        }
    }

    fn probe(&mut self, targets: &BTreeMap<GatewayId, BTreeSet<IpAddr>>) {
        if let Some(prober) = &self.prober {
            prober.probe(targets);
        }
    }
}

impl Device<'_> {
    /// Makes the device run the configuration in force under the failover's
    /// down set: the peers changed in place, or the whole device moved to a new
    /// TUN when the TUN in use cannot serve it (see [`TunRequest::serves`]).
    fn publish(&mut self) -> Result<(), NanamiError> {
        let Some(saved) = &self.current else {
            return Ok(());
        };
        let config = &saved.config;
        let target = TunnelState::of_node(self.private_key.clone(), config, &self.down);
        let request = TunRequest {
            addresses: target.addresses().iter().map(ToString::to_string).collect(),
            mtu: target.mtu(),
            routes: target.routes().iter().map(ToString::to_string).collect(),
        };
        let has_device = self
            .shared
            .device
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        let new_tun = match &self.tun {
            Some(tun) if has_device => !tun.serves(&request),
            Some(_) | None => true,
        };
        if new_tun {
            let fd = self.provider.open_tun(request.clone());
            if fd < 0 {
                return Err(NanamiError::InvalidTunFd {
                    fd,
                    reason: "the app's TunProvider made no TUN".into(),
                });
            }
            let device = open_device(fd, &target)?;
            let old = self
                .shared
                .device
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .replace(device);
            if let Some(old) = old {
                old.shutdown();
            }
            self.tun = Some(request.clone());
            *lock(&self.shared.applied) = Some(target);
        } else {
            self.shared.change_to(target)?;
        }
        *lock(&self.shared.active) = config
            .active_gateways(&self.down)
            .into_iter()
            .map(|(network, gateway)| ActiveGateway {
                network: network.to_string(),
                gateway: gateway.map(ToString::to_string),
            })
            .collect();
        self.shared.emit(TunnelEvent::ConfigApplied {
            version: saved.version.clone(),
            addresses: request.addresses,
            mtu: request.mtu,
            routes: request.routes,
            new_tun,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tun(addresses: &[&str], mtu: u32, routes: &[&str]) -> TunRequest {
        TunRequest {
            addresses: addresses.iter().map(|s| (*s).to_owned()).collect(),
            mtu,
            routes: routes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_tun_serves_fewer_routes_but_not_more_nor_other_addresses() {
        let made = tun(&["100.64.0.2/32"], 1380, &["10.20.0.0/24", "100.64.0.1/32"]);
        assert!(made.serves(&made.clone()));
        assert!(made.serves(&tun(&["100.64.0.2/32"], 1380, &["10.20.0.0/24"])));
        assert!(!made.serves(&tun(
            &["100.64.0.2/32"],
            1380,
            &["10.20.0.0/24", "10.30.0.0/24"]
        )));
        assert!(!made.serves(&tun(&["100.64.0.9/32"], 1380, &["10.20.0.0/24"])));
        assert!(!made.serves(&tun(&["100.64.0.2/32"], 1280, &["10.20.0.0/24"])));
    }
}
