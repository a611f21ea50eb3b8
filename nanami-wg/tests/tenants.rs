//! Two workspaces' gateways on one machine, with identical addresses, isolated by
//! network namespaces (issue #16), in real namespaces with real traffic:
//!
//! ```text
//!                      test "host" namespace (UDP 51820 and 51821 live here)
//! initech client ──203.0.113.0/24──┤   nm-<in>: nm-<in> TUN, 100.96.0.1, uplink 10.50.0.1/16 ── LAN: 10.50.0.10 "initech"
//! globex client ──198.51.100.0/24──┤   nm-<gx>: nm-<gx> TUN, 100.96.0.1, uplink 10.50.0.1/16 ── LAN: 10.50.0.10 "globex"
//! ```
//!
//! Both gateways' states are compiled from topology documents with the same overlay
//! (100.96.0.0/24), route (10.50.0.0/16) and client address (100.96.0.10); the
//! clients are stock `wireguard-go` configured with `wg setconf` from their compiled
//! client configuration. The machine's own root namespace is never touched: the
//! gateways' "host" is a namespace the test creates, and the platform creates the
//! `nm-*` ones.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/gateway.rs"]
mod gateway;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{nanami_device, owned_leftovers, require, run, veth, Netns, WgGo};
use gateway::Gateway;
use nanami_model::{compile, compile_node, GatewayId, Health, NodeId, PrivateKey, Topology};
use nanami_reconcile::Desired;
use nanami_wg::keyfile;
use nanami_wg::linux::{DeviceMode, Hosting, LinuxConfig};

const OVERLAY: &str = "100.96.0.0/24";
const ROUTE: &str = "10.50.0.0/16";
const CLIENT_ADDR: &str = "100.96.0.10";
const GATEWAY_LAN: &str = "10.50.0.1";
const LAN_HOST: &str = "10.50.0.10";
/// A subnet on the LAN that no network declares.
const UNDECLARED: &str = "10.60.0.0/24";
const UNDECLARED_HOST: &str = "10.60.0.10";
const PORT: u16 = 8080;

/// One workspace's part of the lab.
struct Spec {
    workspace: &'static str,
    /// Gateway id prefix; the pid makes the id (and `nm-<id>`) unique on the machine.
    tag: &'static str,
    nat: bool,
    listen_port: u16,
    /// The host's underlay address toward this workspace's client, and the client's.
    host_under: &'static str,
    client_under: &'static str,
}

const INITECH: Spec = Spec {
    workspace: "initech",
    tag: "in",
    nat: true,
    listen_port: 51820,
    host_under: "203.0.113.1",
    client_under: "203.0.113.2",
};

const GLOBEX: Spec = Spec {
    workspace: "globex",
    tag: "gx",
    nat: false,
    listen_port: 51821,
    host_under: "198.51.100.1",
    client_under: "198.51.100.2",
};

/// What goes into a topology document for one workspace.
struct WorkspaceDoc {
    workspace: &'static str,
    gateway: String,
    gateway_key: String,
    client_key: String,
    nat: bool,
    endpoint: String,
    listen_port: u16,
}

fn workspace_yaml(w: &WorkspaceDoc) -> String {
    format!(
        r#"  - id: {ws}
    tenant: {ws}-corp
    regions: [lab]
    networks:
      - id: corp
        overlay: {OVERLAY}
        routes: [{ROUTE}]
        nat: {nat}
    nodes:
      - id: {gw}
        public_key: "{gw_key}"
        status: active
        memberships: [{{ network: corp, address: 100.96.0.1 }}]
      - id: {ws}-laptop
        public_key: "{client_key}"
        status: active
        memberships: [{{ network: corp, address: {CLIENT_ADDR} }}]
    gateways:
      - id: {gw}
        node: {gw}
        region: lab
        networks: [corp]
        roles: [ingress, egress]
        endpoint: "{endpoint}"
        listen_port: {port}
"#,
        ws = w.workspace,
        nat = w.nat,
        gw = w.gateway,
        gw_key = w.gateway_key,
        client_key = w.client_key,
        endpoint = w.endpoint,
        port = w.listen_port,
    )
}

