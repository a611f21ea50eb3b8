//! Helpers of the hostile suite: a manager started with extra flags, raw TLS
//! connections, the manager's RSS and file descriptors, a 100,000-node topology.
#![allow(clippy::unwrap_used, dead_code)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nanami_api::Client;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::{Env, Raw};

/// [`Env::start`] with `extra` flags on `serve`.
pub async fn start_with(tag: &str, topology: &str, extra: &[&str]) -> Env {
    Env::start_with_flags(tag, topology, extra).await
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (the manager, its
/// child, inherits it), failing the test if the hard limit is lower.
pub fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes one rlimit through a pointer to a live local.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert!(
        limit.rlim_max >= want,
        "this test needs {want} file descriptors; the hard limit is {}",
        limit.rlim_max
    );
    if limit.rlim_cur < want {
        limit.rlim_cur = want;
        // SAFETY: reads one rlimit from a live local.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
}

/// The manager's resident memory, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The manager's open file descriptors.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// How many lines of the manager's log contain `needle`.
pub fn log_lines(env: &Env, needle: &str) -> usize {
    std::fs::read_to_string(&env.manager.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// `n` idle connections, `parallel` handshakes at a time.
pub async fn connect_many(raw: &Raw, n: usize, parallel: usize) -> Vec<TlsStream<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && tasks.len() < parallel {
            let raw = raw.clone();
            tasks.spawn(async move { raw.connect().await });
            started += 1;
        }
        let conn = tasks.join_next().await.unwrap().unwrap();
        out.push(conn.unwrap_or_else(|e| panic!("connection {}: {e}", out.len())));
    }
    out
}

/// Whether the server closes `stream` within `within` (EOF or an error; a response
/// the server sends first, such as a 408, is read past).
pub async fn closed_by_server<S>(stream: &mut S, within: Duration) -> bool
where
    S: tokio::io::AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A client sending a request head one byte at a time, every `pace`, never
/// finishing it. Returns how long the server let it go on (from the connection's
/// start), or `None` if the server was still reading it after `give_up`.
pub async fn slow_header(raw: Raw, pace: Duration, give_up: Duration) -> Option<Duration> {
    let stream = raw.connect().await.unwrap();
    let start = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let head = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n".iter();
    let filler = std::iter::repeat(b"X-Slow-Header: a\r\n".iter()).flatten();
    let writer = async move {
        for b in head.chain(filler) {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
    };
    tokio::select! {
        closed = closed_by_server(&mut rd, give_up) => closed.then(|| start.elapsed()),
        () = writer => Some(start.elapsed()),
    }
}

/// The status code of the HTTP response at the start of `stream`, read within
/// `within` (`None`: no status line in time or the connection ended first).
pub async fn response_status<S>(stream: &mut S, within: Duration) -> Option<u16>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = got.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&got[..end]).into_owned();
            return line.split(' ').nth(1)?.parse().ok();
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(Ok(_) | Err(_)) | Err(_) => return None,
        }
    }
}

/// The worst latency of `GET /healthz`, polled every `every` until `stop` turns
/// true; a failed answer counts as `Duration::MAX`.
pub async fn poll_healthz(
    env_url: String,
    ca: std::path::PathBuf,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Duration, usize) {
    let client = Client::new(&env_url, Some(&ca)).unwrap();
    let mut worst = Duration::ZERO;
    let mut polls = 0;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        interval.tick().await;
        let t = Instant::now();
        let answer = client
            .send_raw(http::Method::GET, "/healthz", None, Duration::from_secs(10))
            .await;
        let took = match answer {
            Ok(a) if a.status.is_success() => t.elapsed(),
            Ok(_) | Err(_) => Duration::MAX,
        };
        worst = worst.max(took);
        polls += 1;
    }
    (worst, polls)
}

