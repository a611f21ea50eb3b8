//! `nanami lab up` / `nanami lab down`: the whole product on one Linux machine.
//!
//! The lab builds what its topology document declares, in network namespaces named
//! `<prefix>-*`:
//!
//! - `ctl` runs the manager; a link ctl↔gw (198.18.9.0/30) is the management network;
//! - `gw` is the gateway host: one gateway daemon per gateway of the document (each
//!   with its own state directory, token and log; detached WireGuard devices), and a
//!   bridge `wan0` (198.18.0.1/24), the "internet" the clients hang off;
//! - a gateway without `uplink` is a dedicated machine: its LAN is the veth `lan0`
//!   in `gw` toward `lan`. A gateway with `uplink: X` is hosted: `X` is a veth in
//!   `gw` toward its own LAN namespace `lan-<n>`, configured with the gateway's LAN
//!   address; the daemon moves it into the gateway's namespace `nm-<gateway id>`,
//!   which it creates, so gateways of several workspaces can reuse one LAN prefix;
//! - each LAN holds a host at `<route>.10` (the first IPv4 route of the gateway's
//!   first network, gateway at `.1`) that answers [`NAME_PORT`] with its
//!   workspace's id;
//! - `c1`, `c2`, … hold one wireguard-go per active client node of the document, at
//!   198.18.0.11, .12, … on the bridge.
//!
//! Everything the lab creates is listed in its state directory, so `lab down`
//! removes exactly that: processes by pid, namespaces by name (the daemons' `nm-*`
//! ones too), files.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nanami_api::wire::{EnrolRequest, Subject, TokenRequest};
use nanami_api::Client;
use nanami_model::{Document, NodeId, PublicKey};
use nanami_wg::netns::Netns;

const MANAGER_ADDR: &str = "198.18.9.1";
const MANAGER_PORT: u16 = 7443;
/// The gateway host's address on the lab's "internet": gateway endpoints in a lab
/// document are `198.18.0.1:<listen_port>`.
const INTERNET_HOST: &str = "198.18.0.1";
/// Reports every second so the lab converges and shows handshakes quickly.
const REPORT_MS: &str = "1000";
/// The TCP port on which each LAN host answers with its workspace's id.
pub const NAME_PORT: u16 = 8080;
/// Linux's limit on interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Where a lab lives.
#[derive(Debug, Clone)]
pub struct Lab {
    /// Namespace and interface prefix.
    pub prefix: String,
    /// State directory.
    pub dir: PathBuf,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    fn manager_dir(&self) -> PathBuf {
        self.dir.join("manager")
    }
    fn url(&self) -> String {
        format!("https://{MANAGER_ADDR}:{MANAGER_PORT}")
    }
    /// The control-plane credential file.
    pub fn control_file(&self) -> PathBuf {
        self.manager_dir().join("control.token")
    }
    /// The CA file.
    pub fn ca_file(&self) -> PathBuf {
        self.manager_dir().join("ca.pem")
    }
    /// Appends `line` to the list `name` in the state directory (what `down` removes).
    fn record(&self, name: &str, line: &str) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join(name))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }
    fn recorded(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    /// The lab's namespaces: the ones it recorded (the daemons' `nm-*` ones among
    /// them), and any of its own shapes (`ctl`, `gw`, `lan`, `lan-<n>`, `c<n>`) that
    /// a crash left without a record.
    fn namespaces(&self) -> Vec<String> {
        let mut all = self.recorded("namespaces");
        let own = |rest: &str| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            matches!(rest, "ctl" | "gw" | "lan")
                || rest.strip_prefix("lan-").is_some_and(digits)
                || rest.strip_prefix('c').is_some_and(digits)
        };
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            let mut found: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(&self.prefix)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(own)
                })
                .collect();
            found.sort();
            for n in found {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
        }
        all
    }
}