/// One topology document holding `workspaces`.
fn document(workspaces: &[&WorkspaceDoc]) -> Topology {
    let mut yaml = "version: 1\nregions: [{ id: lab, state: active }]\nworkspaces:\n".to_owned();
    for w in workspaces {
        yaml.push_str(&workspace_yaml(w));
    }
    Topology::from_yaml(&yaml).unwrap()
}

/// The document every gateway and client is compiled from: both workspaces in ONE
/// document, with the same overlay, route and client addresses (the model keeps
/// them apart structurally, not by address).
fn topology_for(_this: &WorkspaceDoc, all: &[WorkspaceDoc]) -> Topology {
    document(&all.iter().collect::<Vec<_>>())
}

/// A workspace's client, LAN and gateway configuration.
struct Tenant {
    spec: &'static Spec,
    gateway: String,
    client: Netns,
    _lan: Netns,
    /// The uplink's name (a veth whose other end is in `lan`).
    uplink: String,
    wg: WgGo,
    client_key: PrivateKey,
    gateway_key: PrivateKey,
    state_dir: PathBuf,
    responder: Option<Responder>,
}

impl Tenant {
    fn new(host: &Netns, spec: &'static Spec) -> Self {
        let gateway = format!("{}-{:x}", spec.tag, std::process::id());
        let client = Netns::new(&format!("{}c", spec.tag));
        let lan = Netns::new(&format!("{}l", spec.tag));
        veth(
            &client,
            &format!("{}/24", spec.client_under),
            host,
            &format!("{}/24", spec.host_under),
        );
        // The client reaches every gateway endpoint on the host, its own or not.
        client.ip(&["route", "add", "default", "via", spec.host_under]);
        let (uplink, lan_if) = veth(
            host,
            &format!("{GATEWAY_LAN}/16"),
            &lan,
            &format!("{LAN_HOST}/16"),
        );
        host.ip(&["addr", "add", "10.60.0.1/24", "dev", &uplink]);
        lan.ip(&[
            "addr",
            "add",
            &format!("{UNDECLARED_HOST}/24"),
            "dev",
            &lan_if,
        ]);
        // Without NAT the LAN host needs its way back to the overlay.
        lan.ip(&["route", "add", OVERLAY, "via", GATEWAY_LAN]);
        let responder = Responder::start(&lan, spec.workspace);

        let state_dir = std::env::temp_dir().join(format!("nanami-tenants-{}", gateway));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).unwrap();
        let gateway_key =
            keyfile::load_or_generate(&state_dir.join("private.key"), &mut rand::rngs::OsRng)
                .unwrap();
        let client_key = PrivateKey::generate(&mut rand::rngs::OsRng);
        let wg = WgGo::start(&client, &common::ifname("c"));
        Self {
            spec,
            gateway,
            client,
            _lan: lan,
            uplink,
            wg,
            client_key,
            gateway_key,
            state_dir,
            responder: Some(responder),
        }
    }

    fn doc(&self) -> WorkspaceDoc {
        WorkspaceDoc {
            workspace: self.spec.workspace,
            gateway: self.gateway.clone(),
            gateway_key: self.gateway_key.public_key().to_string(),
            client_key: self.client_key.public_key().to_string(),
            nat: self.spec.nat,
            endpoint: format!("{}:{}", self.spec.host_under, self.spec.listen_port),
            listen_port: self.spec.listen_port,
        }
    }

    fn namespace(&self) -> String {
        format!("nm-{}", self.gateway)
    }

    fn config(&self, device: DeviceMode) -> LinuxConfig {
        LinuxConfig {
            uapi_dir: Some(PathBuf::from("/var/run/wireguard")),
            device,
            prefer_kernel: false,
            namespace: Some(Hosting::for_gateway(
                &GatewayId::new(self.gateway.clone()).unwrap(),
                Some(self.uplink.clone()),
            )),
            ..LinuxConfig::in_dir(&self.state_dir)
        }
    }

    fn desired(&self, topology: &Topology, generation: u64) -> Desired {
        let state = compile(
            topology,
            &Health::all_up(),
            &GatewayId::new(self.gateway.clone()).unwrap(),
        )
        .unwrap();
        Desired { generation, state }
    }

    /// Configures the client exactly from its compiled configuration
    /// (`wg setconf`), its address and the routes to the overlay and the LAN.
    fn configure_client(&self, topology: &Topology) {
        self.setconf(topology);
        let ifname = self.wg.ifname.as_str();
        let config = self.client_config(topology);
        for addr in &config.addresses {
            self.client
                .ip(&["addr", "add", &addr.to_string(), "dev", ifname]);
        }
        self.client.ip(&["link", "set", ifname, "up"]);
        self.client.ip(&["route", "add", OVERLAY, "dev", ifname]);
        self.client.ip(&["route", "add", ROUTE, "dev", ifname]);
    }

    fn client_config(&self, topology: &Topology) -> nanami_model::NodeConfig {
        let node = NodeId::new(format!("{}-laptop", self.spec.workspace)).unwrap();
        compile_node(topology, &Health::all_up(), &node).unwrap()
    }

    /// (Re)applies the compiled client configuration: peers replaced as written.
    fn setconf(&self, topology: &Topology) {
        let text = self.client_config(topology).to_wg(Some(&self.client_key));
        let path = self.state_dir.join("client.conf");
        std::fs::write(&path, text).unwrap();
        self.client
            .exec("wg", &["setconf", &self.wg.ifname, path.to_str().unwrap()]);
    }

    /// `program args…` inside the gateway's namespace.
    fn in_gateway(&self, program: &str, args: &[&str]) -> String {
        let ns = self.namespace();
        let out = run(Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What Nanami owns in the gateway's namespace, as text to compare.
    fn owned_objects(&self) -> String {
        [
            self.in_gateway("nft", &["-a", "list", "table", "inet", "nanami"]),
            self.in_gateway("ip", &["route", "show", "table", "all", "proto", "73"]),
            self.in_gateway("ip", &["rule", "show"]),
            self.in_gateway("ip", &["-o", "addr", "show"]),
        ]
        .join("\n")
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        self.responder.take();
        // A failed test may leave the gateway's namespace behind: it is named
        // machine-wide, so remove it (its interfaces go with it).
        let _ = nanami_wg::netns::Netns::delete(&self.namespace());
        // A detached device still running stops when its socket goes.
        let _ = std::fs::remove_file(format!("/var/run/wireguard/nm-{}.sock", self.gateway));
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A TCP service on the LAN host that answers each connection with
/// `<workspace> <address it saw the client as>`.
struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(lan: &Netns, workspace: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let netns = std::fs::File::open(format!("/var/run/netns/{}", lan.name())).unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write as _;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = writeln!(stream, "{workspace} {}", peer.ip());
                    }
                    // Polling lets the thread notice `stop`; this orders nothing.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` (from `CLIENT_ADDR:src_port` when given) to
/// `dst:PORT` and returns the answer; `None` when nothing answers within `timeout`.
fn fetch(ns: &Netns, dst: &str, src_port: Option<u16>, timeout: Duration) -> Option<String> {
    let target: SocketAddr = format!("{dst}:{PORT}").parse().unwrap();
    ns.enter(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        if let Some(port) = src_port {
            sock.set_reuse_address(true).ok()?;
            let src: SocketAddr = format!("{CLIENT_ADDR}:{port}").parse().unwrap();
            sock.bind(&src.into()).ok()?;
        }
        sock.connect_timeout(&target.into(), timeout).ok()?;
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(timeout)).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer.trim().to_owned())
    })
}

