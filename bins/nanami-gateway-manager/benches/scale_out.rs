//! Scale-out benchmark (issue #18): how long a topology change takes to reach
//! every gateway, for 1,000 simulated daemons (`SimPlatform`, in this process)
//! against
//!
//! - `sqlite`: one manager on SQLite (what a user runs today),
//! - `pg`: one manager on PostgreSQL,
//! - `pg3`: three managers on one PostgreSQL database, the daemons spread evenly
//!   (daemon i talks to manager i % 3) and every change written through manager 0,
//!   so two thirds of the daemons learn of it through another manager (NOTIFY,
//!   catch-up, long-poll wake).
//!
//! Each configuration starts from a fresh store: the daemons enrol and apply the
//! first generation (timed), then each round writes a topology that changes every
//! gateway and measures, per daemon, the time from the write's return to the
//! moment the daemon's reconciler status (`status_out`) shows the new generation
//! applied. One line per configuration, `scale_out: config=… p50_ms=… p99_ms=…
//! max_ms=…`, and `key=value` lines for `bench/run`. Goal: p99 < 1 s.
//!
//! `cargo bench -p nanami-gateway-manager --bench scale_out`; environment:
//! `SCALE_OUT_DAEMONS` (1000), `SCALE_OUT_ROUNDS` (5), `SCALE_OUT_CONFIGS`
//! (`sqlite,pg,pg3`). PostgreSQL is a private server (Debian's `postgresql`,
//! run as the `postgres` user when root), removed at the end.
#![allow(clippy::unwrap_used)]

#[path = "../tests/pg/mod.rs"]
mod pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nanami_api::wire::Subject;
use nanami_gateway_daemon::DaemonConfig;
use nanami_gateway_manager::init::{init, Layout};
use nanami_gateway_manager::store::{PgOptions, PgStore, Store};
use nanami_gateway_manager::{http, server, HealthConfig, Manager, SqliteStore};
use nanami_model::{GatewayId, GatewayState, PrivateKey, PublicKey};
use nanami_reconcile::sim::SimPlatform;
use nanami_reconcile::Status;
use pg::PgServer;
use tokio::sync::watch;

const DAEMONS: usize = 1000;
const ROUNDS: usize = 5;
/// A round that has not reached every daemon by then fails the run.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Enrolment of the whole fleet: 1,000 TLS handshakes, enrolments and first
/// passes on a shared 2-core machine took under a minute while writing this.
const ENROL_TIMEOUT: Duration = Duration::from_secs(300);
/// As `benches/fleet.rs`: daemons report every 5 s and long-poll for 30 s.
const REPORT_EVERY: Duration = Duration::from_secs(5);
const POLL_WAIT: Duration = Duration::from_secs(30);
/// Between rounds: the reports that follow a change have landed, so each round
/// starts from a quiet fleet (reports keep coming every 5 s, as in production).
const SETTLE: Duration = Duration::from_secs(2);
/// `nanami-gateway-manager serve`'s default `--store-pool-size`.
const POOL_SIZE: usize = 16;
/// Clients per gateway: round r has 2 + r % 2, the first generation 1, so every
/// round changes every gateway.
const MAX_CLIENTS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Sqlite,
    Pg,
    Pg3,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Sqlite => "sqlite",
            Config::Pg => "pg",
            Config::Pg3 => "pg3",
        }
    }

    fn managers(self) -> usize {
        match self {
            Config::Sqlite | Config::Pg => 1,
            Config::Pg3 => 3,
        }
    }

    fn parse(s: &str) -> Self {
        match s.trim() {
            "sqlite" => Config::Sqlite,
            "pg" => Config::Pg,
            "pg3" => Config::Pg3,
            other => panic!("SCALE_OUT_CONFIGS: unknown configuration {other:?} (sqlite, pg, pg3)"),
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a positive number")),
        Err(_) => default,
    }
}

fn gateway(i: usize) -> GatewayId {
    GatewayId::new(format!("gw-{i:04}")).unwrap()
}

