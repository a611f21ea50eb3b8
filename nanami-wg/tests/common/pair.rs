//! A Nanami device in one namespace and `wireguard-go` in another, joined by a veth.
//!
//! Underlay 172.30.0.1 (Nanami, UDP 51820) ↔ 172.30.0.2 (wireguard-go, UDP 51821);
//! overlay 10.99.0.1/24 (Nanami) and 10.99.0.2/24 (wireguard-go). Both namespaces are
//! private to the test, so the addresses collide with nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nanami_model::{InterfaceName, PrivateKey, PublicKey};
use nanami_wg::device::{Device, DeviceOptions, DeviceUpdate, PeerUpdate, TunSource};

use super::{ifname, keypair, veth, Netns, WgGo};

pub const A_UNDER: &str = "172.30.0.1";
pub const B_UNDER: &str = "172.30.0.2";
pub const A_PORT: u16 = 51820;
pub const B_PORT: u16 = 51821;
pub const A_IN: &str = "10.99.0.1";
pub const B_IN: &str = "10.99.0.2";

/// Fields drop in order: the device, then the namespaces (killing wireguard-go).
pub struct Pair {
    pub dev: Device,
    pub wg: WgGo,
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub a_key: PrivateKey,
    pub b_key: PrivateKey,
    pub a_pub: PublicKey,
    pub b_pub: PublicKey,
}

/// Opens a Nanami device named `name` inside `ns`.
pub fn open_device(ns: &Netns, name: &str, port: u16) -> Device {
    let name = InterfaceName::new(name).expect("interface name");
    ns.enter(|| {
        Device::open(
            TunSource::Name(name),
            DeviceOptions {
                listen_port: port,
                ..DeviceOptions::default()
            },
        )
    })
    .expect("open the Nanami device")
}

/// Brings up an overlay interface with `addr`.
pub fn up(ns: &Netns, ifname: &str, addr: &str) {
    ns.ip(&["addr", "add", addr, "dev", ifname]);
    ns.ip(&["link", "set", ifname, "mtu", "1420", "up"]);
}

impl Pair {
    pub fn new() -> Self {
        Self::with_program(std::path::Path::new("wireguard-go"))
    }

    /// The pair with `program` (a wireguard-go binary) on `b`'s side.
    pub fn with_program(program: &std::path::Path) -> Self {
        super::require(&["wireguard-go", "wg", "ping"]);
        let a = Netns::new("a");
        let b = Netns::new("b");
        veth(&a, &format!("{A_UNDER}/24"), &b, &format!("{B_UNDER}/24"));
        let (a_key, a_pub) = keypair();
        let (b_key, b_pub) = keypair();

        let a_if = ifname("a");
        let dev = open_device(&a, &a_if, A_PORT);
        up(&a, &a_if, &format!("{A_IN}/24"));
        dev.apply(
            DeviceUpdate::new().private_key(a_key.clone()).peer(
                PeerUpdate::new(b_pub)
                    .endpoint(SocketAddr::new(B_UNDER.parse().expect("ip"), B_PORT))
                    .replace_allowed_ips([format!("{B_IN}/32").parse().expect("net")]),
            ),
        )
        .expect("configure the Nanami device");

        let wg = WgGo::start_program(&b, &ifname("b"), program);
        Self::configure_wg(&b, &wg, &b_key, &a_pub);
        Self {
            dev,
            wg,
            a,
            b,
            a_if,
            a_key,
            b_key,
            a_pub,
            b_pub,
        }
    }

    /// (Re)configures wireguard-go's side: key, port, the Nanami peer, address.
    pub fn configure_wg(b: &Netns, wg: &WgGo, b_key: &PrivateKey, a_pub: &PublicKey) {
        let a_pub = a_pub.to_string();
        let endpoint = format!("{A_UNDER}:{A_PORT}");
        wg.configure(
            b,
            b_key,
            B_PORT,
            &[
                "peer",
                &a_pub,
                "allowed-ips",
                "10.99.0.0/24",
                "endpoint",
                &endpoint,
            ],
        );
        up(b, &wg.ifname, &format!("{B_IN}/24"));
    }

    /// Waits until the tunnel carries a ping from `a` to `b`.
    pub fn wait_up(&self) {
        assert!(
            self.a.ping_until(B_IN, Duration::from_secs(15)),
            "no ping reply through the tunnel within 15 s; counters: {:?}",
            self.dev.counters()
        );
    }
}

/// Opens a TCP connection from `client` to `server_ip:port` (listening in `server`),
/// sends `len` bytes, has them echoed back and checks them.
pub fn tcp_echo(server: &Netns, server_ip: &str, client: &Netns, len: usize) {
    let addr: SocketAddr = format!("{server_ip}:5201").parse().expect("addr");
    let listener = server
        .enter(|| TcpListener::bind(addr))
        .expect("bind TCP listener");
    std::thread::scope(|s| {
        let echo = s.spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut got = vec![0u8; len];
            conn.read_exact(&mut got).expect("server read");
            conn.write_all(&got).expect("server write");
        });
        let mut conn = client
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
            .expect("connect through the tunnel");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let writer = conn.try_clone().expect("clone");
        let sent = data.clone();
        let w = s.spawn(move || {
            let mut writer = writer;
            writer.write_all(&sent).expect("client write");
        });
        let mut back = vec![0u8; len];
        conn.read_exact(&mut back).expect("client read");
        w.join().expect("writer");
        echo.join().expect("echo");
        assert!(back == data, "echoed data differs");
    });
}
