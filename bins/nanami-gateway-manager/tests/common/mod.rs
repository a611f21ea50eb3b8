//! Test harness: the real manager binary on loopback (TLS), daemons in-process
//! on `SimPlatform`, temp dirs removed on drop (even on panic).
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nanami_api::wire::{Subject, TokenRequest};
use nanami_api::Client;
use nanami_gateway_daemon::{DaemonConfig, Outcome, ProbeConfig, ProbeFuture, Prober};
use nanami_model::{GatewayId, GatewayState, PrivateKey, PublicKey};
use nanami_reconcile::sim::SimPlatform;
use nanami_reconcile::Status;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const MANAGER: &str = env!("CARGO_BIN_EXE_nanami-gateway-manager");

/// Every log line of the in-process daemons of this test binary.
pub fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || BufWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

pub struct BufWriter(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for BufWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nmt-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use rand_core::RngCore as _;
    rand_core::OsRng.next_u64()
}

/// Polls an async condition until it is met (`Some`, `true`, `Ok`), failing the
/// test after its timeout with the last observation.
pub use nanami_testkit::wait_until_async as until;

/// The manager process; killed on drop.
pub struct ManagerProc {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl ManagerProc {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A manager directory with a topology file, and the running manager.
pub struct Env {
    pub tmp: TempDir,
    /// The manager's port, held for the whole test so that a restarted manager
    /// gets it back.
    pub port: nanami_testkit::port::Reserved,
    pub manager: ManagerProc,
    pub control: String,
    pub operator: String,
}

pub const REPORT_MS: u64 = 200;

impl Env {
    pub fn mdir(&self) -> PathBuf {
        self.tmp.0.join("manager")
    }
    pub fn ca(&self) -> PathBuf {
        self.mdir().join("ca.pem")
    }
    pub fn topology_file(&self) -> PathBuf {
        self.tmp.0.join("topology.yaml")
    }
    pub fn db(&self) -> PathBuf {
        self.mdir().join("manager.db")
    }
    pub fn client(&self) -> Client {
        Client::new(&self.manager.url(), Some(&self.ca())).unwrap()
    }
    pub fn control(&self) -> Client {
        self.client().with_credential(self.control.clone())
    }
    pub fn operator(&self) -> Client {
        self.client().with_credential(self.operator.clone())
    }

    /// Initialises a manager dir and starts the manager on `topology`.
    pub async fn start(tag: &str, topology: &str) -> Self {
        Self::start_with_flags(tag, topology, &[]).await
    }

    /// A manager with no topology file: driven through the API alone (a file
    /// would be applied again at every start).
    pub async fn start_api(tag: &str) -> Self {
        Self::start_with_flags(tag, "", &[]).await
    }

    /// [`Env::start`] with `extra` flags on `serve` (no topology file when
    /// `topology` is empty).
    pub async fn start_with_flags(tag: &str, topology: &str, extra: &[&str]) -> Self {
        log_buffer();
        let tmp = TempDir::new(tag);
        let mdir = tmp.0.join("manager");
        let status = Command::new(MANAGER)
            .args(["init", "--dir"])
            .arg(&mdir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "manager init failed");
        if !topology.is_empty() {
            std::fs::write(tmp.0.join("topology.yaml"), topology).unwrap();
        }
        let control = std::fs::read_to_string(mdir.join("control.token"))
            .unwrap()
            .trim()
            .to_owned();
        let operator = std::fs::read_to_string(mdir.join("operator.token"))
            .unwrap()
            .trim()
            .to_owned();
        let port = nanami_testkit::port::Reserved::loopback();
        let manager = spawn_manager(
            &mdir,
            &tmp.0.join("topology.yaml"),
            port.port(),
            &tmp.0.join("manager.log"),
            extra,
        )
        .await;
        Self {
            tmp,
            port,
            manager,
            control,
            operator,
        }
    }

