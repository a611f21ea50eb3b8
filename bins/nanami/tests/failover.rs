//! `nanami connect` against two real gateways, as root, in network namespaces.
//!
//! ```text
//!            ctl (manager, 198.18.0.100)
//!                 │
//!   cli ── wan bridge ── edge-a (198.18.0.1) ──┐
//!  (nanami     │                               lan bridge ── resource 10.20.0.10
//!  connect)    └──────── edge-b (198.18.0.2) ──┘
//! ```
//!
//! Network `corp` has `redundancy: 2`: edge-a is the client's primary, edge-b its
//! standby, and both hold the client as a peer. The gateways run
//! `nanami-gateway-daemon --platform linux`; the client runs `nanami connect`.
//!
//! - Failover: edge-a's link is cut; the client's pings to the resource resume through
//!   edge-b (outage measured over 5 runs); the link returns; the client moves back
//!   only after its hold-down.
//! - Forwarding path: edge-a keeps heartbeating but its LAN is cut; its probes of the
//!   network's health target fail, the manager marks it unhealthy for `corp`, and
//!   the client moves to edge-b, and back once the LAN returns; stopping the agent
//!   then removes its tunnel.
//! - Exit: `corp` also allows exit and the client wants it; an "internet" address
//!   that the client reaches only through its tunnel answers through edge-a, then
//!   through edge-b once edge-a's link is cut, while the manager next door stays
//!   outside the tunnel.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{strings, wait_until, NANAMI};
use nanami_testkit::root::require_netns;
use nanami_testkit::veth::{bridge, plug, set_link};
use nanami_testkit::{Netns, Process};

const RESOURCE: &str = "10.20.0.10";
/// Behind both gateways (routed by them through their LAN), not routed by the client.
const INTERNET: &str = "203.0.113.10";
const MANAGER: &str = "198.18.0.100:7443";
/// The client's hold-down in these tests (the default is 30 s).
const HOLD_DOWN: Duration = Duration::from_secs(5);

/// The rigs use fixed interface names (and `wg`'s socket directory is shared by
/// every namespace): one at a time.
static ONE_RIG: Mutex<()> = Mutex::new(());

/// The rig's machines, in `<prefix>-<name>` namespaces.
const MACHINES: [&str; 6] = ["ctl", "gwa", "gwb", "cli", "wan", "lan"];

struct Rig {
    // Fields drop in order: the processes stop before their namespaces go.
    /// The manager and the gateway daemons.
    procs: Vec<Process>,
    /// `nanami connect`.
    client: Option<Process>,
    namespaces: Vec<Netns>,
    dir: PathBuf,
}

