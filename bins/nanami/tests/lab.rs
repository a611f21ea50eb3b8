//! `nanami lab up` / `down` for real, as root, in network namespaces: convergence,
//! pings through the gateway, the data plane surviving a daemon stop (detached
//! devices), a daemon restart while the manager is down, re-convergence after the
//! manager returns, and nothing left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{pid, root, sh, spawn, stop, strings, wait_until, NANAMI};

const PREFIX: &str = "nmt-lab";

struct LabGuard {
    dir: PathBuf,
}

impl LabGuard {
    fn down(&self) -> std::process::Output {
        Command::new(NANAMI)
            .args(["lab", "down", "--prefix", PREFIX, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap()
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
    common::require_root_and(&["ip", "wireguard-go", "wg", "ping", "nft"]);
    // The lab runs the sibling binaries; make sure they are built and current.
    common::build_workspace_binaries();

    let dir = std::env::temp_dir().join(format!("nmt-lab-{}", std::process::id()));
    let guard = LabGuard { dir: dir.clone() };
    let _ = guard.down();
    let up = Command::new(NANAMI)
        .current_dir(root())
        .args([
            "lab",
            "up",
            "examples/lab.yaml",
            "--prefix",
            PREFIX,
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "lab up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
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
        format!("{PREFIX}-ctl"),
        format!("{PREFIX}-gw"),
        format!("{PREFIX}-c1"),
        format!("{PREFIX}-c2"),
    );
    let bin = common::bin_dir();

    // SIGTERM stops the daemon; the detached device keeps forwarding.
    stop(pid(&dir, "daemon"));
    assert!(
        ping_ok(&c1) && ping_ok(&c2),
        "forwarding stopped with the daemon"
    );

    // The manager goes down; a restarted daemon adopts the device and serves its
    // last-known-good state without it.
    stop(pid(&dir, "manager"));
    let daemon_args = strings(&[
        "--manager",
        "https://198.18.9.1:7443",
        "--ca",
        &dir.join("manager/ca.pem").to_string_lossy(),
        "--gateway",
        "gw-lab",
        "--state-dir",
        &dir.join("gateway").to_string_lossy(),
        "--detached-devices",
        &bin.join("nanami-device").to_string_lossy(),
        "--report-interval-ms",
        "1000",
    ]);
    spawn(
        &dir,
        &gw,
        "daemon",
        &bin.join("nanami-gateway-daemon"),
        &daemon_args,
    );
    wait_until(
        "the restarted daemon to serve its last-known-good state",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(dir.join("daemon.log"))
                .unwrap_or_default()
                .contains("serving the last-known-good")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
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
    spawn(
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

    // Down leaves nothing: namespaces, processes, files, sockets.
    let down = guard.down();
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
    assert!(
        !namespaces.contains(PREFIX),
        "namespaces left: {namespaces}"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    for name in [format!("{PREFIX}-c1"), format!("{PREFIX}-c2")] {
        assert!(!Path::new(&format!("/var/run/wireguard/{name}.sock")).exists());
    }
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
                && (l.contains(&*dir.to_string_lossy()) || l.contains(&format!("{PREFIX}-c")))
        })
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}
