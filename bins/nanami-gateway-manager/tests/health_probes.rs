//! Forwarding-path health for real, in network namespaces (root): the real manager,
//! the real gateway daemon on the Linux platform probing its health target with ICMP
//! through its LAN, and a second gateway (simulated platform, real probes) as the
//! standby.
//!
//! ```text
//!            ┌── 198.18.9.0/30 ── gwa (nanami-gateway-daemon --platform linux) ── 10.20.0.0/24 ── resa (10.20.0.10)
//! ctl (manager)
//!            └── 198.18.9.4/30 ── gwb (nanami-gateway-daemon --platform sim)   ── 10.20.0.0/24 ── resb (10.20.0.10)
//! ```
//!
//! Cutting gw-a's LAN (its link in `resa` goes down) while its management link stays
//! up: gw-a keeps reporting (online) but the manager marks (gw-a, corp) unhealthy
//! within the probe bound, and the client's configuration puts gw-b first;
//! restoring the link brings both back. The daemons run the default probe timing
//! (2 s rounds, 1 s timeout, 3 rounds to fail, 3 to recover); the times are printed.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nanami_api::wire::{GatewayStatus, Liveness, PathHealth};
use nanami_api::Client;
use nanami_model::{GatewayId, NodeId, PrivateKey};
use nanami_testkit::root::require_netns;
use nanami_testkit::{run, veth, wait_until_async, Netns, Process};

const MANAGER: &str = env!("CARGO_BIN_EXE_nanami-gateway-manager");
const TARGET: &str = "10.20.0.10";

/// Default probing: 3 rounds of 2 s plus a 1 s timeout, a report, a recompile.
/// Twice that leaves room for a loaded machine.
const BOUND: Duration = Duration::from_secs(16);

