//! `nanami get | apply | delete | node | audit` against a real gateway manager.
//!
//! The manager is the workspace's `nanami-gateway-manager` binary, next to the
//! `nanami` under test (`cargo test --workspace` builds both; with `-p nanami`
//! alone, build it first: `cargo build -p nanami-gateway-manager`). It listens on a
//! port it picks itself (`--listen 127.0.0.1:0`), read back from its log.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nanami_model::PrivateKey;
use serde_json::Value;

const NANAMI: &str = env!("CARGO_BIN_EXE_nanami");

/// The manager binary; missing is a failure, never a skip.
fn manager_binary() -> PathBuf {
    let path = Path::new(NANAMI)
        .parent()
        .unwrap()
        .join("nanami-gateway-manager");
    assert!(
        path.is_file(),
        "{} is missing: build it (`cargo build -p nanami-gateway-manager`) or run `cargo test --workspace`",
        path.display()
    );
    path
}

fn tempdir(tag: &str) -> PathBuf {
    use rand_core::RngCore as _;
    let dir = std::env::temp_dir().join(format!(
        "nanami-objects-{tag}-{}-{}",
        std::process::id(),
        rand_core::OsRng.next_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A manager process in a temp dir; killed and removed on drop.
struct Manager {
    dir: PathBuf,
    child: Child,
    url: String,
}

impl Manager {
    fn start(tag: &str) -> Self {
        let dir = tempdir(tag);
        let bin = manager_binary();
        let mdir = dir.join("manager");
        let init = Command::new(&bin)
            .args(["init", "--dir"])
            .arg(&mdir)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "manager init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let log = dir.join("manager.log");
        let child = Command::new(&bin)
            .args(["serve", "--dir"])
            .arg(&mdir)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut manager = Self {
            dir,
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        manager.url = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .split("serving addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                break format!("https://{addr}");
            }
            assert!(
                manager.child.try_wait().unwrap().is_none(),
                "the manager exited:\n{text}"
            );
            assert!(
                Instant::now() < deadline,
                "the manager did not start in 20 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        manager
    }

    /// `nanami ARGS --manager URL --ca CA --credential-file FILE`.
    fn nanami_as(&self, credential: &Path, args: &[&str]) -> Output {
        Command::new(NANAMI)
            .args(args)
            .args(["--manager", &self.url, "--ca"])
            .arg(self.dir.join("manager/ca.pem"))
            .arg("--credential-file")
            .arg(credential)
            .output()
            .unwrap()
    }

    /// [`Manager::nanami_as`] with the platform credential.
    fn nanami(&self, args: &[&str]) -> Output {
        self.nanami_as(&self.dir.join("manager/control.token"), args)
    }

    /// [`Manager::nanami`] with `command`'s words as the arguments.
    fn run(&self, command: &str) -> Output {
        self.nanami(&command.split_whitespace().collect::<Vec<_>>())
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` is a failed precondition (exit 3) naming `current` as the
/// object's revision now; its message.
fn conflict(out: &Output, current: &str) -> String {
    let message = stderr(out);
    assert_eq!(out.status.code(), Some(3), "{message}");
    assert!(
        message.contains(&format!("its revision is now {current}")),
        "{message}"
    );
    message
}

fn key() -> String {
    PrivateKey::generate(&mut rand_core::OsRng)
        .public_key()
        .to_string()
}

/// Region `lab`, workspace `acme` with network `corp`, gateway `gw-a` and client
/// `laptop-1`, as one `apply` file.
fn setup(m: &Manager) {
    let file = m.file(
        "setup.yaml",
        &format!(
            "- kind: region
  object: {{ id: lab, state: active }}
- kind: workspace
  object: {{ id: acme, tenant: acme-corp, regions: [lab] }}
- kind: network
  workspace: acme
  object: {{ id: corp, overlay: 100.80.0.0/22, routes: [10.20.0.0/16] }}
- kind: node
  workspace: acme
  object: {{ id: gw-a, public_key: \"{}\", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}] }}
- kind: node
  workspace: acme
  object: {{ id: laptop-1, public_key: \"{}\", status: active, memberships: [{{ network: corp }}] }}
- kind: gateway
  workspace: acme
  object: {{ id: gw-a, node: gw-a, region: lab, networks: [corp], roles: [ingress, egress], endpoint: \"192.0.2.1:51820\", listen_port: 51820 }}
",
            key(),
            key()
        ),
    );
    let text = ok(&m.nanami(&["apply", "-f", &file]));
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.contains("gateway gw-a of workspace acme: revision"),
        "{text}"
    );
}

fn revision(m: &Manager, kind: &str, id: &str) -> String {
    let v = json(&m.nanami(&["get", kind, id, "--workspace", "acme", "--json"]));
    v["revision"].as_str().unwrap().to_owned()
}

#[test]
fn get_apply_delete_and_node_requests_with_revisions() {
    let m = Manager::start("crud");
    setup(&m);

    // get: a table, or JSON with revisions.
    let table = ok(&m.run("get nodes --workspace acme"));
    let header = table.lines().next().unwrap();
    for column in ["ID", "STATUS", "NETWORKS", "PUBLIC KEY", "REVISION"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("laptop-1") && l.contains("active") && l.contains("corp")),
        "{table}"
    );
    let list = json(&m.run("get node --workspace acme --json"));
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["object"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-a", "laptop-1"]);
    let regions = ok(&m.run("get regions"));
    assert!(
        regions.lines().nth(1).unwrap().starts_with("lab"),
        "{regions}"
    );
    let one = json(&m.run("get workspace acme --json"));
    assert_eq!(one["object"]["tenant"], "acme-corp");

    // apply with --if-match: the current revision wins, a stale one exits 3.
    let start = json(&m.run("get node laptop-1 --workspace acme --json"));
    let r0 = start["revision"].as_str().unwrap().to_owned();
    let mut object = start["object"].clone();
    object["endpoints"] = serde_json::json!(["198.51.100.7:51820"]);
    let change = m.file(
        "change.json",
        &serde_json::json!({"kind": "node", "workspace": "acme", "object": object}).to_string(),
    );
    let out = json(&m.run(&format!("apply -f {change} --if-match {r0} --json")));
    let r1 = out[0]["revision"].as_str().unwrap().to_owned();
    assert_ne!(r0, r1);
    assert_eq!(revision(&m, "node", "laptop-1"), r1);

    let message = conflict(&m.run(&format!("apply -f {change} --if-match {r0}")), &r1);
    assert!(
        message.starts_with("conflict: applying node laptop-1 of workspace acme"),
        "{message}"
    );
    // --create-only on an existing object is the same conflict.
    conflict(&m.run(&format!("apply -f {change} --create-only")), &r1);

    // Node requests.
    conflict(
        &m.run(&format!(
            "node disable laptop-1 --workspace acme --if-match {r0}"
        )),
        &r1,
    );
    let text = ok(&m.run(&format!(
        "node disable laptop-1 --workspace acme --if-match {r1}"
    )));
    assert!(
        text.starts_with("node laptop-1 of workspace acme: revision"),
        "{text}"
    );
    assert!(text.contains("changed: gw-a (generation"), "{text}");
    let table = ok(&m.run("get node laptop-1 --workspace acme"));
    assert!(
        table.lines().nth(1).unwrap().contains("disabled"),
        "{table}"
    );
    let enabled = json(&m.run("node enable laptop-1 --workspace acme --json"));
    assert_eq!(enabled["object"]["id"], "laptop-1");
    let new_key = key();
    ok(&m.run(&format!(
        "node rotate-key laptop-1 --workspace acme --public-key {new_key}"
    )));
    let now = json(&m.run("get node laptop-1 --workspace acme --json"));
    assert_eq!(now["object"]["public_key"], new_key.as_str());
    assert_eq!(now["object"]["status"], "active");

    // delete: a stale revision exits 3 and deletes nothing.
    let r2 = now["revision"].as_str().unwrap().to_owned();
    conflict(
        &m.run(&format!(
            "delete node laptop-1 --workspace acme --if-match {r1}"
        )),
        &r2,
    );
    assert_eq!(revision(&m, "node", "laptop-1"), r2);
    let gone = json(&m.run(&format!(
        "delete node laptop-1 --workspace acme --if-match {r2} --json"
    )));
    assert_eq!(gone["revision"], Value::Null);
    let missing = m.run("get node laptop-1 --workspace acme");
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));

    // A workspace's contents need --workspace.
    let out = m.run("get nodes");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("give --workspace WS"),
        "{}",
        stderr(&out)
    );

    // The audit trail: every accepted write, none of the refused ones.
    let audit = json(&m.run("audit --json"));
    let entries = audit["entries"].as_array().unwrap();
    // 6 set-up objects, apply, disable, enable, rotate-key, delete.
    assert_eq!(entries.len(), 11, "{audit:#}");
    assert_eq!(entries[10]["new_revision"], Value::Null);
    let page = json(&m.run("audit --after 9 --limit 1 --json"));
    assert_eq!(page["entries"][0]["seq"], 10);
    assert_eq!(page["next_after"], 10);
    let table = ok(&m.run("audit"));
    assert!(table.starts_with("SEQ"), "{table}");
    assert_eq!(table.lines().count(), 12, "{table}");
}

#[test]
fn an_invalid_apply_lists_every_issue_and_changes_nothing() {
    let m = Manager::start("invalid");
    setup(&m);
    let before = ok(&m.nanami(&["get", "nodes", "--workspace", "acme", "--json"]));
    let bad = m.file(
        "bad.yaml",
        "kind: node
workspace: acme
object: { id: bad, public_key: nope, status: active, memberships: [{ network: nowhere }] }
",
    );
    let out = m.nanami(&["apply", "-f", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("the result would have 2 problems"), "{text}");
    assert!(
        text.contains("workspaces[acme].nodes[bad].public_key: not a valid WireGuard key"),
        "{text}"
    );
    assert!(
        text.contains(
            "workspaces[acme].nodes[bad].memberships[0].network: unknown network \"nowhere\""
        ),
        "{text}"
    );
    assert_eq!(
        ok(&m.nanami(&["get", "nodes", "--workspace", "acme", "--json"])),
        before
    );
    // One --if-match cannot cover several objects.
    let two = m.file("two.yaml", "- { kind: region, object: { id: a, state: active } }\n- { kind: region, object: { id: b, state: active } }\n");
    let out = m.nanami(&["apply", "-f", &two, "--if-match", "*"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("apply to one object"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_workspace_credential_sees_only_its_workspace() {
    let m = Manager::start("scope");
    setup(&m);
    let other = m.file(
        "globex.yaml",
        &format!(
            "- {{ kind: workspace, object: {{ id: globex, tenant: globex, regions: [lab] }} }}
- {{ kind: network, workspace: globex, object: {{ id: corp, overlay: 100.80.0.0/22 }} }}
- {{ kind: node, workspace: globex, object: {{ id: pc-1, public_key: \"{}\", status: active, memberships: [{{ network: corp }}] }} }}
",
            key()
        ),
    );
    ok(&m.nanami(&["apply", "-f", &other]));
    // A workspace credential for acme, minted over the API with the platform one.
    let credential = {
        use nanami_api::Client;
        let client = Client::new(&m.url, Some(&m.dir.join("manager/ca.pem")))
            .unwrap()
            .with_credential(
                std::fs::read_to_string(m.dir.join("manager/control.token"))
                    .unwrap()
                    .trim()
                    .to_owned(),
            );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(client.mint_workspace_credential("acme"))
            .unwrap()
            .credential
    };
    let file = m.dir.join("acme.token");
    std::fs::write(&file, credential).unwrap();
    let acme = |args: &[&str]| m.nanami_as(&file, args);

    let list = json(&acme(&["get", "workspaces", "--json"]));
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    ok(&acme(&["get", "nodes", "--workspace", "acme"]));
    for args in [
        &["get", "nodes", "--workspace", "globex"][..],
        &["get", "node", "pc-1", "--workspace", "globex"],
        &["delete", "node", "pc-1", "--workspace", "globex"],
        &["node", "disable", "pc-1", "--workspace", "globex"],
    ] {
        let out = acme(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("404"), "{args:?}: {}", stderr(&out));
    }
    let out = acme(&["delete", "region", "lab"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    // Its audit view is its own workspace's.
    let audit = json(&acme(&["audit", "--json"]));
    for e in audit["entries"].as_array().unwrap() {
        assert_eq!(e["object"]["workspace"], "acme", "{e}");
    }
}
