//! Several managers on one PostgreSQL database (a private server per test): a
//! change through one is served by all; `kill -9` of the manager holding the
//! health lease while changes are written loses nothing and serves nothing out
//! of order; a restart of PostgreSQL makes the managers answer 503 and recover
//! by themselves.
//!
//! The daemons are the real daemon loop (`nanami_gateway_daemon::run`) on a
//! simulated platform, in this process, each given every manager's URL.
#![allow(clippy::unwrap_used)]

mod common;
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{until, ManagerProc, TempDir, MANAGER};
use nanami_api::wire::{GatewayStatus, Liveness, Precondition, Subject, TokenRequest};
use nanami_api::{ApiError, Client};
use nanami_gateway_daemon::DaemonConfig;
use nanami_model::doc::{MembershipDoc, NodeDoc};
use nanami_model::{GatewayId, GatewayState, NodeId, PrivateKey, PublicKey};
use nanami_reconcile::sim::SimPlatform;
use nanami_reconcile::Status;
use nanami_testkit::port::Reserved;
use pg::PgServer;
use tokio::sync::{oneshot, watch};

/// How often daemons report; five missed reports make a gateway offline.
const REPORT: Duration = Duration::from_millis(1000);

/// Managers on one database, sharing one manager directory (CA, certificate,
/// credentials).
struct Cluster {
    report: Duration,
    pg: PgServer,
    tmp: TempDir,
    store: String,
    control: String,
    managers: Vec<Option<ManagerProc>>,
}

impl Cluster {
    async fn start(tag: &str, count: usize) -> Self {
        Self::start_with(tag, count, REPORT).await
    }

