//! The control-plane object API against the real manager binary: scopes (a
//! workspace credential meets other workspaces as missing, on every route of the
//! OpenAPI document), revisions (two writers, one wins), refused writes change
//! nothing, a node change bumps only the gateways that served it, the audit
//! trail, and the router agreeing with `/openapi.json`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use nanami_api::client::Answer;
use nanami_api::objects::{object_path, Lifecycle};
use nanami_api::wire::{
    GatewayStatus, NodeDoc, ObjectKind, Precondition, Versioned, WorkspaceSpec, WriteResponse,
};
use nanami_api::{ApiError, Client};

/// Two tenants' workspaces that reuse the same addresses: each has a network
/// `corp` with gateway `<p>-gw-1`, a network `lab` with gateway `<p>-gw-2`, and
/// clients `<p>-n1` (corp) and `<p>-n2` (lab).
fn two_tenants() -> String {
    let mut ws = String::new();
    for (prefix, port) in [("acme", 51820), ("globex", 51830)] {
        let k = |_: &str| client_key().to_base64();
        ws.push_str(&format!(
            "  - id: {prefix}
    tenant: {prefix}-inc
    regions: [lab]
    networks:
      - id: corp
        overlay: 100.80.0.0/24
        routes: [10.20.0.0/16]
      - id: lab
        overlay: 100.81.0.0/24
        routes: [10.30.0.0/16]
    nodes:
      - {{id: {prefix}-gw-1-node, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
      - {{id: {prefix}-gw-2-node, public_key: '{}', status: active, memberships: [{{network: lab}}]}}
      - {{id: {prefix}-n1, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
      - {{id: {prefix}-n2, public_key: '{}', status: active, memberships: [{{network: lab}}]}}
    gateways:
      - {{id: {prefix}-gw-1, node: {prefix}-gw-1-node, region: lab, networks: [corp], roles: [ingress, egress], endpoint: '192.0.2.1:{port}', listen_port: {port}}}
      - {{id: {prefix}-gw-2, node: {prefix}-gw-2-node, region: lab, networks: [lab], roles: [ingress, egress], endpoint: '192.0.2.2:{port}', listen_port: {port}}}
",
            k("g1"),
            k("g2"),
            k("n1"),
            k("n2"),
        ));
    }
    format!("version: 1\nregions:\n  - {{id: lab, state: active}}\n  - {{id: far, state: active}}\nworkspaces:\n{ws}")
}

struct Platform {
    env: Env,
    acme: String,
    globex: String,
}

impl Platform {
    async fn start(tag: &str) -> Self {
        let env = Env::start_api(tag).await;
        env.control().put_topology(&two_tenants()).await.unwrap();
        let acme = env
            .control()
            .mint_workspace_credential("acme")
            .await
            .unwrap();
        assert!(acme.credential.starts_with("nmw_"));
        assert_eq!(acme.workspace, "acme");
        let globex = env
            .control()
            .mint_workspace_credential("globex")
            .await
            .unwrap();
        Self {
            acme: acme.credential,
            globex: globex.credential,
            env,
        }
    }

    fn acme(&self) -> Client {
        self.env.client().with_credential(self.acme.clone())
    }

    fn globex(&self) -> Client {
        self.env.client().with_credential(self.globex.clone())
    }

    /// Every gateway's desired generation (platform view).
    async fn generations(&self) -> BTreeMap<String, u64> {
        let status: Vec<GatewayStatus> = self.env.control().status().await.unwrap();
        status
            .into_iter()
            .map(|s| (s.id.to_string(), s.desired_generation))
            .collect()
    }

    /// Everything a refused write must leave as it was: every table's rows, the
    /// served document and every generation.
    async fn everything(&self) -> (String, String, BTreeMap<String, u64>) {
        let (_, rows) = db_dump(&self.env.db());
        let doc = self.env.control().export_topology().await.unwrap();
        (rows, doc, self.generations().await)
    }
}

async fn send(client: &Client, method: Method, path: &str, body: Option<&str>) -> Answer {
    client
        .send_with(
            method,
            path,
            &[],
            body.map(|b| ("application/json", b.as_bytes().to_vec())),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
}

fn error_text(answer: &Answer) -> String {
    serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The OpenAPI document's (path, method) pairs.
fn documented(openapi: &serde_json::Value) -> BTreeSet<(String, Method)> {
    let mut out = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let m = match method.as_str() {
                "get" => Method::GET,
                "put" => Method::PUT,
                "post" => Method::POST,
                "delete" => Method::DELETE,
                "patch" => Method::PATCH,
                _ => continue,
            };
            out.insert((path.clone(), m));
        }
    }
    out
}

/// `path` with its parameters filled: other workspaces' ids (`globex`) for
/// `{ws}`, `{id}` and `{request}`.
fn fill(path: &str, method: &Method) -> String {
    let id = if path.starts_with("/v1/gateways/") || path.contains("/gateways/{id}") {
        "globex-gw-1"
    } else if path.starts_with("/v1/regions/") {
        "lab"
    } else if path.contains("/networks/{id}") {
        "corp"
    } else {
        "globex-n1"
    };
    let request = if *method == Method::POST {
        "disable"
    } else {
        "enable"
    };
    path.replace("{ws}", "globex")
        .replace("{id}", id)
        .replace("{request}", request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_credential_meets_other_workspaces_as_missing_on_every_route() {
    let p = Platform::start("scopes").await;
    let acme = p.acme();
    let openapi: serde_json::Value =
        serde_json::from_slice(&send(&acme, Method::GET, "/openapi.json", None).await.body)
            .unwrap();
    let before = p.everything().await;
    let bodies: BTreeMap<&str, String> = BTreeMap::from([
        (
            "/v1/enrolment-tokens",
            r#"{"subject":{"kind":"node","id":"globex-n1"}}"#.to_owned(),
        ),
        ("/v1/topology", two_tenants()),
    ]);
    // Routes a workspace credential may use, or that need none: checked apart.
    let public = ["/healthz", "/openapi.json", "/v1/enrol"];
    // Platform-scope routes: forbidden outright (403), whatever the target.
    let platform = [
        "/metrics",
        "/v1/topology",
        "/v1/status",
        "/v1/regions",
        "/v1/regions/{id}",
        "/v1/oversight/regions",
        "/v1/oversight/workspaces",
        "/v1/oversight/gateways",
    ];
    let mut tried = 0;
    for (path, method) in documented(&openapi) {
        if public.contains(&path.as_str()) {
            continue;
        }
        let target = fill(&path, &method);
        let target = if path == "/v1/oversight/audit" {
            format!("{target}?workspace=globex")
        } else {
            target
        };
        let body = bodies
            .get(path.as_str())
            .cloned()
            .or_else(|| (method == Method::PUT || method == Method::POST).then(|| "{}".to_owned()));
        let answer = send(&acme, method.clone(), &target, body.as_deref()).await;
        tried += 1;
        if path == "/v1/workspaces" {
            // A list: only the caller's own workspace is in it.
            assert_eq!(answer.status, StatusCode::OK, "{method} {target}");
            let list: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            let ids: Vec<&str> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["object"]["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, ["acme"], "the list hides other workspaces");
            continue;
        }
        let expected = if platform.contains(&path.as_str()) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(
            answer.status,
            expected,
            "{method} {target}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert!(tried >= 25, "only {tried} routes tried");

    // Hidden reads exactly like missing: same status, same words.
    let hidden = send(
        &acme,
        Method::GET,
        "/v1/workspaces/globex/nodes/globex-n1",
        None,
    )
    .await;
    let missing = send(
        &acme,
        Method::GET,
        "/v1/workspaces/nowhere/nodes/globex-n1",
        None,
    )
    .await;
    assert_eq!(hidden.status, missing.status);
    assert_eq!(
        error_text(&hidden).replace("globex", "X"),
        error_text(&missing).replace("nowhere", "X")
    );

    // Its own workspace: contents yes; the spec (access grants) and credentials no.
    let own = acme
        .get_object::<WorkspaceSpec>(&object_path(ObjectKind::Workspace, None, Some("acme")))
        .await
        .unwrap();
    assert_eq!(own.object.regions, ["lab"]);
    let grant = WorkspaceSpec {
        regions: vec!["lab".into(), "far".into()],
        ..own.object.clone()
    };
    let refused = acme
        .put_object(
            &object_path(ObjectKind::Workspace, None, Some("acme")),
            &grant,
            &Precondition::Any,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
    let refused = acme.mint_workspace_credential("acme").await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
    let nodes = acme
        .list_objects::<NodeDoc>(&object_path(ObjectKind::Node, Some("acme"), None))
        .await
        .unwrap();
    assert_eq!(nodes.len(), 4);

    assert_eq!(p.everything().await, before, "nothing changed");
    // The other tenant still sees its objects unchanged.
    let theirs = p
        .globex()
        .list_objects::<NodeDoc>(&object_path(ObjectKind::Node, Some("globex"), None))
        .await
        .unwrap();
    assert_eq!(theirs.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_the_same_revision_exactly_one_wins() {
    let p = Platform::start("conflict").await;
    let path = object_path(ObjectKind::Node, Some("acme"), Some("acme-n1"));
    for round in 0..10u16 {
        let current: Versioned<NodeDoc> = p.acme().get_object(&path).await.unwrap();
        let rev = Precondition::Match(current.revision.clone());
        let mut a = current.object.clone();
        a.endpoints = vec![format!("198.51.100.1:{}", 1000 + round)];
        let mut b = current.object.clone();
        b.endpoints = vec![format!("198.51.100.2:{}", 2000 + round)];
        let (ca, cb) = (p.acme(), p.acme());
        let (ra, rb) = tokio::join!(
            ca.put_object(&path, &a, &rev),
            cb.put_object(&path, &b, &rev)
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) => (a.clone(), (w, l)),
            (Err(l), Ok(w)) => (b.clone(), (w, l)),
            other => panic!("round {round}: exactly one must win: {other:?}"),
        };
        let (written, refused) = loser;
        assert_eq!(refused.status(), Some(StatusCode::PRECONDITION_FAILED));
        let ApiError::Status {
            current_revision, ..
        } = &refused
        else {
            panic!("{refused:?}")
        };
        assert_eq!(
            current_revision, &written.revision,
            "412 names the winner's revision"
        );
        let now: Versioned<NodeDoc> = p.acme().get_object(&path).await.unwrap();
        assert_eq!(now.object, winner, "the winner's write is what is stored");
        assert_eq!(Some(now.revision), written.revision);
    }
    // Ten rounds, ten accepted writes in the trail, no refused one.
    let page = p.acme().audit(None, Some(1000)).await.unwrap();
    let writes = page
        .entries
        .iter()
        .filter(|e| e.object.kind == "node" && e.object.id == "acme-n1")
        .count();
    assert_eq!(writes, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_changes_no_row_no_generation_and_no_audit_entry() {
    let p = Platform::start("refused").await;
    let acme = p.acme();
    let path = object_path(ObjectKind::Node, Some("acme"), Some("acme-n1"));
    let current: Versioned<NodeDoc> = acme.get_object(&path).await.unwrap();
    let before = p.everything().await;

    // An invalid result: every problem, with its path, nothing changed.
    let mut bad = current.object.clone();
    bad.public_key = "not a key".into();
    bad.memberships[0].network = "nowhere".into();
    let e = acme
        .put_object(&path, &bad, &Precondition::Any)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    let ApiError::Status { issues, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(
        issues
            .iter()
            .any(|i| i.starts_with("workspaces[acme].nodes[acme-n1].public_key"))
            && issues.iter().any(|i| i.contains("nowhere")),
        "{issues:?}"
    );
    // A stale revision.
    let mut changed = current.object.clone();
    changed.exit = true;
    let e = acme
        .put_object(
            &path,
            &changed,
            &Precondition::Match("0123456789abcdef".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::PRECONDITION_FAILED));
    // Create-only on an existing object.
    let e = acme
        .put_object(&path, &changed, &Precondition::Absent)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::PRECONDITION_FAILED));
    // Bad bodies: not JSON, an unknown field, another id.
    for (body, status) in [
        ("{not json", StatusCode::BAD_REQUEST),
        (
            r#"{"id":"acme-n1","public_key":"x","status":"active","colour":"red"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"id":"acme-n9","public_key":"x","status":"active"}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let a = send(&acme, Method::PUT, &path, Some(body)).await;
        assert_eq!(
            a.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&a.body)
        );
        if body.contains("colour") {
            // Word for word what validating a whole document says.
            let answer: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            let issue = answer["issues"][0].as_str().unwrap();
            assert!(
                issue.starts_with(
                    "workspaces[acme].nodes[acme-n1].colour: unknown field `colour`; a node has id, public_key"
                ),
                "{issue}"
            );
        }
    }
    // A node that does not exist; a workspace that does not.
    let e = acme
        .node_lifecycle("acme", "acme-n9", Lifecycle::Disable, &Precondition::Any)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    // Deleting a region in use is an invalid result.
    let e = p
        .env
        .control()
        .delete_object(
            &object_path(ObjectKind::Region, None, Some("lab")),
            &Precondition::Any,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));

    assert_eq!(
        p.everything().await,
        before,
        "a refused write changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_node_bumps_only_the_gateways_that_served_it() {
    let p = Platform::start("bump").await;
    let before = p.generations().await;
    assert_eq!(before.len(), 4);
    let written: WriteResponse = p
        .acme()
        .node_lifecycle("acme", "acme-n1", Lifecycle::Disable, &Precondition::Any)
        .await
        .unwrap();
    assert_eq!(
        written
            .changed
            .keys()
            .map(|g| g.as_str())
            .collect::<Vec<_>>(),
        ["acme-gw-1"],
        "only the gateway that served acme-n1"
    );
    let after = p.generations().await;
    for (gw, generation) in &before {
        let expected = if gw == "acme-gw-1" {
            generation + 1
        } else {
            *generation
        };
        assert_eq!(after[gw], expected, "{gw}");
    }
    // The node is disabled, with the diff in the trail, by the workspace
    // credential.
    let node: Versioned<NodeDoc> = p
        .acme()
        .get_object(&object_path(
            ObjectKind::Node,
            Some("acme"),
            Some("acme-n1"),
        ))
        .await
        .unwrap();
    assert_eq!(node.object.status, "disabled");
    let page = p.acme().audit(None, None).await.unwrap();
    let last = page.entries.last().unwrap();
    assert_eq!(last.credential_kind, "workspace");
    assert_eq!(last.object.workspace.as_deref(), Some("acme"));
    assert_eq!(last.diff, "status: \"active\" → \"disabled\"");
    assert_eq!(last.new_revision.as_ref(), Some(&node.revision));
    // Enabling it again brings the same content back: acme-gw-1 moves on to a new
    // generation, the others still do not move.
    p.acme()
        .node_lifecycle("acme", "acme-n1", Lifecycle::Enable, &Precondition::Any)
        .await
        .unwrap();
    let again = p.generations().await;
    assert_eq!(again["acme-gw-1"], before["acme-gw-1"] + 2);
    assert_eq!(again["globex-gw-1"], before["globex-gw-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_scoped_and_paged() {
    let p = Platform::start("audit").await;
    for (client, ws) in [(p.acme(), "acme"), (p.globex(), "globex")] {
        for n in ["n1", "n2"] {
            client
                .node_lifecycle(
                    ws,
                    &format!("{ws}-{n}"),
                    Lifecycle::Disable,
                    &Precondition::Any,
                )
                .await
                .unwrap();
        }
    }
    // The platform reads everything: the import, two credentials, four writes.
    let all = p.env.control().audit(None, Some(1000)).await.unwrap();
    assert_eq!(all.entries.len(), 7, "{:#?}", all.entries);
    assert_eq!(all.entries[0].object.kind, "topology");
    assert_eq!(all.entries[0].credential_kind, "platform");
    let operator = p.env.operator().audit(None, Some(1000)).await.unwrap();
    assert_eq!(operator.entries, all.entries);
    // A workspace reads its own entries only.
    let acme = p.acme().audit(None, Some(1000)).await.unwrap();
    assert!(acme
        .entries
        .iter()
        .all(|e| e.object.workspace.as_deref() == Some("acme")));
    assert_eq!(acme.entries.len(), 3, "its credential and two writes");
    // Pages of two, in order, with no gap and no repeat.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = p.env.control().audit(after, Some(2)).await.unwrap();
        seen.extend(page.entries.iter().map(|e| e.seq));
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let all_seqs: Vec<u64> = all.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seen, all_seqs);
    // An operator changes nothing.
    let e = p
        .env
        .operator()
        .node_lifecycle("acme", "acme-n1", Lifecycle::Enable, &Precondition::Any)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_what_openapi_documents() {
    let env = Env::start_api("openapi").await;
    let control = env.control();
    let openapi: serde_json::Value = serde_json::from_slice(
        &send(&control, Method::GET, "/openapi.json", None)
            .await
            .body,
    )
    .unwrap();
    let documented = documented(&openapi);
    // Every path the router declares is documented, and every documented one is
    // declared (the route strings of the sources that build the router).
    let sources = [
        include_str!("../src/http.rs"),
        include_str!("../src/objects.rs"),
    ];
    let mut declared = BTreeSet::new();
    for src in sources {
        for (i, _) in src.match_indices(".route(") {
            let rest = src[i..].trim_start_matches(".route(").trim_start();
            if let Some(path) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                declared.insert(path.to_owned());
            }
        }
    }
    let paths: BTreeSet<String> = documented.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        declared, paths,
        "router paths and /openapi.json paths differ"
    );
    // Each method of each path: served when documented, 405 when not.
    for path in &paths {
        for method in [
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
        ] {
            let target = fill(path, &method);
            let answer = send(&control, method.clone(), &target, Some("{}")).await;
            let is_documented = documented.contains(&(path.clone(), method.clone()));
            let unserved = answer.status == StatusCode::METHOD_NOT_ALLOWED
                || (answer.status == StatusCode::NOT_FOUND
                    && error_text(&answer) == "no such endpoint");
            assert_eq!(
                !unserved,
                is_documented,
                "{method} {target} answered {} ({})",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_utf8_is_the_json_400() {
    let env = Env::start_api("path-utf8").await;
    let control = env.control();
    for path in [
        "/v1/regions/%FF",
        "/v1/workspaces/%FF/nodes/n1",
        "/v1/gateways/%C3%28/desired",
        "/v1/nodes/%FF/config",
        "/v1/workspaces/acme/nodes/%FF/disable",
    ] {
        let method = if path.ends_with("/disable") {
            Method::POST
        } else {
            Method::GET
        };
        let answer = send(&control, method, path, None).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(error_text(&answer).contains("UTF-8"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_command_prints_what_the_api_serves() {
    let env = Env::start_api("openapi-command").await;
    let served = send(&env.client(), Method::GET, "/openapi.json", None).await;
    let served: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
    let printed = std::process::Command::new(MANAGER)
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, served);
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
}