/// Fetches until an answer comes (the first handshake takes a moment).
fn fetch_until(ns: &Netns, dst: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(answer) = fetch(ns, dst, None, Duration::from_secs(2)) {
            return answer;
        }
        assert!(
            start.elapsed() < limit,
            "no answer from {dst} within {limit:?}"
        );
    }
}

/// Waits for `check` to hold; returns how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

/// After teardown: no namespace, no UAPI socket, and the uplink back in the host
/// with its addresses, up.
fn assert_torn_down(host: &Netns, t: &Tenant) {
    assert!(
        !nanami_wg::netns::Netns::path(&t.namespace()).exists(),
        "{} must be deleted",
        t.namespace()
    );
    let sock = format!("/var/run/wireguard/nm-{}.sock", t.gateway);
    within(Duration::from_secs(5), "the UAPI socket removed", || {
        !std::path::Path::new(&sock).exists()
    });
    let addrs = host.exec("ip", &["-o", "addr", "show", "dev", &t.uplink]);
    assert!(addrs.contains(&format!("{GATEWAY_LAN}/16")), "{addrs}");
    assert!(addrs.contains("10.60.0.1/24"), "{addrs}");
    let link = host.exec("ip", &["-o", "link", "show", "dev", &t.uplink]);
    assert!(link.contains(",UP"), "the uplink is up again: {link}");
}

