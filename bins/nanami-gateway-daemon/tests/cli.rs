//! The daemon's command line, without root: the key it makes for itself and the
//! errors it gives before touching the machine.
//!
//! Being an integration test, this also makes `cargo test --workspace` build the
//! daemon binary, which the namespace suites of other packages run.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output};

const DAEMON: &str = env!("CARGO_BIN_EXE_nanami-gateway-daemon");

fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nmd-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn daemon(args: &[&str]) -> Output {
    Command::new(DAEMON).args(args).output().unwrap()
}

#[test]
fn print_public_key_makes_the_private_key_once_keeps_it_private_and_never_prints_it() {
    let dir = state_dir("key");
    let args = ["--print-public-key", "--state-dir", dir.to_str().unwrap()];
    let first = daemon(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let public = String::from_utf8(first.stdout).unwrap().trim().to_owned();
    assert_eq!(public.len(), 44, "a base64 WireGuard key: {public}");

    let key_file = dir.join("private.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let private = std::fs::read_to_string(&key_file).unwrap();
    assert!(!private.trim().is_empty() && !private.contains(&public));

    // A second start keeps the key.
    let second = daemon(&args);
    assert!(second.status.success());
    assert_eq!(String::from_utf8(second.stdout).unwrap().trim(), public);
    let output = String::from_utf8_lossy(&second.stderr);
    assert!(
        !output.contains(private.trim()),
        "the private key leaked: {output}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_gateway_id_it_says_so_and_exits() {
    let dir = state_dir("nogw");
    let out = daemon(&["--state-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--gateway is required"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_manager_list_is_refused_by_entry_before_anything_runs() {
    let dir = state_dir("managers");
    let state = dir.to_str().unwrap();
    let base = [
        "--gateway",
        "gw-a",
        "--platform",
        "sim",
        "--state-dir",
        state,
    ];
    for (managers, expected) in [
        (
            vec!["--manager", "http://127.0.0.1:1,ftp://m2:7443"],
            "bad manager URL \"ftp://m2:7443\"",
        ),
        // Commas and a repeated flag make one list.
        (
            vec!["--manager", "http://m1:7443", "--manager", "http://m1:7443"],
            "manager URL \"http://m1:7443\" is given twice",
        ),
        (
            vec!["--manager", "http://m1:7443,https://m2:7443"],
            "https needs a CA file",
        ),
    ] {
        let out = daemon(&[&base[..], &managers[..]].concat());
        assert!(!out.status.success(), "{managers:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--manager") && stderr.contains(expected),
            "{managers:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
