//! Hostile and concurrent use of the manager (DESIGN.md, testing level 6): idle and
//! slow clients, connection floods over the cap, unauthenticated bodies, a
//! 100,000-node topology change, and every handler racing the others. The
//! assertions are liveness (health and authenticated requests answered in bounded
//! time), bounded memory, and nothing lost. The manager is the real binary over TLS
//! on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;
mod hostile_support;

use std::time::{Duration, Instant};

use common::*;
use hostile_support::*;
use nanami_api::wire::{EnrolRequest, Subject, TokenRequest};
use nanami_model::{GatewayId, NodeId};
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;

/// The manager's timeouts in these tests: short, so that the suite is quick, and
/// far above what a loopback client needs.
const HEADER_READ: Duration = Duration::from_secs(4);
const IDLE: Duration = Duration::from_secs(3);
/// Slack for the server's timers and a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

fn flags(max_connections: usize) -> Vec<String> {
    vec![
        "--max-connections".into(),
        max_connections.to_string(),
        "--header-read-timeout-ms".into(),
        HEADER_READ.as_millis().to_string(),
        "--idle-timeout-ms".into(),
        IDLE.as_millis().to_string(),
    ]
}

async fn start(tag: &str, topology: &str, extra: &[String]) -> Env {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    start_with(tag, topology, &extra).await
}

