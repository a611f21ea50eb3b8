//! Network-namespace fixture for root-only integration tests.
//!
//! [`Netns::new`] creates a uniquely named namespace (`nmt-<pid>-<n>-<tag>`) with
//! loopback up; dropping it (also while unwinding from a failed assertion) kills
//! every process it started and every process still inside it, then deletes it.
//! Tests that need root or a Debian tool call [`require`] first: it fails the test
//! with a clear message when a prerequisite is missing (never a silent skip).
//!
//! Reuse: `#[path = "…/nanami-wg/tests/common/mod.rs"] mod common;` or `mod common;`
//! from a test in `nanami-wg/tests/`.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Fails the test unless it runs as root and every tool in `tools` is on PATH.
pub fn require(tools: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, TUN); run it as root"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun"
    );
    for tool in tools.iter().chain(["ip"].iter()) {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "this test needs `{tool}` on PATH (Debian package: {})",
            debian_package(tool)
        );
    }
}

fn debian_package(tool: &str) -> &'static str {
    match tool {
        "wireguard-go" => "wireguard-go",
        "wg" => "wireguard-tools",
        "iperf3" => "iperf3",
        "ping" => "iputils-ping",
        "nft" => "nftables",
        _ => "iproute2",
    }
}

/// A unique interface name (at most 15 bytes): `nm` + pid + counter + `tag`.
/// Unique across the machine because UAPI sockets live in one directory for all
/// namespaces.
pub fn ifname(tag: &str) -> String {
    let name = format!("n{:x}{}{}", std::process::id() & 0xfffff, next_id(), tag);
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// Runs `cmd`, failing the test with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace that is deleted, with its processes, on drop.
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates `nmt-<pid>-<n>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = format!("nmt-{}-{}-{tag}", std::process::id(), next_id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args…` inside; fails the test when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = run(self.command(program).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `program args…` inside and returns whether it succeeded.
    pub fn try_exec(&self, program: &str, args: &[&str]) -> bool {
        self.command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Runs `program args…` inside with `stdin` fed to it.
    pub fn exec_stdin(&self, program: &str, args: &[&str], stdin: &str) -> String {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `program args…` inside, in the background; it is killed on drop.
    /// Returns its pid.
    pub fn spawn(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let pid = child.id();
        self.children.lock().expect("children").push(child);
        pid
    }

    /// Stops the child `pid` started with [`Netns::spawn`] (SIGTERM, then SIGKILL).
    pub fn stop(&self, pid: u32) {
        let mut children = self.children.lock().expect("children");
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let child = children.remove(i);
            stop_child(child);
        }
    }

    /// Runs `f` on a thread that has entered the namespace: sockets and TUNs `f`
    /// creates belong to it, and so do threads it spawns.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = File::open(format!("/var/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns with a namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Pings `addr` from inside until one reply comes back (or `timeout` passes).
    pub fn ping_until(&self, addr: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.try_exec("ping", &["-c", "1", "-W", "1", addr]) {
                return true;
            }
        }
        false
    }

    /// Pings `addr` `count` times (0.2 s apart) and returns whether all replies came.
    pub fn ping_all(&self, addr: &str, count: u32, extra: &[&str]) -> bool {
        let count = count.to_string();
        let mut args = vec!["-c", count.as_str(), "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(addr);
        self.try_exec("ping", &args)
    }
}

fn stop_child(mut child: Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling a child we started and have not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Netns {
    fn drop(&mut self) {
        let children: Vec<Child> = self
            .children
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for child in children {
            stop_child(child);
        }
        // Anything else still inside (daemons that detached).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: signalling a process that lives in our test namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects `a` and `b` with a veth pair and addresses them (`addr` with prefix);
/// returns the two interfaces' names (`a`'s, `b`'s).
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let (ia, ib) = (ifname("va"), ifname("vb"));
    run(Command::new("ip").args([
        "link",
        "add",
        &ia,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &ib,
        "netns",
        b.name(),
    ]));
    a.ip(&["addr", "add", a_addr, "dev", &ia]);
    b.ip(&["addr", "add", b_addr, "dev", &ib]);
    a.ip(&["link", "set", &ia, "up"]);
    b.ip(&["link", "set", &ib, "up"]);
    (ia, ib)
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
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        let _ = std::fs::remove_file(&sock);
        let pid = ns.spawn("wireguard-go", &["-f", ifname], &[("LOG_LEVEL", "error")]);
        let start = Instant::now();
        while !std::path::Path::new(&sock).exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "wireguard-go did not create {sock}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
