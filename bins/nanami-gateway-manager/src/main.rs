//! `nanami-gateway-manager`: init | serve | token | migrate | check.

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
use nanami_gateway_manager::server::ServerLimits;
use nanami_gateway_manager::store::{PgOptions, PgStore, Store};
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
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Bring the store's schema to the newest version this binary knows, then
    /// exit (`serve` does the same at start).
    Migrate {
        /// The manager directory.
        #[arg(long, default_value = "/var/lib/nanami-gateway-manager")]
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check that the store answers and that its schema is the one this binary
    /// serves; changes nothing. Exits non-zero otherwise.
    Check {
        /// The manager directory.
        #[arg(long, default_value = "/var/lib/nanami-gateway-manager")]
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Serve the API.
    Serve {
        /// The manager directory (from `init`).
        #[arg(long, default_value = "/var/lib/nanami-gateway-manager")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
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
        /// Connections open at once; more are closed as soon as they are accepted.
        /// Lowered to the file descriptor limit less a reserve (logged at start).
        #[arg(long, default_value_t = ServerLimits::default().max_connections)]
        max_connections: usize,
        /// How long a client may take for its TLS handshake, in milliseconds.
        #[arg(long, default_value_t = millis(ServerLimits::default().tls_handshake_timeout))]
        tls_handshake_timeout_ms: u64,
        /// How long a client may take to send a request head, in milliseconds.
        #[arg(long, default_value_t = millis(ServerLimits::default().header_read_timeout))]
        header_read_timeout_ms: u64,
        /// How long a connection may stay open with no request in flight, in
        /// milliseconds (a long-poll in flight is never cut).
        #[arg(long, default_value_t = millis(ServerLimits::default().idle_timeout))]
        idle_timeout_ms: u64,
        /// How long a client may take to send a request body once its head is in,
        /// in milliseconds.
        #[arg(long, default_value_t = millis(http::HttpConfig::default().body_timeout))]
        body_timeout_ms: u64,
        /// Also serve `/metrics` without a credential, over plain HTTP, on this
        /// address (for a Prometheus that only the monitoring network reaches). On
        /// the API's address `/metrics` needs the operator or control credential.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Add per-peer series to `/metrics` (bytes in and out, newest handshake
        /// of each peer of each gateway): their number grows with the clients.
        #[arg(long)]
        metrics_per_peer: bool,
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
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the API's OpenAPI document (what `/openapi.json` serves).
    Openapi,
}

/// Where the manager's state lives.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// The store: `sqlite` (the directory's `manager.db`, for one manager) or a
    /// PostgreSQL URL (`postgres://user@host:5432/db?sslmode=require`) that any
    /// number of managers share. Prefer the environment variable for a URL with a
    /// password: command lines are visible to every user of the host.
    #[arg(
        long = "store",
        env = "NANAMI_STORE",
        default_value = "sqlite",
        hide_env_values = true
    )]
    url: String,
    /// Connections to PostgreSQL this manager opens at most.
    #[arg(long = "store-pool-size", default_value_t = 16)]
    pool_size: usize,
    /// The CA certificate (PEM) of the PostgreSQL server: TLS to the database,
    /// verified against it.
    #[arg(long = "store-ca")]
    ca: Option<PathBuf>,
}

impl StoreArgs {
    fn is_sqlite(&self) -> bool {
        self.url == "sqlite"
    }

