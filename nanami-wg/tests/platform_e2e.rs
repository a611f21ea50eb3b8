//! LinuxPlatform end to end, in network namespaces, with real packets:
//!
//! ```text
//! client (wireguard-go) ──203.0.113.0/24── gateway (Nanami) ──10.20.0.0/24── resource
//!                                             ├──10.99.0.0/24── (undeclared subnet)
//!                                             └──198.51.100.0/24── "internet"
//! ```
//!
//! The gateway runs `Reconciler<LinuxPlatform>` in a thread that entered its
//! namespace; the client is configured by `wg setconf` with the text
//! `nanami client-config` renders (`NodeConfig::to_wg`).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/gateway.rs"]
mod gateway;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use common::{device_pids, nanami_device, owned_leftovers, require, veth, Netns, WgGo};
use gateway::Gateway;
use nanami_model::{compile, compile_node, GatewayId, Health, NodeId, PrivateKey, Topology};
use nanami_reconcile::Desired;
use nanami_wg::keyfile;
use nanami_wg::linux::{DeviceMode, LinuxConfig};

/// The gateway's control loop in `ns` (the one test harness runner), with its
/// state in `state_dir` and its devices driven in `device` mode.
fn start_gateway(
    ns: &Netns,
    state_dir: PathBuf,
    resync: Duration,
    first: Desired,
    device: DeviceMode,
) -> Gateway {
    let config = LinuxConfig {
        uapi_dir: Some(PathBuf::from("/var/run/wireguard")),
        device,
        ..LinuxConfig::in_dir(&state_dir)
    };
    Gateway::start(ns, config, resync, first)
}

struct Lab {
    client: Netns,
    gateway: Netns,
    resource: Netns,
    internet: Netns,
    wg: WgGo,
    client_key: PrivateKey,
    state_dir: PathBuf,
    topology: Topology,
    /// The gateway's id; distinct per test because UAPI sockets share one directory
    /// across namespaces.
    gw: &'static str,
}

fn topology_yaml(gw: &str, gw_key: &str, client_key: &str, nat: bool) -> String {
    format!(
        r#"version: 1
regions: [{{ id: lab, state: active }}]
workspaces:
  - id: acme
    tenant: acme-corp
    regions: [lab]
    networks:
      - id: corp
        overlay: 100.80.0.0/22
        routes: [10.20.0.0/24]
        exit: true
        nat: {nat}
    nodes:
      - id: {gw}
        public_key: "{gw_key}"
        status: active
        memberships: [{{ network: corp, address: 100.80.0.1 }}]
      - id: laptop
        public_key: "{client_key}"
        status: active
        exit: true
        memberships: [{{ network: corp, address: 100.80.0.10 }}]
    gateways:
      - id: {gw}
        node: {gw}
        region: lab
        networks: [corp]
        roles: [ingress, egress, exit]
        endpoint: "203.0.113.1:51820"
        listen_port: 51820
"#
    )
}

impl Lab {
    fn new(gw: &'static str, nat: bool) -> Self {
        require(&["wireguard-go", "wg", "nft", "ping"]);
        let client = Netns::new("cli");
        let gateway = Netns::new("gw");
        let resource = Netns::new("res");
        let internet = Netns::new("inet");
        veth(&client, "203.0.113.2/24", &gateway, "203.0.113.1/24");
        veth(&gateway, "10.20.0.1/24", &resource, "10.20.0.2/24");
        veth(&gateway, "10.99.0.1/24", &resource, "10.99.0.2/24");
        veth(&gateway, "198.51.100.254/24", &internet, "198.51.100.1/24");
        // Without NAT the resource needs its way back to the overlay.
        resource.ip(&["route", "add", "100.80.0.0/22", "via", "10.20.0.1"]);

        let state_dir = std::env::temp_dir().join(format!("nanami-e2e-{}", gateway.name()));
        std::fs::create_dir_all(&state_dir).unwrap();
        let gw_key =
            keyfile::load_or_generate(&state_dir.join("private.key"), &mut rand::rngs::OsRng)
                .unwrap();
        let client_key = PrivateKey::generate(&mut rand::rngs::OsRng);
        let yaml = topology_yaml(
            gw,
            &gw_key.public_key().to_string(),
            &client_key.public_key().to_string(),
            nat,
        );
        let topology = Topology::from_yaml(&yaml).unwrap();

        let wg = WgGo::start(&client, &common::ifname("c"));
        Self {
            client,
            gateway,
            resource,
            internet,
            wg,
            client_key,
            state_dir,
            topology,
            gw,
        }
    }

