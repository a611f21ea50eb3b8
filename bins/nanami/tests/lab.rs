//! `nanami lab up` / `down` for real, as root, in network namespaces.
//!
//! `examples/lab.yaml`: convergence, pings through the gateway, the data plane
//! surviving a daemon stop (detached devices), a daemon restart while the manager is
//! down, re-convergence after the manager returns, and nothing left behind.
//!
//! `examples/tenants.yaml`: two workspaces with the same overlay, LAN and client
//! addresses, their gateways hosted on one machine in `nm-<gateway id>` namespaces
//! through the manager and the daemons; each client reads its own workspace's name
//! from the same LAN address, and `down` removes the daemons' namespaces too.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{pid, root, sh, stop, strings, wait_until, NANAMI};
use nanami_testkit::netns::{command_in, enter_named};
use nanami_testkit::port::reported_addr;
use nanami_testkit::root::require_netns;
use nanami_testkit::Process;

const PREFIX: &str = "nmt-lab";

struct LabGuard {
    prefix: &'static str,
    dir: PathBuf,
}

impl LabGuard {
    /// A lab state directory of this test process, after removing what a previous
    /// run may have left under the same prefix.
    fn new(prefix: &'static str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let guard = Self { prefix, dir };
        let _ = guard.down();
        guard
    }

