//! The `nanami` CLI, run as a user would.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nanami_testkit::root::{require_netns, require_tools};
use nanami_testkit::{wait_until, Netns, Process};

fn nanami(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nanami"))
        .args(args)
        .output()
        .expect("run nanami")
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn validate_accepts_the_example() {
    let out = nanami(&["validate", &repo("examples/topology.yaml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (2 regions, 2 workspaces"));
}

#[test]
fn validate_lists_all_ten_faults_with_paths() {
    let file = repo("bins/nanami/tests/fixtures/ten-faults.yaml");
    let out = nanami(&["validate", &file]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = [
        "workspaces[acme].networks[lab].overlay: 100.80.2.0/24 overlaps 100.80.0.0/22",
        "workspaces[acme].gateways[gw-a].colour: unknown field `colour`",
        "workspaces[acme].nodes[laptop-1].public_key: not a valid WireGuard key",
        "workspaces[acme].nodes[laptop-1].memberships[0].address: 10.99.0.1 is outside the overlay",
        "workspaces[acme].nodes[laptop-2].public_key: public key already used by workspaces[acme].nodes[gw-a]",
        "workspaces[acme].nodes[laptop-2].memberships[0].network: unknown network \"nowhere\"",
        "workspaces[acme].gateways[gw-a].region: this workspace has no access to region \"ap-south\"",
        "workspaces[acme].gateways[gw-a].roles: role exit, but none of its networks has `exit: true`",
        "workspaces[acme].gateways[gw-a-second-port].id: its interface name nm-gw-a-second-port would be 19 bytes",
        "workspaces[acme].gateways[gw-a-second-port].listen_port: port 51820 on node \"gw-a\" is already taken",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("10 problems"), "{text}");

    let out = nanami(&["validate", &file, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json["valid"], false);
    assert_eq!(json["issues"].as_array().map(Vec::len), Some(10));
}

#[test]
fn syntax_errors_exit_1_with_a_message() {
    let dir = tempdir();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "version: 1\nregions: []\nworkspaces: []\nsurprise: 1\n",
    )
    .unwrap();
    let out = nanami(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown field `surprise`"));
}

#[test]
fn compile_and_client_config_print_state() {
    let file = repo("examples/topology.yaml");
    let out = nanami(&["compile", &file, "--gateway", "gw-fra-1"]);
    assert!(out.status.success());
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(state["interfaces"]["nm-gw-fra-1"]["peers"].is_object());

    let out = nanami(&["client-config", &file, "--node", "laptop-ana", "--json"]);
    assert!(out.status.success());
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["peers"][0]["gateway"], "gw-fra-1");

    let out = nanami(&["client-config", &file, "--node", "phone-cho"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only active nodes"));
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nanami-cli-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn sh(cmd: &str) -> Output {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A namespace with a wireguard-go interface `ifname`, up; both go on drop.
struct WgNamespace {
    // Dropped first: wireguard-go stops before its namespace goes.
    _wireguard_go: Process,
    ns: Netns,
}

impl WgNamespace {
    fn new(ifname: &str) -> Self {
        require_netns(&["wireguard-go", "wg"]);
        let ns = Netns::new("cli");
        let mut wggo = ns.process(
            "wireguard-go",
            "wireguard-go",
            &["-f", ifname],
            &[("WG_PROCESS_FOREGROUND", "1")],
        );
        // On the interface itself (a loaded CI machine can take seconds); a
        // wireguard-go that exits fails at once, with its output.
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        wait_until(
            &format!("wireguard-go to bring {ifname} up"),
            Duration::from_secs(30),
            || {
                wggo.assert_running();
                Path::new(&sock).exists() && ns.try_exec("wg", &["show", ifname])
            },
        );
        Self {
            _wireguard_go: wggo,
            ns,
        }
    }

    fn exec(&self, cmd: &str) -> Output {
        self.ns.output("sh", &["-c", cmd])
    }
}

#[test]
fn client_config_is_accepted_by_wg_setconf() {
    require_tools(&["wg-quick"]);
    let ifname = nanami_testkit::ifname("cli");
    let ns = WgNamespace::new(&ifname);
    let dir = tempdir();
    let file = repo("examples/topology.yaml");
    let out = nanami(&["client-config", &file, "--node", "laptop-ben"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("<PRIVATE_KEY>"));
    let private = String::from_utf8(sh("wg genkey").stdout).unwrap();
    let filled = text.replace("<PRIVATE_KEY>", private.trim());
    let conf = dir.join(format!("{ifname}.conf"));
    std::fs::write(&conf, &filled).unwrap();

    let apply = ns.exec(&format!(
        "wg-quick strip {0} > {0}.stripped && wg setconf {ifname} {0}.stripped",
        conf.display()
    ));
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );

    let shown = String::from_utf8(ns.exec(&format!("wg showconf {ifname}")).stdout).unwrap();
    // Both gateways are peers with their endpoints and AllowedIPs.
    let json = nanami(&["client-config", &file, "--node", "laptop-ben", "--json"]);
    let config: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let peers = config["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for peer in peers {
        let key = peer["public_key"].as_str().unwrap();
        assert!(shown.contains(key), "peer {key} missing from:\n{shown}");
        assert!(shown.contains(peer["endpoint"].as_str().unwrap()));
        for ip in peer["allowed_ips"].as_array().unwrap() {
            assert!(
                shown.contains(ip.as_str().unwrap()),
                "{ip} missing from:\n{shown}"
            );
        }
    }
    let public =
        String::from_utf8(ns.exec(&format!("wg show {ifname} public-key")).stdout).unwrap();
    let expected = sh(&format!("echo {} | wg pubkey", private.trim())).stdout;
    assert_eq!(public.trim(), String::from_utf8_lossy(&expected).trim());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_refuses_a_bad_manager_list_by_entry() {
    let dir = tempdir();
    let state = dir.join("state");
    let out = nanami(&[
        "connect",
        "--node",
        "laptop-1",
        "--state-dir",
        state.to_str().unwrap(),
        "--manager",
        "http://m1:7443,http://m2:7443",
        "--manager",
        "http://M1:7443",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--manager") && stderr.contains("\"http://M1:7443\" is given twice"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