/// The worst latency of `n` authenticated `GET /v1/status` calls (operator), each on
/// a new connection.
pub async fn status_latency(env: &Env, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), env.operator().status()).await;
        let took = t.elapsed();
        assert!(
            matches!(answer, Ok(Ok(_))),
            "an authenticated request failed after {took:?}: {answer:?}"
        );
        worst = worst.max(took);
    }
    worst
}

/// A deterministic, valid-looking WireGuard public key for `name`.
fn key(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(name.as_bytes()))
}

/// A topology of `nodes` nodes, in the shape of `bench/topology.py`: workspaces of
/// 1,000 nodes (two gateways serving two networks, clients in one or both, some
/// exit users, some pending), addresses left to the allocator. `variant` changes
/// every client's endpoint port, so two variants differ in every gateway's state.
pub fn big_topology(nodes: usize, variant: u16) -> String {
    const PER: usize = 1000;
    let mut out = String::from(
        r#"{"version":1,"regions":[{"id":"eu","state":"active"},{"id":"us","state":"active"}],"workspaces":["#,
    );
    for w in 0..nodes.div_ceil(PER) {
        if w > 0 {
            out.push(',');
        }
        let ws = format!("ws-{w}");
        let size = PER.min(nodes - w * PER);
        let _ = write!(
            out,
            r#"{{"id":"{ws}","tenant":"tenant-{w}","regions":["eu","us"],"networks":[{{"id":"corp","overlay":"10.{w}.0.0/20","routes":["172.16.{w}.0/24"],"exit":true}},{{"id":"lab","overlay":"10.{w}.64.0/22","routes":["192.168.{w}.0/24"],"nat":false,"gateways":{{"policy":"manual","manual":["g{w}-1","g{w}-0"]}}}}],"nodes":["#
        );
        for g in 0..2 {
            let _ = write!(
                out,
                r#"{{"id":"{ws}-gw-{g}","public_key":"{}","status":"active","memberships":[{{"network":"corp"}},{{"network":"lab"}}]}},"#,
                key(&format!("{ws}-gw-{g}"))
            );
        }
        for n in 0..size - 2 {
            let lab = if n % 3 == 0 {
                r#",{"network":"lab"}"#
            } else {
                ""
            };
            let status = if n % 50 == 49 { "pending" } else { "active" };
            let endpoints = if n % 2 == 1 {
                format!(
                    r#"["192.0.2.{}:{}"]"#,
                    n % 250 + 1,
                    40000 + (n % 20000) as u16 / 2 + variant
                )
            } else {
                "[]".into()
            };
            let _ = write!(
                out,
                r#"{{"id":"{ws}-n{n}","public_key":"{}","status":"{status}","endpoints":{endpoints},"memberships":[{{"network":"corp"}}{lab}],"exit":{}}}"#,
                key(&format!("{ws}-n{n}")),
                n % 10 == 0
            );
            if n + 3 < size {
                out.push(',');
            }
        }
        let _ = write!(
            out,
            r#"],"gateways":[{{"id":"g{w}-0","node":"{ws}-gw-0","region":"eu","networks":["corp","lab"],"roles":["ingress","egress","exit"],"endpoint":"198.18.{w}.1:51820","listen_port":51820}},{{"id":"g{w}-1","node":"{ws}-gw-1","region":"us","networks":["corp","lab"],"roles":["ingress","egress","exit"],"endpoint":"198.18.{w}.2:51820","listen_port":51820}}]}}"#
        );
    }
    out.push_str("]}");
    out
}

/// Sends SIGTERM to the manager and returns how long it took to exit (failing after
/// `within`).
pub fn terminate(env: &mut Env, within: Duration) -> Duration {
    let pid = i32::try_from(env.manager.child.id()).unwrap();
    let t = Instant::now();
    // SAFETY: kill(2) with a pid this test spawned and still owns (not yet reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    loop {
        if let Some(status) = env.manager.child.try_wait().unwrap() {
            assert!(status.success(), "the manager exited with {status}");
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "the manager did not exit within {within:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of the manager's log.
pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
