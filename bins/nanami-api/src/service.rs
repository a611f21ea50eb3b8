//! What every Nanami program that runs as a service does the same way: logs, the
//! signals that stop it, the one-time token file it enrols with, the flags that
//! name its managers.

use std::path::{Path, PathBuf};

use crate::client::{ApiError, Client};

/// The `--manager` and `--ca` flags of every program that follows a manager (the
/// gateway daemon, `nanami connect`).
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerFlags {
    /// The manager's URL. Several managers serving the same API (one store) may be
    /// given, separated by commas or with the flag repeated: the program follows
    /// whichever answers, trying them in order at first.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://127.0.0.1:7443",
        value_delimiter = ',',
        num_args = 1..
    )]
    pub manager: Vec<String>,
    /// The CA certificate of the manager (from `nanami-gateway-manager init`).
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

impl ManagerFlags {
    /// A client of the managers (see [`Client::with_urls`]): a bad list is an
    /// error now, not at the first call.
    pub fn client(&self) -> Result<Client, ApiError> {
        Client::with_urls(&self.manager, self.ca.as_deref())
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (`info` without it), in colour
/// only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received: stopping");
}

/// The one-time enrolment token in `path`, if a path is given (surrounding
/// whitespace removed).
pub fn read_token_file(path: Option<&Path>) -> std::io::Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_owned())
            .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
    })
    .transpose()
}