/// `n` workspaces with one gateway each and `clients` client nodes per workspace.
/// Workspaces are isolated, so every one reuses the same overlay.
fn topology(
    keys: &[PublicKey],
    client_keys: &[[PublicKey; MAX_CLIENTS]],
    clients: usize,
) -> String {
    let mut out =
        String::from("version: 1\nregions:\n  - id: r1\n    state: active\nworkspaces:\n");
    for (i, key) in keys.iter().enumerate() {
        out.push_str(&format!(
            "  - id: ws-{i:04}\n    tenant: t{i}\n    regions: [r1]\n    networks:\n      - id: net\n        overlay: 100.64.0.0/24\n    nodes:\n      - id: gw-{i:04}\n        public_key: \"{key}\"\n        status: active\n        memberships: [{{ network: net, address: 100.64.0.1 }}]\n"
        ));
        for (c, client) in client_keys[i].iter().take(clients).enumerate() {
            out.push_str(&format!(
                "      - id: c{c}-{i:04}\n        public_key: \"{client}\"\n        status: active\n        memberships: [{{ network: net }}]\n"
            ));
        }
        out.push_str(&format!(
            "    gateways:\n      - id: gw-{i:04}\n        node: gw-{i:04}\n        region: r1\n        networks: [net]\n        roles: [ingress]\n        endpoint: \"192.0.2.1:{}\"\n        listen_port: 51820\n",
            20000 + i
        ));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn list(ds: &[Duration]) -> String {
    ds.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(",")
}

/// Removes a directory when dropped (also when a round fails and unwinds).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every generation a daemon's reconciler reported applied, with when this
/// process saw it.
type Applied = Arc<Mutex<Vec<(u64, Instant)>>>;

fn main() {
    let daemons = env_usize("SCALE_OUT_DAEMONS", DAEMONS);
    let rounds = env_usize("SCALE_OUT_ROUNDS", ROUNDS);
    let configs: Vec<Config> = std::env::var("SCALE_OUT_CONFIGS")
        .unwrap_or_else(|_| "sqlite,pg,pg3".to_owned())
        .split(',')
        .map(Config::parse)
        .collect();
    assert!(
        daemons > 0 && rounds > 0,
        "SCALE_OUT_DAEMONS and SCALE_OUT_ROUNDS must be positive"
    );
    println!(
        "scale_out: {daemons} daemons, {rounds} rounds, configurations {}",
        configs
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("daemons={daemons}");
    println!("rounds={rounds}");
    let pg = configs
        .iter()
        .any(|c| *c != Config::Sqlite)
        .then(|| PgServer::start("scale"));
    for config in configs {
        // A runtime per configuration: nothing of one (daemons, managers, store
        // connections) runs on during the next.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = pg.as_ref().map(|pg| pg.database(config.name()));
        rt.block_on(run(config, url, daemons, rounds));
        rt.shutdown_timeout(Duration::from_secs(10));
    }
}

struct Measured {
    enrol: Duration,
    writes: Vec<Duration>,
    samples: Vec<Duration>,
    /// The samples of daemons served by manager 0 (the one written through).
    direct: Vec<Duration>,
    round_p99: Vec<Duration>,
    round_max: Vec<Duration>,
    /// Per round, when the last of the other managers served every new generation.
    catch_up: Vec<Duration>,
    /// Per round, the CPU time this process (managers and daemons) used from the
    /// write's return to the last daemon's apply.
    cpu: Vec<Duration>,
    /// Per round, the share of the machine's CPU time that was busy meanwhile
    /// (this process, PostgreSQL and whatever else runs).
    busy: Vec<f64>,
}

async fn run(config: Config, url: Option<String>, n: usize, rounds: usize) {
    let name = config.name();
    let tag = format!("nmt-scale-{}-{name}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    let _ = std::fs::remove_dir_all(&dir.0);
    // Each simulated daemon stands for a machine with its own disk: its state (the
    // fsynced last-known-good file) goes to tmpfs when there is one, as in
    // benches/fleet.rs. The managers' stores stay on disk.
    let shm = Path::new("/dev/shm");
    let state = TempDir(if shm.is_dir() {
        shm.join(&tag)
    } else {
        dir.0.join("daemons")
    });
    let layout = Layout::new(dir.0.join("manager"));

    let stores: Vec<Arc<dyn Store>> = {
        let layout = layout.clone();
        let count = config.managers();
        // Opening a PostgreSQL store connects and migrates: off the async workers,
        // as `serve` does.
        tokio::task::spawn_blocking(move || -> Vec<Arc<dyn Store>> {
            let sans = ["127.0.0.1".to_owned()];
            match url {
                None => {
                    init(&layout, &sans, None).unwrap();
                    vec![Arc::new(SqliteStore::open(&layout.store()).unwrap())]
                }
                Some(url) => {
                    let options = PgOptions {
                        url,
                        pool_size: POOL_SIZE,
                        ca: None,
                    };
                    let first: Arc<dyn Store> = Arc::new(PgStore::connect(&options).unwrap());
                    init(&layout, &sans, Some(&*first)).unwrap();
                    let mut stores = vec![first];
                    for _ in 1..count {
                        stores.push(Arc::new(PgStore::connect(&options).unwrap()));
                    }
                    stores
                }
            }
        })
        .await
        .unwrap()
    };
    let health = HealthConfig {
        report_interval: Duration::from_secs(10),
        missed_reports: 3,
    };
    let managers: Vec<Arc<Manager>> = tokio::task::spawn_blocking(move || {
        stores
            .into_iter()
            .map(|s| Arc::new(Manager::load(s, health).unwrap()))
            .collect()
    })
    .await
    .unwrap();

    let keys: Vec<PublicKey> = (0..n)
        .map(|i| {
            nanami_gateway_daemon::ensure_key(&state.0.join(format!("gw-{i:04}/private.key")))
                .unwrap()
        })
        .collect();
    let client_keys: Arc<Vec<[PublicKey; MAX_CLIENTS]>> = Arc::new(
        (0..n)
            .map(|_| {
                std::array::from_fn(|_| PrivateKey::generate(&mut rand_core::OsRng).public_key())
            })
            .collect(),
    );
    let keys = Arc::new(keys);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls = Arc::new(
        nanami_api::tls::server_config(&layout.server_cert(), &layout.server_key()).unwrap(),
    );
    let mut urls = Vec::new();
    let mut servers = Vec::new();
    for manager in &managers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        ));
        // The wiring of `nanami-gateway-manager serve`.
        tokio::spawn(server::follow_changes(
            manager.clone(),
            stopped(stop_rx.clone()),
        ));
        let tick = (health.report_interval / 4).max(Duration::from_millis(50));
        tokio::spawn(server::health_loop(
            manager.clone(),
            tick,
            stopped(stop_rx.clone()),
        ));
        servers.push(tokio::spawn(server::serve(
            listener,
            http::router(manager.clone(), http::HttpConfig::default()),
            Some(tls.clone()),
            server::ServerLimits::default(),
            stopped(stop_rx.clone()),
        )));
    }

    let (first, _) = write(&managers[0], topology(&keys, &client_keys, 1)).await;
    let targets = targets_of(&first, n);
    let t = Instant::now();
    while !managers.iter().all(|m| serves(m, &targets)) {
        assert!(
            t.elapsed() < ROUND_TIMEOUT,
            "{name}: the managers did not all serve the first topology within {ROUND_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each daemon's one-time token, from the manager it talks to (store writes:
    // on a blocking thread).
    let tokens: Vec<String> = {
        let managers = managers.clone();
        tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|i| {
                    http::issue_token(
                        &managers[i % managers.len()],
                        &Subject::Gateway(gateway(i)),
                        600,
                    )
                    .unwrap()
                    .token
                })
                .collect()
        })
        .await
        .unwrap()
    };

    let start = Instant::now();
    let mut applied: Vec<Applied> = Vec::with_capacity(n);
    let mut daemons = Vec::with_capacity(n);
    for (i, token) in tokens.into_iter().enumerate() {
        let (status_tx, mut status) = watch::channel(Status::default());
        let log: Applied = Arc::default();
        applied.push(log.clone());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status.borrow_and_update().applied_generation;
                if now != last {
                    if let Some(g) = now {
                        log.lock().unwrap().push((g, Instant::now()));
                    }
                    last = now;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
        let config = DaemonConfig {
            manager: urls[i % urls.len()].clone(),
            ca: Some(layout.ca_cert()),
            gateway: gateway(i),
            state_dir: state.0.join(format!("gw-{i:04}")),
            token: Some(token),
            report_every: REPORT_EVERY,
            poll_wait: POLL_WAIT,
            reconcile: nanami_reconcile::Config::default(),
            facts: Some(Default::default()),
            status_out: Some(Arc::new(status_tx)),
            probe: nanami_gateway_daemon::ProbeConfig::default(),
            prober: None,
            uplink: None,
            metrics_listener: None,
        };
        daemons.push(tokio::spawn(nanami_gateway_daemon::run(
            config,
            keys[i],
            SimPlatform::new(GatewayState::default()),
            stopped(stop_rx.clone()),
        )));
    }
    let fleet = Fleet {
        applied: &applied,
        managers: &managers,
    };
    fleet
        .wait(&targets, start, ENROL_TIMEOUT, "enrolment")
        .await;
    let enrol = start.elapsed();
    println!(
        "{name}: {n} daemons on {} manager(s) enrolled and applied the first generation in {enrol:.1?}",
        managers.len()
    );

    let mut m = Measured {
        enrol,
        writes: Vec::new(),
        samples: Vec::new(),
        direct: Vec::new(),
        round_p99: Vec::new(),
        round_max: Vec::new(),
        catch_up: Vec::new(),
        cpu: Vec::new(),
        busy: Vec::new(),
    };
    for round in 0..rounds {
        tokio::time::sleep(SETTLE).await;
        let (changed, t0) = write(&managers[0], topology(&keys, &client_keys, 2 + round % 2)).await;
        let (cpu0, machine0) = (cpu_time(), machine_jiffies());
        m.writes.push(changed.took);
        assert_eq!(
            changed.generations.len(),
            n,
            "{name} round {round}: the change must change every gateway"
        );
        let targets = targets_of(&changed, n);
        let (mut seen, catch_up) = fleet
            .wait(
                &targets,
                t0,
                ROUND_TIMEOUT,
                &format!("{name} round {round}"),
            )
            .await;
        let cpu = cpu_time().saturating_sub(cpu0);
        let busy = match (machine0, machine_jiffies()) {
            (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => {
                (busy1 - busy0) as f64 / (all1 - all0) as f64
            }
            _ => f64::NAN,
        };
        m.cpu.push(cpu);
        m.busy.push(busy);
        for (i, d) in seen.iter().enumerate() {
            if i % managers.len() == 0 {
                m.direct.push(*d);
            }
        }
        m.samples.extend(seen.iter().copied());
        seen.sort();
        m.round_p99.push(percentile(&seen, 0.99));
        m.round_max.push(seen.last().copied().unwrap_or_default());
        m.catch_up.push(catch_up);
        println!(
            "{name} round {round}: write {:.1?}; every daemon applied after {:.1?} (first {:.1?}, p50 {:.1?}, p99 {:.1?}); meanwhile this process used {cpu:.2?} of CPU, the machine was {:.0}% busy{}",
            changed.took,
            seen.last().copied().unwrap_or_default(),
            seen.first().copied().unwrap_or_default(),
            percentile(&seen, 0.5),
            percentile(&seen, 0.99),
            busy * 100.0,
            if managers.len() > 1 {
                format!("; the other managers served it after {catch_up:.1?}")
            } else {
                String::new()
            }
        );
    }

    let _ = stop_tx.send(true);
    for d in daemons {
        let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
    }
    for s in servers {
        let _ = tokio::time::timeout(server::SHUTDOWN_GRACE + Duration::from_secs(1), s).await;
    }
    report(config, n, rounds, m);
}

fn report(config: Config, n: usize, rounds: usize, mut m: Measured) {
    let name = config.name();
    m.samples.sort();
    m.direct.sort();
    let p50 = percentile(&m.samples, 0.5);
    let p99 = percentile(&m.samples, 0.99);
    let max = m.samples.last().copied().unwrap_or_default();
    let mut writes = m.writes.clone();
    writes.sort();
    println!(
        "scale_out: config={name} managers={} daemons={n} rounds={rounds} enrol_s={:.1} write_ms={} p50_ms={} p99_ms={} max_ms={} goal=p99<1000ms {}",
        config.managers(),
        m.enrol.as_secs_f64(),
        ms(percentile(&writes, 0.5)),
        ms(p50),
        ms(p99),
        ms(max),
        if p99 < Duration::from_secs(1) { "met" } else { "NOT met" }
    );
    // For bench/run (`item.key=value` lines).
    println!("{name}.managers={}", config.managers());
    println!("{name}.enrol_s={:.2}", m.enrol.as_secs_f64());
    println!("{name}.write_ms={}", list(&m.writes));
    println!("{name}.p50_ms={}", ms(p50));
    println!("{name}.p99_ms={}", ms(p99));
    println!("{name}.max_ms={}", ms(max));
    println!("{name}.round_p99_ms={}", list(&m.round_p99));
    println!("{name}.round_max_ms={}", list(&m.round_max));
    println!("{name}.round_cpu_ms={}", list(&m.cpu));
    println!(
        "{name}.round_busy_pct={}",
        m.busy
            .iter()
            .map(|b| format!("{:.0}", b * 100.0))
            .collect::<Vec<_>>()
            .join(",")
    );
    if config.managers() > 1 {
        println!("{name}.direct_p99_ms={}", ms(percentile(&m.direct, 0.99)));
        println!("{name}.catch_up_ms={}", list(&m.catch_up));
    }
}

/// The CPU time (user and system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: `rusage` is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` through a pointer to a live, aligned one.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The machine's busy and total CPU time so far, in clock ticks (`/proc/stat`).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// A write's new generations and how long the write took.
struct Written {
    generations: BTreeMap<GatewayId, u64>,
    took: Duration,
}

/// Writes `text` through `manager` on a blocking thread (as the API does); the
/// result and the instant the write returned.
async fn write(manager: &Arc<Manager>, text: String) -> (Written, Instant) {
    let manager = manager.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let changed = manager.put_topology_text(&text).unwrap();
        let done = Instant::now();
        (
            Written {
                generations: changed.changed,
                took: done - t,
            },
            done,
        )
    })
    .await
    .unwrap()
}

