//! Helpers of the root, namespace-level suites (`lab.rs`, `failover.rs`).
#![allow(dead_code)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `nanami` binary under test.
pub const NANAMI: &str = env!("CARGO_BIN_EXE_nanami");

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The directory of the built binaries.
pub fn bin_dir() -> PathBuf {
    Path::new(NANAMI).parent().unwrap().to_owned()
}

/// Fails (never skips) unless root with every tool: CI must install them.
pub fn require_root_and(tools: &[&str]) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    assert!(
        root,
        "this test needs root (network namespaces, TUN devices): run it as root, e.g. scripts/test"
    );
    for tool in tools {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "`{tool}` is missing: run scripts/deps"
        );
    }
}

/// Builds the sibling binaries the suites run (manager, daemon, device), so they
/// are present and current.
///
/// It asks for exactly what `cargo test --workspace` builds (which puts every
/// binary of the workspace in the target directory), so after that command it is
/// a no-op. `cargo build -p <binary>` would unify the dependencies' features
/// differently (no dev-dependencies) and use the dev profile: minutes of
/// recompiling in CI.
pub fn build_workspace_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .current_dir(root())
        .args(["test", "-q", "--workspace", "--no-run"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "building the workspace's binaries failed");
}

/// Runs `args` inside namespace `ns`.
pub fn sh(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap()
}

/// Runs `args` inside `ns` and fails the test if it fails.
pub fn must(ns: &str, args: &[&str]) -> String {
    let out = sh(ns, args);
    assert!(
        out.status.success(),
        "{ns}: {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 100 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid recorded for `name` by [`spawn`].
pub fn pid(dir: &Path, name: &str) -> i32 {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether `pid` runs (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// SIGTERM, then waits for the exit.
pub fn stop(pid: i32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    wait_until(
        &format!("pid {pid} to exit"),
        Duration::from_secs(10),
        || !alive(pid),
    );
}

/// Starts `program` in `ns`, in its own process group, logging to `<dir>/<name>.log`
/// and recording its pid in `<dir>/<name>.pid`; a thread reaps it.
pub fn spawn(dir: &Path, ns: &str, name: &str, program: &Path, args: &[String]) -> i32 {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    std::fs::write(dir.join(format!("{name}.pid")), pid.to_string()).unwrap();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    pid
}

/// Owned strings from string slices.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