/// A gateway of the document, as the lab hosts it.
struct GatewayLab {
    id: String,
    node: String,
    workspace: String,
    /// The interface toward its LAN when hosted (`gateways[].uplink`).
    uplink: Option<String>,
    lan: Option<Lan>,
}

impl GatewayLab {
    /// Files in the state directory: `gateway-<id>/`, `<id>.token`, `daemon-<id>.log`.
    fn state_dir(&self, lab: &Lab) -> PathBuf {
        lab.dir.join(format!("gateway-{}", self.id))
    }
    fn daemon(&self) -> String {
        format!("daemon-{}", self.id)
    }
    /// The namespace its daemon creates when it is hosted.
    fn hosted_ns(&self) -> Option<String> {
        self.uplink.as_ref().map(|_| format!("nm-{}", self.id))
    }
}

/// The LAN behind a gateway: an IPv4 prefix, the gateway at `.1`, a host at `.10`.
struct Lan {
    ns: String,
    net: Ipv4Addr,
    len: u8,
}

impl Lan {
    fn at(&self, host: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + host)
    }
    fn gateway(&self) -> Ipv4Addr {
        self.at(1)
    }
    fn host(&self) -> Ipv4Addr {
        self.at(10)
    }
}

/// A client node of the document and the namespace the lab gives it.
struct ClientLab {
    node: String,
    workspace: String,
    /// `c<n>`: the namespace suffix, and the name of its key, config and process.
    tag: String,
    ns: String,
    /// Its WireGuard interface (the namespace's name, so it is unique on the machine).
    ifname: String,
    /// Its address on the "internet" bridge.
    under: Ipv4Addr,
}

/// What the lab builds for a document.
struct Layout {
    gateways: Vec<GatewayLab>,
    clients: Vec<ClientLab>,
}

impl Layout {
    fn new(lab: &Lab, doc: &Document) -> anyhow::Result<Self> {
        let mut gateways = Vec::new();
        let mut clients = Vec::new();
        let mut dedicated = Vec::new();
        let mut hosted_lans = 0;
        for ws in &doc.workspaces {
            for g in &ws.gateways {
                let route = g
                    .networks
                    .iter()
                    .filter_map(|n| ws.networks.iter().find(|net| net.id == *n))
                    .flat_map(|net| net.routes.iter())
                    .find_map(|r| parse_v4(r));
                let lan = match route {
                    Some((net, len)) if len <= 28 => {
                        let ns = if g.uplink.is_some() {
                            hosted_lans += 1;
                            lab.ns(&format!("lan-{hosted_lans}"))
                        } else {
                            lab.ns("lan")
                        };
                        Some(Lan { ns, net, len })
                    }
                    Some((net, len)) => bail!(
                        "gateway {}: the lab needs room for .1 and .10 in its route {net}/{len} (at most /28)",
                        g.id
                    ),
                    None => None,
                };
                if g.uplink.is_none() {
                    dedicated.push(g.id.clone());
                }
                if let Some(uplink) = &g.uplink {
                    if uplink.len() > IFNAME_MAX {
                        bail!(
                            "gateway {}: uplink {uplink} is longer than {IFNAME_MAX} bytes",
                            g.id
                        );
                    }
                }
                gateways.push(GatewayLab {
                    id: g.id.clone(),
                    node: g.node.clone(),
                    workspace: ws.id.clone(),
                    uplink: g.uplink.clone(),
                    lan,
                });
            }
            for node in &ws.nodes {
                let is_gateway = ws.gateways.iter().any(|g| g.node == node.id);
                if is_gateway || node.status != "active" {
                    continue;
                }
                let n = clients.len() + 1;
                if n > 200 {
                    bail!("the lab's bridge has room for 200 clients");
                }
                let tag = format!("c{n}");
                let ns = lab.ns(&tag);
                if ns.len() > IFNAME_MAX {
                    bail!(
                        "prefix {} is too long: interface {ns} would exceed {IFNAME_MAX} bytes",
                        lab.prefix
                    );
                }
                clients.push(ClientLab {
                    node: node.id.clone(),
                    workspace: ws.id.clone(),
                    ifname: ns.clone(),
                    ns,
                    tag,
                    under: Ipv4Addr::new(198, 18, 0, 10 + n as u8),
                });
            }
        }
        if dedicated.len() > 1 {
            bail!(
                "gateways {} have no uplink: only one gateway can use the host namespace itself; give the others `uplink: <interface>` so they are hosted in their own",
                dedicated.join(", ")
            );
        }
        if gateways.is_empty() {
            bail!("the document declares no gateway");
        }
        Ok(Self { gateways, clients })
    }

