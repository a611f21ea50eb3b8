//! `nanami status` and `nanami plan`: what the manager knows, as a table or a diff.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use nanami_api::wire::{GatewayStatus, Liveness};
use nanami_api::Client;
use nanami_model::{compile, GatewayId, GatewayState, Health, Topology};
use nanami_reconcile::{plan, Condition, Observed};

/// How to reach the manager.
#[derive(Args, Debug, Clone)]
pub struct ManagerArgs {
    /// The manager's URL.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    pub manager: String,
    /// The manager's CA certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// A file with the credential: platform (`nmc_`), workspace (`nmw_`) or
    /// operator (`nmo_`).
    #[arg(long)]
    pub credential_file: Option<PathBuf>,
}

impl ManagerArgs {
    /// A client with the credential.
    pub fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(&self.manager, self.ca.as_deref())?;
        Ok(match &self.credential_file {
            Some(p) => client.with_credential(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => client,
        })
    }
}

/// Runs `fut` on a fresh single-threaded runtime.
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut))
}

fn ago(t: SystemTime) -> String {
    match SystemTime::now().duration_since(t) {
        Ok(d) if d < Duration::from_secs(120) => format!("{}s ago", d.as_secs()),
        Ok(d) if d < Duration::from_secs(7200) => format!("{}m ago", d.as_secs() / 60),
        Ok(d) => format!("{}h ago", d.as_secs() / 3600),
        Err(_) => "now".into(),
    }
}

fn condition(c: Option<&Condition>) -> String {
    match c {
        None => "-".into(),
        Some(Condition::Ready) => "Ready".into(),
        Some(Condition::Progressing) => "Progressing".into(),
        Some(Condition::Degraded { reason }) => format!("Degraded: {reason}"),
        Some(other) => format!("{other:?}"),
    }
}

/// `online`, `OFFLINE`, or `online, PATH DOWN: <networks>` when the gateway still
/// reports but its forwarding path to those networks fails.
fn health(s: &GatewayStatus) -> String {
    match s.health {
        Liveness::Offline => "OFFLINE".into(),
        Liveness::Removed => "removed".into(),
        Liveness::Online if s.unhealthy_networks.is_empty() => "online".into(),
        Liveness::Online => {
            let networks: Vec<&str> = s.unhealthy_networks.iter().map(|n| n.as_str()).collect();
            format!("online, PATH DOWN: {}", networks.join(","))
        }
    }
}

/// The status table.
pub fn table(status: &[GatewayStatus]) -> String {
    let mut rows: Vec<Vec<String>> = vec![vec![
        "GATEWAY".to_string(),
        "REGION".into(),
        "HEALTH".into(),
        "CONDITION".into(),
        "GENERATION (desired/observed)".into(),
        "PEERS".into(),
        "NEWEST HANDSHAKE".into(),
    ]];
    for s in status {
        rows.push(vec![
            format!(
                "{}{}",
                s.id,
                if s.key_mismatch {
                    " (key mismatch!)"
                } else {
                    ""
                }
            ),
            s.region.clone().unwrap_or_else(|| "-".into()),
            health(s),
            match &s.generation_fork {
                Some(f) if !f.resolved => format!(
                    "FORKED: ran generation {} this manager did not issue; re-issued at {}",
                    f.reported_generation, f.reissued_generation
                ),
                Some(_) | None => condition(s.condition.as_ref()),
            },
            format!(
                "{}/{}",
                s.desired_generation,
                s.observed_generation.map_or("-".into(), |g| g.to_string())
            ),
            format!("{}/{}", s.observed_peers, s.peers),
            s.newest_handshake.map_or("never".into(), ago),
        ]);
    }
    let mut out = String::new();
    if let Some(e) = status.iter().find_map(|s| s.store_error.as_deref()) {
        out.push_str(&format!(
            "STORE CANNOT WRITE: {e}\n(what is shown is served, but a restart now would lose it)\n"
        ));
    }
    out.push_str(&crate::table::columns(&rows, ""));
    out
}

/// `nanami status`.
pub fn status(args: &ManagerArgs, json: bool) -> anyhow::Result<()> {
    let client = args.client()?;
    let status = block_on(async { client.status().await })??;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

/// `nanami plan` against the manager: the gateway's desired state against what it
/// last reported.
pub fn plan_remote(args: &ManagerArgs, gateway: &GatewayId, json: bool) -> anyhow::Result<()> {
    let client = args.client()?;
    let (desired, observed) = block_on(async {
        let d = client.desired(gateway, None, Duration::ZERO).await?;
        let o = client.observed(gateway).await?;
        anyhow::Ok((d, o))
    })??;
    let desired = desired.context("the manager has no desired state for this gateway")?;
    let observed = observed.map(|o| o.report.state).unwrap_or_default();
    print_plan(&desired.state, &observed, json)
}

/// `nanami plan FILE --observed OBSERVED`: a local topology against an observed
/// state (an `Observed` or a bare `GatewayState`, JSON).
pub fn plan_local(
    file: &Path,
    topology: &Topology,
    gateway: &GatewayId,
    health: &Health,
    observed: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let desired = compile(topology, health, gateway)
        .with_context(|| format!("compiling {} from {}", gateway, file.display()))?;
    let text = std::fs::read_to_string(observed)
        .with_context(|| format!("reading {}", observed.display()))?;
    let observed: GatewayState = match serde_json::from_str::<Observed>(&text) {
        Ok(o) => o.state,
        Err(_) => serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: neither an Observed nor a GatewayState",
                observed.display()
            )
        })?,
    };
    print_plan(&desired, &observed, json)
}

fn print_plan(desired: &GatewayState, observed: &GatewayState, json: bool) -> anyhow::Result<()> {
    let p = plan(desired, &Observed::from(observed.clone()));
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else if p.is_empty() {
        println!("no changes: the gateway matches its desired state");
    } else {
        print!("{p}");
        if !p.to_string().ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gateway(id: &str, health: Liveness, unhealthy: &[&str]) -> GatewayStatus {
        GatewayStatus {
            id: GatewayId::new(id).unwrap(),
            workspace: Some("acme".into()),
            region: Some("lab".into()),
            health,
            unhealthy_networks: unhealthy.iter().map(|n| n.parse().unwrap()).collect(),
            condition: Some(Condition::Ready),
            desired_generation: 3,
            observed_generation: Some(3),
            peers: 2,
            observed_peers: 2,
            newest_handshake: None,
            last_report_unix_ms: None,
            key_mismatch: false,
            facts: Default::default(),
            generation_fork: None,
            store_error: None,
        }
    }

    #[test]
    fn the_health_column_names_networks_whose_path_is_down() {
        let text = table(&[
            gateway("gw-a", Liveness::Online, &["corp", "lab"]),
            gateway("gw-b", Liveness::Online, &[]),
            gateway("gw-c", Liveness::Offline, &[]),
        ]);
        let line = |id: &str| text.lines().find(|l| l.starts_with(id)).unwrap().to_owned();
        assert!(
            line("gw-a").contains("online, PATH DOWN: corp,lab"),
            "{text}"
        );
        assert!(line("gw-b").contains("online  "), "{text}");
        assert!(line("gw-c").contains("OFFLINE"), "{text}");
    }
}
