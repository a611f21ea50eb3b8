//! `nanami plan` against a local topology and an observed-state file.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const NANAMI: &str = env!("CARGO_BIN_EXE_nanami");

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/topology.yaml")
}

#[test]
fn plan_from_an_empty_machine_adds_everything_and_from_itself_is_empty() {
    let dir = std::env::temp_dir().join(format!("nmt-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.json");
    std::fs::write(
        &empty,
        "{\"interfaces\":{},\"routes\":[],\"rules\":[],\"filter\":null,\"forwarding\":[]}",
    )
    .unwrap();
    let out = Command::new(NANAMI)
        .arg("plan")
        .arg(example())
        .args(["--gateway", "gw-fra-1", "--observed"])
        .arg(&empty)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l.starts_with('+')), "{text}");
    assert!(!text.lines().any(|l| l.starts_with('-')), "{text}");

    let compiled = Command::new(NANAMI)
        .arg("compile")
        .arg(example())
        .args(["--gateway", "gw-fra-1"])
        .output()
        .unwrap();
    let same = dir.join("same.json");
    std::fs::write(&same, &compiled.stdout).unwrap();
    let out = Command::new(NANAMI)
        .arg("plan")
        .arg(example())
        .args(["--gateway", "gw-fra-1", "--json", "--observed"])
        .arg(&same)
        .output()
        .unwrap();
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan.to_string().len() < 40, "not empty: {plan}");
    let _ = std::fs::remove_dir_all(&dir);
}