    /// The namespaces the lab creates itself, in creation order.
    fn namespaces(&self, lab: &Lab) -> Vec<String> {
        let mut all = vec![lab.ns("ctl"), lab.ns("gw")];
        all.extend(
            self.gateways
                .iter()
                .filter_map(|g| g.lan.as_ref().map(|l| l.ns.clone())),
        );
        all.extend(self.clients.iter().map(|c| c.ns.clone()));
        all
    }

    fn lans_of<'a>(&'a self, client: &'a ClientLab) -> impl Iterator<Item = &'a Lan> + 'a {
        self.gateways
            .iter()
            .filter(move |g| g.workspace == client.workspace)
            .filter_map(|g| g.lan.as_ref())
    }
}

/// `10.50.0.0/24` as its network address and length; `None` for IPv6 or nonsense
/// (the manager's validation reports the latter).
fn parse_v4(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(addr) & mask), len))
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to {}: build it first (cargo build -p nanami -p nanami-gateway-manager -p nanami-gateway-daemon -p nanami-device)",
            name,
            exe.display()
        );
    }
    Ok(path)
}

fn require_tools() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root: it creates network namespaces, TUN devices and WireGuard interfaces");
    }
    for tool in ["ip", "wireguard-go", "wg", "ping", "nft"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` is missing: run scripts/deps (apt-get install wireguard-go wireguard-tools nftables iproute2 iputils-ping)");
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Starts `program` inside `ns` (`ip netns exec`) in its own process group (so it
/// can be stopped with what it starts), logging to `<name>.log`; records the pid.
fn spawn_in_ns(
    lab: &Lab,
    ns: &str,
    name: &str,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<u32> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    spawn_logged(lab, name, cmd)
}

/// Like [`spawn_in_ns`], but entering only the network namespace: the program
/// stays in the machine's mount namespace, as a gateway daemon runs on a real host.
/// `ip netns exec` would give it a private one (to remount /sys), where the
/// namespaces a hosted gateway's daemon creates (`/run/netns/nm-<id>` bind mounts)
/// would be invisible to `ip` and to `lab down`.
fn spawn_in_netns_only(
    lab: &Lab,
    ns: &str,
    name: &str,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{ns}");
    // Close-on-exec: the program does not inherit it.
    let netns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: setns(2) is async-signal-safe and touches no memory of the parent;
    // `netns` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pid = spawn_logged(lab, name, cmd)?;
    drop(netns);
    Ok(pid)
}

fn spawn_logged(lab: &Lab, name: &str, mut cmd: Command) -> anyhow::Result<u32> {
    let log = std::fs::File::create(lab.dir.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    std::fs::write(lab.dir.join(format!("{name}.pid")), pid.to_string())?;
    Ok(pid)
}

/// Runs `f` on a thread that has entered network namespace `ns`, with its own
/// runtime: the lab's API calls reach the manager from inside the lab.
fn with_netns<T: Send>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let netns = Netns::open(ns)?.with_context(|| format!("namespace {ns} does not exist"))?;
    netns
        .run(f)
        .with_context(|| format!("entering namespace {ns}"))?
}

fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `nanami lab up`.
pub fn up(lab: &Lab, topology: &Path) -> anyhow::Result<()> {
    require_tools()?;
    let manager = sibling("nanami-gateway-manager")?;
    let daemon = sibling("nanami-gateway-daemon")?;
    let device = sibling("nanami-device")?;
    if lab.dir.exists() {
        bail!(
            "{} exists: a lab is up (run `nanami lab down` first)",
            lab.dir.display()
        );
    }
    let text = std::fs::read_to_string(topology)
        .with_context(|| format!("reading {}", topology.display()))?;
    let doc = Document::from_yaml(&text)?;
    let layout = Layout::new(lab, &doc)?;
    for ns in layout.namespaces(lab) {
        if Path::new("/run/netns").join(&ns).exists() {
            bail!("namespace {ns} exists: run `nanami lab down` first");
        }
    }
    for ns in layout.gateways.iter().filter_map(GatewayLab::hosted_ns) {
        if Path::new("/run/netns").join(&ns).exists() {
            bail!("namespace {ns} exists: another lab or gateway hosts that gateway id (`nanami lab down --prefix …` removes a lab's)");
        }
    }
    std::fs::create_dir_all(&lab.dir)?;
    match build(lab, topology, doc, &layout, &manager, &daemon, &device) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!(
                "lab up failed: {e:#}\nlogs kept until cleanup in {}",
                lab.dir.display()
            );
            let logs = std::iter::once("manager".to_owned())
                .chain(layout.gateways.iter().map(GatewayLab::daemon));
            for name in logs {
                if let Ok(text) = std::fs::read_to_string(lab.dir.join(format!("{name}.log"))) {
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- {name}.log (last lines) ---");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
            down(lab)?;
            Err(e)
        }
    }
}

/// `ip link add <a> netns <ns_a> type veth peer name <b> netns <ns_b>`, with an
/// address on each end, both up.
fn veth(
    ns_a: &str,
    a: &str,
    addr_a: &str,
    ns_b: &str,
    b: &str,
    addr_b: &str,
) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
    ])?;
    for (ns, dev, addr) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
        in_ns(ns, &["ip", "addr", "add", addr, "dev", dev])?;
        in_ns(ns, &["ip", "link", "set", dev, "up"])?;
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn build(
    lab: &Lab,
    topology: &Path,
    mut doc: Document,
    layout: &Layout,
    manager: &Path,
    daemon: &Path,
    device: &Path,
) -> anyhow::Result<()> {
    let (ctl, gw) = (lab.ns("ctl"), lab.ns("gw"));
    println!("== namespaces");
    for ns in layout.namespaces(lab) {
        Netns::open_or_create(&ns)?;
        lab.record("namespaces", &ns)?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
    }
    // management: ctl <-> gw
    veth(
        &ctl,
        "mgmt0",
        &format!("{MANAGER_ADDR}/30"),
        &gw,
        "mgmt0",
        "198.18.9.2/30",
    )?;
    // LANs: a dedicated gateway's `lan0`, or a hosted gateway's uplink, toward the
    // LAN namespace; the gateway's LAN address goes on the gateway side (a hosted
    // gateway's daemon carries it into `nm-<id>` with the uplink).
    for g in &layout.gateways {
        let Some(l) = &g.lan else { continue };
        let side = g.uplink.as_deref().unwrap_or("lan0");
        veth(
            &gw,
            side,
            &format!("{}/{}", l.gateway(), l.len),
            &l.ns,
            "eth0",
            &format!("{}/{}", l.host(), l.len),
        )?;
        // Also the way back to the overlay when the network does not masquerade.
        in_ns(
            &l.ns,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &l.gateway().to_string(),
            ],
        )?;
        println!(
            "{}: LAN {}/{} behind {side}{}, host {} in {}",
            g.id,
            l.net,
            l.len,
            g.hosted_ns()
                .map(|ns| format!(" (moved into {ns} by the daemon)"))
                .unwrap_or_default(),
            l.host(),
            l.ns
        );
    }
    // "internet": a bridge in gw, the clients hang off it
    in_ns(&gw, &["ip", "link", "add", "wan0", "type", "bridge"])?;
    in_ns(
        &gw,
        &[
            "ip",
            "addr",
            "add",
            &format!("{INTERNET_HOST}/24"),
            "dev",
            "wan0",
        ],
    )?;
    in_ns(&gw, &["ip", "link", "set", "wan0", "up"])?;
    for c in &layout.clients {
        let port = format!("wan-{}", c.tag);
        ip(&[
            "link", "add", &port, "netns", &gw, "type", "veth", "peer", "name", "eth0", "netns",
            &c.ns,
        ])?;
        in_ns(&gw, &["ip", "link", "set", &port, "master", "wan0", "up"])?;
        in_ns(
            &c.ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", c.under),
                "dev",
                "eth0",
            ],
        )?;
        in_ns(&c.ns, &["ip", "link", "set", "eth0", "up"])?;
    }

    println!("== LAN hosts answer TCP {NAME_PORT} with their workspace's id");
    // Before any thread or runtime exists: the services are forked from this process.
    for (n, g) in layout.gateways.iter().enumerate() {
        if let Some(l) = &g.lan {
            start_name_service(lab, &l.ns, &g.workspace, &format!("name-service-{}", n + 1))?;
        }
    }

    println!("== keys (generated where they are used; only public keys travel)");
    let mut keys = std::collections::BTreeMap::new();
    for g in &layout.gateways {
        let key: PublicKey = run(Command::new(daemon)
            .args(["--print-public-key", "--state-dir"])
            .arg(g.state_dir(lab)))?
        .trim()
        .parse()
        .context("the daemon's public key")?;
        keys.insert((g.workspace.clone(), g.node.clone()), key);
    }
    for c in &layout.clients {
        let private = run(Command::new("wg").arg("genkey"))?;
        write_private(&lab.dir.join(format!("{}.key", c.tag)), &private)?;
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(private.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let public: PublicKey = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("wg pubkey")?;
        keys.insert((c.workspace.clone(), c.node.clone()), public);
    }

    println!("== topology {}", topology.display());
    for ws in &mut doc.workspaces {
        for node in &mut ws.nodes {
            if let Some(key) = keys.get(&(ws.id.clone(), node.id.clone())) {
                node.public_key = key.to_base64();
            }
        }
    }
    let topo_file = lab.dir.join("topology.yaml");
    std::fs::write(&topo_file, doc.to_yaml()?)?;

    println!("== manager (namespace {ctl}, https://{MANAGER_ADDR}:{MANAGER_PORT})");
    let mdir = lab.manager_dir();
    run(Command::new(manager)
        .args(["init", "--dir"])
        .arg(&mdir)
        .args(["--san", MANAGER_ADDR]))?;
    let listen = format!("{MANAGER_ADDR}:{MANAGER_PORT}");
    spawn_in_ns(
        lab,
        &ctl,
        "manager",
        manager,
        &[
            "serve",
            "--dir",
            &mdir.to_string_lossy(),
            "--listen",
            &listen,
            "--topology",
            &topo_file.to_string_lossy(),
            "--report-interval-ms",
            REPORT_MS,
        ],
    )?;

    for g in &layout.gateways {
        let where_ = match g.hosted_ns() {
            Some(ns) => format!(
                "hosted in {ns}, uplink {}",
                g.uplink.as_deref().unwrap_or("")
            ),
            None => format!("namespace {gw}"),
        };
        println!(
            "== gateway daemon {} ({where_}; detached WireGuard devices)",
            g.id
        );
        let token = run(Command::new(manager)
            .args(["token", "--gateway", &g.id, "--dir"])
            .arg(&mdir))?;
        let token_file = lab.dir.join(format!("{}.token", g.id));
        std::fs::write(&token_file, token.trim())?;
        // Recorded before the daemon can make them, so `down` removes them whatever
        // happens next.
        if let Some(ns) = g.hosted_ns() {
            lab.record("namespaces", &ns)?;
        }
        lab.record("sockets", &format!("nm-{}", g.id))?;
        spawn_in_netns_only(
            lab,
            &gw,
            &g.daemon(),
            daemon,
            &[
                "--manager",
                &lab.url(),
                "--ca",
                &lab.ca_file().to_string_lossy(),
                "--gateway",
                &g.id,
                "--state-dir",
                &g.state_dir(lab).to_string_lossy(),
                "--token-file",
                &token_file.to_string_lossy(),
                "--detached-devices",
                &device.to_string_lossy(),
                "--report-interval-ms",
                REPORT_MS,
            ],
        )?;
    }

    println!("== waiting for convergence");
    let control = std::fs::read_to_string(lab.control_file())?
        .trim()
        .to_owned();
    let (url, ca) = (lab.url(), lab.ca_file());
    let ids: Vec<String> = layout.gateways.iter().map(|g| g.id.clone()).collect();
    with_netns(&ctl, move || {
        let client = Client::new(&url, Some(&ca))?.with_credential(control);
        until("every gateway to converge", Duration::from_secs(60), || {
            let s = crate::status::block_on(client.status()).ok()?.ok()?;
            ids.iter()
                .all(|id| {
                    s.iter().any(|g| {
                        g.id.as_str() == id
                            && g.observed_generation == Some(g.desired_generation)
                            && g.condition == Some(nanami_reconcile::Condition::Ready)
                            && g.observed_peers == g.peers
                    })
                })
                .then_some(())
        })
    })?;

    println!("== clients (wireguard-go, configured from the manager's client configs)");
    let wggo = which("wireguard-go")?;
    let mut configs = Vec::new();
    for c in &layout.clients {
        let key = keys[&(c.workspace.clone(), c.node.clone())];
        let config = enrol_and_fetch(lab, &c.node, key)?;
        let private = std::fs::read_to_string(lab.dir.join(format!("{}.key", c.tag)))?;
        let text = config.to_wg(None).replace(
            nanami_model::config::PRIVATE_KEY_PLACEHOLDER,
            private.trim(),
        );
        let conf = lab.dir.join(format!("{}.conf", c.tag));
        write_private(&conf, &text)?;
        lab.record("sockets", &c.ifname)?;
        spawn_in_ns(
            lab,
            &c.ns,
            &format!("wireguard-go-{}", c.tag),
            &wggo,
            &["--foreground", &c.ifname],
        )?;
        let sock = format!("/var/run/wireguard/{}.sock", c.ifname);
        until(&sock, Duration::from_secs(10), || {
            Path::new(&sock).exists().then_some(())
        })?;
        in_ns(
            &c.ns,
            &["wg", "setconf", &c.ifname, &conf.to_string_lossy()],
        )?;
        for a in &config.addresses {
            in_ns(
                &c.ns,
                &["ip", "addr", "add", &a.to_string(), "dev", &c.ifname],
            )?;
        }
        in_ns(&c.ns, &["ip", "link", "set", &c.ifname, "up"])?;
        for peer in &config.peers {
            for net in &peer.allowed_ips {
                in_ns(
                    &c.ns,
                    &["ip", "route", "replace", &net.to_string(), "dev", &c.ifname],
                )?;
            }
        }
        println!("{} ({}): {} in {}", c.node, c.workspace, c.ifname, c.ns);
        configs.push(config);
    }

    println!(
        "== reachability: each client pings its workspace's LAN hosts through its gateway and reads their answer on TCP {NAME_PORT}"
    );
    let mut tried = None;
    for (c, config) in layout.clients.iter().zip(&configs) {
        let routed = |ip: Ipv4Addr| {
            config
                .peers
                .iter()
                .flat_map(|p| p.allowed_ips.iter())
                .any(|net| net.contains(&std::net::IpAddr::V4(ip)))
        };
        let mut hosts: Vec<Ipv4Addr> = layout
            .lans_of(c)
            .map(Lan::host)
            .filter(|h| routed(*h))
            .collect();
        hosts.sort();
        hosts.dedup();
        for host in hosts {
            let target = host.to_string();
            until(
                &format!("a ping from {} to {target}", c.ns),
                Duration::from_secs(20),
                || in_ns(&c.ns, &["ping", "-c", "1", "-W", "1", &target]).ok(),
            )?;
            let out = in_ns(&c.ns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", &target])?;
            let summary = out
                .lines()
                .find(|l| l.contains("packets transmitted"))
                .unwrap_or("");
            println!("{} -> {target}: {summary}", c.node);
            let addr = SocketAddr::from((host, NAME_PORT));
            let answer = until(
                &format!("an answer on {addr} from {}", c.ns),
                Duration::from_secs(10),
                || read_name(&c.ns, addr).ok(),
            )?;
            println!("{} -> {addr}: {answer:?}", c.node);
            if answer != c.workspace {
                bail!(
                    "{} of workspace {} reached {addr} of workspace {answer:?}: the workspaces are not isolated",
                    c.node,
                    c.workspace
                );
            }
            tried.get_or_insert((c.ns.clone(), target));
        }
    }

    println!("== status");
    let control = std::fs::read_to_string(lab.control_file())?
        .trim()
        .to_owned();
    let (url, ca) = (lab.url(), lab.ca_file());
    // Wait for reports that carry the handshakes.
    let table = with_netns(&ctl, move || {
        let client = Client::new(&url, Some(&ca))?.with_credential(control);
        let status = until("reports with handshakes", Duration::from_secs(10), || {
            let s = crate::status::block_on(client.status()).ok()?.ok()?;
            s.iter()
                .filter(|g| g.peers > 0)
                .all(|g| g.newest_handshake.is_some())
                .then_some(s)
        })?;
        Ok(crate::status::table(&status))
    })?;
    print!("{table}");
    println!(
        "\nthe lab is up. Try:\n  ip netns exec {ctl} {} status --manager {} --ca {} --credential-file {}",
        std::env::current_exe()?.display(),
        lab.url(),
        lab.ca_file().display(),
        lab.control_file().display(),
    );
    if let Some((ns, host)) = tried {
        println!(
            "  ip netns exec {ns} ping {host}\n  ip netns exec {ns} bash -c 'cat < /dev/tcp/{host}/{NAME_PORT}'"
        );
    }
    println!("then: nanami lab down");
    Ok(())
}

/// Connects from inside `ns` to `addr` and returns what it says, trimmed.
fn read_name(ns: &str, addr: SocketAddr) -> anyhow::Result<String> {
    with_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.trim().to_owned())
    })
}

/// Starts a LAN host's name service: a process in `ns`, forked from this one, that
/// answers every TCP connection on [`NAME_PORT`] with `name` and a newline until
/// `lab down` stops it by its recorded pid (`<tag>.pid`).
///
/// A fork rather than a program: the lab may not rely on socat, nc or python, and
/// it outlives `lab up`, so it cannot be a thread of it.
fn start_name_service(lab: &Lab, ns: &str, name: &str, tag: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let listener = with_netns(ns, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, NAME_PORT)).context("binding the name service")
    })?;
    // fork(2) copies only the calling thread: with another thread alive, the child
    // could inherit a lock (the allocator's) that nobody will ever release.
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        bail!("the name service is forked from a single-threaded lab, found {threads} threads (a bug)");
    }
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let answer = format!("{name}\n");
    // SAFETY: the process has one thread (checked above), so the child's copy of
    // the memory is consistent; the child never returns from `serve_name`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain syscalls on descriptors this process owns. A session of its
        // own, so `down` can stop it like the other processes (by process group);
        // standard streams away from whoever reads `lab up`'s output.
        unsafe {
            libc::setsid();
            for fd in 0..3 {
                libc::dup2(devnull.as_raw_fd(), fd);
            }
        }
        serve_name(&listener, answer.as_bytes());
    }
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    std::fs::write(lab.dir.join(format!("{tag}.pid")), pid.to_string())?;
    Ok(())
}

fn serve_name(listener: &TcpListener, answer: &[u8]) -> ! {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = stream.write_all(answer);
            }
            // Out of descriptors or memory: back off rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("`{tool}` is missing"))
}

/// A client enrols like a gateway: a one-time token from the control plane, its
/// public key (which must be its topology key) in exchange for a node credential,
/// with which it reads its own configuration.
fn enrol_and_fetch(
    lab: &Lab,
    node: &str,
    key: PublicKey,
) -> anyhow::Result<nanami_model::NodeConfig> {
    let control = std::fs::read_to_string(lab.control_file())?
        .trim()
        .to_owned();
    let (url, ca) = (lab.url(), lab.ca_file());
    let node = NodeId::new(node)?;
    with_netns(&lab.ns("ctl"), move || {
        crate::status::block_on(async move {
            let client = Client::new(&url, Some(&ca))?;
            let token = client
                .clone()
                .with_credential(control)
                .create_token(&TokenRequest {
                    subject: Subject::Node(node.clone()),
                    ttl_seconds: Some(300),
                })
                .await?;
            let enrolled = client
                .enrol(&EnrolRequest {
                    token: token.token,
                    public_key: key,
                    subject: Some(Subject::Node(node.clone())),
                })
                .await?;
            let config = client
                .with_credential(enrolled.credential)
                .node_config(&node)
                .await?;
            anyhow::Ok(config)
        })?
    })
}

fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a pid read from our own pid file; no memory involved.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Whether `pid` still runs; reaps it when it is our own child (`lab up` stopping
/// the name services it forked after a failure).
fn running(pid: i32) -> bool {
    // SAFETY: waitpid(2) without a status pointer; ECHILD for others' processes.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    kill(pid, 0)
}

/// `nanami lab down`: stops the lab's processes (by recorded pid), deletes its
/// namespaces (their links and detached devices with them, and the `nm-*`
/// namespaces its gateway daemons made) and files.
pub fn down(lab: &Lab) -> anyhow::Result<()> {
    let namespaces = lab.namespaces();
    let exists = |ns: &String| Path::new("/run/netns").join(ns).exists();
    if !lab.dir.exists() && !namespaces.iter().any(exists) {
        println!("no lab is up");
        return Ok(());
    }
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&lab.dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1)
                {
                    pids.push(pid);
                }
            }
        }
    }
    for &pid in &pids {
        // The process group: `ip netns exec` and the program it runs.
        kill(-pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in &pids {
        kill(-pid, libc::SIGKILL);
    }
    // Detached devices run in their own sessions inside the gateway namespace:
    // stop whatever still runs in the lab's namespaces.
    for ns in namespaces.iter().filter(|ns| exists(ns)) {
        if let Ok(out) = ip(&["netns", "pids", ns]) {
            for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
    for ns in namespaces.iter().filter(|ns| exists(ns)) {
        if let Err(e) = Netns::delete(ns) {
            eprintln!("warning: {e:#}");
        }
    }
    let mut sockets = lab.recorded("sockets");
    // Clients' interfaces are named like their namespaces.
    sockets.extend(
        namespaces
            .iter()
            .filter(|ns| {
                ns.strip_prefix(&lab.prefix)
                    .is_some_and(|r| r.starts_with("-c"))
            })
            .cloned(),
    );
    for name in sockets {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{name}.sock"));
    }
    if lab.dir.exists() {
        std::fs::remove_dir_all(&lab.dir)
            .with_context(|| format!("removing {}", lab.dir.display()))?;
    }
    println!("lab down: processes, namespaces and files removed");
    Ok(())
}