impl Rig {
    /// The namespace of machine `name` (one of [`MACHINES`]).
    fn ns(&self, name: &str) -> &Netns {
        let i = MACHINES.iter().position(|m| *m == name).unwrap();
        &self.namespaces[i]
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// The manager's URL.
    fn url(&self) -> String {
        format!("https://{MANAGER}")
    }

    /// The manager's CA file.
    fn ca(&self) -> String {
        self.file("manager/ca.pem")
    }

    /// The rig with `nanami connect` as its client.
    fn up(tag: &str, exit: bool) -> Rig {
        let mut rig = Self::machines(tag, exit);
        rig.start_client();
        rig
    }

    /// The manager and both gateways, running their state; no client yet.
    fn machines(tag: &str, exit: bool) -> Rig {
        require_netns(&["ping", "nft", "wg"]);
        common::build_workspace_binaries();
        let prefix = format!("nmf{}{tag}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(format!("{prefix}-rig"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let namespaces = MACHINES
            .iter()
            .map(|m| Netns::named(&format!("{prefix}-{m}")))
            .collect();
        let mut rig = Rig {
            procs: Vec::new(),
            client: None,
            namespaces,
            dir,
        };
        rig.network();
        rig.start(exit);
        rig
    }

    fn network(&self) {
        let (wan, lan) = (self.ns("wan"), self.ns("lan"));
        bridge(wan, "br0", &[]);
        bridge(
            lan,
            "br0",
            &[&format!("{RESOURCE}/24"), &format!("{INTERNET}/32")],
        );
        // Each machine's eth0 hangs off the "internet" bridge; a port named after it.
        for (ns, addr) in [
            ("ctl", "198.18.0.100"),
            ("gwa", "198.18.0.1"),
            ("gwb", "198.18.0.2"),
            ("cli", "198.18.0.11"),
        ] {
            let addr = format!("{addr}/24");
            plug(
                self.ns(ns),
                "eth0",
                &[&addr],
                wan,
                "br0",
                &format!("port-{ns}"),
            );
        }
        // The gateways' LAN links.
        for (ns, addr) in [("gwa", "10.20.0.1"), ("gwb", "10.20.0.2")] {
            let addr = format!("{addr}/24");
            plug(
                self.ns(ns),
                "lan0",
                &[&addr],
                lan,
                "br0",
                &format!("port-{ns}"),
            );
            // The gateways' way to the "internet".
            self.ns(ns)
                .ip(&["route", "add", INTERNET, "via", RESOURCE, "dev", "lan0"]);
        }
    }

    /// Starts `program args…` in machine `ns`, logging to `<dir>/<name>.log`.
    fn spawn(&self, ns: &str, name: &str, program: &Path, args: &[String]) -> Process {
        let mut cmd = self.ns(ns).command(program);
        cmd.args(args);
        Process::spawn_logged(name, cmd, &self.dir.join(format!("{name}.log")))
    }

    fn start(&mut self, exit: bool) {
        let bin = common::bin_dir();
        let (manager, daemon) = (
            bin.join("nanami-gateway-manager"),
            bin.join("nanami-gateway-daemon"),
        );
        let key = |program: &Path, args: &[&str]| {
            let out = Command::new(program).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let gw_a = key(
            &daemon,
            &["--print-public-key", "--state-dir", &self.file("edge-a")],
        );
        let gw_b = key(
            &daemon,
            &["--print-public-key", "--state-dir", &self.file("edge-b")],
        );
        let client = key(
            Path::new(NANAMI),
            &[
                "connect",
                "--print-public-key",
                "--state-dir",
                &self.file("client"),
            ],
        );
        std::fs::write(self.dir.join("client.pub"), &client).unwrap();
        std::fs::write(
            self.dir.join("topology.yaml"),
            topology(&gw_a, &gw_b, &client, exit),
        )
        .unwrap();

        let mdir = self.file("manager");
        key(
            &manager,
            &[
                "init",
                "--dir",
                &mdir,
                "--san",
                MANAGER.split(':').next().unwrap(),
            ],
        );
        for (subject, file) in [
            (["--gateway", "edge-a"], "edge-a.token"),
            (["--gateway", "edge-b"], "edge-b.token"),
            (["--node", "client"], "client.token"),
        ] {
            let token = key(&manager, &["token", subject[0], subject[1], "--dir", &mdir]);
            std::fs::write(self.dir.join(file), token).unwrap();
        }
        let args = strings(&[
            "serve",
            "--dir",
            &mdir,
            "--listen",
            MANAGER,
            "--topology",
            &self.file("topology.yaml"),
        ]);
        let manager = self.spawn("ctl", "manager", &manager, &args);
        self.procs.push(manager);
        let (url, ca) = (self.url(), self.ca());
        for (gw, ns) in [("edge-a", "gwa"), ("edge-b", "gwb")] {
            let args = strings(&[
                "--manager",
                &url,
                "--ca",
                &ca,
                "--gateway",
                gw,
                "--state-dir",
                &self.file(gw),
                "--token-file",
                &self.file(&format!("{gw}.token")),
            ]);
            let daemon = self.spawn(ns, gw, &daemon, &args);
            self.procs.push(daemon);
        }
        // A client starts once both gateways run their state. (A client whose
        // tunnel is up before a gateway's device exists can fail to reach that
        // gateway through the tunnel for good: see the closing note of #18; this
        // rig tests failover, not that start-up order.)
        wait_until(
            "both gateways to apply their first state",
            Duration::from_secs(30),
            || self.gateways_converged(),
        );
    }

    /// Starts `nanami connect` and waits until it reaches the resource through
    /// edge-a with edge-b answering too.
    fn start_client(&mut self) {
        let (url, ca) = (self.url(), self.ca());
        let hold_down = HOLD_DOWN.as_millis().to_string();
        let args = strings(&[
            "connect",
            "--manager",
            &url,
            "--ca",
            &ca,
            "--node",
            "client",
            "--state-dir",
            &self.file("client"),
            "--token-file",
            &self.file("client.token"),
            "--hold-down-ms",
            &hold_down,
            "--uapi-dir",
            &self.file("client/uapi"),
        ]);
        self.client = Some(self.spawn("cli", "client", Path::new(NANAMI), &args));
        // Both gateways answer the client's probes before a test cuts one.
        wait_until(
            "the client to reach the resource through edge-a, with edge-b up",
            Duration::from_secs(60),
            || {
                self.active().as_deref() == Some("edge-a")
                    && self.agent_status()["down"]
                        .as_array()
                        .is_some_and(Vec::is_empty)
                    && self.ping_once()
            },
        );
    }

    /// The client agent's status file (`Null` until it exists).
    fn agent_status(&self) -> serde_json::Value {
        std::fs::read_to_string(self.dir.join("client/status.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// The client agent's active gateway for `corp`.
    fn active(&self) -> Option<String> {
        self.agent_status()["active"]["corp"]
            .as_str()
            .map(str::to_owned)
    }

    fn ping_once(&self) -> bool {
        self.ns("cli")
            .try_exec("ping", &["-c", "1", "-W", "1", RESOURCE])
    }

    /// The bridge port of `machine` (e.g. `gwa`) in the wan or lan namespace, up
    /// or down.
    fn set_port(&self, bridge_ns: &str, machine: &str, up: bool) {
        set_link(self.ns(bridge_ns), &format!("port-{machine}"), up);
    }

    /// Stops `nanami connect` (SIGTERM: it removes what it made).
    fn stop_client(&mut self) {
        if let Some(mut client) = self.client.take() {
            client.stop();
        }
    }

    /// Takes `machine`'s port on `bridge_ns` down, now.
    fn cut(&self, bridge_ns: &str, machine: &str) -> Cut {
        let at = unix_now();
        self.set_port(bridge_ns, machine, false);
        // Replies already past the bridge when it went down (RTTs are well under a
        // millisecond here) did not take the new path.
        Cut {
            at,
            drained: unix_now() + 0.1,
        }
    }

    /// `nanami status --json` against the rig's manager, from its namespace.
    fn status_command(&self) -> Output {
        self.ns("ctl").output(
            NANAMI,
            &[
                "status",
                "--manager",
                &self.url(),
                "--ca",
                &self.ca(),
                "--credential-file",
                &self.file("manager/control.token"),
                "--json",
            ],
        )
    }

    /// Whether the manager answers and both gateways reported the generation it
    /// wants (never panics: the manager may not be up yet).
    fn gateways_converged(&self) -> bool {
        let out = self.status_command();
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let converged = |id: &str| {
            status.as_array().is_some_and(|all| {
                all.iter().any(|g| {
                    g["id"] == id
                        && g["observed_generation"].is_u64()
                        && g["observed_generation"] == g["desired_generation"]
                })
            })
        };
        out.status.success() && converged("edge-a") && converged("edge-b")
    }

    fn status(&self) -> serde_json::Value {
        let out = self.status_command();
        assert!(
            out.status.success(),
            "nanami status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The processes and namespaces go by themselves; the files are kept for a
        // failed test.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// With `exit`, `corp` allows exit, both gateways have the role and the client
/// wants it.
fn topology(gw_a: &str, gw_b: &str, client: &str, exit: bool) -> String {
    let roles = if exit {
        "[ingress, egress, exit]"
    } else {
        "[ingress, egress]"
    };
    format!(
        r#"version: 1
regions:
  - {{ id: lab, display_name: Lab, state: active }}
workspaces:
  - id: lab
    tenant: lab
    regions: [lab]
    networks:
      - id: corp
        overlay: 100.80.0.0/24
        routes: [10.20.0.0/24]
        nat: true
        exit: {exit}
        gateways: {{ policy: auto, redundancy: 2 }}
        health_targets: [{RESOURCE}]
    nodes:
      - {{ id: edge-a, public_key: "{gw_a}", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}] }}
      - {{ id: edge-b, public_key: "{gw_b}", status: active, memberships: [{{ network: corp, address: 100.80.0.2 }}] }}
      - {{ id: client, public_key: "{client}", status: active, exit: {exit}, memberships: [{{ network: corp, address: 100.80.0.11 }}] }}
    gateways:
      - {{ id: edge-a, node: edge-a, region: lab, networks: [corp], roles: {roles}, endpoint: "198.18.0.1:51820", listen_port: 51820 }}
      - {{ id: edge-b, node: edge-b, region: lab, networks: [corp], roles: {roles}, endpoint: "198.18.0.2:51820", listen_port: 51820 }}
"#
    )
}

/// A link taken down: when (Unix seconds), and from when replies are the new path's.
struct Cut {
    at: f64,
    drained: f64,
}

/// `ping -D` to `target` every 50 ms from the client, timestamps kept.
struct Pinger {
    _ping: Process,
    out: PathBuf,
}

impl Pinger {
    fn start(rig: &Rig, name: &str, target: &str) -> Pinger {
        let out = rig.dir.join(format!("{name}.ping"));
        let mut cmd = rig.ns("cli").command("ping");
        cmd.args(["-D", "-n", "-i", "0.05", "-W", "1", target]);
        Pinger {
            _ping: Process::spawn_logged(&format!("ping {target}"), cmd, &out),
            out,
        }
    }

    /// Unix times (seconds) of the replies so far.
    fn replies(&self) -> Vec<f64> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// The first reply after `t`.
    fn first_after(&self, t: f64) -> Option<f64> {
        self.replies().into_iter().find(|r| *r > t)
    }

    /// Waits (up to `timeout`) for the first reply over the new path after `cut`;
    /// returns the outage in seconds (cut to that reply).
    fn resumed(&self, cut: &Cut, what: &str, timeout: Duration) -> f64 {
        wait_until(what, timeout, || self.first_after(cut.drained).is_some());
        self.first_after(cut.drained).unwrap() - cut.at
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn summary(label: &str, samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    eprintln!(
        "{label}: n={} min={:.2}s median={:.2}s max={:.2}s all={:?}",
        s.len(),
        s[0],
        median,
        s[s.len() - 1],
        samples
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
    );
    median
}

#[test]
fn a_dead_primary_fails_over_to_the_standby_and_back_after_the_hold_down() {
    let _one = ONE_RIG.lock().unwrap_or_else(|p| p.into_inner());
    let rig = Rig::up("f", false);
    let pinger = Pinger::start(&rig, "failover", RESOURCE);
    let mut outages = Vec::new();
    for run in 0..5 {
        wait_until("pings through edge-a", Duration::from_secs(10), || {
            pinger.first_after(unix_now() - 0.2).is_some()
        });
        // Cut edge-a's link: pings can only come back through edge-b.
        let cut = rig.cut("wan", "gwa");
        outages.push(pinger.resumed(
            &cut,
            &format!("run {run}: pings to resume through edge-b"),
            Duration::from_secs(15),
        ));
        assert_eq!(rig.active().as_deref(), Some("edge-b"), "run {run}");
        assert!(
            rig.log("client").contains("gateway=edge-b"),
            "the agent logs the move"
        );

        // edge-a returns once the client counts it down (a return before that is no
        // recovery): the client stays on edge-b for the hold-down, then moves back
        // without losing the pings.
        wait_until(
            &format!("run {run}: the client to count edge-a down"),
            Duration::from_secs(10),
            || {
                let down = rig.agent_status()["down"].clone();
                let counted = down
                    .as_array()
                    .is_some_and(|d| d.iter().any(|g| g == "edge-a"));
                if counted {
                    Ok(())
                } else {
                    Err(format!("down: {down}"))
                }
            },
        );
        let back = Instant::now();
        rig.set_port("wan", "gwa", true);
        wait_until(
            &format!("run {run}: the client to move back to edge-a"),
            HOLD_DOWN + Duration::from_secs(10),
            || rig.active().as_deref() == Some("edge-a"),
        );
        let waited = back.elapsed();
        assert!(
            waited >= HOLD_DOWN,
            "run {run}: moved back after {waited:?}, before the {HOLD_DOWN:?} hold-down"
        );
        let moved = unix_now();
        wait_until(
            &format!("run {run}: pings through edge-a again"),
            Duration::from_secs(5),
            || pinger.first_after(moved).is_some(),
        );
    }
    let median = summary(
        "failover outage (cut -> first reply via the standby)",
        &outages,
    );
    // The detection is 1.5 s of silence plus a 500 ms probe interval; 3 s is the
    // target. Allow a loaded CI machine some slack; the figures are printed.
    assert!(median < 4.0, "median outage {median:.2}s");

    // The manager never noticed: its view did not change, the client acted alone.
    let status = rig.status();
    let gws = status.as_array().unwrap();
    assert!(gws.iter().all(|g| g["health"] == "online"), "{status}");
}

#[test]
fn a_gateway_whose_lan_is_cut_loses_its_clients_while_it_still_heartbeats() {
    let _one = ONE_RIG.lock().unwrap_or_else(|p| p.into_inner());
    let mut rig = Rig::up("h", false);
    let pinger = Pinger::start(&rig, "health", RESOURCE);
    wait_until("pings through edge-a", Duration::from_secs(10), || {
        pinger.first_after(unix_now() - 0.2).is_some()
    });
    let cut = rig.cut("lan", "gwa");
    wait_until(
        "the client to move to edge-b",
        Duration::from_secs(30),
        || rig.active().as_deref() == Some("edge-b"),
    );
    let outage = pinger.resumed(&cut, "pings through edge-b", Duration::from_secs(10));
    eprintln!("forwarding-path outage (LAN cut -> first reply via edge-b): {outage:.2}s");
    let status = rig.status();
    let a = status
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == "edge-a")
        .unwrap();
    assert_eq!(a["health"], "online", "edge-a still heartbeats: {status}");
    assert!(
        a.to_string().contains("corp"),
        "edge-a is shown unhealthy for corp: {a}"
    );

    // The LAN returns: edge-a is healthy again and the client goes back to it.
    rig.set_port("lan", "gwa", true);
    wait_until(
        "the client to return to edge-a",
        Duration::from_secs(60),
        || rig.active().as_deref() == Some("edge-a"),
    );
    let moved = unix_now();
    wait_until(
        "pings through edge-a again",
        Duration::from_secs(10),
        || pinger.first_after(moved).is_some(),
    );

    // Stopping the agent removes what it created, and only that.
    assert!(rig.ns("cli").ip(&["link", "show"]).contains("nm-client"));
    rig.stop_client();
    let cli = rig.ns("cli");
    let links = cli.ip(&["link", "show"]);
    assert!(!links.contains("nm-") && links.contains("eth0"), "{links}");
    assert!(!cli.ip(&["rule", "show"]).contains("7373"));
    assert!(cli
        .ip(&["route", "show", "table", "all"])
        .lines()
        .all(|l| !l.contains("proto 73")));
    assert!(!rig.ping_once());
}

#[test]
fn exit_traffic_leaves_through_the_active_gateway_and_fails_over_with_it() {
    let _one = ONE_RIG.lock().unwrap_or_else(|p| p.into_inner());
    let mut rig = Rig::up("x", true);
    let route = |rig: &Rig, dst: &str| rig.ns("cli").ip(&["route", "get", dst]);
    let route_out = |rig: &Rig, dst: &str| rig.ns("cli").output("ip", &["route", "get", dst]);
    // The client has no route of its own to the "internet": only the exit gives one.
    assert!(
        route(&rig, INTERNET).contains("dev nm-client"),
        "{}",
        route(&rig, INTERNET)
    );
    // What the client's main table routes more specifically (the manager next door,
    // the gateways' endpoints) stays outside the tunnel.
    for dst in ["198.18.0.100", "198.18.0.1", "198.18.0.2"] {
        assert!(
            route(&rig, dst).contains("dev eth0"),
            "{dst}: {}",
            route(&rig, dst)
        );
    }
    let pinger = Pinger::start(&rig, "exit", INTERNET);
    wait_until(
        "pings to the internet through edge-a",
        Duration::from_secs(10),
        || pinger.first_after(unix_now() - 0.2).is_some(),
    );

    // Exit high availability: edge-a's link is cut, the exit moves to edge-b.
    let cut = rig.cut("wan", "gwa");
    let outage = pinger.resumed(
        &cut,
        "pings to the internet to resume through edge-b",
        Duration::from_secs(15),
    );
    eprintln!("exit failover outage (cut -> first reply via edge-b): {outage:.2}s");
    assert_eq!(rig.active().as_deref(), Some("edge-b"));
    assert!(route(&rig, INTERNET).contains("dev nm-client"));

    // Stopping the agent takes the exit away with everything else it made.
    rig.stop_client();
    let rules = rig.ns("cli").ip(&["rule", "show"]);
    assert!(
        rules.lines().all(|l| !["7373:", "7374:", "7375:", "7376:"]
            .iter()
            .any(|p| l.starts_with(p))),
        "{rules}"
    );
    assert!(!route_out(&rig, INTERNET).status.success());
}

#[test]
fn without_a_credential_or_token_the_agent_says_so_and_exits() {
    require_netns(&[]);
    let ns = Netns::new("noenrol");
    let dir = std::env::temp_dir().join(format!("{}-state", ns.name()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = ns.output(
        NANAMI,
        &[
            "connect",
            "--manager",
            "http://127.0.0.1:9",
            "--node",
            "laptop",
            "--state-dir",
            &dir.to_string_lossy(),
        ],
    );
    drop(ns);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not enrolled yet"), "{stderr}");
    // The key was made on the spot and stays; its public half is in the message.
    let key = std::fs::metadata(dir.join("private.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The mobile tunnel (`nanami-mobile`, through its generated Python bindings, as
/// an app drives the Kotlin or Swift ones) follows the rig's manager with the
/// same agent as `nanami connect`: it enrols, asks the app for a TUN, reaches the
/// resource through edge-a; edge-a's link is cut and its probes move `corp` to
/// edge-b without a new TUN; restarted without a token it serves its saved
/// configuration. The scenario is `bindings/mobile-tests/follow_manager.py`.
#[test]
fn a_mobile_tunnel_follows_the_manager_and_fails_over_when_its_gateway_is_cut() {
    let _one = ONE_RIG.lock().unwrap_or_else(|p| p.into_inner());
    nanami_testkit::root::require_tools(&["python3"]);
    let python = common::mobile_python_bindings();
    let rig = Rig::machines("m", false);
    let client_key = std::fs::read_to_string(rig.dir.join("client.pub")).unwrap();
    let cut = format!(
        "ip netns exec {} ip link set port-gwa down",
        rig.ns("wan").name()
    );
    let script = common::root().join("bindings/mobile-tests/follow_manager.py");
    let out = rig
        .ns("cli")
        .command("python3")
        .arg(&script)
        .env("PYTHONPATH", &python)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NANAMI_MANAGER", rig.url())
        .env("NANAMI_CA", rig.ca())
        .env("NANAMI_STATE_DIR", rig.file("client"))
        .env("NANAMI_TOKEN_FILE", rig.file("client.token"))
        .env("NANAMI_CLIENT_KEY", client_key.trim())
        .env("NANAMI_RESOURCE", RESOURCE)
        .env("NANAMI_CUT", &cut)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("mobile follow: ok"),
        "{script:?} failed ({}):\n{stdout}\n{stderr}\nmanager log:\n{}",
        out.status,
        rig.log("manager")
    );
}
