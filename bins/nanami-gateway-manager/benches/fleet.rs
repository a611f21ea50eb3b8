//! Fleet benchmark: 200 simulated daemons (`SimPlatform`, in this process) against
//! one manager over TLS on loopback. After each topology change that touches every
//! gateway, measures the time until each gateway has *reported* the new generation
//! to the manager; prints p50/p99 over all gateways and rounds. Target: p99 < 500 ms.
//!
//! `cargo bench -p nanami-gateway-manager --bench fleet` (or `bench/fleet.sh`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nanami_api::wire::Subject;
use nanami_gateway_daemon::DaemonConfig;
use nanami_gateway_manager::init::{init, Layout};
use nanami_gateway_manager::{http, server, HealthConfig, Manager, SqliteStore};
use nanami_model::{GatewayId, GatewayState, PrivateKey, PublicKey};
use nanami_reconcile::sim::SimPlatform;
use tokio::sync::watch;

const GATEWAYS: usize = 200;
const ROUNDS: usize = 5;

fn topology(keys: &[PublicKey], clients: &[PublicKey], per_gateway: usize) -> String {
    let mut out =
        String::from("version: 1\nregions:\n  - id: r1\n    state: active\nworkspaces:\n");
    for (i, key) in keys.iter().enumerate() {
        out.push_str(&format!(
            "  - id: ws-{i:03}\n    tenant: t{i}\n    regions: [r1]\n    networks:\n      - id: net\n        overlay: 100.64.{i}.0/24\n    nodes:\n      - id: gw-{i:03}\n        public_key: \"{key}\"\n        status: active\n        memberships: [{{ network: net, address: 100.64.{i}.1 }}]\n"
        ));
        for c in 0..per_gateway {
            out.push_str(&format!(
                "      - id: c{c}-{i:03}\n        public_key: \"{}\"\n        status: active\n        memberships: [{{ network: net }}]\n",
                clients[i * 3 + c]
            ));
        }
        out.push_str(&format!(
            "    gateways:\n      - id: gw-{i:03}\n        node: gw-{i:03}\n        region: r1\n        networks: [net]\n        roles: [ingress]\n        endpoint: \"192.0.2.1:{}\"\n        listen_port: 51820\n",
            20000 + i
        ));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let dir = std::env::temp_dir().join(format!("nmt-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout::new(dir.join("manager"));
    init(&layout, &["127.0.0.1".to_string()], None).unwrap();
    let store = Arc::new(SqliteStore::open(&layout.store()).unwrap());
    let manager = Arc::new(
        Manager::load(
            store,
            HealthConfig {
                report_interval: Duration::from_secs(10),
                missed_reports: 3,
            },
        )
        .unwrap(),
    );

    // Each simulated daemon stands for a machine with its own disk: their state
    // (the fsynced last-known-good file) goes to tmpfs when there is one, so 200
    // fsyncs do not queue on this machine's single disk. The manager's store stays
    // on disk.
    let shm = std::path::Path::new("/dev/shm");
    let daemons = if shm.is_dir() {
        shm.join(format!("nmt-fleet-{}", std::process::id()))
    } else {
        dir.join("daemons")
    };
    let mut keys = Vec::new();
    for i in 0..GATEWAYS {
        keys.push(
            nanami_gateway_daemon::ensure_key(&daemons.join(format!("gw-{i:03}/private.key")))
                .unwrap(),
        );
    }
    let clients: Vec<PublicKey> = (0..GATEWAYS * 3)
        .map(|_| PrivateKey::generate(&mut rand_core::OsRng).public_key())
        .collect();
    manager
        .put_topology_text(&topology(&keys, &clients, 1))
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let tls = Arc::new(
        nanami_api::tls::server_config(&layout.server_cert(), &layout.server_key()).unwrap(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(server::serve(
        listener,
        http::router(manager.clone(), http::HttpConfig::default()),
        Some(tls),
        server::ServerLimits::default(),
        stopped(stop_rx.clone()),
    ));

    for (i, key) in keys.iter().enumerate() {
        let id = GatewayId::new(format!("gw-{i:03}")).unwrap();
        let token = http::issue_token(&manager, &Subject::Gateway(id.clone()), 600)
            .unwrap()
            .token;
        let config = DaemonConfig {
            manager: url.clone(),
            ca: Some(layout.ca_cert()),
            gateway: id,
            state_dir: daemons.join(format!("gw-{i:03}")),
            token: Some(token),
            report_every: Duration::from_secs(5),
            poll_wait: Duration::from_secs(30),
            reconcile: nanami_reconcile::Config::default(),
            facts: Some(Default::default()),
            status_out: None,
            probe: nanami_gateway_daemon::ProbeConfig::default(),
            prober: None,
            uplink: None,
            metrics_listener: None,
        };
        tokio::spawn(nanami_gateway_daemon::run(
            config,
            *key,
            SimPlatform::new(GatewayState::default()),
            stopped(stop_rx.clone()),
        ));
    }
    let start = Instant::now();
    wait_all(&manager, Duration::from_secs(120)).await;
    println!(
        "{GATEWAYS} daemons enrolled and converged in {:?}",
        start.elapsed()
    );

    let mut samples = Vec::new();
    let mut all = Vec::new();
    for round in 0..ROUNDS {
        let text = topology(&keys, &clients, 2 + round % 2);
        let t0 = Instant::now();
        let changed = manager.put_topology_text(&text).unwrap();
        assert_eq!(changed.changed.len(), GATEWAYS, "every gateway must change");
        let mut seen = vec![None; GATEWAYS];
        while seen.iter().any(Option::is_none) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "round {round} did not converge"
            );
            for (i, (_, desired, observed)) in manager.generations().iter().enumerate() {
                if seen[i].is_none() && *observed == Some(*desired) {
                    seen[i] = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let round_all = seen.iter().flatten().max().copied().unwrap_or_default();
        println!("round {round}: all {GATEWAYS} reported the new generation after {round_all:?}");
        all.push(round_all);
        samples.extend(seen.into_iter().flatten());
    }
    samples.sort();
    println!(
        "fleet: {GATEWAYS} daemons x {ROUNDS} topology changes: p50 {:?}  p99 {:?}  max {:?} (target p99 < 500ms)",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&daemons);
}

async fn wait_all(manager: &Manager, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let status = manager.status();
        if status.len() == GATEWAYS
            && status
                .iter()
                .all(|s| s.observed_generation == Some(s.desired_generation))
        {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "the fleet did not converge within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