#[test]
fn two_workspaces_with_identical_addresses_are_isolated() {
    require(&["wireguard-go", "wg", "nft", "ping", "ss"]);
    let host = Netns::new("host");
    host.exec("nft", &["add", "table", "inet", "foreign"]);
    let tenants = [Tenant::new(&host, &INITECH), Tenant::new(&host, &GLOBEX)];
    let docs: Vec<WorkspaceDoc> = tenants.iter().map(Tenant::doc).collect();
    let topologies: Vec<Topology> = docs.iter().map(|d| topology_for(d, &docs)).collect();
    let [initech, globex] = &tenants;

    let mut gateways: Vec<Gateway> = tenants
        .iter()
        .zip(&topologies)
        .map(|(t, topo)| {
            Gateway::start(
                &host,
                t.config(DeviceMode::InProcess),
                // An hour: any repair below comes from an event.
                Duration::from_secs(3600),
                t.desired(topo, 1),
            )
        })
        .collect();
    for g in &mut gateways {
        let took = g.wait_ready(1);
        eprintln!("converged in {took:?}");
    }

    // Everything of each gateway is in its namespace; only UDP is in the host's.
    for t in &tenants {
        let ifname = format!("nm-{}", t.gateway);
        assert!(t
            .in_gateway("ip", &["-o", "addr", "show", "dev", &ifname])
            .contains("100.96.0.1/32"));
        assert!(t
            .in_gateway("ip", &["-o", "addr", "show", "dev", &t.uplink])
            .contains(&format!("{GATEWAY_LAN}/16")));
        assert!(!host.try_exec("ip", &["link", "show", &ifname]));
        assert!(!host.try_exec("ip", &["link", "show", &t.uplink]));
        assert!(
            t.in_gateway("ip", &["-o", "link", "show", "lo"])
                .contains("UP"),
            "the namespace's loopback is up"
        );
        let port = format!("sport = :{}", t.spec.listen_port);
        assert!(
            !host.exec("ss", &["-Huan", &port]).is_empty(),
            "UDP in host"
        );
        assert!(
            t.in_gateway("ss", &["-Huan", &port]).is_empty(),
            "no UDP inside"
        );
    }
    assert_eq!(owned_leftovers(&host), Vec::<String>::new());

    for (t, topo) in tenants.iter().zip(&topologies) {
        t.configure_client(topo);
    }
    // Each client reaches its own LAN host.
    assert_eq!(
        fetch_until(&initech.client, LAN_HOST, Duration::from_secs(15)),
        format!("initech {GATEWAY_LAN}"),
    );
    assert_eq!(
        fetch_until(&globex.client, LAN_HOST, Duration::from_secs(15)),
        format!("globex {CLIENT_ADDR}"),
    );

    // The same flow (source 100.96.0.10:40000, destination 10.50.0.10:8080) from
    // both clients at once: each gets its own workspace's answer; NAT on for
    // initech (the LAN host sees the gateway), off for globex (it sees the client).
    let barrier = Barrier::new(2);
    let answers: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = tenants
            .iter()
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    fetch(&t.client, LAN_HOST, Some(40000), Duration::from_secs(5))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        answers,
        vec![
            Some(format!("initech {GATEWAY_LAN}")),
            Some(format!("globex {CLIENT_ADDR}")),
        ]
    );

    // The other workspace's gateway key, at either endpoint: no handshake, nothing.
    let ifname = initech.wg.ifname.as_str();
    let other_key = globex.gateway_key.public_key().to_string();
    let own_key = initech.gateway_key.public_key().to_string();
    for endpoint in [docs[0].endpoint.as_str(), docs[1].endpoint.as_str()] {
        initech
            .client
            .exec("wg", &["set", ifname, "peer", &own_key, "remove"]);
        initech.client.exec(
            "wg",
            &[
                "set",
                ifname,
                "peer",
                &other_key,
                "endpoint",
                endpoint,
                "allowed-ips",
                &format!("{OVERLAY},{ROUTE}"),
            ],
        );
        assert!(
            !initech.client.ping_all(LAN_HOST, 3, &[]),
            "the other workspace's gateway key at {endpoint} must get nothing"
        );
        let handshakes = initech
            .client
            .exec("wg", &["show", ifname, "latest-handshakes"]);
        assert!(
            handshakes.contains(&format!("{other_key}\t0")),
            "no handshake with the other gateway: {handshakes}"
        );
        initech.setconf(&topologies[0]);
    }
    assert!(initech.client.ping_until(LAN_HOST, Duration::from_secs(15)));

    // An undeclared prefix routed into the tunnel (and allowed by the client) is
    // dropped by the gateway, though its LAN has it.
    initech.client.exec(
        "wg",
        &[
            "set",
            ifname,
            "peer",
            &own_key,
            "allowed-ips",
            &format!("{OVERLAY},{ROUTE},{UNDECLARED}"),
        ],
    );
    initech
        .client
        .ip(&["route", "add", UNDECLARED, "dev", ifname]);
    assert!(
        initech
            .in_gateway("ping", &["-c", "1", "-W", "2", UNDECLARED_HOST])
            .contains("1 received"),
        "the gateway itself reaches the undeclared subnet"
    );
    assert!(!initech.client.ping_all(UNDECLARED_HOST, 3, &[]));
    assert_eq!(
        fetch(
            &initech.client,
            UNDECLARED_HOST,
            None,
            Duration::from_secs(2)
        ),
        None
    );
    assert!(initech.client.ping_until(LAN_HOST, Duration::from_secs(5)));

    // Drift in initech's namespace is repaired; globex's objects are untouched, and
    // a foreign table inside initech's namespace survives the repair.
    initech.in_gateway("nft", &["add", "table", "inet", "foreign"]);
    let globex_before = globex.owned_objects();
    let limit = Duration::from_secs(3);
    initech.in_gateway("nft", &["flush", "table", "inet", "nanami"]);
    let t = within(limit, "flushed inet nanami repaired", || {
        initech
            .in_gateway("nft", &["list", "table", "inet", "nanami"])
            .contains("nanami drop")
    });
    eprintln!("nft flush repaired in {t:?}");
    initech.in_gateway("ip", &["route", "del", OVERLAY, "table", "7373"]);
    let t = within(limit, "deleted route repaired", || {
        initech
            .in_gateway("ip", &["route", "show", "table", "7373"])
            .contains(OVERLAY)
    });
    eprintln!("route repaired in {t:?}");
    assert_eq!(globex.owned_objects(), globex_before, "globex untouched");
    assert!(initech
        .in_gateway("nft", &["list", "tables"])
        .contains("inet foreign"));
    assert_eq!(
        fetch_until(&initech.client, LAN_HOST, Duration::from_secs(10)),
        format!("initech {GATEWAY_LAN}"),
    );
    assert_eq!(
        fetch_until(&globex.client, LAN_HOST, Duration::from_secs(10)),
        format!("globex {CLIENT_ADDR}"),
    );

    // Teardown of both: no namespace, the uplinks back in the host with their
    // addresses, nothing of Nanami's anywhere; the host's foreign table stays.
    for g in gateways {
        g.stop(true);
    }
    for t in &tenants {
        assert_torn_down(&host, t);
    }
    assert_eq!(owned_leftovers(&host), Vec::<String>::new());
    assert!(host.try_exec("nft", &["list", "table", "inet", "foreign"]));
    // The LAN is reachable from the host again over the returned uplink.
    assert!(host.ping_until(LAN_HOST, Duration::from_secs(5)));
    drop(tenants);
}