    /// Opens the store; `migrating`: brings its schema up to date first.
    fn open(&self, layout: &Layout, migrating: bool) -> anyhow::Result<Arc<dyn Store>> {
        if self.is_sqlite() {
            let path = layout.store();
            return Ok(if migrating {
                Arc::new(SqliteStore::open(&path)?)
            } else {
                Arc::new(SqliteStore::inspect(&path)?)
            });
        }
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            bail!("--store: expected `sqlite` or a postgres:// URL");
        }
        let options = PgOptions {
            url: self.url.clone(),
            pool_size: self.pool_size,
            ca: self.ca.clone(),
        };
        Ok(if migrating {
            Arc::new(PgStore::connect(&options)?)
        } else {
            Arc::new(PgStore::inspect(&options)?)
        })
    }
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
        Command::Init { dir, sans, store } => {
            let layout = Layout::new(&dir);
            let shared = if store.is_sqlite() {
                None
            } else {
                Some(store.open(&layout, true)?)
            };
            init(&layout, &sans, shared.as_deref())?;
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
            store,
        } => {
            let subject = match (gateway, node) {
                (Some(g), None) => Subject::Gateway(GatewayId::new(g).context("--gateway")?),
                (None, Some(n)) => Subject::Node(NodeId::new(n).context("--node")?),
                (Some(_), Some(_)) | (None, None) => bail!("give --gateway or --node"),
            };
            let layout = Layout::new(&dir);
            let manager = Manager::load(store.open(&layout, true)?, HealthConfig::default())?;
            let token = http::issue_token(&manager, &subject, ttl)?;
            println!("{}", token.token);
            Ok(())
        }
        Command::Openapi => {
            println!("{}", nanami_gateway_manager::openapi::document());
            Ok(())
        }
        Command::Migrate { dir, store } => {
            let status = store.open(&Layout::new(&dir), true)?.status()?;
            println!(
                "store schema version {} (this manager knows {})",
                status.version, status.known
            );
            Ok(())
        }
        Command::Check { dir, store } => {
            let status = store.open(&Layout::new(&dir), false)?.status()?;
            println!(
                "store answers: schema version {}, this manager knows {}; change sequence {}; topology revision {}",
                status.version, status.known, status.seq, status.revision
            );
            if status.version > status.known {
                bail!("the store's schema is newer than this manager: upgrade the manager");
            }
            if status.version < status.known {
                bail!("the store's schema is older than this manager: run `nanami-gateway-manager migrate`");
            }
            Ok(())
        }
        Command::Serve {
            dir,
            store,
            listen,
            topology,
            insecure_http,
            report_interval_ms,
            missed_reports,
            max_connections,
            tls_handshake_timeout_ms,
            header_read_timeout_ms,
            idle_timeout_ms,
            body_timeout_ms,
            metrics_listen,
            metrics_per_peer,
        } => {
            let fd_limit = match raise_fd_limit() {
                Ok(limit) => Some(limit),
                Err(e) => {
                    warn!(error = %e, "could not read or raise the file descriptor limit");
                    None
                }
            };
            let limits = ServerLimits {
                max_connections: server::connection_cap(max_connections, fd_limit),
                tls_handshake_timeout: Duration::from_millis(tls_handshake_timeout_ms),
                header_read_timeout: Duration::from_millis(header_read_timeout_ms),
                idle_timeout: Duration::from_millis(idle_timeout_ms),
            };
            info!(
                max_connections = limits.max_connections,
                requested = max_connections,
                ?fd_limit,
                "connection cap"
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(serve(ServeArgs {
                dir,
                store,
                listen,
                topology,
                insecure_http,
                health: HealthConfig {
                    report_interval: Duration::from_millis(report_interval_ms),
                    missed_reports,
                },
                limits,
                http: http::HttpConfig {
                    body_timeout: Duration::from_millis(body_timeout_ms),
                    per_peer_metrics: metrics_per_peer,
                },
                metrics_listen,
            }));
            // Tasks still running (connections past the grace period, blocking store
            // or compile work) must not hold the exit: the store commits atomically.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        }
    }
}

struct ServeArgs {
    dir: PathBuf,
    store: StoreArgs,
    listen: SocketAddr,
    topology: Option<PathBuf>,
    insecure_http: bool,
    health: HealthConfig,
    limits: ServerLimits,
    http: http::HttpConfig,
    metrics_listen: Option<SocketAddr>,
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.dir);
    if args.store.is_sqlite() && !layout.store().exists() {
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
    // Opening a PostgreSQL store connects and migrates: off the async workers.
    let store_args = args.store.clone();
    let opened = layout.clone();
    let store = tokio::task::spawn_blocking(move || store_args.open(&opened, true)).await??;
    let manager = Arc::new(Manager::load(store, args.health)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(server::follow_changes(
        manager.clone(),
        stopped(stop_rx.clone()),
    ));
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
    if let Some(addr) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for metrics"))?;
        info!(addr = %metrics.local_addr()?, "serving /metrics without a credential");
        tokio::spawn(server::serve(
            metrics,
            http::metrics_router(manager.clone(), args.http),
            None,
            args.limits,
            stopped(stop_rx.clone()),
        ));
    }
    let serving = tokio::spawn(server::serve(
        listener,
        http::router(manager, args.http),
        tls,
        args.limits,
        stopped(stop_rx),
    ));
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    // `serve` returns within its grace period; the margin is for a busy runtime.
    let _ = tokio::time::timeout(server::SHUTDOWN_GRACE + Duration::from_secs(1), serving).await;
    Ok(())
}

/// `Duration` as whole milliseconds, for flag defaults.
const fn millis(d: Duration) -> u64 {
    // Defaults are seconds to minutes: far inside u64.
    d.as_millis() as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does at start:
/// the soft limit (1,024 by default on Linux) exists for programs that use
/// `select(2)`, which this one does not, and each connection costs a descriptor.
/// Returns the soft limit in force afterwards.
fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, aligned
    // local; it has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` from a live local; raising the soft
        // limit up to the hard one needs no privilege and affects only descriptor
        // numbering limits of this process (and children it spawns: none).
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
        warn!(
            error = %std::io::Error::last_os_error(),
            soft = limit.rlim_cur,
            hard = limit.rlim_max,
            "could not raise the file descriptor limit to the hard limit"
        );
    }
    Ok(limit.rlim_cur)
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
        let (m, t) = (manager.clone(), text.clone());
        let applied = match tokio::task::spawn_blocking(move || m.put_topology_text(&t)).await {
            Ok(result) => result,
            Err(e) => {
                error!(error = %e, "bug: the topology reload's task failed");
                continue;
            }
        };
        match applied {
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