    /// [`Cluster::start`] with managers expecting reports every `report` (they
    /// tick four times per report interval).
    async fn start_with(tag: &str, count: usize, report: Duration) -> Self {
        common::log_buffer();
        let pg = PgServer::start(tag);
        let store = pg.database("nanami");
        let tmp = TempDir::new(tag);
        let status = Command::new(MANAGER)
            .args(["init", "--dir"])
            .arg(tmp.0.join("manager"))
            .args(["--store", &store])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "manager init on PostgreSQL failed");
        let control = std::fs::read_to_string(tmp.0.join("manager/control.token"))
            .unwrap()
            .trim()
            .to_owned();
        let mut cluster = Self {
            report,
            pg,
            tmp,
            store,
            control,
            managers: Vec::new(),
        };
        for i in 0..count {
            let m = cluster.spawn(i).await;
            cluster.managers.push(Some(m));
        }
        cluster
    }

    fn dir(&self) -> PathBuf {
        self.tmp.0.join("manager")
    }

    /// Starts manager `i` on a port reserved until it listens, and waits for its
    /// `/healthz`.
    async fn spawn(&self, i: usize) -> ManagerProc {
        let reserved = Reserved::loopback();
        let port = reserved.port();
        let log = self.tmp.0.join(format!("manager-{i}.log"));
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(MANAGER)
            .args(["serve", "--dir"])
            .arg(self.dir())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--report-interval-ms", &self.report.as_millis().to_string()])
            .args(["--missed-reports", "5", "--store-pool-size", "8"])
            .env("NANAMI_STORE", &self.store)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .unwrap();
        let proc = ManagerProc {
            child,
            dir: self.dir(),
            port,
            log,
        };
        common::wait_healthz(&proc, &self.ca(), Duration::from_secs(30)).await;
        drop(reserved);
        proc
    }

    fn ca(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    fn url(&self, i: usize) -> String {
        self.managers[i].as_ref().unwrap().url()
    }

    /// Manager `i` with the control credential.
    fn control(&self, i: usize) -> Client {
        Client::new(&self.url(i), Some(&self.ca()))
            .unwrap()
            .with_credential(self.control.clone())
            .with_timeout(Duration::from_secs(10))
    }

    /// Every manager's URL, starting with manager `first`.
    fn urls_from(&self, first: usize) -> String {
        let n = self.managers.len();
        (0..n)
            .map(|k| format!("https://127.0.0.1:{}", self.port((first + k) % n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn port(&self, i: usize) -> u16 {
        self.managers[i].as_ref().map(|m| m.port).unwrap_or(0)
    }

    /// The index of the manager holding the health lease (its process id is in
    /// the lease's holder).
    fn lease_holder(&self) -> Option<usize> {
        let db = self.store.rsplit('/').next().unwrap();
        let holder = self.pg.psql(
            db,
            "SELECT holder FROM leases WHERE name = 'health' AND expires_unix_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        );
        let pid: u32 = holder.split('/').nth(1)?.parse().ok()?;
        self.managers
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.child.id() == pid))
    }
}

/// A topology of `n` workspaces with one gateway each (keys from the daemons'
/// state dirs) and `clients` client nodes per workspace.
fn topology(keys: &[PublicKey], clients: usize) -> String {
    let mut out =
        String::from("version: 1\nregions:\n  - id: r1\n    state: active\nworkspaces:\n");
    for (i, key) in keys.iter().enumerate() {
        out.push_str(&format!(
            "  - id: ws-{i:03}\n    tenant: t{i}\n    regions: [r1]\n    networks:\n      - id: net\n        overlay: 100.64.0.0/24\n    nodes:\n      - id: gw-{i:03}\n        public_key: \"{key}\"\n        status: active\n        memberships: [{{ network: net, address: 100.64.0.1 }}]\n"
        ));
        for c in 0..clients {
            let client = PrivateKey::from_bytes(seed(i, c)).public_key();
            out.push_str(&format!(
                "      - id: c{c}-{i:03}\n        public_key: \"{client}\"\n        status: active\n        memberships: [{{ network: net }}]\n"
            ));
        }
        out.push_str(&format!(
            "    gateways:\n      - id: gw-{i:03}\n        node: gw-{i:03}\n        region: r1\n        networks: [net]\n        roles: [ingress]\n        endpoint: \"192.0.2.1:{}\"\n        listen_port: 51820\n",
            20000 + i
        ));
    }
    out
}

fn seed(i: usize, c: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    // Byte 0's low bits and byte 31's high bits are clamped away.
    s[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    s[9..17].copy_from_slice(&(c as u64 + 1).to_le_bytes());
    s[31] = 0x42;
    s
}

/// An in-process daemon and its log of applied generations (every value its
/// reconciler reported applied, in order).
struct SimDaemon {
    id: GatewayId,
    applied: Arc<Mutex<Vec<u64>>>,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl SimDaemon {
    fn start(cluster: &Cluster, i: usize, dir: &Path, key: PublicKey, token: String) -> Self {
        let id = GatewayId::new(format!("gw-{i:03}")).unwrap();
        let (status_tx, mut status) = watch::channel(Status::default());
        let applied = Arc::new(Mutex::new(Vec::new()));
        let log = applied.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status.borrow_and_update().applied_generation;
                if now != last {
                    if let Some(g) = now {
                        log.lock().unwrap().push(g);
                    }
                    last = now;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
        let config = DaemonConfig {
            // Spread over the managers: each daemon starts at another one.
            manager: cluster.urls_from(i % cluster.managers.len()),
            ca: Some(cluster.ca()),
            gateway: id.clone(),
            state_dir: dir.to_owned(),
            token: Some(token),
            report_every: REPORT,
            poll_wait: Duration::from_secs(10),
            reconcile: nanami_reconcile::Config::default(),
            facts: Some(Default::default()),
            status_out: Some(Arc::new(status_tx)),
            probe: nanami_gateway_daemon::ProbeConfig::default(),
            prober: None,
            uplink: None,
            metrics_listener: None,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let join = tokio::spawn(nanami_gateway_daemon::run(
            config,
            key,
            SimPlatform::new(GatewayState::default()),
            async move {
                let _ = stop_rx.await;
            },
        ));
        Self {
            id,
            applied,
            stop: Some(stop_tx),
            join,
        }
    }

    fn last_applied(&self) -> Option<u64> {
        self.applied.lock().unwrap().last().copied()
    }

    /// Its applied generations went only up.
    fn assert_in_order(&self) {
        let log = self.applied.lock().unwrap();
        assert!(
            log.windows(2).all(|w| w[0] < w[1]),
            "{}: generations applied out of order or twice: {:?}",
            self.id,
            *log
        );
    }
}

impl Drop for SimDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join.abort();
    }
}

/// Starts `n` daemons (keys in `root`) on a topology with one client each.
async fn fleet(cluster: &Cluster, root: &Path, n: usize) -> (Vec<PublicKey>, Vec<SimDaemon>) {
    let keys: Vec<PublicKey> = (0..n)
        .map(|i| {
            nanami_gateway_daemon::ensure_key(&root.join(format!("gw-{i:03}/private.key"))).unwrap()
        })
        .collect();
    cluster
        .control(0)
        .put_topology(&topology(&keys, 1))
        .await
        .unwrap();
    let mut daemons = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // Tokens from every manager: any manager serves every request.
        let token = cluster
            .control(i % cluster.managers.len())
            .create_token(&TokenRequest {
                subject: Subject::Gateway(GatewayId::new(format!("gw-{i:03}")).unwrap()),
                ttl_seconds: None,
            })
            .await
            .unwrap()
            .token;
        daemons.push(SimDaemon::start(
            cluster,
            i,
            &root.join(format!("gw-{i:03}")),
            *key,
            token,
        ));
    }
    (keys, daemons)
}

/// Each gateway's desired generation as manager `i` serves it.
async fn desired(cluster: &Cluster, i: usize) -> Result<BTreeMap<GatewayId, u64>, ApiError> {
    Ok(cluster
        .control(i)
        .status()
        .await?
        .into_iter()
        .map(|s| (s.id, s.desired_generation))
        .collect())
}

/// Waits until manager `i` serves the generations `changed` (written through
/// another manager); how long that took.
async fn served_by(
    cluster: &Cluster,
    i: usize,
    changed: &BTreeMap<GatewayId, u64>,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    until("the change served by another manager", timeout, || async {
        let served = desired(cluster, i).await.ok()?;
        changed
            .iter()
            .all(|(id, g)| served.get(id) == Some(g))
            .then_some(())
    })
    .await;
    start.elapsed()
}

/// Waits until every daemon applied the generation manager `i` serves it.
async fn all_converged(cluster: &Cluster, i: usize, daemons: &[SimDaemon], timeout: Duration) {
    until("every daemon on the newest generation", timeout, || async {
        let want = desired(cluster, i).await.ok()?;
        daemons
            .iter()
            .all(|d| {
                want.get(&d.id)
                    .is_some_and(|g| d.last_applied() == Some(*g))
            })
            .then_some(())
    })
    .await;
}

fn node(id: &str, n: usize) -> NodeDoc {
    NodeDoc {
        id: id.to_owned(),
        public_key: PrivateKey::from_bytes(seed(10_000 + n, 7))
            .public_key()
            .to_base64(),
        status: "active".to_owned(),
        endpoints: Vec::new(),
        memberships: vec![MembershipDoc {
            network: "net".to_owned(),
            address: None,
        }],
        exit: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_serve_one_fleet_and_survive_the_lease_holder_killed() {
    const GATEWAYS: usize = 200;
    let mut cluster = Cluster::start("three", 3).await;
    let daemons_dir = TempDir::new("three-daemons");
    let (keys, mut daemons) = fleet(&cluster, &daemons_dir.0, GATEWAYS).await;
    all_converged(&cluster, 1, &daemons, Duration::from_secs(120)).await;

    // A change through manager 0 is served by 1 and 2, woken, not polled.
    let written = cluster
        .control(0)
        .put_topology(&topology(&keys, 2))
        .await
        .unwrap();
    assert_eq!(written.changed.len(), GATEWAYS, "every gateway changes");
    for other in [1, 2] {
        let took = served_by(&cluster, other, &written.changed, Duration::from_secs(5)).await;
        eprintln!("manager {other} served manager 0's change after {took:?}");
    }
    all_converged(&cluster, 2, &daemons, Duration::from_secs(60)).await;

    // Writes through every manager, round robin, while the lease holder dies.
    let holder = until("a health lease holder", Duration::from_secs(10), || async {
        cluster.lease_holder()
    })
    .await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let clients: Vec<Client> = (0..3).map(|i| cluster.control(i)).collect();
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !*stop_rx.borrow() {
                let ws = format!("ws-{:03}", n % GATEWAYS);
                let id = format!("w{n}");
                let path = format!("/v1/workspaces/{ws}/nodes/{id}");
                // A manager that fails is skipped for the next one; a write whose
                // answer was lost is tried again (`Absent`: it lands once).
                for attempt in 0..6 {
                    let client = &clients[(n + attempt) % clients.len()];
                    match client
                        .put_object(&path, &node(&id, n), &Precondition::Absent)
                        .await
                    {
                        Ok(_) => {
                            accepted.lock().unwrap().insert((ws.clone(), id.clone()));
                            break;
                        }
                        Err(ApiError::Status { status, .. }) if status == 412 => {
                            // An earlier attempt landed; its answer was lost.
                            break;
                        }
                        Err(_) => continue,
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let landed = || accepted.lock().unwrap().len();
    until(
        "writes landing before the kill",
        Duration::from_secs(30),
        || async { (landed() >= 50).then_some(()) },
    )
    .await;
    let killed = cluster.managers[holder].as_mut().unwrap();
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    let at_kill = Instant::now();
    eprintln!("killed manager {holder}, the health lease holder");
    // The lease moves to a survivor within seconds, while writes go on.
    let new_holder = until("the lease taken over", Duration::from_secs(10), || async {
        cluster.lease_holder().filter(|h| *h != holder)
    })
    .await;
    assert!(survivors.contains(&new_holder));
    eprintln!(
        "lease taken over by manager {new_holder} {:?} after the kill",
        at_kill.elapsed()
    );
    // Writes go on landing through the survivors.
    let before = landed();
    until(
        "writes landing after the kill",
        Duration::from_secs(30),
        || async { (landed() >= before + 25).then_some(()) },
    )
    .await;
    stop_tx.send(true).unwrap();
    let attempted = writer.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    eprintln!("{} of {attempted} writes accepted", accepted.len());
    assert!(accepted.len() > 50, "too few writes: {}", accepted.len());
    cluster.managers[holder] = None;

    // Every daemon reaches the newest generation through the survivors.
    all_converged(&cluster, survivors[0], &daemons, Duration::from_secs(60)).await;
    let (a, b) = (
        desired(&cluster, survivors[0]).await.unwrap(),
        desired(&cluster, survivors[1]).await.unwrap(),
    );
    assert_eq!(a, b, "the survivors serve the same generations");
    for d in &daemons {
        d.assert_in_order();
    }

    // No accepted write was lost.
    let exported = cluster
        .control(survivors[1])
        .export_topology()
        .await
        .unwrap();
    let doc = nanami_model::Document::from_json(&exported).unwrap();
    let present: BTreeSet<(String, String)> = doc
        .workspaces
        .iter()
        .flat_map(|w| w.nodes.iter().map(|n| (w.id.clone(), n.id.clone())))
        .collect();
    let lost: Vec<_> = accepted.difference(&present).collect();
    assert!(lost.is_empty(), "accepted writes lost: {lost:?}");

    // No survivor saw a fork: a daemon that moved managers is not one.
    let status: Vec<GatewayStatus> = cluster.control(survivors[0]).status().await.unwrap();
    assert!(
        status.iter().all(|s| s.generation_fork.is_none()),
        "a generation fork was reported"
    );

    // The offline sweep resumed elsewhere: a gateway that stops reporting goes
    // offline on every survivor.
    let stopped = daemons.remove(0);
    let gone = stopped.id.clone();
    drop(stopped);
    for &i in &survivors {
        until(
            "the stopped gateway offline",
            Duration::from_secs(30),
            || async {
                let status = cluster.control(i).status().await.ok()?;
                status
                    .iter()
                    .any(|s| s.id == gone && s.health == Liveness::Offline)
                    .then_some(())
            },
        )
        .await;
    }
    // Its client lost its only gateway, and every survivor's movement history says
    // so: decided on the lease holder (a health verdict), followed on the others.
    let client = NodeId::new(gone.as_str().replacen("gw-", "c0-", 1)).unwrap();
    let mut triggers = Vec::new();
    for &i in &survivors {
        let moves = until(
            "the client's movement recorded",
            Duration::from_secs(10),
            || async {
                let moves = cluster.control(i).node_movements(&client).await.ok()?;
                (!moves.as_array()?.is_empty()).then_some(moves)
            },
        )
        .await;
        let m = &moves[0];
        assert_eq!(
            (&m["from"], &m["to"], &m["cause"], &m["verdict"]["verdict"]),
            (
                &gone.as_str().into(),
                &serde_json::Value::Null,
                &"left".into(),
                &"offline".into()
            ),
            "manager {i}: {moves:#}"
        );
        triggers.push(m["trigger"].as_str().unwrap().to_owned());
    }
    triggers.sort();
    assert_eq!(
        triggers,
        ["followed", "health"],
        "one decides, the other follows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_503_while_down_then_recovered_without_losing_anything() {
    let cluster = Cluster::start("restart", 2).await;
    let daemons_dir = TempDir::new("restart-daemons");
    let (_keys, daemons) = fleet(&cluster, &daemons_dir.0, 10).await;
    all_converged(&cluster, 0, &daemons, Duration::from_secs(60)).await;
    let before = cluster
        .control(0)
        .put_object(
            "/v1/workspaces/ws-001/nodes/before",
            &node("before", 1),
            &Precondition::Absent,
        )
        .await
        .unwrap();

    cluster.pg.stop();
    for i in 0..2 {
        let err = cluster
            .control(i)
            .put_object(
                "/v1/workspaces/ws-002/nodes/down",
                &node("down", 2),
                &Precondition::Absent,
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.status(),
            Some(http::StatusCode::SERVICE_UNAVAILABLE),
            "{err}"
        );
        let err = cluster.control(i).status().await.unwrap_err();
        assert_eq!(
            err.status(),
            Some(http::StatusCode::SERVICE_UNAVAILABLE),
            "{err}"
        );
    }

    cluster.pg.start_again();
    // Both managers write again by themselves, and the write made through one is
    // served by the other.
    let after = until("writes accepted again", Duration::from_secs(30), || async {
        cluster
            .control(1)
            .put_object(
                "/v1/workspaces/ws-003/nodes/after",
                &node("after", 3),
                &Precondition::Absent,
            )
            .await
            .ok()
    })
    .await;
    served_by(&cluster, 0, &after.changed, Duration::from_secs(15)).await;
    all_converged(&cluster, 0, &daemons, Duration::from_secs(60)).await;
    for d in &daemons {
        d.assert_in_order();
    }
    let exported = cluster.control(0).export_topology().await.unwrap();
    for id in ["before", "after"] {
        assert!(exported.contains(&format!("\"{id}\"")), "{id} is lost");
    }
    assert!(
        !exported.contains("\"down\""),
        "a write refused with 503 must not land"
    );
    assert!(before.topology_revision < after.topology_revision);
}

/// Managers that tick every 15 s still serve each other's changes at once: they
/// are woken by the database (LISTEN/NOTIFY), not by polling it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_pushed_to_the_other_managers_not_polled() {
    let cluster = Cluster::start_with("pushed", 2, Duration::from_secs(60)).await;
    let keys: Vec<PublicKey> = (0..3)
        .map(|i| PrivateKey::from_bytes(seed(i, 99)).public_key())
        .collect();
    let mut delays = Vec::new();
    for clients in 1..=5 {
        let written = cluster
            .control(0)
            .put_topology(&topology(&keys, clients))
            .await
            .unwrap();
        assert_eq!(written.changed.len(), 3);
        delays.push(served_by(&cluster, 1, &written.changed, Duration::from_secs(5)).await);
    }
    delays.sort();
    eprintln!("manager 1 served manager 0's changes after {delays:?}");
    assert!(
        delays[delays.len() - 1] < Duration::from_secs(5),
        "slower than a notification: {delays:?}"
    );
}

/// Two managers on one database in this process, neither following the other's
/// notifications: whatever one learns of the other's change, it learns when a
/// request needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_is_behind_catches_up_before_it_answers_one_that_moved() {
    use nanami_gateway_manager::store::{PgOptions, PgStore};
    use nanami_gateway_manager::{HealthConfig, Manager};
    let server = PgServer::shared();
    let url = server.database("behind");
    let open = || {
        let store = PgStore::connect(&PgOptions {
            url: url.clone(),
            pool_size: 2,
            ca: None,
        })
        .unwrap();
        Arc::new(Manager::load(Arc::new(store), HealthConfig::default()).unwrap())
    };
    let (a, b) = (open(), open());
    let keys: Vec<PublicKey> = (0..2)
        .map(|i| PrivateKey::from_bytes(seed(i, 50)).public_key())
        .collect();
    let node = nanami_model::NodeId::new("c0-000").unwrap();
    let (a2, text) = (a.clone(), topology(&keys, 1));
    tokio::task::spawn_blocking(move || a2.put_topology_text(&text).unwrap())
        .await
        .unwrap();
    let first = a.node_config(&node).unwrap();
    // b catches up when asked for a node it does not know yet.
    let (version, served) = b
        .wait_node_config(&node, Some("unknown"), Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served, first);
    // a changes the topology again; an agent that moved from a to b asks b with
    // a's newest version: b answers with that, not its own older one.
    let moved = |clients| topology(&keys, clients).replace("192.0.2.1:20000", "192.0.2.1:30000");
    let (a2, text) = (a.clone(), moved(1));
    tokio::task::spawn_blocking(move || a2.put_topology_text(&text).unwrap())
        .await
        .unwrap();
    let newest = a.node_config(&node).unwrap();
    assert_ne!(newest, first);
    let newest_version = nanami_gateway_manager::manager::config_version(&newest);
    assert_ne!(newest_version, version);
    let answer = b
        .wait_node_config(&node, Some(&newest_version), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        answer, None,
        "b has caught up: nothing newer than the agent's"
    );
    // A daemon that moved from a reports a generation b has not served: a catch-up,
    // not a fork.
    let gw = GatewayId::new("gw-000").unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    let (a3, b3) = (a.clone(), b.clone());
    let before = b
        .status()
        .iter()
        .find(|s| s.id == gw)
        .unwrap()
        .desired_generation;
    let text = moved(2);
    let written = tokio::task::spawn_blocking(move || a3.put_topology_text(&text).unwrap())
        .await
        .unwrap();
    let generation = written.changed[&gw];
    assert!(generation > before);
    let report = nanami_api::wire::ObservedReport {
        public_key: keys[0],
        status: Status {
            applied_generation: Some(generation),
            ..Status::default()
        },
        state: GatewayState::default(),
        telemetry: BTreeMap::new(),
        facts: Default::default(),
        health: BTreeMap::new(),
        applied_digest: None,
    };
    let gw2 = gw.clone();
    tokio::task::spawn_blocking(move || b3.put_observed(&gw2, report).unwrap())
        .await
        .unwrap();
    let status = b2.status();
    let mine = status.iter().find(|s| s.id == gw).unwrap();
    assert_eq!(mine.desired_generation, generation);
    assert_eq!(mine.generation_fork, None, "not a fork");
    assert_eq!(
        a2.status()
            .iter()
            .find(|s| s.id == gw)
            .unwrap()
            .desired_generation,
        generation
    );
}
