//! `nanami-gateway-manager`: init | serve | token.

use nanami_api::service::shutdown_signal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use nanami_api::wire::Subject;
use nanami_gateway_manager::init::{init, Layout};
use nanami_gateway_manager::{http, server, HealthConfig, Manager, SqliteStore};
use nanami_model::{GatewayId, NodeId};
use tokio::sync::watch;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "nanami-gateway-manager",
    version,
    about = "Nanami's gateway manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the manager directory: CA, server certificate, credentials, store.
    Init {
        /// The manager directory.
        #[arg(long, default_value = "/var/lib/nanami-gateway-manager")]
        dir: PathBuf,
        /// Names and addresses in the server certificate (repeatable).
        #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        sans: Vec<String>,
    },
    /// Serve the API.
    Serve {
        /// The manager directory (from `init`).
        #[arg(long, default_value = "/var/lib/nanami-gateway-manager")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// A topology file to load now and reload whenever it changes.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Serve plain HTTP instead of TLS (only allowed on a loopback address).
        #[arg(long)]
        insecure_http: bool,
        /// How often daemons report, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        report_interval_ms: u64,
        /// Reports a gateway may miss before it is offline.
        #[arg(long, default_value_t = 3)]
        missed_reports: u32,
    },
    /// Mint a one-time enrolment token (printed on standard output).
    Token {
        /// The manager directory.
        #[arg(long, default_value = "/var/lib/nanami-gateway-manager")]
        dir: PathBuf,
        /// For a gateway.
        #[arg(long, conflicts_with = "node", required_unless_present = "node")]
        gateway: Option<String>,
        /// For a client node.
        #[arg(long)]
        node: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = http::DEFAULT_TOKEN_TTL)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    nanami_api::service::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, sans } => {
            let layout = Layout::new(&dir);
            init(&layout, &sans)?;
            println!(
                "initialised {}\n  CA for clients:       {}\n  control credential:   {}\n  operator credential:  {}",
                dir.display(),
                layout.ca_cert().display(),
                layout.control_token().display(),
                layout.operator_token().display()
            );
            Ok(())
        }
        Command::Token {
            dir,
            gateway,
            node,
            ttl,
        } => {
            let subject = match (gateway, node) {
                (Some(g), None) => Subject::Gateway(GatewayId::new(g).context("--gateway")?),
                (None, Some(n)) => Subject::Node(NodeId::new(n).context("--node")?),
                (Some(_), Some(_)) | (None, None) => bail!("give --gateway or --node"),
            };
            let layout = Layout::new(&dir);
            let manager = Manager::load(
                Arc::new(SqliteStore::open(&layout.store())?),
                HealthConfig::default(),
            )?;
            let token = http::issue_token(&manager, &subject, ttl)?;
            println!("{}", token.token);
            Ok(())
        }
        Command::Serve {
            dir,
            listen,
            topology,
            insecure_http,
            report_interval_ms,
            missed_reports,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(ServeArgs {
                dir,
                listen,
                topology,
                insecure_http,
                health: HealthConfig {
                    report_interval: Duration::from_millis(report_interval_ms),
                    missed_reports,
                },
            }))
        }
    }
}

struct ServeArgs {
    dir: PathBuf,
    listen: SocketAddr,
    topology: Option<PathBuf>,
    insecure_http: bool,
    health: HealthConfig,
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.dir);
    if !layout.store().exists() {
        bail!(
            "{} has no store: run `nanami-gateway-manager init --dir {}` first",
            args.dir.display(),
            args.dir.display()
        );
    }
    let tls = if args.insecure_http {
        if !server::plain_http_allowed(&args.listen) {
            bail!(
                "--insecure-http is only allowed on a loopback address, not {}",
                args.listen
            );
        }
        warn!("serving plain HTTP on loopback (--insecure-http)");
        None
    } else {
        Some(Arc::new(nanami_api::tls::server_config(
            &layout.server_cert(),
            &layout.server_key(),
        )?))
    };
    let store = Arc::new(SqliteStore::open(&layout.store())?);
    let manager = Arc::new(Manager::load(store, args.health)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(path) = args.topology.clone() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        manager
            .put_topology_text(&text)
            .with_context(|| format!("loading {}", path.display()))?;
        tokio::spawn(watch_file(
            manager.clone(),
            path,
            text,
            stopped(stop_rx.clone()),
        ));
    }
    let tick = (args.health.report_interval / 4).max(Duration::from_millis(50));
    tokio::spawn(server::health_loop(
        manager.clone(),
        tick,
        stopped(stop_rx.clone()),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    info!(addr = %listener.local_addr()?, tls = !args.insecure_http, "serving");
    let serving = tokio::spawn(server::serve(
        listener,
        http::router(manager, http::HttpConfig::default()),
        tls,
        stopped(stop_rx),
    ));
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    Ok(())
}

/// Reloads the topology file when its contents change (polled once a second: a
/// file watcher would add a dependency for no gain at this rate).
async fn watch_file(
    manager: Arc<Manager>,
    path: PathBuf,
    mut last: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            continue;
        };
        if text == last {
            continue;
        }
        match manager.put_topology_text(&text) {
            Ok(r) => {
                info!(file = %path.display(), revision = r.revision, changed = r.changed.len(), "topology file reloaded")
            }
            Err(e) => {
                error!(file = %path.display(), error = %e, "topology file refused; keeping the previous one")
            }
        }
        last = text;
    }
}