/// Daemon i's new generation.
fn targets_of(written: &Written, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            *written
                .generations
                .get(&gateway(i))
                .unwrap_or_else(|| panic!("the write did not change {}", gateway(i)))
        })
        .collect()
}

/// Whether `manager` serves gateway i generation `targets[i]` or later, for every i.
fn serves(manager: &Manager, targets: &[u64]) -> bool {
    let desired: BTreeMap<GatewayId, u64> = manager
        .generations()
        .into_iter()
        .map(|(id, d, _)| (id, d))
        .collect();
    (0..targets.len()).all(|i| desired.get(&gateway(i)).is_some_and(|d| *d >= targets[i]))
}

struct Fleet<'a> {
    applied: &'a [Applied],
    managers: &'a [Arc<Manager>],
}

impl Fleet<'_> {
    /// Waits until daemon i applied `targets[i]` (or later) for every i; how long
    /// after `since` each did, and when the last of the managers other than 0
    /// served every target (a diagnostic: manager state, not what is measured).
    async fn wait(
        &self,
        targets: &[u64],
        since: Instant,
        timeout: Duration,
        what: &str,
    ) -> (Vec<Duration>, Duration) {
        let n = targets.len();
        let mut seen: Vec<Option<Duration>> = vec![None; n];
        let mut served: Vec<Option<Duration>> = vec![None; self.managers.len()];
        served[0] = Some(Duration::ZERO);
        loop {
            for (k, m) in self.managers.iter().enumerate() {
                if served[k].is_none() && serves(m, targets) {
                    served[k] = Some(since.elapsed());
                }
            }
            for (i, slot) in seen.iter_mut().enumerate() {
                if slot.is_none() {
                    let log = self.applied[i].lock().unwrap();
                    if let Some((_, at)) = log.iter().find(|(g, _)| *g >= targets[i]) {
                        *slot = Some(at.saturating_duration_since(since));
                    }
                }
            }
            let missing: Vec<usize> = (0..n).filter(|i| seen[*i].is_none()).collect();
            if missing.is_empty() {
                let catch_up = served.iter().flatten().max().copied().unwrap_or_default();
                return (seen.into_iter().flatten().collect(), catch_up);
            }
            if since.elapsed() > timeout {
                let i = missing[0];
                let last = self.applied[i].lock().unwrap().last().map(|(g, _)| *g);
                panic!(
                    "{what}: {} of {n} daemons had not applied their new generation after {timeout:?} \
                     (e.g. {} through manager {}: applied {last:?}, wanted {}); managers serving it: {:?}",
                    missing.len(),
                    gateway(i),
                    i % self.managers.len(),
                    targets[i],
                    served.iter().map(Option::is_some).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
