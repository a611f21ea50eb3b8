//! Control-plane benchmark (`bench/run` item 6): one node disabled through the
//! object API on a platform of 1,000,000 nodes in 10,000 workspaces, against the
//! whole-topology recompile it replaces, in the same run.
//!
//! `cargo bench -p nanami-gateway-manager --bench control -- RUNS TOPOLOGY.json`
//! (`bench/topology.py 1000000 --per-workspace 100` writes the topology). Prints
//! `key=value` lines (comma-separated runs) for `bench/report.py`:
//! - `api_ms`: `POST /v1/workspaces/{ws}/nodes/{id}/disable` over HTTPS to an
//!   in-process manager (SQLite store on disk), from the request to its answer,
//!   which comes once the new generations are served; `api_changed`: the gateways
//!   whose generation it bumped.
//! - `manager_ms`: the same request's work in the manager alone (`Manager::write`
//!   for another client of the same workspace, no HTTP): validation, compile,
//!   the SQLite transaction, publishing.
//! - `incremental_ms`: the compile work of that change: validating the one
//!   workspace against the rest and compiling its gateways (what the manager does).
//! - `full_ms`: the same change as a whole-topology recompile: validating the
//!   whole document and compiling every gateway (what the manager did before);
//!   `full_changed`: the gateways it finds changed (must equal `api_changed`).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanami_api::objects::Lifecycle;
use nanami_api::wire::Precondition;
use nanami_control::{compile_changed, content_digest, gateways_in_scope, Docs, Scope};
use nanami_gateway_manager::init::{init, Layout};
use nanami_gateway_manager::{http, server, HealthConfig, Manager, SqliteStore};
use nanami_model::doc::Document;
use nanami_model::{GatewayId, Health, Topology, WorkspaceId};
use tokio::sync::watch;

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn join(v: &[String]) -> String {
    v.join(",")
}

