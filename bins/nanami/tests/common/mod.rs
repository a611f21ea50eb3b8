//! Helpers of the root, namespace-level suites (`lab.rs`, `failover.rs`); the
//! namespaces, processes, waits and the root check are `nanami-testkit`'s.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[allow(unused_imports)] // each test binary uses some
pub use nanami_testkit::wait_until;

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

/// Runs `args` inside namespace `ns` (one `nanami` made); its output, whatever
/// its status.
pub fn sh(ns: &str, args: &[&str]) -> std::process::Output {
    nanami_testkit::netns::command_in(ns, args[0])
        .args(&args[1..])
        .output()
        .unwrap()
}

/// The pid `nanami lab` recorded for `name`.
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

/// Owned strings from string slices.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