fn small_topology() -> String {
    topology(&client_key(), &client_key(), &[("laptop-1", client_key())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_cut_and_do_not_starve_others() {
    const IDLE_CONNS: usize = 2000;
    const SLOW: usize = 50;
    const KEPT_ALIVE: usize = 50;
    raise_nofile(8192);
    let env = start("idle", &small_topology(), &flags(4096)).await;
    let pid = env.manager.child.id();
    let rss_start = rss_kib(pid);
    let raw = Raw::new(&env);

    // Clients dribbling a request head, one byte every 200 ms, for ever.
    let mut slow = JoinSet::new();
    for _ in 0..SLOW {
        slow.spawn(slow_header(
            raw.clone(),
            Duration::from_millis(200),
            HEADER_READ + SLACK,
        ));
    }
    // Connections that did their handshake and then nothing.
    let opening = Instant::now();
    let mut idle = connect_many(&raw, IDLE_CONNS, 64).await;
    let opened = opening.elapsed();
    // Connections that made one request and kept the connection.
    let mut kept = Vec::new();
    for _ in 0..KEPT_ALIVE {
        let mut c = raw.connect().await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            response_status(&mut c, Duration::from_secs(5)).await,
            Some(200)
        );
        kept.push(c);
    }

    // All of them are held at once, and others are still served promptly.
    let fds = open_fds(pid);
    assert!(
        fds >= IDLE_CONNS + KEPT_ALIVE,
        "the manager holds {fds} descriptors (opening took {opened:?})"
    );
    let worst = status_latency(&env, 5).await;
    let rss_held = rss_kib(pid);
    println!(
        "opened {IDLE_CONNS} idle connections in {opened:?}; manager: {fds} fds, RSS {rss_start} KiB at start, {rss_held} KiB holding them; worst authenticated request {worst:?}"
    );
    assert!(worst < Duration::from_secs(1), "status took {worst:?}");
    // Measured: 10 MiB at start and 54 MiB holding 2,100 TLS connections (about
    // 21 KiB each: rustls's buffers, hyper's connection and read buffer, the task).
    // Bound: twice that.
    assert!(rss_held < 2 * 54 * 1024, "manager RSS {rss_held} KiB");

    // Then the server closes every one of them: idle ones at the header-read
    // timeout (counted from their start), kept-alive ones at the idle timeout, slow
    // ones at the header-read timeout however fast they dribble.
    let mut closing = JoinSet::new();
    for mut c in idle.drain(..) {
        closing.spawn(async move { closed_by_server(&mut c, HEADER_READ + SLACK).await });
    }
    for mut c in kept.drain(..) {
        closing.spawn(async move { closed_by_server(&mut c, IDLE + SLACK).await });
    }
    let mut closed = 0;
    while let Some(c) = closing.join_next().await {
        closed += usize::from(c.unwrap());
    }
    assert_eq!(
        closed,
        IDLE_CONNS + KEPT_ALIVE,
        "idle connections left open by the server"
    );
    while let Some(cut) = slow.join_next().await {
        let cut = cut.unwrap().expect("a slow header was never cut");
        assert!(
            cut < HEADER_READ + SLACK,
            "a slow header was cut only after {cut:?}"
        );
    }
    until(
        "the manager's descriptors back",
        Duration::from_secs(5),
        || async { (open_fds(pid) < 100).then_some(()) },
    )
    .await;
    assert!(status_latency(&env, 3).await < Duration::from_secs(1));
    let accept_failed = log_lines(&env, "accept failed");
    assert!(accept_failed < 10, "{accept_failed} 'accept failed' lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_the_cap_frees_up() {
    const CAP: usize = 100;
    const TRIES: usize = 150;
    raise_nofile(4096);
    let env = start("cap", &small_topology(), &flags(CAP)).await;
    let raw = Raw::new(&env);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..TRIES {
        let t = Instant::now();
        match raw.connect().await {
            Ok(c) => held.push(c),
            Err(_) => {
                // Closed at once by the server, not left in the backlog.
                assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
                refused += 1;
            }
        }
    }
    // The harness's own /healthz client may still hold a slot for a moment.
    assert!(
        (CAP - 5..=CAP).contains(&held.len()),
        "{} connections held with a cap of {CAP}",
        held.len()
    );
    assert_eq!(held.len() + refused, TRIES);
    // Refusals are logged, but not one line each.
    let lines = log_lines(&env, "connections refused");
    assert!(
        (1..=3).contains(&lines),
        "{lines} 'connections refused' lines"
    );

    // Once the timeouts have cut the held connections, a client is served again.
    let mut closing = JoinSet::new();
    for mut c in held.drain(..) {
        closing.spawn(async move { closed_by_server(&mut c, HEADER_READ + SLACK).await });
    }
    while let Some(c) = closing.join_next().await {
        assert!(c.unwrap(), "a held connection was never closed");
    }
    let operator = env.operator();
    until("an authenticated answer", Duration::from_secs(5), || {
        let operator = operator.clone();
        async move { operator.status().await.ok() }
    })
    .await;
}

/// Sends `head`, then `sent` bytes of its body, then stalls; returns the answer's
/// status and how long after the head it came (`None`: no answer within `within`).
async fn stalled_body(
    raw: Raw,
    head: String,
    sent: usize,
    within: Duration,
    hold: tokio::sync::watch::Receiver<bool>,
) -> (Option<u16>, Duration) {
    let stream = raw.connect().await.expect("TLS connection");
    let (mut rd, mut wr) = tokio::io::split(stream);
    if let Err(e) = wr.write_all(head.as_bytes()).await {
        // The server closed a fresh connection before its head: say what it said.
        let status = response_status(&mut rd, Duration::from_secs(1)).await;
        panic!("sending the head failed: {e} (the server answered {status:?})");
    }
    let t = Instant::now();
    let writer = async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = sent;
        while left > 0 {
            let n = left.min(chunk.len());
            if wr.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            left -= n;
        }
        // Stall, holding the connection, until the test is done.
        let mut hold = hold;
        let _ = hold.wait_for(|h| !*h).await;
        drop(wr);
    };
    tokio::pin!(writer);
    let status = tokio::select! {
        s = response_status(&mut rd, within) => s,
        () = &mut writer => None,
    };
    let took = t.elapsed();
    // Keep the connection (its unsent rest) until the test is done.
    writer.await;
    (status, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    const EACH: usize = 40;
    const PROMPT: Duration = Duration::from_secs(3);
    raise_nofile(4096);
    let env = start("bodies", &small_topology(), &[]).await;
    let pid = env.manager.child.id();
    let rss_start = rss_kib(pid);
    let raw = Raw::new(&env);
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(true);
    let mut clients = JoinSet::new();
    for i in 0..2 * EACH {
        let (head, sent, want) = if i % 2 == 0 {
            // A topology of the largest size allowed, with no credential: 1 MiB, then
            // nothing.
            (
                "PUT /v1/topology HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/yaml\r\nContent-Length: 33554432\r\n\r\n",
                1 << 20,
                401,
            )
        } else {
            // Enrolment is unauthenticated by design: its body limit is small.
            (
                "POST /v1/enrol HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n",
                256 << 10,
                413,
            )
        };
        let raw = raw.clone();
        let hold = hold_rx.clone();
        clients.spawn(async move {
            (
                want,
                stalled_body(raw, head.to_owned(), sent, PROMPT, hold).await,
            )
        });
    }
    // While they all hold their connections, the manager serves others promptly.
    let worst = status_latency(&env, 5).await;
    let rss_held = rss_kib(pid);
    println!("RSS {rss_start} KiB at start, {rss_held} KiB with {} stalled bodies; worst authenticated request {worst:?}", 2 * EACH);
    assert!(worst < Duration::from_secs(1), "status took {worst:?}");
    // A manager reading these bodies would hold 40 MiB of topology and 10 MiB of
    // enrolment bodies; refusing them first holds none. Measured: 10 MiB at start,
    // 12 MiB holding them. Bound: 40 MiB, under what reading them would take.
    assert!(rss_held < 40 * 1024, "manager RSS {rss_held} KiB");
    let _ = hold_tx.send(false);
    while let Some(r) = clients.join_next().await {
        let (want, (status, took)) = r.unwrap();
        assert_eq!(
            status,
            Some(want),
            "a stalled body got {status:?} after {took:?} (want {want} within {PROMPT:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_node_topology_change_does_not_stall_healthz() {
    let env = start("100k", &small_topology(), &[]).await;
    let document = big_topology(100_000, 0);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(poll_healthz(
        env.manager.url(),
        env.ca(),
        Duration::from_millis(100),
        stop_rx,
    ));
    let t = Instant::now();
    let answer = env
        .control()
        .with_timeout(Duration::from_secs(120))
        .put_topology(&document)
        .await
        .unwrap();
    let took = t.elapsed();
    let _ = stop_tx.send(true);
    let (worst, polls) = poller.await.unwrap();
    println!(
        "PUT of a 100,000-node topology ({} MB, {} gateways changed) took {took:?}; worst /healthz of {polls}: {worst:?}",
        document.len() / 1_000_000,
        answer.changed.len()
    );
    // Its 200 gateways, and the small topology's two that it removes.
    assert!(answer.changed.len() >= 200, "every gateway compiled");
    assert!(polls >= 3, "only {polls} health polls");
    assert!(
        worst < Duration::from_millis(500),
        "/healthz took {worst:?} during the change"
    );
}

/// An enrolment request naming no subject (built from JSON: the wire type is
/// growing optional fields).
fn enrol_request(token: String, key: nanami_model::PublicKey) -> EnrolRequest {
    serde_json::from_value(serde_json::json!({ "token": token, "public_key": key })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_enrolments_reports_topology_changes_and_health_ticks_never_hang() {
    const RACE: Duration = Duration::from_secs(8);
    raise_nofile(4096);
    let staging = TempDir::new("race-keys");
    let a_dir = staging.0.join("gw-a");
    let ka = gateway_key(&a_dir);
    let kb = gateway_key(&staging.0.join("gw-b"));
    let laptop = client_key();
    let doc_a = topology(&ka, &kb, &[("laptop-1", laptop)]);
    let doc_b = topology(
        &ka,
        &kb,
        &[("laptop-1", laptop), ("laptop-2", client_key())],
    );
    let mut env = start("race", &doc_a, &[]).await;
    // One real daemon reporting every 200 ms; the manager's heartbeat ticks every
    // 50 ms (a quarter of the report interval).
    let token = env.token("gw-a").await;
    let daemon = Daemon::start(&env, "gw-a", &a_dir, Some(token)).await;
    env.converged(&["gw-a"]).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(poll_healthz(
        env.manager.url(),
        env.ca(),
        Duration::from_millis(100),
        stop_rx.clone(),
    ));
    let deadline = Instant::now() + RACE;
    // Enrolments: valid ones (gateway gw-b, node laptop-1), a used token, a node
    // token with another key.
    let enrolments = {
        let control = env.control();
        let anonymous = env.client();
        tokio::spawn(async move {
            let mut rounds = 0;
            while Instant::now() < deadline {
                for (subject, key) in [
                    (Subject::Gateway(GatewayId::new("gw-b").unwrap()), kb),
                    (Subject::Node(NodeId::new("laptop-1").unwrap()), laptop),
                ] {
                    let token = control
                        .create_token(&TokenRequest {
                            subject,
                            ttl_seconds: Some(60),
                        })
                        .await
                        .unwrap()
                        .token;
                    let request = enrol_request(token, key);
                    anonymous.enrol(&request).await.unwrap();
                    let again = anonymous.enrol(&request).await.unwrap_err();
                    assert_eq!(again.status(), Some(http::StatusCode::UNAUTHORIZED));
                }
                let token = control
                    .create_token(&TokenRequest {
                        subject: Subject::Node(NodeId::new("laptop-1").unwrap()),
                        ttl_seconds: Some(60),
                    })
                    .await
                    .unwrap()
                    .token;
                let wrong = anonymous
                    .enrol(&enrol_request(token, kb))
                    .await
                    .unwrap_err();
                assert_eq!(wrong.status(), Some(http::StatusCode::UNAUTHORIZED));
                rounds += 1;
            }
            rounds
        })
    };
    // Topology changes, alternating two documents.
    let changes = {
        let control = env.control();
        let (doc_a, doc_b) = (doc_a.clone(), doc_b.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let doc = if n % 2 == 0 { &doc_b } else { &doc_a };
                let r = control.put_topology(doc).await.unwrap();
                assert!(!r.changed.is_empty(), "change {n} changed nothing");
                n += 1;
            }
            n
        })
    };
    // Status reads racing it all.
    let reads = {
        let operator = env.operator();
        tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                operator.status().await.unwrap();
                n += 1;
            }
            n
        })
    };
    let rounds = enrolments.await.unwrap();
    let changes = changes.await.unwrap();
    let reads = reads.await.unwrap();
    let _ = stop_tx.send(true);
    let (worst, polls) = poller.await.unwrap();
    println!(
        "{rounds} enrolment rounds, {changes} topology changes, {reads} status reads; worst /healthz of {polls}: {worst:?}"
    );
    assert!(rounds >= 3 && changes >= 3 && reads >= 3);
    assert!(
        worst < Duration::from_secs(1),
        "/healthz took {worst:?} during the race"
    );
    // Nothing lost: the daemon ends on the last document's generation.
    env.converged(&["gw-a"]).await;

    // Shutdown is bounded even with many open connections and a long-poll in
    // flight (the daemon's).
    let _idle = connect_many(&Raw::new(&env), 1000, 64).await;
    let took = terminate(&mut env, Duration::from_secs(5));
    println!("the manager exited {took:?} after SIGTERM");
    drop(daemon);
    drop(staging);
}