    fn interface(&self) -> String {
        format!("nm-{}", self.gw)
    }

    fn desired(&self, generation: u64) -> Desired {
        let state = compile(
            &self.topology,
            &Health::all_up(),
            &GatewayId::new(self.gw).unwrap(),
        )
        .unwrap();
        Desired { generation, state }
    }

    /// Configures the client exactly from its compiled configuration.
    fn configure_client(&self) {
        let config = compile_node(
            &self.topology,
            &Health::all_up(),
            &NodeId::new("laptop").unwrap(),
        )
        .unwrap();
        let text = config.to_wg(Some(&self.client_key));
        let path = self.state_dir.join("client.conf");
        std::fs::write(&path, text).unwrap();
        let ifname = self.wg.ifname.as_str();
        self.client
            .exec("wg", &["setconf", ifname, path.to_str().unwrap()]);
        for addr in &config.addresses {
            self.client
                .ip(&["addr", "add", &addr.to_string(), "dev", ifname]);
        }
        self.client.ip(&["link", "set", ifname, "up"]);
        self.client
            .ip(&["route", "add", "100.80.0.0/22", "dev", ifname]);
        self.client
            .ip(&["route", "add", "10.20.0.0/24", "dev", ifname]);
        // The exit peer carries 0.0.0.0/0; route just the "internet" prefix through
        // it so the underlay stays reachable.
        self.client
            .ip(&["route", "add", "198.51.100.0/24", "dev", ifname]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Accepts one TCP connection inside `ns`, reads `len` bytes, echoes their count,
/// and reports the peer address it saw.
fn tcp_server(ns: &Netns, bind: &str, len: usize) -> std_mpsc::Receiver<(SocketAddr, usize)> {
    let (tx, rx) = std_mpsc::channel();
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let netns = std::fs::File::open(format!("/var/run/netns/{}", ns.name())).unwrap();
    let bind = bind.to_owned();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let listener = TcpListener::bind(&bind).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, peer) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < len {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        let _ = stream.write_all(&(total as u64).to_be_bytes());
        let _ = tx.send((peer, total));
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    rx
}

/// Sends `len` bytes from inside `ns` to `addr`; returns what the server saw.
fn tcp_transfer(from: &Netns, to: &Netns, bind: &str, len: usize) -> SocketAddr {
    let seen = tcp_server(to, bind, len);
    let target: SocketAddr = bind.parse().unwrap();
    let sent = from.enter(move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        let mut echo = [0u8; 8];
        s.read_exact(&mut echo).unwrap();
        u64::from_be_bytes(echo) as usize
    });
    assert_eq!(sent, len, "the server must receive every byte");
    let (peer, got) = seen.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(got, len);
    peer
}

#[test]
fn gateway_forwards_masquerades_filters_and_tears_down() {
    let lab = Lab::new("gw-e2e", true);
    let g = &lab.gateway;
    let gw_if = lab.interface();
    // Foreign objects that every pass and the teardown must leave alone.
    // (veth: this kernel has no dummy module)
    g.ip(&[
        "link", "add", "fgn0", "type", "veth", "peer", "name", "fgn1",
    ]);
    g.ip(&["link", "set", "fgn0", "up"]);
    g.ip(&[
        "route",
        "add",
        "10.55.0.0/24",
        "dev",
        "fgn0",
        "table",
        "7373",
        "proto",
        "static",
    ]);
    g.ip(&[
        "rule",
        "add",
        "to",
        "10.66.0.0/24",
        "lookup",
        "100",
        "priority",
        "100",
    ]);
    g.exec("nft", &["add", "table", "inet", "foreign"]);
    g.exec("nft", &["add", "chain", "inet", "foreign", "keep"]);
    let forwarding_before = g.exec("sysctl", &["-n", "net.ipv4.ip_forward"]);

    let mut gw = start_gateway(
        g,
        lab.state_dir.clone(),
        Duration::from_secs(30),
        lab.desired(1),
        DeviceMode::InProcess,
    );
    let took = gw.wait_ready(1);
    eprintln!("converged in {took:?}");
    lab.configure_client();

    // Ping and TCP to the resource through the gateway; NAT on: the resource sees
    // the gateway's LAN address.
    assert!(
        lab.client.ping_until("100.80.0.1", Duration::from_secs(15)),
        "gateway overlay"
    );
    assert!(
        lab.client.ping_until("10.20.0.2", Duration::from_secs(10)),
        "resource"
    );
    let peer = tcp_transfer(&lab.client, &lab.resource, "10.20.0.2:7001", 2 << 20);
    assert_eq!(
        peer.ip().to_string(),
        "10.20.0.1",
        "masqueraded to the gateway's LAN address"
    );

    // Exit role: the "internet" is reached, masqueraded.
    let peer = tcp_transfer(&lab.client, &lab.internet, "198.51.100.1:7002", 64 << 10);
    assert_eq!(peer.ip().to_string(), "198.51.100.254");

    // A subnet behind the gateway that the network does not declare: the client
    // (maliciously) routes it into the tunnel; the gateway's filter drops it.
    let ifname = lab.wg.ifname.as_str();
    let peer_key = lab.client.exec("wg", &["show", ifname, "peers"]);
    let peer_key = peer_key.trim();
    lab.client.exec(
        "wg",
        &[
            "set",
            ifname,
            "peer",
            peer_key,
            "allowed-ips",
            "0.0.0.0/0,10.99.0.0/24",
        ],
    );
    lab.client
        .ip(&["route", "add", "10.99.0.0/24", "dev", ifname]);
    assert!(
        !lab.client.ping_all("10.99.0.2", 3, &[]),
        "an undeclared subnet must get nothing through"
    );
    assert!(
        lab.client.ping_until("10.20.0.2", Duration::from_secs(5)),
        "declared still works"
    );

    // wg(8) sees the client with a recent handshake.
    let show = g.exec("wg", &["show", &gw_if]);
    assert!(
        show.contains(&lab.client_key.public_key().to_string()),
        "{show}"
    );
    assert!(show.contains("latest handshake"), "{show}");
    let dump = g.exec("wg", &["show", &gw_if, "latest-handshakes"]);
    let ts: u64 = dump.split_whitespace().nth(1).unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ts > 0 && now.saturating_sub(ts) < 120,
        "handshake {ts} vs now {now}"
    );

    // Foreign objects survived every pass.
    assert!(g.try_exec("ip", &["link", "show", "fgn0"]));
    assert!(g
        .exec("ip", &["route", "show", "table", "7373"])
        .contains("10.55.0.0/24"));
    assert!(g.exec("ip", &["rule", "show"]).contains("10.66.0.0/24"));
    assert!(g.try_exec("nft", &["list", "chain", "inet", "foreign", "keep"]));

    gw.stop(true);
    assert_eq!(
        owned_leftovers(g),
        Vec::<String>::new(),
        "teardown leaves nothing of Nanami"
    );
    assert_eq!(
        g.exec("sysctl", &["-n", "net.ipv4.ip_forward"]),
        forwarding_before,
        "sysctl restored"
    );
    assert!(g.try_exec("ip", &["link", "show", "fgn0"]));
    assert!(g
        .exec("ip", &["route", "show", "table", "7373"])
        .contains("10.55.0.0/24"));
    assert!(g.exec("ip", &["rule", "show"]).contains("10.66.0.0/24"));
    assert!(g.try_exec("nft", &["list", "chain", "inet", "foreign", "keep"]));
}

#[test]
fn without_nat_the_resource_sees_the_client() {
    let lab = Lab::new("gw-nonat", false);
    let mut gw = start_gateway(
        &lab.gateway,
        lab.state_dir.clone(),
        Duration::from_secs(30),
        lab.desired(1),
        DeviceMode::InProcess,
    );
    gw.wait_ready(1);
    lab.configure_client();
    assert!(lab.client.ping_until("10.20.0.2", Duration::from_secs(15)));
    let peer = tcp_transfer(&lab.client, &lab.resource, "10.20.0.2:7003", 256 << 10);
    assert_eq!(
        peer.ip().to_string(),
        "100.80.0.10",
        "no NAT: the client's overlay address"
    );
    gw.stop(true);
    assert_eq!(owned_leftovers(&lab.gateway), Vec::<String>::new());
}

/// Waits for `check` to hold; returns how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "{what} not repaired within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

#[test]
fn drift_is_repaired_through_events() {
    let lab = Lab::new("gw-drift", true);
    let g = &lab.gateway;
    let gw_if = lab.interface();
    let gw_if = gw_if.as_str();
    // A resync of an hour: any repair within 2 s came from an event.
    let mut gw = start_gateway(
        g,
        lab.state_dir.clone(),
        Duration::from_secs(3600),
        lab.desired(1),
        DeviceMode::InProcess,
    );
    gw.wait_ready(1);
    lab.configure_client();
    assert!(lab.client.ping_until("10.20.0.2", Duration::from_secs(15)));
    let limit = Duration::from_secs(2);

    g.exec("nft", &["flush", "table", "inet", "nanami"]);
    let t = within(limit, "flushed inet nanami", || {
        g.command("nft")
            .args(["list", "table", "inet", "nanami"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("nanami drop"))
            .unwrap_or(false)
    });
    eprintln!("nft flush repaired in {t:?}");

    g.ip(&["route", "del", "100.80.0.0/22", "table", "7373"]);
    let t = within(limit, "deleted route", || {
        g.exec("ip", &["route", "show", "table", "7373"])
            .contains("100.80.0.0/22")
    });
    eprintln!("route repaired in {t:?}");

    g.ip(&["rule", "del", "priority", "7373"]);
    let t = within(limit, "deleted rule", || {
        g.exec("ip", &["rule", "show"]).contains("7373")
    });
    eprintln!("rule repaired in {t:?}");

    g.ip(&["link", "del", gw_if]);
    let t = within(limit, "deleted interface", || {
        g.try_exec("ip", &["link", "show", gw_if])
            && g.exec("ip", &["-o", "addr", "show", "dev", gw_if])
                .contains("100.80.0.1/32")
            && g.exec("wg", &["show", gw_if, "peers"])
                .contains(&lab.client_key.public_key().to_string())
            && g.exec("ip", &["route", "show", "table", "7373"])
                .contains("100.80.0.0/22")
    });
    eprintln!("interface repaired in {t:?}");
    // Traffic resumes over the recreated device (a fresh handshake).
    assert!(
        lab.client.ping_until("10.20.0.2", Duration::from_secs(20)),
        "traffic after repair"
    );
    gw.stop(true);
}

#[test]
fn detached_devices_keep_forwarding_across_a_restart_and_are_adopted() {
    let lab = Lab::new("gw-detach", true);
    let mode = DeviceMode::Detached {
        program: nanami_device(),
    };
    let mut gw = start_gateway(
        &lab.gateway,
        lab.state_dir.clone(),
        Duration::from_secs(30),
        lab.desired(1),
        mode.clone(),
    );
    gw.wait_ready(1);
    lab.configure_client();
    assert!(lab.client.ping_until("10.20.0.2", Duration::from_secs(15)));

    // The control loop stops without teardown (SIGTERM, an upgrade): the tunnel
    // lives on in its own process.
    gw.stop(false);
    assert!(
        lab.client.ping_all("10.20.0.2", 5, &[]),
        "traffic must keep flowing while no control loop runs"
    );

    // A new loop adopts the running device: converged without recreating it (the
    // same process serves the interface; how many passes that takes depends on
    // the kernel's late events, such as IPv6 address notifications).
    let serving = device_pids("nm-gw-detach");
    assert_eq!(
        serving.len(),
        1,
        "one device serves the interface: {serving:?}"
    );
    let mut gw = start_gateway(
        &lab.gateway,
        lab.state_dir.clone(),
        Duration::from_secs(30),
        lab.desired(1),
        mode,
    );
    gw.wait_ready(1);
    let status = gw.status.borrow().clone();
    assert_eq!(
        device_pids("nm-gw-detach"),
        serving,
        "adopted, not recreated: {status:?}"
    );
    assert!(status.op_errors.is_empty(), "{status:?}");
    assert!(lab.client.ping_all("10.20.0.2", 3, &[]));
    gw.stop(true);
    assert_eq!(owned_leftovers(&lab.gateway), Vec::<String>::new());
    // Teardown ends the detached device too (its link is gone): its UAPI socket
    // goes with it, before the test's namespaces do.
    let socket = std::path::Path::new("/var/run/wireguard").join("nm-gw-detach.sock");
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "{} outlived teardown by 5 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
