//! `nanami-gateway-daemon`: run (the default) or `--teardown`.

use nanami_api::service::shutdown_signal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use nanami_gateway_daemon::{
    ensure_key, hosting, run, saved_desired, state, DaemonConfig, HostingChanged, IcmpProber,
    ProbeConfig,
};
use nanami_model::{GatewayId, GatewayState};
use nanami_reconcile::sim::SimPlatform;
use nanami_wg::linux::{DeviceMode, Hosting, LinuxConfig, LinuxPlatform};
use tracing::{error, info};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlatformKind {
    /// This machine's network namespace (needs CAP_NET_ADMIN).
    Linux,
    /// An in-memory machine (tests, benchmarks, dry runs).
    Sim,
}

#[derive(Parser)]
#[command(
    name = "nanami-gateway-daemon",
    version,
    about = "Nanami's gateway daemon"
)]
struct Cli {
    #[command(flatten)]
    managers: nanami_api::service::ManagerFlags,
    /// This gateway's id.
    #[arg(long)]
    gateway: Option<String>,
    /// Key, credential and last-known-good state.
    #[arg(long, default_value = "/var/lib/nanami-gateway-daemon")]
    state_dir: PathBuf,
    /// A file holding a one-time enrolment token (needed once, on first start).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The machine to drive.
    #[arg(long, value_enum, default_value_t = PlatformKind::Linux)]
    platform: PlatformKind,
    /// Report to the manager at least this often, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    report_interval_ms: u64,
    /// Reconcile at least this often, in milliseconds, even without events.
    #[arg(long, default_value_t = 30_000)]
    resync_ms: u64,
    /// Probe the health targets behind this gateway (forwarding-path health) this
    /// often, in milliseconds.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    probe_interval_ms: u64,
    /// How long one probe (ICMP echo) waits for its reply, in milliseconds.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    probe_timeout_ms: u64,
    /// Rounds in a row in which every target of a network is silent before this
    /// gateway reports itself unhealthy for that network (clients move away).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    probe_fail_after: u32,
    /// Rounds in a row with an answer before an unhealthy network is healthy again.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    probe_recover_after: u32,
    /// Run each WireGuard device in its own `nanami-device` process (this
    /// program), so the data plane keeps forwarding when the daemon stops or
    /// restarts; a restarted daemon adopts the running devices.
    #[arg(long, value_name = "NANAMI_DEVICE")]
    detached_devices: Option<PathBuf>,
    /// Turn off the userspace devices' TUN and UDP offloads (TSO/GRO, UDP
    /// GSO/GRO), for a kernel whose offload paths misbehave. A device that gets
    /// an offloaded write refused turns them off itself, with a warning.
    #[arg(long)]
    no_offload: bool,
    /// Print the public key (generating the key on first use) and exit.
    #[arg(long)]
    print_public_key: bool,
    /// Remove everything Nanami owns on this machine and the saved desired state,
    /// then exit (key and credential stay).
    #[arg(long)]
    teardown: bool,
    /// Serve the daemon's own `/metrics` (reconcile passes, failed ops, drift
    /// repairs, apply latency, device counters) over plain HTTP on this address;
    /// keep it local (`127.0.0.1:9501`) or on a monitoring network.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    nanami_api::service::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<HostingChanged>() => {
            info!("{e:#}; exiting for the supervisor to restart the daemon");
            // EX_TEMPFAIL: the unit restarts it, and the next start builds the
            // platform for the new placement.
            ExitCode::from(75)
        }
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    let key_file = cli.state_dir.join("private.key");
    let public_key = ensure_key(&key_file)?;
    if cli.print_public_key {
        println!("{public_key}");
        return Ok(());
    }
    let mut linux = LinuxConfig::in_dir(&cli.state_dir);
    linux.offload = !cli.no_offload;
    if let Some(program) = &cli.detached_devices {
        linux.device = DeviceMode::Detached {
            program: program.clone(),
        };
    }
    if cli.teardown {
        // A hosted gateway's namespace is named after it, and its uplink is in the
        // saved state: teardown gives the uplink back and deletes the namespace.
        let saved = saved_desired(&cli.state_dir)?;
        if let (Some(uplink), Some(gateway)) = (saved.and_then(|s| s.uplink), &cli.gateway) {
            let gateway = GatewayId::new(gateway.clone()).context("--gateway")?;
            linux.namespace = Some(Hosting::for_gateway(&gateway, Some(uplink.to_string())));
            linux.prefer_kernel = false;
        }
        let mut platform = LinuxPlatform::new(linux)?;
        platform.teardown().await?;
        state(&cli.state_dir).remove_lkg()?;
        info!("removed everything Nanami owns on this machine");
        return Ok(());
    }
    let gateway =
        GatewayId::new(cli.gateway.context("--gateway is required")?).context("--gateway")?;
    let token = nanami_api::service::read_token_file(cli.token_file.as_deref())?;
    // A bad list is an error now, not at the first call.
    let managers = cli
        .managers
        .client()
        .context("--manager")?
        .managers()
        .collect::<Vec<_>>()
        .join(",");
    let config = DaemonConfig {
        manager: managers,
        ca: cli.managers.ca,
        gateway,
        state_dir: cli.state_dir.clone(),
        token,
        report_every: Duration::from_millis(cli.report_interval_ms),
        poll_wait: Duration::from_secs(30),
        reconcile: nanami_reconcile::Config {
            resync: Duration::from_millis(cli.resync_ms),
            ..nanami_reconcile::Config::default()
        },
        facts: None,
        status_out: None,
        probe: ProbeConfig {
            interval: Duration::from_millis(cli.probe_interval_ms),
            timeout: Duration::from_millis(cli.probe_timeout_ms),
            fail_after: cli.probe_fail_after,
            recover_after: cli.probe_recover_after,
        },
        prober: None,
        uplink: None,
        metrics_listener: match cli.metrics_listen {
            Some(addr) => Some(Arc::new(
                std::net::TcpListener::bind(addr)
                    .with_context(|| format!("--metrics-listen {addr}"))?,
            )),
            None => None,
        },
    };
    info!(gateway = %config.gateway, %public_key, managers = %config.manager, "starting");
    match cli.platform {
        PlatformKind::Linux => {
            // Hosted or not is the manager's word (the topology's `uplink`), known
            // before the platform is built: from the saved state, or the first one.
            let mut config = config;
            config.uplink = tokio::select! {
                h = hosting(&config, public_key) => h?,
                () = shutdown_signal() => return Ok(()),
            };
            if let Some(uplink) = &config.uplink {
                let hosted = Hosting::for_gateway(&config.gateway, Some(uplink.to_string()));
                info!(namespace = %hosted.name, %uplink, "hosted: the gateway runs in its own network namespace");
                config.prober = Some(Arc::new(IcmpProber::in_namespace(hosted.name.clone())));
                linux.namespace = Some(hosted);
                linux.prefer_kernel = false;
            }
            let result = run(
                config.clone(),
                public_key,
                LinuxPlatform::new(linux.clone())?,
                shutdown_signal(),
            )
            .await;
            if let Err(e) = &result {
                if e.is::<HostingChanged>() {
                    // Leave nothing in the old placement; the next start fetches the
                    // new state and builds the platform for it.
                    let mut old = LinuxPlatform::new(linux)?;
                    old.teardown().await?;
                    state(&config.state_dir).remove_lkg()?;
                }
            }
            result
        }
        PlatformKind::Sim => {
            let platform = SimPlatform::new(GatewayState::default());
            run(config, public_key, platform, shutdown_signal()).await
        }
    }
}
