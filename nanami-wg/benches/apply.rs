//! Items 2 and 3 of `BENCHMARKS.md` (run by `bench/run`; needs root, `wg`,
//! `wireguard-go` and `ip`). Every run uses fresh network namespaces.
//!
//! - `peers`: one pass of `LinuxPlatform` (observe + plan + apply) that creates an
//!   interface with 10,000 peers (in-process Nanami device), against `wg setconf`
//!   of the same peers (same keys, same allowed IPs) into a `wireguard-go` device;
//!   then a 1% churn (a third of the changed peers updated, a third removed, a third
//!   added): Nanami's pass against `wg syncconf` of the new configuration. The churn
//!   plan must touch exactly the changed peers, or the benchmark fails.
//! - `routes`: one pass that adds 10,000 routes (Nanami's table and protocol, on a
//!   veth link) through rtnetlink, against `ip -batch` of the same routes.
//!
//! ```text
//! cargo bench -p nanami-wg --bench apply -- peers --runs 5 --count 10000
//! cargo bench -p nanami-wg --bench apply -- routes --runs 5 --count 10000
//! ```
//!
//! Prints one `name=v1,v2,…` line per figure (one value per run) on stdout, for
//! `bench/run`; progress goes to stderr.
#![allow(clippy::unwrap_used)] // a benchmark's setup may panic

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ifname, require, run, Netns, WgGo};
use ipnet::{IpNet, Ipv4Net};
use nanami_model::{
    GatewayState, InterfaceName, InterfaceState, PeerState, PrivateKey, PublicKey, Route,
};
use nanami_reconcile::{plan, Op, OpKind, Platform};
use nanami_wg::keyfile;
use nanami_wg::linux::{DeviceMode, LinuxConfig, LinuxPlatform};

struct Args {
    what: String,
    runs: usize,
    count: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        what: "peers".into(),
        runs: 5,
        count: 10_000,
    };
    // `cargo bench` appends `--bench`.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--count" => args.count = it.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "peers" | "routes" => args.what = a,
            other => panic!("usage: apply [peers|routes] [--runs N] [--count N] (got {other})"),
        }
    }
    assert!(args.count >= 100, "--count must be at least 100");
    args
}

fn main() {
    let args = parse_args();
    require(&["wg", "wireguard-go"]);
    let mut figures: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for i in 0..args.runs {
        // Alternate which side goes first so that a drift in load hits both alike.
        let first = i % 2 == 0;
        let run = match args.what.as_str() {
            "peers" => peers_run(args.count, first),
            _ => routes_run(args.count, first),
        };
        for (name, value) in run {
            eprintln!("{} run {}: {name} = {value:.3}", args.what, i + 1);
            figures.entry(name).or_default().push(value);
        }
    }
    for (name, values) in figures {
        let values: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        println!("{name}={}", values.join(","));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `f` on a thread inside `ns` with a runtime and a platform on an in-process
/// Nanami device (never the kernel's WireGuard), its state (key) under `dir`.
fn with_platform<R: Send>(
    ns: &Netns,
    dir: &Path,
    f: impl FnOnce(&tokio::runtime::Runtime, LinuxPlatform) -> R + Send,
) -> R {
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _context = rt.enter();
        keyfile::load_or_generate(&dir.join("private.key"), &mut rand::rngs::OsRng).unwrap();
        let platform = LinuxPlatform::new(LinuxConfig {
            uapi_dir: None,
            device: DeviceMode::InProcess,
            prefer_kernel: false,
            ..LinuxConfig::in_dir(dir)
        })
        .unwrap();
        f(&rt, platform)
    })
}

/// One pass as the reconciler makes it: observe, plan, apply every op. Returns the
/// plan's ops and the time the whole pass took.
async fn pass(platform: &mut LinuxPlatform, desired: &GatewayState) -> (Vec<Op>, Duration) {
    let start = Instant::now();
    let observed = platform.observe().await.unwrap();
    let ops = plan(desired, &observed).into_ops();
    for op in &ops {
        platform.apply(op).await.unwrap();
    }
    (ops, start.elapsed())
}

async fn assert_converged(platform: &mut LinuxPlatform, desired: &GatewayState) {
    let observed = platform.observe().await.unwrap();
    let left = plan(desired, &observed);
    assert!(left.is_empty(), "not converged after one pass: {left}");
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nmb-apply-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key(i: usize) -> PrivateKey {
    let mut bytes = [0x42u8; 32];
    bytes[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    PrivateKey::from_bytes(bytes)
}

fn host(base: u32, i: usize) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base + i as u32), 32).unwrap())
}

