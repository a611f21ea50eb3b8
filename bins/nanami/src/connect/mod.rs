//! `nanami connect`: the client agent.
//!
//! It generates the node's key on first start (0600, in its state directory; only
//! the public half ever leaves it), enrols with a one-time token, then follows its
//! configuration from the manager (long-poll) and reconciles a local Nanami
//! WireGuard device, with its addresses, routes and rules, through the same
//! reconciler and Linux platform as a gateway. The configuration is kept on disk
//! (last-known-good), so the agent starts and keeps working while the manager is
//! unreachable.
//!
//! It probes every gateway of its failover lists through the tunnel (ICMP echo to
//! the gateway's own overlay address) and routes each network to the first gateway
//! of its list that answers ([`nanami_model::Failover`]): a dead primary costs about
//! `--dead-after-ms` plus one probe interval, without the manager. A gateway that
//! comes back gets its clients back after `--hold-down-ms` of steady answers. The
//! manager's lists win: local probes only ever skip a gateway that does not answer.
//!
//! Given several managers (`--manager a,b`: active-active, one store), it follows
//! whichever answers (see [`nanami_api::Client`]), keeping its credential and
//! last-known-good configuration across a switch, and resumes its long-poll after
//! the version in force.
//!
//! On SIGTERM or Ctrl-C it removes what it created (device, routes, rules).

mod agent;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use nanami_agent::driver::StateDir;
use nanami_agent::VersionedConfig;
use nanami_api::Client;
use nanami_model::{InterfaceName, NodeId, ProbePolicy};

pub use agent::run;

/// The state directory's files: the key, the credential, the listen port, and
/// the last-known-good configuration (`config.json`).
pub fn state_dir(dir: impl Into<PathBuf>) -> StateDir<VersionedConfig> {
    StateDir::new(dir, "config.json")
}

/// `nanami connect` arguments.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub managers: nanami_api::service::ManagerFlags,
    /// This node's id.
    #[arg(long)]
    pub node: Option<String>,
    /// Key, credential, listen port and last-known-good configuration.
    #[arg(long, default_value = "/var/lib/nanami/connect")]
    pub state_dir: PathBuf,
    /// A file holding a one-time enrolment token (needed once, on first start).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The WireGuard interface to create (must start with `nm-`).
    #[arg(long, default_value = "nm-client")]
    pub interface: String,
    /// Where the tunnel's UAPI socket goes (`wg show` looks in /var/run/wireguard).
    #[arg(long, default_value = nanami_wg::device::DEFAULT_UAPI_DIR)]
    pub uapi_dir: PathBuf,
    /// UDP port of the tunnel; 0 picks a free one on first start and keeps it.
    #[arg(long, default_value_t = 0)]
    pub listen_port: u16,
    /// Time between two probes of each gateway, in milliseconds.
    #[arg(long, default_value_t = duration_ms(ProbePolicy::default().interval))]
    pub probe_interval_ms: u64,
    /// Silence after which a gateway is treated as dead, in milliseconds.
    #[arg(long, default_value_t = duration_ms(ProbePolicy::default().dead_after))]
    pub dead_after_ms: u64,
    /// Steady answers a gateway that was dead needs before clients move back to it,
    /// in milliseconds.
    #[arg(long, default_value_t = duration_ms(ProbePolicy::default().hold_down))]
    pub hold_down_ms: u64,
    /// Print the public key (generating the key on first use) and exit.
    #[arg(long)]
    pub print_public_key: bool,
}

const fn duration_ms(d: Duration) -> u64 {
    // Default policies are seconds long: far inside u64.
    d.as_millis() as u64
}

/// The agent's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One client per manager, without a credential (the agent chooses which is
    /// asked).
    pub managers: Vec<Client>,
    /// This node.
    pub node: NodeId,
    /// State directory.
    pub state_dir: PathBuf,
    /// One-time enrolment token.
    pub token: Option<String>,
    /// The tunnel interface.
    pub interface: InterfaceName,
    /// Requested listen port (0: choose once).
    pub listen_port: u16,
    /// The UAPI socket directory.
    pub uapi_dir: PathBuf,
    /// Probing and hold-down.
    pub policy: ProbePolicy,
    /// How long one long-poll of the configuration may wait.
    pub poll_wait: Duration,
}

impl Settings {
    /// Checks the arguments.
    pub fn from_args(args: ConnectArgs) -> anyhow::Result<Self> {
        let node = NodeId::new(args.node.context("--node is required")?).context("--node")?;
        let interface = InterfaceName::new(args.interface).context("--interface")?;
        if !interface.is_owned() {
            bail!("--interface {interface}: Nanami only manages interfaces named nm-*");
        }
        let policy = ProbePolicy {
            interval: Duration::from_millis(args.probe_interval_ms),
            dead_after: Duration::from_millis(args.dead_after_ms),
            hold_down: Duration::from_millis(args.hold_down_ms),
        };
        if policy.interval.is_zero() || policy.dead_after < policy.interval {
            bail!("--dead-after-ms must be at least --probe-interval-ms, which must not be 0");
        }
        let token = nanami_api::service::read_token_file(args.token_file.as_deref())?;
        // The list checked as a whole (a bad entry, the same manager twice).
        args.managers.client().context("--manager")?;
        let managers =
            nanami_agent::driver::clients(&args.managers.manager, args.managers.ca.as_deref())
                .context("--manager")?;
        if managers.is_empty() {
            bail!("--manager: no manager given");
        }
        Ok(Self {
            managers,
            node,
            state_dir: args.state_dir,
            token,
            interface,
            listen_port: args.listen_port,
            uapi_dir: args.uapi_dir,
            policy,
            poll_wait: Duration::from_secs(30),
        })
    }
}