    fn up(&self, topology: &str) -> String {
        let up = Command::new(NANAMI)
            .current_dir(root())
            .args(["lab", "up", topology, "--prefix", self.prefix, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
        assert!(
            up.status.success(),
            "lab up failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
        stdout
    }

    fn down(&self) -> std::process::Output {
        Command::new(NANAMI)
            .args(["lab", "down", "--prefix", self.prefix, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap()
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Down succeeds and leaves nothing: namespaces (the lab's and `extra`),
    /// processes, files, sockets.
    fn down_leaves_nothing(&self, extra: &[&str]) {
        let down = self.down();
        assert!(
            down.status.success(),
            "{}",
            String::from_utf8_lossy(&down.stderr)
        );
        let namespaces = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let left: Vec<&str> = namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)) || extra.contains(n))
            .collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        for ns in extra {
            assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} left");
        }
        assert!(!self.dir.exists(), "{} left", self.dir.display());
        let sockets: Vec<String> = std::fs::read_dir("/var/run/wireguard")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| {
                        n.starts_with(&format!("{}-", self.prefix))
                            || extra.iter().any(|x| n.starts_with(&format!("{x}.")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(sockets.is_empty(), "UAPI sockets left: {sockets:?}");
        let ps = String::from_utf8_lossy(
            &Command::new("ps")
                .args(["-eo", "stat,args"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let left: Vec<&str> = ps
            .lines()
            .filter(|l| {
                !l.starts_with('Z')
                    && (l.contains(&*self.dir.to_string_lossy())
                        || l.contains(&format!("{}-c", self.prefix)))
            })
            .collect();
        assert!(left.is_empty(), "processes left: {left:?}");
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

fn ping_ok(ns: &str) -> bool {
    sh(
        ns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.20.0.10"],
    )
    .status
    .success()
}

#[test]
fn lab_up_converges_pings_survives_restarts_and_down_leaves_nothing() {
    require_netns(&["wireguard-go", "wg", "ping", "nft"]);
    // The lab runs the sibling binaries; make sure they are built and current.
    common::build_workspace_binaries();

    let guard = LabGuard::new(PREFIX);
    let dir = guard.dir.clone();
    let stdout = guard.up("examples/lab.yaml");
    assert_eq!(
        stdout.matches(" 0% packet loss").count(),
        2,
        "both clients ping the LAN host:\n{stdout}"
    );
    assert!(
        stdout.contains("Ready") && stdout.contains("1/1") && stdout.contains("2/2"),
        "{stdout}"
    );

    let (ctl, gw, c1, c2) = (
        guard.ns("ctl"),
        guard.ns("gw"),
        guard.ns("c1"),
        guard.ns("c2"),
    );
    let bin = common::bin_dir();

    // SIGTERM stops the daemon; the detached device keeps forwarding.
    stop(pid(&dir, "daemon-gw-lab"));
    assert!(
        ping_ok(&c1) && ping_ok(&c2),
        "forwarding stopped with the daemon"
    );

    // The manager goes down; a restarted daemon adopts the device and serves its
    // last-known-good state without it.
    stop(pid(&dir, "manager"));
    std::fs::remove_file(dir.join("daemon-gw-lab.log")).unwrap();
    let daemon_args = strings(&[
        "--manager",
        "https://198.18.9.1:7443",
        "--ca",
        &dir.join("manager/ca.pem").to_string_lossy(),
        "--gateway",
        "gw-lab",
        "--state-dir",
        &dir.join("gateway-gw-lab").to_string_lossy(),
        "--detached-devices",
        &bin.join("nanami-device").to_string_lossy(),
        "--report-interval-ms",
        "1000",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut daemon = spawn(
        &dir,
        &gw,
        "daemon-gw-lab",
        &bin.join("nanami-gateway-daemon"),
        &daemon_args,
    );
    daemon.wait_for_output(
        "the restarted daemon to serve its last-known-good state",
        Duration::from_secs(15),
        |log| log.contains("serving the last-known-good").then_some(()),
    );
    // Forwarding is judged once the daemon has put that state in force over the
    // adopted device: its own /metrics (on the port it reports) says it is ready.
    let metrics = daemon.wait_for_output("its /metrics address", Duration::from_secs(15), |log| {
        reported_addr(log, "serving /metrics addr=Some(")
    });
    wait_until(
        "the restarted daemon to apply its last-known-good state",
        Duration::from_secs(30),
        || {
            let text = enter_named(&gw, || http_get(metrics, "/metrics"));
            let ready = text
                .lines()
                .any(|l| l.starts_with("nanami_daemon_ready{") && l.ends_with(" 1"));
            if ready {
                Ok(())
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.starts_with("nanami_daemon_"))
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        },
    );
    assert!(
        ping_ok(&c1) && ping_ok(&c2),
        "forwarding stopped after the daemon restarted"
    );

    // The manager returns with its state; the daemon reports and they agree.
    let manager_args = strings(&[
        "serve",
        "--dir",
        &dir.join("manager").to_string_lossy(),
        "--listen",
        "198.18.9.1:7443",
        "--topology",
        &dir.join("topology.yaml").to_string_lossy(),
        "--report-interval-ms",
        "1000",
    ]);
    let _manager = spawn(
        &dir,
        &ctl,
        "manager",
        &bin.join("nanami-gateway-manager"),
        &manager_args,
    );
    let status_cmd = |json: bool| {
        let mut args = vec![
            NANAMI.to_string(),
            "status".into(),
            "--manager".into(),
            "https://198.18.9.1:7443".into(),
            "--ca".into(),
            dir.join("manager/ca.pem").to_string_lossy().into_owned(),
            "--credential-file".into(),
            dir.join("manager/control.token")
                .to_string_lossy()
                .into_owned(),
        ];
        if json {
            args.push("--json".into());
        }
        sh(&ctl, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    wait_until(
        "re-convergence after the manager restart",
        Duration::from_secs(30),
        || {
            let out = status_cmd(true);
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            let g = &status[0];
            let fresh = g["last_report_unix_ms"].as_u64().unwrap_or(0);
            g["desired_generation"] == g["observed_generation"]
                && g["health"] == "online"
                && fresh + 3000
                    > std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64
        },
    );
    assert_eq!(status_cmd(false).status.code(), Some(0));
    assert!(ping_ok(&c1) && ping_ok(&c2));

    guard.down_leaves_nothing(&["nm-gw-lab"]);
    drop(daemon);
}

/// Starts `program` in the lab's namespace `ns` as `nanami lab` does: logging to
/// `<dir>/<name>.log`, its pid in `<dir>/<name>.pid` (so `lab down` stops it).
fn spawn(dir: &Path, ns: &str, name: &str, program: &Path, args: &[String]) -> Process {
    let mut cmd = command_in(ns, program);
    cmd.args(args);
    let process = Process::spawn_logged(name, cmd, &dir.join(format!("{name}.log")));
    std::fs::write(dir.join(format!("{name}.pid")), process.pid().to_string()).unwrap();
    process
}

/// The body of `GET path` from `addr` (plain HTTP); empty when it does not answer.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The lab's LAN hosts answer this port with their workspace's id.
const NAME_PORT: u16 = 8080;

/// Connects from inside network namespace `ns` to `addr` and returns what it says.
fn read_name(ns: &str, addr: SocketAddr) -> Option<String> {
    enter_named(ns, || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer.trim().to_owned())
    })
}

/// `ip -n <ns> link show <dev>` succeeds.
fn has_link(ns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn tenants_lab_isolates_two_workspaces_with_the_same_addresses() {
    require_netns(&["wireguard-go", "wg", "ping", "nft"]);
    common::build_workspace_binaries();
    let started = Instant::now();

    let guard = LabGuard::new("nmt-ten");
    let stdout = guard.up("examples/tenants.yaml");
    assert_eq!(
        stdout.matches(" 0% packet loss").count(),
        2,
        "each client pings its own LAN host:\n{stdout}"
    );
    assert!(stdout.contains("Ready"), "{stdout}");

    // The daemons made the gateways' namespaces and moved the uplinks into them.
    let gw = guard.ns("gw");
    for (hosted, uplink) in [
        ("nm-gw-initech", "up-initech"),
        ("nm-gw-globex", "up-globex"),
    ] {
        assert!(
            Path::new("/run/netns").join(hosted).exists(),
            "{hosted} missing"
        );
        assert!(
            has_link(hosted, uplink),
            "{uplink} is not in {hosted}:\n{stdout}"
        );
        assert!(has_link(hosted, hosted), "the TUN {hosted} is not inside");
        assert!(
            !has_link(&gw, uplink),
            "{uplink} is still in the host namespace"
        );
    }

    // Both clients at once, to the same address: each reads its own workspace.
    let lan_host: SocketAddr = format!("10.50.0.10:{NAME_PORT}").parse().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let readers: Vec<_> = [("c1", "initech"), ("c2", "globex")]
        .into_iter()
        .map(|(client, workspace)| {
            let ns = guard.ns(client);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut answers = Vec::new();
                // Several rounds, so the two flows overlap in time.
                while answers.len() < 5 {
                    match read_name(&ns, lan_host) {
                        Some(answer) => answers.push(answer),
                        None => {
                            assert!(Instant::now() < deadline, "{ns}: no answer from {lan_host}")
                        }
                    }
                }
                (ns, workspace, answers)
            })
        })
        .collect();
    for reader in readers {
        let (ns, workspace, answers) = reader.join().unwrap();
        assert!(
            answers.iter().all(|a| a == workspace),
            "{ns} ({workspace}) read {answers:?} from {lan_host}"
        );
    }

    guard.down_leaves_nothing(&["nm-gw-initech", "nm-gw-globex"]);
    assert!(
        !has_link(&gw, "up-initech") && !has_link(&gw, "up-globex"),
        "uplinks left"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the tenants lab took {:?}",
        started.elapsed()
    );
}