/// `count` peers with one /32 each from 100.80.0.0/14 (keys from `key(i)`).
fn peers(count: usize) -> BTreeMap<PublicKey, PeerState> {
    (0..count)
        .map(|i| (key(i).public_key(), peer(host(0x6450_0002, i))))
        .collect()
}

fn peer(ip: IpNet) -> PeerState {
    PeerState {
        endpoint: None,
        allowed_ips: [ip].into(),
        persistent_keepalive: None,
    }
}

/// The desired state after a 1% churn of `count` peers, spread over the key range,
/// and the keys it changes.
fn churned(
    mut peers: BTreeMap<PublicKey, PeerState>,
    count: usize,
) -> (BTreeMap<PublicKey, PeerState>, BTreeSet<PublicKey>) {
    let churn = count / 100;
    let stride = count / churn;
    let mut changed = BTreeSet::new();
    for c in 0..churn {
        let i = c * stride;
        let k = match c % 3 {
            0 => {
                let k = key(i).public_key();
                peers.insert(k, peer(host(0x6453_0002, i))); // moves to 100.83/16
                k
            }
            1 => {
                let k = key(i).public_key();
                peers.remove(&k);
                k
            }
            _ => {
                let k = key(count + i).public_key();
                peers.insert(k, peer(host(0x6450_0002, count + i)));
                k
            }
        };
        changed.insert(k);
    }
    (peers, changed)
}

fn gateway(peers: BTreeMap<PublicKey, PeerState>) -> GatewayState {
    let mut iface = InterfaceState {
        listen_port: Some(51820),
        peers,
        ..InterfaceState::default()
    };
    iface.addresses.insert("100.80.0.1/14".parse().unwrap());
    let mut state = GatewayState::default();
    state
        .interfaces
        .insert(InterfaceName::owned("bench0").unwrap(), iface);
    state
}

/// The same peers as `wg setconf` text, with `private` as the interface key.
fn wg_conf(private: &PrivateKey, peers: &BTreeMap<PublicKey, PeerState>) -> String {
    let mut out = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n",
        private.to_base64_secret().as_str()
    );
    for (k, p) in peers {
        let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        write!(
            out,
            "\n[Peer]\nPublicKey = {k}\nAllowedIPs = {}\n",
            ips.join(", ")
        )
        .unwrap();
    }
    out
}

fn vm_kib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn timed(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    run(cmd);
    start.elapsed()
}

