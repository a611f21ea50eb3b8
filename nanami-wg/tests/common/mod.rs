//! Shared pieces of nanami-wg's root-only integration tests, on `nanami-testkit`
//! (namespaces, veth pairs, processes, waits, the root check): keys, wireguard-go
//! peers, the device processes of an interface, what Nanami left in a namespace.
//!
//! Reuse: `mod common;` from a test in `nanami-wg/tests/`.

#![allow(dead_code)]

use std::time::Duration;

#[allow(unused_imports)] // each test binary uses some
pub use nanami_testkit::{ifname, run, veth, wait_until, Netns};

/// Fails the test unless it runs as root with `/dev/net/tun`, `ip` and every tool
/// in `tools` (never a silent skip).
pub fn require(tools: &[&str]) {
    nanami_testkit::root::require_netns(tools);
}

/// The `nanami-device` binary of this build (`cargo build -p nanami-device`, which
/// `cargo test --workspace` does).
pub fn nanami_device() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("the target directory");
    let path = dir.join("nanami-device");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p nanami-device`",
        path.display()
    );
    path
}

/// A fresh key pair.
pub fn keypair() -> (nanami_model::PrivateKey, nanami_model::PublicKey) {
    let key = nanami_model::PrivateKey::generate(&mut rand::rngs::OsRng);
    let public = key.public_key();
    (key, public)
}

/// A `wireguard-go` interface inside a namespace.
pub struct WgGo {
    pub ifname: String,
    pub pid: u32,
}

impl WgGo {
    /// Starts `wireguard-go -f <ifname>` in `ns` and waits for its UAPI socket.
    pub fn start(ns: &Netns, ifname: &str) -> Self {
        Self::start_program(ns, ifname, std::path::Path::new("wireguard-go"))
    }

    /// Starts `<program> -f <ifname>` (a wireguard-go binary) in `ns` and waits for
    /// its UAPI socket.
    pub fn start_program(ns: &Netns, ifname: &str, program: &std::path::Path) -> Self {
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        let _ = std::fs::remove_file(&sock);
        let program = program.to_str().expect("a UTF-8 path");
        let pid = ns.spawn(program, &["-f", ifname], &[("LOG_LEVEL", "error")]);
        wait_until(
            &format!("wireguard-go to create {sock}"),
            Duration::from_secs(10),
            || std::path::Path::new(&sock).exists(),
        );
        Self {
            ifname: ifname.to_owned(),
            pid,
        }
    }

    /// `wg set <if> private-key <key> listen-port <port>` then `args…`.
    pub fn configure(&self, ns: &Netns, key: &nanami_model::PrivateKey, port: u16, args: &[&str]) {
        let port = port.to_string();
        let mut all = vec![
            "set",
            self.ifname.as_str(),
            "private-key",
            "/dev/stdin",
            "listen-port",
            port.as_str(),
        ];
        all.extend_from_slice(args);
        ns.exec_stdin("wg", &all, key.to_base64_secret().as_str());
    }
}

pub mod pair;

/// The pids of the `nanami-device` processes serving `ifname`.
pub fn device_pids(ifname: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let proc = std::fs::read_dir("/proc").expect("reading /proc");
    for entry in proc.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_device = args.first().is_some_and(|a| a.ends_with(b"nanami-device"));
        if is_device && args.contains(&ifname.as_bytes()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Nanami's objects in `ns`: `nm-*` links, protocol-73 routes, table-7373 rules,
/// the `inet nanami` table.
pub fn owned_leftovers(ns: &Netns) -> Vec<String> {
    let mut left = Vec::new();
    let links = ns.exec("ip", &["-o", "link", "show"]);
    left.extend(
        links
            .lines()
            .filter(|l| l.contains(" nm-"))
            .map(str::to_owned),
    );
    let routes = ns.exec("ip", &["route", "show", "table", "all", "proto", "73"]);
    left.extend(routes.lines().map(str::to_owned));
    let rules = ns.exec("ip", &["rule", "show"]);
    left.extend(
        rules
            .lines()
            .filter(|l| l.contains("7373"))
            .map(str::to_owned),
    );
    if ns.try_exec("nft", &["list", "table", "inet", "nanami"]) {
        left.push("table inet nanami".into());
    }
    left
}