#[test]
fn a_hosted_detached_device_outlives_its_loop_and_is_adopted() {
    require(&["wireguard-go", "wg", "nft", "ping"]);
    static DETACHED: Spec = Spec {
        workspace: "initech",
        tag: "dt",
        nat: true,
        listen_port: 51822,
        host_under: "192.0.2.1",
        client_under: "192.0.2.2",
    };
    let host = Netns::new("dhost");
    let t = Tenant::new(&host, &DETACHED);
    let docs = [t.doc()];
    let topology = topology_for(&docs[0], &docs);
    let mode = DeviceMode::Detached {
        program: nanami_device(),
    };
    let mut gw = Gateway::start(
        &host,
        t.config(mode.clone()),
        Duration::from_secs(30),
        t.desired(&topology, 1),
    );
    gw.wait_ready(1);
    t.configure_client(&topology);
    assert_eq!(
        fetch_until(&t.client, LAN_HOST, Duration::from_secs(15)),
        format!("initech {GATEWAY_LAN}"),
    );
    // The device process is in the host namespace (UDP), its TUN inside.
    let port = format!("sport = :{}", DETACHED.listen_port);
    assert!(!host.exec("ss", &["-Huan", &port]).is_empty());

    // The loop stops without teardown: the tunnel lives on.
    gw.stop(false);
    assert!(
        t.client.ping_all(LAN_HOST, 3, &[]),
        "forwarding without a loop"
    );

    // A new loop adopts the namespace, the uplink inside it and the device (the
    // same process keeps serving it).
    let serving = common::device_pids(&format!("nm-{}", t.gateway));
    assert_eq!(
        serving.len(),
        1,
        "one device serves the gateway: {serving:?}"
    );
    let mut gw = Gateway::start(
        &host,
        t.config(mode),
        Duration::from_secs(30),
        t.desired(&topology, 1),
    );
    gw.wait_ready(1);
    let status = gw.status.borrow().clone();
    assert_eq!(
        common::device_pids(&format!("nm-{}", t.gateway)),
        serving,
        "adopted, not recreated: {status:?}"
    );
    assert!(status.op_errors.is_empty(), "{status:?}");
    assert!(t.client.ping_all(LAN_HOST, 3, &[]));
    gw.stop(true);
    assert_torn_down(&host, &t);
    assert_eq!(owned_leftovers(&host), Vec::<String>::new());
}

#[test]
fn namespaces_are_created_adopted_and_deleted_like_ip_netns() {
    require(&[]);
    use nanami_wg::netns::Netns as NanamiNetns;
    let name = format!("nmt-{}-netns", std::process::id());
    // A placeholder a crash left between creating and mounting is not a namespace.
    let path = NanamiNetns::path(&name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"").unwrap();
    assert!(NanamiNetns::open(&name).unwrap().is_none());
    let ns = NanamiNetns::open_or_create(&name).unwrap();
    // `ip` sees it, and a second open adopts the same namespace.
    run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
    let again = NanamiNetns::open_or_create(&name).unwrap();
    assert!(ns.same_as(&again).unwrap());
    assert!(!ns.same_as(&NanamiNetns::current().unwrap()).unwrap());
    let inside = ns.run(|| NanamiNetns::current().unwrap()).unwrap();
    assert!(inside.same_as(&ns).unwrap(), "run() executes inside");
    assert!(NanamiNetns::delete(&name).unwrap());
    assert!(!path.exists());
    assert!(
        !NanamiNetns::delete(&name).unwrap(),
        "deleting twice is fine"
    );
}