    pub async fn restart_manager(&mut self) {
        self.manager.stop();
        let port = self.manager.port;
        let log = self.tmp.0.join("manager.log");
        self.manager = spawn_manager(&self.mdir(), &self.topology_file(), port, &log, &[]).await;
    }

    pub async fn token(&self, gateway: &str) -> String {
        self.control()
            .create_token(&TokenRequest {
                subject: Subject::Gateway(GatewayId::new(gateway).unwrap()),
                ttl_seconds: None,
            })
            .await
            .unwrap()
            .token
    }

    /// Waits until every gateway in `ids` reports the desired generation.
    pub async fn converged(&self, ids: &[&str]) -> Vec<nanami_api::wire::GatewayStatus> {
        let control = self.control();
        until("convergence", Duration::from_secs(20), || {
            let control = control.clone();
            async move {
                let status = control.status().await.ok()?;
                ids.iter()
                    .all(|id| {
                        status.iter().any(|s| {
                            s.id.as_str() == *id
                                && s.observed_generation == Some(s.desired_generation)
                        })
                    })
                    .then_some(status)
            }
        })
        .await
    }
}

/// Starts the manager on `dir` with `extra` flags on `serve` and waits for its
/// `/healthz`.
pub async fn spawn_manager(
    dir: &Path,
    topology: &Path,
    port: u16,
    log: &Path,
    extra: &[&str],
) -> ManagerProc {
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(MANAGER);
    command
        .args(["serve", "--dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    // Without a topology file the manager is driven through the API alone.
    if topology.exists() {
        command.arg("--topology").arg(topology);
    }
    let child = command
        .args([
            "--report-interval-ms",
            &REPORT_MS.to_string(),
            "--missed-reports",
            "5",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .unwrap();
    let proc = ManagerProc {
        child,
        dir: dir.to_owned(),
        port,
        log: log.to_owned(),
    };
    wait_healthz(&proc, &dir.join("ca.pem"), Duration::from_secs(15)).await;
    proc
}

/// Waits (up to `timeout`) for the manager's `/healthz`.
pub async fn wait_healthz(proc: &ManagerProc, ca: &Path, timeout: Duration) {
    let client = Client::new(&proc.url(), Some(ca)).unwrap();
    until("the manager's /healthz", timeout, || {
        let client = client.clone();
        async move {
            let a = client
                .send_raw(http::Method::GET, "/healthz", None, Duration::from_secs(2))
                .await
                .ok()?;
            a.status.is_success().then_some(())
        }
    })
    .await;
}

/// Probe timing of in-process daemons: rounds every 100 ms, three to change a
/// verdict.
pub const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(50),
    fail_after: 3,
    recover_after: 3,
};

/// Health-target probes answered from a set: every target answers unless it is in
/// `down`.
#[derive(Debug, Default)]
pub struct FakeProber {
    pub down: Mutex<BTreeSet<IpAddr>>,
}

impl FakeProber {
    /// Makes `targets` silent (`true`) or answer again (`false`).
    pub fn set_down(&self, targets: &[&str], down: bool) {
        let mut set = self.down.lock().unwrap();
        for t in targets {
            let ip: IpAddr = t.parse().unwrap();
            if down {
                set.insert(ip);
            } else {
                set.remove(&ip);
            }
        }
    }
}

impl Prober for FakeProber {
    fn probe(&self, target: IpAddr, timeout: Duration) -> ProbeFuture {
        let down = self.down.lock().unwrap().contains(&target);
        Box::pin(async move {
            if down {
                tokio::time::sleep(timeout).await;
                Outcome::NoReply
            } else {
                Outcome::Reply(Duration::from_micros(300))
            }
        })
    }
}

/// A daemon running in this process on a `SimPlatform`.
pub struct Daemon {
    pub state_dir: PathBuf,
    pub status: watch::Receiver<Status>,
    /// Its health-target probes (no packet is sent: in-process daemons share the
    /// test's network namespace).
    pub prober: Arc<FakeProber>,
    /// Where its own `/metrics` is served (plain HTTP).
    pub metrics: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    pub async fn start(env: &Env, gateway: &str, state_dir: &Path, token: Option<String>) -> Self {
        Self::start_with(env, gateway, state_dir, token, Arc::default()).await
    }

    /// [`Daemon::start`] with the health-target probes of `prober`.
    pub async fn start_with(
        env: &Env,
        gateway: &str,
        state_dir: &Path,
        token: Option<String>,
        prober: Arc<FakeProber>,
    ) -> Self {
        Self::start_at(env, &env.manager.url(), gateway, state_dir, token, prober)
    }

    /// [`Daemon::start_with`] given `managers` (one URL or several separated by
    /// commas, as `--manager` takes them) instead of `env`'s manager alone.
    pub fn start_at(
        env: &Env,
        managers: &str,
        gateway: &str,
        state_dir: &Path,
        token: Option<String>,
        prober: Arc<FakeProber>,
    ) -> Self {
        let key = nanami_gateway_daemon::ensure_key(&state_dir.join("private.key")).unwrap();
        let (status_tx, status) = watch::channel(Status::default());
        // The daemon's own /metrics, on a port the kernel picks (bound here, so
        // the address is known before the daemon runs).
        let metrics_listener = Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let metrics = metrics_listener.local_addr().unwrap();
        let config = DaemonConfig {
            manager: managers.to_owned(),
            ca: Some(env.ca()),
            gateway: GatewayId::new(gateway).unwrap(),
            state_dir: state_dir.to_owned(),
            token,
            report_every: Duration::from_millis(REPORT_MS),
            poll_wait: Duration::from_secs(5),
            reconcile: nanami_reconcile::Config::default(),
            facts: None,
            status_out: Some(Arc::new(status_tx)),
            probe: PROBE,
            prober: Some(prober.clone()),
            uplink: None,
            metrics_listener: Some(metrics_listener.clone()),
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
            state_dir: state_dir.to_owned(),
            status,
            prober,
            metrics,
            stop: Some(stop_tx),
            join: Some(join),
        }
    }

    /// Waits (up to 10 s) for the daemon to end by itself; its result.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        let join = self.join.take().expect("the daemon was already stopped");
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("the daemon did not end within 10 s")
            .unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(10), j)
                .await
                .expect("daemon did not stop within 10 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

/// A public key for a gateway's state dir (its daemon generates the key there).
pub fn gateway_key(state_dir: &Path) -> PublicKey {
    nanami_gateway_daemon::ensure_key(&state_dir.join("private.key")).unwrap()
}

pub fn client_key() -> PublicKey {
    PrivateKey::generate(&mut rand_core::OsRng).public_key()
}

/// The start of every test topology: region `lab`, workspace `acme`, up to its
/// networks.
pub const PREAMBLE: &str = "version: 1
regions:
  - id: lab
    state: active
workspaces:
  - id: acme
    tenant: acme-corp
    regions: [lab]
    networks:
";

/// A topology: one workspace, network `corp` (100.80.0.0/22, route 10.20.0.0/16),
/// gateways gw-a and gw-b (keys given), and `clients` client nodes.
pub fn topology(gw_a: &PublicKey, gw_b: &PublicKey, clients: &[(&str, PublicKey)]) -> String {
    topology_with_targets(gw_a, gw_b, clients, &[])
}

/// [`topology`] with `corp`'s `health_targets` (inside 10.20.0.0/16).
pub fn topology_with_targets(
    gw_a: &PublicKey,
    gw_b: &PublicKey,
    clients: &[(&str, PublicKey)],
    targets: &[&str],
) -> String {
    let targets = if targets.is_empty() {
        String::new()
    } else {
        format!("\n        health_targets: [{}]", targets.join(", "))
    };
    let mut nodes = format!(
        "      - id: gw-a\n        public_key: \"{gw_a}\"\n        status: active\n        memberships: [{{ network: corp, address: 100.80.0.1 }}]\n      - id: gw-b\n        public_key: \"{gw_b}\"\n        status: active\n        memberships: [{{ network: corp, address: 100.80.0.2 }}]\n"
    );
    for (id, key) in clients {
        nodes.push_str(&format!(
            "      - id: {id}\n        public_key: \"{key}\"\n        status: active\n        memberships: [{{ network: corp }}]\n"
        ));
    }
    format!(
        "{PREAMBLE}      - id: corp
        overlay: 100.80.0.0/22
        routes: [10.20.0.0/16]{targets}
    nodes:
{nodes}    gateways:
      - id: gw-a
        node: gw-a
        region: lab
        networks: [corp]
        roles: [ingress, egress]
        endpoint: \"192.0.2.1:51820\"
        listen_port: 51820
      - id: gw-b
        node: gw-b
        region: lab
        networks: [corp]
        roles: [ingress, egress]
        endpoint: \"192.0.2.2:51820\"
        listen_port: 51820
"
    )
}

/// Networks `corp` (10.20.0.0/16, health target 10.20.0.1) and `lab` (10.30.0.0/16,
/// health target 10.30.0.1), both served by gw-a and gw-b (auto, redundancy 2: gw-a
/// primary, gw-b standby), and client laptop-1 in both.
pub fn two_networks(gw_a: &PublicKey, gw_b: &PublicKey, laptop: PublicKey) -> String {
    let gateway = |id: &str, n: u8| {
        format!(
            "      - {{ id: {id}, node: {id}, region: lab, networks: [corp, lab], roles: [ingress, egress], endpoint: \"192.0.2.{n}:51820\", listen_port: 51820 }}\n"
        )
    };
    format!(
        "{PREAMBLE}      - {{ id: corp, overlay: 100.80.0.0/22, routes: [10.20.0.0/16], health_targets: [10.20.0.1], gateways: {{ policy: auto, redundancy: 2 }} }}
      - {{ id: lab, overlay: 100.81.0.0/22, routes: [10.30.0.0/16], health_targets: [10.30.0.1], gateways: {{ policy: auto, redundancy: 2 }} }}
    nodes:
      - {{ id: gw-a, public_key: \"{gw_a}\", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}, {{ network: lab, address: 100.81.0.1 }}] }}
      - {{ id: gw-b, public_key: \"{gw_b}\", status: active, memberships: [{{ network: corp, address: 100.80.0.2 }}, {{ network: lab, address: 100.81.0.2 }}] }}
      - {{ id: laptop-1, public_key: \"{laptop}\", status: active, memberships: [{{ network: corp }}, {{ network: lab }}] }}
    gateways:
{}{}",
        gateway("gw-a", 1),
        gateway("gw-b", 2)
    )
}

/// Two enrolled, converged daemons gw-a and gw-b with one client.
pub struct Fleet {
    pub env: Env,
    pub a: Daemon,
    pub b: Daemon,
    pub client: PublicKey,
}

pub async fn fleet(tag: &str) -> Fleet {
    fleet_with(tag, |ka, kb, client| {
        topology(ka, kb, &[("laptop-1", client)])
    })
    .await
}

/// [`fleet`] on the topology `document(gw-a's key, gw-b's key, laptop-1's key)`.
pub async fn fleet_with(
    tag: &str,
    document: impl FnOnce(&PublicKey, &PublicKey, PublicKey) -> String,
) -> Fleet {
    fleet_with_flags(tag, &[], document).await
}

/// [`fleet_with`], the manager started with `extra` flags on `serve`.
pub async fn fleet_with_flags(
    tag: &str,
    extra: &[&str],
    document: impl FnOnce(&PublicKey, &PublicKey, PublicKey) -> String,
) -> Fleet {
    // Keys first (generated where the daemons will run), then the topology naming them.
    let staging = TempDir::new(&format!("{tag}-state"));
    let a_dir = staging.0.join("gw-a");
    let b_dir = staging.0.join("gw-b");
    let (ka, kb) = (gateway_key(&a_dir), gateway_key(&b_dir));
    let client = client_key();
    let env = Env::start_with_flags(tag, &document(&ka, &kb, client), extra).await;
    // Move the state dirs under the env's temp dir so one guard removes all.
    let a_state = env.tmp.0.join("gw-a");
    let b_state = env.tmp.0.join("gw-b");
    std::fs::rename(&a_dir, &a_state).unwrap();
    std::fs::rename(&b_dir, &b_state).unwrap();
    drop(staging);
    let ta = env.token("gw-a").await;
    let tb = env.token("gw-b").await;
    let a = Daemon::start(&env, "gw-a", &a_state, Some(ta)).await;
    let b = Daemon::start(&env, "gw-b", &b_state, Some(tb)).await;
    env.converged(&["gw-a", "gw-b"]).await;
    Fleet { env, a, b, client }
}

/// Counts of every table's rows, and all their contents as text.
pub fn db_dump(db: &Path) -> (Vec<(String, i64)>, String) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut counts = Vec::new();
    let mut text = String::new();
    for t in tables {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
            .unwrap();
        counts.push((t.clone(), n));
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..cols {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                match v {
                    rusqlite::types::Value::Text(s) => text.push_str(&s),
                    rusqlite::types::Value::Blob(b) => {
                        text.push_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>());
                        text.push_str(&String::from_utf8_lossy(&b));
                    }
                    other @ (rusqlite::types::Value::Null
                    | rusqlite::types::Value::Integer(_)
                    | rusqlite::types::Value::Real(_)) => text.push_str(&format!("{other:?}")),
                }
                text.push('\n');
            }
        }
    }
    let _ = std::io::stdout().flush();
    (counts, text)
}

/// Raw TLS connections to the manager, trusting its CA.
#[derive(Clone)]
pub struct Raw {
    connector: TlsConnector,
    port: u16,
}

impl Raw {
    /// Connections to `env`'s manager.
    pub fn new(env: &Env) -> Self {
        let config = nanami_api::tls::client_config(&env.ca()).unwrap();
        Self {
            connector: TlsConnector::from(Arc::new(config)),
            port: env.manager.port,
        }
    }

    /// A TCP connection with its TLS handshake done, nothing sent.
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        self.connector.connect(name, tcp).await
    }
}

/// The topology revision stored in the database.
pub fn stored_revision(db: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("SELECT revision FROM topology_meta WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap()
}

/// [`Daemon::start`] given `managers` (see [`Daemon::start_at`]).
pub async fn start_daemon_at(
    env: &Env,
    managers: &str,
    gateway: &str,
    state_dir: &Path,
    token: Option<String>,
) -> Daemon {
    Daemon::start_at(env, managers, gateway, state_dir, token, Arc::default())
}

/// The in-process daemons' log lines so far, of gateway `gateway`'s daemon.
pub fn daemon_log(gateway: &str) -> Vec<String> {
    let span = format!("daemon{{gateway={gateway}}}");
    let bytes = log_buffer().lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(&span))
        .map(str::to_owned)
        .collect()
}

/// The generations gateway `gateway`'s daemon accepted (saved and put in force),
/// in the order it did.
pub fn accepted_generations(gateway: &str) -> Vec<u64> {
    daemon_log(gateway)
        .iter()
        .filter(|l| l.contains("new desired state accepted and saved"))
        .map(|l| {
            // The agent logs the accepted state's version: its generation.
            let (_, rest) = l
                .rsplit_once("version=")
                .unwrap_or_else(|| panic!("no version= in {l:?}"));
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("no generation in {l:?}"))
        })
        .collect()
}

/// Copies directory `from` into `to` (files and subdirectories; directories 0700).
pub fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
