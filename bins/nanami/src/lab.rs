//! `nanami lab up` / `nanami lab down`: the whole product on one Linux machine.
//!
//! Namespaces (all named `<prefix>-*`): `ctl` runs the manager, `gw` the gateway
//! daemon (detached WireGuard devices), `lan` a resource behind the gateway, `c1`
//! and `c2` two wireguard-go clients. Links: ctl↔gw (198.18.9.0/30, management),
//! gw↔lan (10.20.0.0/24), and a bridge in `gw` (198.18.0.0/24, the "internet") that
//! both clients hang off. Every address is inside these namespaces.
//!
//! Everything the lab creates is listed in its state directory, so `lab down`
//! removes exactly that: processes by pid, namespaces by name, files.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nanami_api::wire::{EnrolRequest, Subject, TokenRequest};
use nanami_api::Client;
use nanami_model::{Document, NodeId, PublicKey};

const GATEWAY: &str = "gw-lab";
const CLIENTS: [&str; 2] = ["client-1", "client-2"];
const LAN_HOST: &str = "10.20.0.10";
const MANAGER_ADDR: &str = "198.18.9.1";
const MANAGER_PORT: u16 = 7443;
/// Reports every second so the lab converges and shows handshakes quickly.
const REPORT_MS: &str = "1000";

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
    fn namespaces(&self) -> Vec<String> {
        ["ctl", "gw", "lan", "c1", "c2"]
            .iter()
            .map(|n| self.ns(n))
            .collect()
    }
    fn client_if(&self, i: usize) -> String {
        format!("{}-c{}", self.prefix, i + 1)
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

/// Starts `program` inside `ns` in its own session (so it outlives nothing by
/// accident and can be killed by pid), logging to `log`; records the pid.
fn spawn_in_ns(
    lab: &Lab,
    ns: &str,
    name: &str,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<u32> {
    let log = std::fs::File::create(lab.dir.join(format!("{name}.log")))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id();
    std::fs::write(lab.dir.join(format!("{name}.pid")), pid.to_string())?;
    Ok(pid)
}

/// Runs `f` on a thread that has entered network namespace `ns`, with its own
/// runtime: the lab's API calls reach the manager from inside the lab.
fn with_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a valid namespace fd changes only this thread's network
        // namespace; the thread ends with `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("entering {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
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
    for ns in lab.namespaces() {
        if Path::new("/run/netns").join(&ns).exists() {
            bail!("namespace {ns} exists: run `nanami lab down` first");
        }
    }
    std::fs::create_dir_all(&lab.dir)?;
    match build(lab, topology, &manager, &daemon, &device) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!(
                "lab up failed: {e:#}\nlogs kept until cleanup in {}",
                lab.dir.display()
            );
            for name in ["manager", "daemon"] {
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

fn build(
    lab: &Lab,
    topology: &Path,
    manager: &Path,
    daemon: &Path,
    device: &Path,
) -> anyhow::Result<()> {
    let (ctl, gw, lan) = (lab.ns("ctl"), lab.ns("gw"), lab.ns("lan"));
    println!("== namespaces");
    for ns in lab.namespaces() {
        ip(&["netns", "add", &ns])?;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(lab.dir.join("namespaces"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{ns}\n").as_bytes()))?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
    }
    // management: ctl <-> gw
    ip(&[
        "link", "add", "mgmt0", "netns", &ctl, "type", "veth", "peer", "name", "mgmt0", "netns",
        &gw,
    ])?;
    in_ns(
        &ctl,
        &[
            "ip",
            "addr",
            "add",
            &format!("{MANAGER_ADDR}/30"),
            "dev",
            "mgmt0",
        ],
    )?;
    in_ns(&gw, &["ip", "addr", "add", "198.18.9.2/30", "dev", "mgmt0"])?;
    // LAN: gw <-> lan
    ip(&[
        "link", "add", "lan0", "netns", &gw, "type", "veth", "peer", "name", "eth0", "netns", &lan,
    ])?;
    in_ns(&gw, &["ip", "addr", "add", "10.20.0.1/24", "dev", "lan0"])?;
    in_ns(
        &lan,
        &[
            "ip",
            "addr",
            "add",
            &format!("{LAN_HOST}/24"),
            "dev",
            "eth0",
        ],
    )?;
    // "internet": a bridge in gw, the clients hang off it
    in_ns(&gw, &["ip", "link", "add", "wan0", "type", "bridge"])?;
    in_ns(&gw, &["ip", "addr", "add", "198.18.0.1/24", "dev", "wan0"])?;
    for (i, c) in ["c1", "c2"].iter().enumerate() {
        let ns = lab.ns(c);
        let port = format!("wan-{c}");
        ip(&[
            "link", "add", &port, "netns", &gw, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        in_ns(&gw, &["ip", "link", "set", &port, "master", "wan0", "up"])?;
        in_ns(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("198.18.0.{}/24", 11 + i),
                "dev",
                "eth0",
            ],
        )?;
        in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
    }
    for (ns, dev) in [
        (&ctl, "mgmt0"),
        (&gw, "mgmt0"),
        (&gw, "lan0"),
        (&gw, "wan0"),
        (&lan, "eth0"),
    ] {
        in_ns(ns, &["ip", "link", "set", dev, "up"])?;
    }
    in_ns(&lan, &["ip", "route", "add", "default", "via", "10.20.0.1"])?;

    println!("== keys (generated where they are used; only public keys travel)");
    let gw_state = lab.dir.join("gateway");
    let gw_key: PublicKey = run(Command::new(daemon)
        .args(["--print-public-key", "--state-dir"])
        .arg(&gw_state))?
    .trim()
    .parse()
    .context("the daemon's public key")?;
    let mut client_keys = Vec::new();
    for c in CLIENTS {
        let private = run(Command::new("wg").arg("genkey"))?;
        let key_file = lab.dir.join(format!("{c}.key"));
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_file)?;
            std::io::Write::write_all(&mut f, private.as_bytes())?;
        }
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, private.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let public: PublicKey = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("wg pubkey")?;
        client_keys.push(public);
    }

    println!("== topology {}", topology.display());
    let text = std::fs::read_to_string(topology)
        .with_context(|| format!("reading {}", topology.display()))?;
    let mut doc = Document::from_yaml(&text)?;
    for ws in &mut doc.workspaces {
        for node in &mut ws.nodes {
            if node.id == GATEWAY {
                node.public_key = gw_key.to_base64();
            } else if let Some(i) = CLIENTS.iter().position(|c| *c == node.id) {
                node.public_key = client_keys[i].to_base64();
            }
        }
    }
    let topo_file = lab.dir.join("topology.yaml");
    std::fs::write(&topo_file, doc.to_yaml())?;

    println!("== manager (namespace {ctl}, https://{MANAGER_ADDR}:{MANAGER_PORT})");
    let mdir = lab.manager_dir();
    run(Command::new(manager)
        .args(["init", "--dir"])
        .arg(&mdir)
        .args(["--san", MANAGER_ADDR]))?;
    let token = run(Command::new(manager)
        .args(["token", "--gateway", GATEWAY, "--dir"])
        .arg(&mdir))?;
    let token_file = lab.dir.join("gateway.token");
    std::fs::write(&token_file, token.trim())?;
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

    println!("== gateway daemon (namespace {gw}, detached WireGuard devices)");
    spawn_in_ns(
        lab,
        &gw,
        "daemon",
        daemon,
        &[
            "--manager",
            &lab.url(),
            "--ca",
            &lab.ca_file().to_string_lossy(),
            "--gateway",
            GATEWAY,
            "--state-dir",
            &gw_state.to_string_lossy(),
            "--token-file",
            &token_file.to_string_lossy(),
            "--detached-devices",
            &device.to_string_lossy(),
            "--report-interval-ms",
            REPORT_MS,
        ],
    )?;

    println!("== waiting for convergence");
    let control = std::fs::read_to_string(lab.control_file())?
        .trim()
        .to_owned();
    let (url, ca) = (lab.url(), lab.ca_file());
    let status = with_netns(&ctl, move || {
        let client = Client::new(&url, Some(&ca))?.with_credential(control);
        until("the gateway to converge", Duration::from_secs(60), || {
            let s = crate::status::block_on(client.status()).ok()?.ok()?;
            let g = s.iter().find(|g| g.id.as_str() == GATEWAY)?;
            (g.observed_generation == Some(g.desired_generation)
                && g.condition == Some(nanami_reconcile::Condition::Ready)
                && g.observed_peers == CLIENTS.len())
            .then_some(())
        })
    });
    status?;

    println!("== clients (wireguard-go, configured from the manager's client configs)");
    let wggo = which("wireguard-go")?;
    for (i, c) in CLIENTS.iter().enumerate() {
        let ns = lab.ns(&format!("c{}", i + 1));
        let ifname = lab.client_if(i);
        let config = enrol_and_fetch(lab, c, client_keys[i])?;
        let private = std::fs::read_to_string(lab.dir.join(format!("{c}.key")))?;
        let text = config.to_wg(None).replace(
            nanami_model::config::PRIVATE_KEY_PLACEHOLDER,
            private.trim(),
        );
        let conf = lab.dir.join(format!("{c}.conf"));
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&conf)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
        }
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(lab.dir.join("sockets"))
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, format!("{ifname}\n").as_bytes())
            })?;
        spawn_in_ns(
            lab,
            &ns,
            &format!("wireguard-go-{c}"),
            &wggo,
            &["--foreground", &ifname],
        )?;
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        until(&sock, Duration::from_secs(10), || {
            Path::new(&sock).exists().then_some(())
        })?;
        in_ns(&ns, &["wg", "setconf", &ifname, &conf.to_string_lossy()])?;
        for a in &config.addresses {
            in_ns(&ns, &["ip", "addr", "add", &a.to_string(), "dev", &ifname])?;
        }
        in_ns(&ns, &["ip", "link", "set", &ifname, "up"])?;
        for peer in &config.peers {
            for net in &peer.allowed_ips {
                in_ns(
                    &ns,
                    &["ip", "route", "replace", &net.to_string(), "dev", &ifname],
                )?;
            }
        }
    }

    println!("== reachability: each client pings {LAN_HOST} (on the LAN) through the gateway");
    for (i, name) in CLIENTS.iter().enumerate() {
        let ns = lab.ns(&format!("c{}", i + 1));
        until(
            &format!("a ping from {ns}"),
            Duration::from_secs(20),
            || in_ns(&ns, &["ping", "-c", "1", "-W", "1", LAN_HOST]).ok(),
        )?;
        let out = in_ns(&ns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", LAN_HOST])?;
        let summary = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("");
        println!("{name} -> {LAN_HOST}: {summary}");
    }

    println!("== status");
    let control = std::fs::read_to_string(lab.control_file())?
        .trim()
        .to_owned();
    let (url, ca) = (lab.url(), lab.ca_file());
    // Wait for a report that carries the handshakes.
    let table = with_netns(&ctl, move || {
        let client = Client::new(&url, Some(&ca))?.with_credential(control);
        let status = until("a report with handshakes", Duration::from_secs(10), || {
            let s = crate::status::block_on(client.status()).ok()?.ok()?;
            s.iter().any(|g| g.newest_handshake.is_some()).then_some(s)
        })?;
        Ok(crate::status::table(&status))
    })?;
    print!("{table}");
    println!(
        "\nthe lab is up. Try:\n  ip netns exec {ctl} {} status --manager {} --ca {} --credential-file {}\n  ip netns exec {} ping {LAN_HOST}\nthen: nanami lab down",
        std::env::current_exe()?.display(),
        lab.url(),
        lab.ca_file().display(),
        lab.control_file().display(),
        lab.ns("c1"),
    );
    Ok(())
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

/// `nanami lab down`: stops the lab's processes (by recorded pid), deletes its
/// namespaces (their links and detached devices with them) and files.
pub fn down(lab: &Lab) -> anyhow::Result<()> {
    if !lab.dir.exists()
        && lab
            .namespaces()
            .iter()
            .all(|ns| !Path::new("/run/netns").join(ns).exists())
    {
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
    while pids.iter().any(|&p| kill(p, 0)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in &pids {
        kill(-pid, libc::SIGKILL);
    }
    // Detached devices run in their own sessions inside the gateway namespace:
    // stop whatever still runs there.
    for ns in lab.namespaces() {
        if let Ok(out) = ip(&["netns", "pids", &ns]) {
            for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
    for ns in lab.namespaces() {
        if Path::new("/run/netns").join(&ns).exists() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("warning: {e:#}");
            }
        }
    }
    let mut sockets: Vec<String> = (0..CLIENTS.len()).map(|i| lab.client_if(i)).collect();
    sockets.push(format!("nm-{GATEWAY}"));
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