/// Each gateway's (generation, digest), as the manager keeps them.
fn known_of(rows: &nanami_control::Compiled) -> BTreeMap<GatewayId, (u64, String)> {
    rows.iter()
        .map(|(id, (row, _))| {
            (
                id.clone(),
                (
                    row.generation,
                    content_digest(&row.state_json, &row.targets_json, row.uplink.as_deref()),
                ),
            )
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let file = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/bench/topology-1m.json".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(runs, &file));
}

async fn bench(runs: usize, file: &str) {
    // 1,000,000 nodes are ~200 MB of JSON, past the 32 MiB an import request may
    // carry (such a platform is built through the object API, a workspace at a
    // time): the harness reads the file itself and imports it in process.
    let text = std::fs::read_to_string(file).unwrap();
    let document: Document = serde_json::from_str(&text).unwrap();
    drop(text);
    let dir = std::env::temp_dir().join(format!("nmt-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout::new(dir.join("manager"));
    init(&layout, &["127.0.0.1".to_string()], None).unwrap();
    let store = Arc::new(SqliteStore::open(&layout.store()).unwrap());
    let manager = Arc::new(
        Manager::load(
            store,
            HealthConfig {
                // No daemon reports here: nothing goes offline during the run.
                report_interval: Duration::from_secs(3600),
                missed_reports: 3,
            },
        )
        .unwrap(),
    );
    let t0 = Instant::now();
    manager.put_topology(document.clone()).unwrap();
    let load = t0.elapsed();

    // The benchmark's own copy, for the in-process figures.
    let mut docs = Docs::from_document(&document);
    drop(document);
    let mut topology = Topology::from_document(&docs.to_document()).unwrap();
    let health = Health::all_up();
    let all = gateways_in_scope(Scope::All, None, &topology, []);
    let mut known = known_of(&compile_changed(&BTreeMap::new(), &all, &topology, &health).unwrap());
    println!("nodes={}", topology.node_count());
    println!("workspaces={}", topology.workspaces.len());
    println!("gateways={}", topology.gateway_count());
    println!("load_ms={}", ms(load));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let tls = Arc::new(
        nanami_api::tls::server_config(&layout.server_cert(), &layout.server_key()).unwrap(),
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(server::serve(
        listener,
        http::router(manager.clone(), http::HttpConfig::default()),
        Some(tls),
        server::ServerLimits::default(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let credential = std::fs::read_to_string(layout.control_token()).unwrap();
    let client = nanami_api::Client::new(&url, Some(&layout.ca_cert()))
        .unwrap()
        .with_credential(credential.trim());

    let ids: Vec<String> = docs.workspaces.keys().cloned().collect();
    let (mut api, mut api_changed, mut incremental, mut full, mut full_changed) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut in_manager = vec![];
    for run in 0..runs {
        // A different workspace each run, its first active client.
        let ws = &ids[(run * 7919 + 17) % ids.len()];
        let mut clients = docs
            .workspace(ws)
            .unwrap()
            .nodes
            .iter()
            .filter(|n| n.status == "active" && !n.id.contains("-gw-"))
            .map(|n| n.id.clone());
        let node = clients.next().unwrap();
        let other = clients.next().unwrap();

        // 1. Through the API.
        let t0 = Instant::now();
        let written = client
            .node_lifecycle(ws, &node, Lifecycle::Disable, &Precondition::Any)
            .await
            .unwrap();
        api.push(ms(t0.elapsed()));
        api_changed.push(written.changed.len().to_string());

        // The manager's own share, without HTTP, on another client (it is
        // enabled again below, so the in-process figures see one change).
        let platform = nanami_gateway_manager::manager::Writer::local();
        let status = |status: &str| nanami_control::Edit::SetNodeStatus {
            workspace: ws.clone(),
            node: other.clone(),
            status: status.to_owned(),
        };
        // On a blocking thread, as the manager runs it (and out of the way of
        // this thread's allocator, which the whole recompile below churns).
        let (m, disable, enable) = (manager.clone(), status("disabled"), status("active"));
        let took = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            m.write(&platform, disable, &Precondition::Any).unwrap();
            let took = t0.elapsed();
            m.write(&platform, enable, &Precondition::Any).unwrap();
            took
        })
        .await
        .unwrap();
        in_manager.push(ms(took));

        // The same change, in process.
        docs.workspace_mut(ws)
            .unwrap()
            .nodes
            .iter_mut()
            .find(|n| n.id == node)
            .unwrap()
            .status = "disabled".into();
        let ws_doc = docs.workspace(ws).unwrap().clone();
        let whole = docs.to_document();

        // 2. Incremental: one workspace validated and compiled.
        let t0 = Instant::now();
        let next = topology.with_workspace(&ws_doc).unwrap();
        let scope = BTreeSet::from([WorkspaceId::new(ws).unwrap()]);
        let in_scope = gateways_in_scope(Scope::Workspaces(&scope), Some(&topology), &next, []);
        let scoped_known: BTreeMap<GatewayId, (u64, String)> = in_scope
            .iter()
            .filter_map(|g| Some((g.clone(), known.get(g)?.clone())))
            .collect();
        let changed = compile_changed(&scoped_known, &in_scope, &next, &health).unwrap();
        incremental.push(ms(t0.elapsed()));

        // 3. Baseline: the whole document validated and every gateway compiled.
        let t0 = Instant::now();
        let whole_topology = Topology::from_document(&whole).unwrap();
        let every = gateways_in_scope(Scope::All, None, &whole_topology, known.keys());
        let full_rows = compile_changed(&known, &every, &whole_topology, &health).unwrap();
        full.push(ms(t0.elapsed()));
        full_changed.push(full_rows.len().to_string());
        assert_eq!(
            changed.keys().collect::<Vec<_>>(),
            full_rows.keys().collect::<Vec<_>>(),
            "incremental and whole compiles disagree"
        );
        assert_eq!(
            written.changed.keys().collect::<Vec<_>>(),
            changed.keys().collect::<Vec<_>>(),
            "the API and the in-process compile disagree"
        );
        known.extend(known_of(&changed));
        topology = next;
        drop(whole_topology);
    }
    println!("api_ms={}", join(&api));
    println!("api_changed={}", join(&api_changed));
    println!("manager_ms={}", join(&in_manager));
    println!("incremental_ms={}", join(&incremental));
    println!("full_ms={}", join(&full));
    println!("full_changed={}", join(&full_changed));
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_dir_all(&dir);
}