/// The repository's target directory holds the daemon next to the manager. Built
/// as `cargo test --workspace` builds it (after which this is a no-op): `cargo
/// build -p nanami-gateway-daemon` would unify features differently, use the dev
/// profile, and recompile for minutes.
fn daemon_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ok = Command::new(cargo)
        .current_dir(&root)
        .args(["test", "-q", "--workspace", "--no-run"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "building the workspace's binaries failed");
    let path = Path::new(MANAGER).with_file_name("nanami-gateway-daemon");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A temp dir removed on drop.
struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `program args…` in `ns`, logging to `log` (printed if the test fails).
fn spawn(ns: &Netns, program: &Path, args: &[&str], log: &Path) -> Process {
    let mut cmd = ns.command(program);
    cmd.args(args).env("RUST_LOG", "info");
    let what = log.file_stem().unwrap().to_string_lossy().into_owned();
    Process::spawn_logged(&what, cmd, log)
}

fn manager_cmd(args: &[&str]) -> String {
    let out = run(Command::new(MANAGER).args(args));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Gateway ids unique on the machine: their WireGuard UAPI sockets
/// (`/var/run/wireguard/nm-<id>.sock`) share one directory across namespaces, and
/// other suites run gateways too.
fn ids() -> (String, String) {
    let pid = std::process::id();
    (format!("h{pid:x}a"), format!("h{pid:x}b"))
}

fn topology(a: &str, gw_a: &str, b: &str, gw_b: &str, laptop: &str) -> String {
    let gateway = |id: &str, n: u8| {
        format!(
            "      - {{ id: {id}, node: {id}, region: lab, networks: [corp], roles: [ingress, egress], endpoint: \"192.0.2.{n}:51820\", listen_port: 51820 }}\n"
        )
    };
    format!(
        "version: 1
regions: [{{ id: lab, state: active }}]
workspaces:
  - id: acme
    tenant: acme-corp
    regions: [lab]
    networks:
      - {{ id: corp, overlay: 100.80.0.0/22, routes: [10.20.0.0/24], health_targets: [{TARGET}], gateways: {{ policy: auto, redundancy: 2 }} }}
    nodes:
      - {{ id: {a}, public_key: \"{gw_a}\", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}] }}
      - {{ id: {b}, public_key: \"{gw_b}\", status: active, memberships: [{{ network: corp, address: 100.80.0.2 }}] }}
      - {{ id: laptop-1, public_key: \"{laptop}\", status: active, memberships: [{{ network: corp }}] }}
    gateways:
{}{}",
        gateway(a, 1),
        gateway(b, 2)
    )
}

fn gateway<'a>(status: &'a [GatewayStatus], id: &str) -> &'a GatewayStatus {
    status.iter().find(|g| g.id.as_str() == id).unwrap()
}

/// Polls `status` until `done` holds; returns the time it took. `primary` must
/// stay online meanwhile: its heartbeats do not cross the LAN.
async fn until(
    control: &Client,
    primary: &str,
    what: &str,
    bound: Duration,
    done: impl Fn(&[GatewayStatus]) -> bool,
) -> Duration {
    let start = Instant::now();
    wait_until_async(what, bound, || async {
        let status = control.status().await.map_err(|e| e.to_string())?;
        if let Some(a) = status.iter().find(|g| g.id.as_str() == primary) {
            assert_eq!(a.health, Liveness::Online, "{primary} went offline: {a:?}");
        }
        if done(&status) {
            return Ok(());
        }
        let seen: Vec<String> = status
            .iter()
            .map(|g| {
                format!(
                    "{} {:?} unhealthy {:?}",
                    g.id, g.health, g.unhealthy_networks
                )
            })
            .collect();
        Err(seen.join("; "))
    })
    .await;
    start.elapsed()
}

/// Waits until `gateway`'s latest report has `network` healthy with every target
/// answering (no failure since its last reply): a full healthy streak, from which a
/// cut must take the whole failure count to flip the verdict.
async fn healthy_streak(control: &Client, gateway: &GatewayId, network: &str, what: &str) {
    wait_until_async(what, Duration::from_secs(20), || async {
        let observed = control
            .observed(gateway)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no report yet")?;
        let health = observed.report.health.get(network);
        let streak = health.is_some_and(|h| {
            h.state == PathHealth::Healthy
                && !h.targets.is_empty()
                && h.targets
                    .values()
                    .all(|t| t.consecutive_failures == 0 && t.last_rtt_us.is_some())
        });
        if streak {
            Ok(())
        } else {
            Err(format!("{:?}", observed.report.health))
        }
    })
    .await;
}

#[test]
fn a_gateway_whose_lan_is_cut_is_unhealthy_for_its_network_while_it_still_reports() {
    require_netns(&["nft"]);
    let daemon = daemon_binary();
    let dir = Dir(std::env::temp_dir().join(format!("nmt-probes-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let d = |name: &str| dir.0.join(name);

    let ctl = Netns::new("hctl");
    let gwa = Netns::new("hgwa");
    let gwb = Netns::new("hgwb");
    let resa = Netns::new("hresa");
    let resb = Netns::new("hresb");
    veth(&ctl, "198.18.9.1/30", &gwa, "198.18.9.2/30");
    veth(&ctl, "198.18.9.5/30", &gwb, "198.18.9.6/30");
    let (_, resa_if) = veth(&gwa, "10.20.0.1/24", &resa, &format!("{TARGET}/24"));
    veth(&gwb, "10.20.0.1/24", &resb, &format!("{TARGET}/24"));

    // Keys where the daemons run; the topology names them.
    let key = |state: &Path| {
        let out = run(Command::new(&daemon)
            .args(["--print-public-key", "--state-dir"])
            .arg(state));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (a, b) = ids();
    let (a, b) = (a.as_str(), b.as_str());
    let (ka, kb) = (key(&d("gw-a")), key(&d("gw-b")));
    let laptop = PrivateKey::generate(&mut rand_core::OsRng).public_key();
    std::fs::write(
        d("topology.yaml"),
        topology(a, &ka, b, &kb, &laptop.to_string()),
    )
    .unwrap();

    let mdir = d("manager");
    let mdir_s = mdir.to_str().unwrap();
    manager_cmd(&[
        "init",
        "--dir",
        mdir_s,
        "--san",
        "127.0.0.1",
        "--san",
        "198.18.9.1",
        "--san",
        "198.18.9.5",
    ]);
    for (gw, file) in [(a, "gw-a"), (b, "gw-b")] {
        let token = manager_cmd(&["token", "--dir", mdir_s, "--gateway", gw]);
        std::fs::write(d(&format!("{file}.token")), token).unwrap();
    }
    let control_token = std::fs::read_to_string(mdir.join("control.token")).unwrap();
    let ca = mdir.join("ca.pem");
    let ca_s = ca.to_str().unwrap();
    let topology_file = d("topology.yaml");
    let mut procs = Vec::new();
    procs.push(spawn(
        &ctl,
        Path::new(MANAGER),
        &[
            "serve",
            "--dir",
            mdir_s,
            "--listen",
            "0.0.0.0:7443",
            "--topology",
            topology_file.to_str().unwrap(),
            "--report-interval-ms",
            "1000",
            "--missed-reports",
            "3",
        ],
        &d("manager.log"),
    ));
    for (ns, gw, file, addr, platform) in [
        (&gwa, a, "gw-a", "198.18.9.1", "linux"),
        (&gwb, b, "gw-b", "198.18.9.5", "sim"),
    ] {
        let state = d(file);
        let token = d(&format!("{file}.token"));
        procs.push(spawn(
            ns,
            &daemon,
            &[
                "--manager",
                &format!("https://{addr}:7443"),
                "--ca",
                ca_s,
                "--gateway",
                gw,
                "--state-dir",
                state.to_str().unwrap(),
                "--token-file",
                token.to_str().unwrap(),
                "--platform",
                platform,
                "--report-interval-ms",
                "1000",
            ],
            &d(&format!("{file}.log")),
        ));
    }

    // The API is reached from inside `ctl`: the test's sockets live there.
    let result = ctl.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(async {
            let control = Client::new("https://127.0.0.1:7443", Some(&ca))
                .unwrap()
                .with_credential(control_token.trim());
            let laptop = NodeId::new("laptop-1").unwrap();
            let first = |c: &nanami_model::NodeConfig| c.gateways["corp"][0].gateway.to_string();
            // Both gateways converge and find their path healthy.
            until(
                &control,
                a,
                "both gateways converged",
                Duration::from_secs(60),
                |s| {
                    [a, b].iter().all(|id| {
                        let g = gateway(s, id);
                        g.health == Liveness::Online
                            && g.observed_generation == Some(g.desired_generation)
                    })
                },
            )
            .await;
            let config = control.node_config(&laptop).await.unwrap();
            assert_eq!(first(&config), a);
            let gw_a = GatewayId::new(a).unwrap();
            let mut down_times = Vec::new();
            let mut up_times = Vec::new();
            for round in 0..3 {
                // gw-a's probes work through its LAN: its report says so, with a
                // full healthy streak, before each cut.
                healthy_streak(
                    &control,
                    &gw_a,
                    "corp",
                    &format!("round {round}: gw-a reporting corp healthy"),
                )
                .await;
                resa.ip(&["link", "set", &resa_if, "down"]);
                let took = until(
                    &control,
                    a,
                    &format!("round {round}: (gw-a, corp) unhealthy"),
                    BOUND,
                    |s| {
                        gateway(s, a).unhealthy_networks.contains("corp")
                            && gateway(s, b).unhealthy_networks.is_empty()
                    },
                )
                .await;
                down_times.push(took);
                let config = control.node_config(&laptop).await.unwrap();
                assert_eq!(first(&config), b, "the client moves to gw-b");

                resa.ip(&["link", "set", &resa_if, "up"]);
                let took = until(
                    &control,
                    a,
                    &format!("round {round}: gw-a healthy again"),
                    BOUND,
                    |s| gateway(s, a).unhealthy_networks.is_empty(),
                )
                .await;
                up_times.push(took);
                let config = control.node_config(&laptop).await.unwrap();
                assert_eq!(first(&config), a, "the client moves back");
            }
            (down_times, up_times)
        });
        outcome
    });
    let (down, up) = result;
    eprintln!("LAN cut -> manager marks (gw-a, corp) unhealthy: {down:?}");
    eprintln!("LAN restored -> healthy again: {up:?}");
    // Each bound is asserted above; the lower bound shows the hysteresis: at least
    // two full 2 s rounds pass before the verdict flips.
    for t in down.iter().chain(&up) {
        assert!(*t >= Duration::from_secs(3), "flipped after {t:?}");
    }
    drop(procs);
}