fn peers_run(count: usize, nanami_first: bool) -> Vec<(&'static str, f64)> {
    let want = peers(count);
    let (after, changed) = churned(want.clone(), count);
    let mut out = Vec::new();
    let nanami = |out: &mut Vec<(&'static str, f64)>| {
        let ns = Netns::new("nmb-apply");
        let dir = scratch("nanami");
        let (desired, churn) = (gateway(want.clone()), gateway(after.clone()));
        let figures = with_platform(&ns, &dir, |rt, mut platform| {
            rt.block_on(async {
                let rss_before = vm_kib("thread-self", "VmRSS:");
                let (ops, full) = pass(&mut platform, &desired).await;
                let peer_ops = ops.iter().filter(|o| o.kind() == OpKind::AddPeer).count();
                assert_eq!(peer_ops, count, "the first pass adds every peer");
                assert_converged(&mut platform, &desired).await;
                let rss_delta = vm_kib("thread-self", "VmRSS:") - rss_before;
                let (ops, churn_time) = pass(&mut platform, &churn).await;
                let mut kinds: BTreeMap<OpKind, usize> = BTreeMap::new();
                let mut touched = BTreeSet::new();
                for op in &ops {
                    *kinds.entry(op.kind()).or_default() += 1;
                    let (Op::AddPeer { public_key, .. }
                    | Op::UpdatePeer { public_key, .. }
                    | Op::RemovePeer { public_key, .. }) = op
                    else {
                        panic!("the churn plan touches more than peers: {op}");
                    };
                    touched.insert(*public_key);
                }
                assert_eq!(ops.len(), changed.len(), "one op per changed peer");
                assert_eq!(
                    touched, changed,
                    "the churn plan touches only changed peers"
                );
                assert_converged(&mut platform, &churn).await;
                platform.teardown().await.unwrap();
                let n = |k| kinds.get(&k).copied().unwrap_or(0) as f64;
                vec![
                    ("nanami_apply_ms", ms(full)),
                    ("nanami_churn_ms", ms(churn_time)),
                    ("nanami_churn_ops", ops.len() as f64),
                    ("nanami_churn_add", n(OpKind::AddPeer)),
                    ("nanami_churn_update", n(OpKind::UpdatePeer)),
                    ("nanami_churn_remove", n(OpKind::RemovePeer)),
                    ("nanami_harness_rss_delta_kib", rss_delta),
                ]
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
        out.extend(figures);
    };
    let wggo = |out: &mut Vec<(&'static str, f64)>| {
        let ns = Netns::new("nmb-wggo");
        let dir = scratch("wggo");
        let wg = WgGo::start(&ns, &ifname("b"));
        let private = key(usize::MAX);
        let (full, churn) = (dir.join("full.conf"), dir.join("churn.conf"));
        std::fs::write(&full, wg_conf(&private, &want)).unwrap();
        std::fs::write(&churn, wg_conf(&private, &after)).unwrap();
        // `wg` reaches a userspace device through its UAPI socket, the same from
        // every namespace.
        let setconf = timed(Command::new("wg").arg("setconf").arg(&wg.ifname).arg(&full));
        let shown = ns
            .exec("wg", &["show", &wg.ifname, "peers"])
            .lines()
            .count();
        assert_eq!(shown, count, "wireguard-go has every peer");
        let rss = vm_kib(&wg.pid.to_string(), "VmRSS:");
        let syncconf = timed(
            Command::new("wg")
                .arg("syncconf")
                .arg(&wg.ifname)
                .arg(&churn),
        );
        let _ = std::fs::remove_dir_all(&dir);
        out.extend([
            ("wggo_setconf_ms", ms(setconf)),
            ("wggo_syncconf_churn_ms", ms(syncconf)),
            ("wggo_rss_kib", rss),
        ]);
    };
    if nanami_first {
        nanami(&mut out);
        wggo(&mut out);
    } else {
        wggo(&mut out);
        nanami(&mut out);
    }
    out
}

fn routes_run(count: usize, nanami_first: bool) -> Vec<(&'static str, f64)> {
    const LINK: &str = "nmb-r0";
    let link = InterfaceName::new(LINK).unwrap();
    // 10,000 /32s from 172.20.0.0/14, inside the namespace only.
    let routes: BTreeSet<Route> = (0..count)
        .map(|i| Route::nanami(host(0xac14_0000, i), link.clone()))
        .collect();
    // A veth pair inside the namespace (this kernel may have no `dummy` driver).
    let link_up = |ns: &Netns| {
        ns.ip(&[
            "link", "add", LINK, "type", "veth", "peer", "name", "nmb-r1",
        ]);
        ns.ip(&["link", "set", LINK, "up"]);
        ns.ip(&["link", "set", "nmb-r1", "up"]);
    };
    let mut out = Vec::new();
    let nanami = |out: &mut Vec<(&'static str, f64)>| {
        let ns = Netns::new("nmb-routes");
        link_up(&ns);
        let dir = scratch("routes");
        let desired = GatewayState {
            routes: routes.clone(),
            ..GatewayState::default()
        };
        let time = with_platform(&ns, &dir, |rt, mut platform| {
            rt.block_on(async {
                let (ops, time) = pass(&mut platform, &desired).await;
                assert_eq!(ops.len(), count, "one op per route");
                assert_converged(&mut platform, &desired).await;
                time
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
        out.push(("nanami_routes_ms", ms(time)));
    };
    let batch = |out: &mut Vec<(&'static str, f64)>| {
        let ns = Netns::new("nmb-ipbatch");
        link_up(&ns);
        let dir = scratch("ipbatch");
        let file = dir.join("routes.batch");
        let mut text = String::new();
        for r in &routes {
            writeln!(
                text,
                "route add {} dev {LINK} table {} proto {}",
                r.destination, r.table, r.protocol
            )
            .unwrap();
        }
        std::fs::write(&file, text).unwrap();
        let time = timed(
            Command::new("ip")
                .args(["-n", ns.name(), "-batch"])
                .arg(&file),
        );
        let listed = ns
            .exec("ip", &["route", "show", "table", "7373"])
            .lines()
            .count();
        assert_eq!(listed, count, "ip -batch added every route");
        let _ = std::fs::remove_dir_all(&dir);
        out.push(("ipbatch_routes_ms", ms(time)));
    };
    if nanami_first {
        nanami(&mut out);
        batch(&mut out);
    } else {
        batch(&mut out);
        nanami(&mut out);
    }
    out
}
