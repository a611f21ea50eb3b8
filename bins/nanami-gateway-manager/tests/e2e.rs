//! The manager and daemons together, on loopback over TLS: the manager is the real
//! binary, daemons run in-process on `SimPlatform`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use nanami_api::wire::{EnrolRequest, Subject, TokenRequest};
use nanami_model::{GatewayId, NodeId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_convergence_and_a_topology_change_at_a_new_generation() {
    let f = fleet("converge").await;
    let before = f.env.control().status().await.unwrap();
    let gen = |s: &[nanami_api::wire::GatewayStatus], id: &str| {
        s.iter()
            .find(|g| g.id.as_str() == id)
            .unwrap()
            .desired_generation
    };
    let (a0, b0) = (gen(&before, "gw-a"), gen(&before, "gw-b"));
    let a_status = before.iter().find(|g| g.id.as_str() == "gw-a").unwrap();
    assert_eq!(
        a_status.peers, 1,
        "gw-a serves laptop-1 (auto: first gateway by id)"
    );
    assert!(!a_status.key_mismatch);

    // Add a client: only gw-a (which serves the network's clients) changes.
    let text = std::fs::read_to_string(f.env.topology_file()).unwrap();
    let ka = common::gateway_key(&f.a.state_dir);
    let kb = common::gateway_key(&f.b.state_dir);
    let new = common::topology(
        &ka,
        &kb,
        &[("laptop-1", f.client), ("laptop-2", client_key())],
    );
    assert_ne!(text, new);
    let answer = f.env.control().put_topology(&new).await.unwrap();
    assert_eq!(
        answer
            .changed
            .keys()
            .map(|g| g.as_str())
            .collect::<Vec<_>>(),
        ["gw-a"]
    );
    assert_eq!(answer.changed[&GatewayId::new("gw-a").unwrap()], a0 + 1);
    let after = f.env.converged(&["gw-a", "gw-b"]).await;
    assert_eq!(gen(&after, "gw-a"), a0 + 1);
    assert_eq!(
        gen(&after, "gw-b"),
        b0,
        "an unchanged gateway keeps its generation"
    );
    let a_after = after.iter().find(|g| g.id.as_str() == "gw-a").unwrap();
    assert_eq!((a_after.peers, a_after.observed_peers), (2, 2));

    // The same document again changes nothing.
    let again = f.env.control().put_topology(&new).await.unwrap();
    assert!(again.changed.is_empty());
    assert_eq!(again.revision, answer.revision);

    // The topology file is watched too: writing it applies it.
    let third = common::topology(
        &ka,
        &kb,
        &[("laptop-1", f.client), ("laptop-3", client_key())],
    );
    std::fs::write(f.env.topology_file(), &third).unwrap();
    let control = f.env.control();
    until("the file reload", Duration::from_secs(10), || {
        let control = control.clone();
        async move {
            let s = control.status().await.ok()?;
            (gen(&s, "gw-a") == a0 + 2).then_some(())
        }
    })
    .await;
    f.env.converged(&["gw-a", "gw-b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_restart_keeps_state() {
    let mut f = fleet("mrestart").await;
    let before = f.env.control().status().await.unwrap();
    let revision_before = stored_revision(&f.env.db());
    f.env.restart_manager().await;
    let after = f.env.control().status().await.unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.id, a.id);
        assert_eq!(
            b.desired_generation, a.desired_generation,
            "generation of {} kept",
            a.id
        );
        assert_eq!(
            b.observed_generation, a.observed_generation,
            "observed state of {} kept",
            a.id
        );
    }
    assert_eq!(
        stored_revision(&f.env.db()),
        revision_before,
        "the same file is not a new revision"
    );
    // Credentials survived: the daemons keep reporting with them.
    let t0 = after[0].last_report_unix_ms.unwrap();
    let control = f.env.control();
    until(
        "a report after the restart",
        Duration::from_secs(10),
        || {
            let control = control.clone();
            async move {
                let s = control.status().await.ok()?;
                (s[0].last_report_unix_ms? > t0).then_some(())
            }
        },
    )
    .await;
    f.env.converged(&["gw-a", "gw-b"]).await;
    f.a.stop().await;
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restart_while_the_manager_is_down_serves_last_known_good_and_reconverges() {
    let mut f = fleet("drestart").await;
    let status = f.env.control().status().await.unwrap();
    let a_gen = status
        .iter()
        .find(|g| g.id.as_str() == "gw-a")
        .unwrap()
        .desired_generation;
    f.env.manager.stop();
    f.a.stop().await;
    // A new daemon process (fresh, empty machine) with the manager down: it applies
    // the saved state on its own.
    let dir = f.a.state_dir.clone();
    f.a = Daemon::start(&f.env, "gw-a", &dir, None).await;
    let mut rx = f.a.status.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| {
            s.applied_generation == Some(a_gen) && s.condition == nanami_reconcile::Condition::Ready
        }),
    )
    .await
    .expect("the daemon applies its last-known-good state without the manager")
    .unwrap();
    f.env.restart_manager().await;
    let after = f.env.converged(&["gw-a", "gw-b"]).await;
    assert_eq!(
        after
            .iter()
            .find(|g| g.id.as_str() == "gw-a")
            .unwrap()
            .desired_generation,
        a_gen
    );
    f.a.stop().await;
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_generation_is_refused() {
    let mut f = fleet("replay").await;
    f.a.stop().await;
    // The daemon has already applied generation 50 (from a manager whose store was
    // since restored from an old backup): the manager's generation is lower.
    let file = f.a.state_dir.join("desired.json");
    let mut saved: nanami_api::wire::GatewayDesired =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let offered = saved.generation;
    saved.generation = 50;
    // A daemon from before digests (or one whose saved state lost it).
    saved.digest = None;
    std::fs::write(&file, serde_json::to_vec(&saved).unwrap()).unwrap();
    let dir = f.a.state_dir.clone();
    f.a = Daemon::start(&f.env, "gw-a", &dir, None).await;
    let mut rx = f.a.status.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.applied_generation == Some(50)),
    )
    .await
    .unwrap()
    .unwrap();
    // The manager offered its older generation (the first poll asks without
    // `after`); the daemon refused it and kept 50, on disk too.
    let refusal = format!("offered={offered} in_force=50 why=older than the one in force");
    until(
        "the refusal in the daemon's log",
        Duration::from_secs(10),
        || {
            let found = String::from_utf8_lossy(&log_buffer().lock().unwrap()).contains(&refusal);
            async move { found.then_some(()) }
        },
    )
    .await;
    // The manager notices a generation it never issued (a fork), shows it, and
    // serves its own state again above it: numbers never repeat, and the daemon
    // converges on the manager's truth at 51.
    let control = f.env.control();
    let status = until(
        "the fork noticed and healed at 51",
        Duration::from_secs(10),
        || {
            let control = control.clone();
            async move {
                let s = control.status().await.ok()?;
                let a = s.into_iter().find(|g| g.id.as_str() == "gw-a")?;
                (a.desired_generation == 51 && a.observed_generation == Some(51)).then_some(a)
            }
        },
    )
    .await;
    let fork = status.generation_fork.expect("the fork is shown");
    assert_eq!(
        (fork.reported_generation, fork.reissued_generation),
        (50, 51)
    );
    let kept: nanami_api::wire::GatewayDesired =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(kept.generation, 51);
    f.a.stop().await;
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_credential_is_denied_another_gateways_state() {
    let f = fleet("deny").await;
    let cred = std::fs::read_to_string(f.a.state_dir.join("credential"))
        .unwrap()
        .trim()
        .to_owned();
    let a = f.env.client().with_credential(cred);
    let gw_a = GatewayId::new("gw-a").unwrap();
    let gw_b = GatewayId::new("gw-b").unwrap();
    assert!(a
        .desired(&gw_a, None, Duration::ZERO)
        .await
        .unwrap()
        .is_some());
    let denied = a.desired(&gw_b, None, Duration::ZERO).await.unwrap_err();
    assert_eq!(denied.status(), Some(StatusCode::FORBIDDEN));
    let denied = a.observed(&gw_b).await.unwrap_err();
    assert_eq!(denied.status(), Some(StatusCode::FORBIDDEN));
    let body = br#"{"bogus": true}"#.to_vec();
    let put = a
        .send_raw(
            Method::PUT,
            "/v1/gateways/gw-b/observed",
            Some(("application/json", body)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(put.status, StatusCode::FORBIDDEN);
    let err = a
        .node_config(&NodeId::new("laptop-1").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(
        a.status().await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        a.oversight_gateways().await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    // No credential, or a made-up one: 401.
    let anonymous = f.env.client();
    assert_eq!(
        anonymous
            .desired(&gw_a, None, Duration::ZERO)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let forged = f
        .env
        .client()
        .with_credential("nmg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        forged
            .desired(&gw_a, None, Duration::ZERO)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // A client node enrols like a gateway (one-time token from the control plane,
    // its topology key) and reads only its own configuration.
    let node = enrol_node(&f.env, "laptop-1", f.client).await;
    let config = node
        .node_config(&NodeId::new("laptop-1").unwrap())
        .await
        .unwrap();
    assert_eq!(config.public_key, f.client);
    assert_eq!(config.peers.len(), 1);
    assert_eq!(
        node.desired(&gw_a, None, Duration::ZERO)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::FORBIDDEN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversight_is_read_only() {
    let f = fleet("oversight").await;
    let op = f.env.operator();
    let regions = op.oversight_regions().await.unwrap();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].workspaces, ["acme"]);
    assert_eq!(regions[0].gateways.len(), 2);
    let workspaces = op.oversight_workspaces().await.unwrap();
    assert_eq!(workspaces[0].gateways.len(), 2);
    let gateways = op.oversight_gateways().await.unwrap();
    assert_eq!(gateways.len(), 2);
    for path in [
        "/v1/oversight/regions",
        "/v1/oversight/workspaces",
        "/v1/oversight/gateways",
    ] {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let a = op
                .send_raw(
                    method.clone(),
                    path,
                    Some(("application/json", b"{}".to_vec())),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let body: nanami_api::wire::ErrorBody = serde_json::from_slice(&a.body).unwrap();
            assert!(!body.error.is_empty());
        }
    }
    // The operator credential has no write verb anywhere.
    let doc = std::fs::read_to_string(f.env.topology_file()).unwrap();
    assert_eq!(
        op.put_topology(&doc).await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    let t = TokenRequest {
        subject: Subject::Gateway(GatewayId::new("gw-a").unwrap()),
        ttl_seconds: None,
    };
    assert_eq!(
        op.create_token(&t).await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    // Reading a gateway's desired state is oversight too; reporting for it is not.
    let gw_a = GatewayId::new("gw-a").unwrap();
    assert!(op
        .desired(&gw_a, None, Duration::ZERO)
        .await
        .unwrap()
        .is_some());
    let put = op
        .send_raw(
            Method::PUT,
            "/v1/gateways/gw-a/observed",
            Some(("application/json", b"{}".to_vec())),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(put.status, StatusCode::FORBIDDEN);
    // Unauthenticated: liveness, Prometheus metrics (aggregates only), OpenAPI.
    let anon = f.env.client();
    let get = |path: &'static str| {
        let anon = anon.clone();
        async move {
            anon.send_raw(Method::GET, path, None, Duration::from_secs(5))
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    // Metrics need the operator (or control) credential on the API's address.
    assert_eq!(get("/metrics").await.status, StatusCode::UNAUTHORIZED);
    let metrics = f
        .env
        .operator()
        .send_raw(Method::GET, "/metrics", None, Duration::from_secs(5))
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        metrics.contains("nanami_gateways 2\n")
            && metrics.contains("# TYPE nanami_reports_total counter"),
        "{metrics}"
    );
    let openapi: serde_json::Value =
        serde_json::from_slice(&get("/openapi.json").await.body).unwrap();
    for path in [
        "/v1/enrol",
        "/v1/gateways/{id}/desired",
        "/v1/oversight/regions",
        "/v1/nodes/{id}/config",
    ] {
        assert!(
            openapi["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(openapi["paths"]["/v1/oversight/gateways"]["put"].is_null());
    // The platform reads oversight too (it reads everything).
    assert_eq!(
        f.env.control().oversight_regions().await.unwrap(),
        op.oversight_regions().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_rejected_and_nothing_is_stored() {
    let f = fleet("malformed").await;
    // Stop the daemons so that nothing legitimate writes meanwhile.
    let mut f = f;
    f.a.stop().await;
    f.b.stop().await;
    let (counts, text) = db_dump(&f.env.db());
    let control = f.env.control();
    let send = |client: nanami_api::Client,
                method: Method,
                path: &'static str,
                ct: &'static str,
                body: &'static [u8]| async move {
        client
            .send_raw(
                method,
                path,
                Some((ct, body.to_vec())),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
    };
    let cases: Vec<(Method, &str, &str, &[u8])> = vec![
        (Method::PUT, "/v1/topology", "application/yaml", b"version: 1\nregions: [\n"),
        (Method::PUT, "/v1/topology", "application/json", b"{\"version\": 1, \"regions\": [], \"workspaces\": [], \"extra\": 1}"),
        (Method::PUT, "/v1/topology", "application/yaml", b"version: 1\nregions: []\nworkspaces:\n  - id: BAD ID\n    tenant: x\n    regions: [nowhere]\n    networks: []\n    nodes: []\n    gateways: []\n"),
        (Method::PUT, "/v1/topology", "application/octet-stream", b"\xff\xfe\x00"),
        (Method::POST, "/v1/enrolment-tokens", "application/json", b"{\"subject\": {\"kind\": \"gateway\", \"id\": \"../etc\"}}"),
        (Method::POST, "/v1/enrolment-tokens", "application/json", b"not json"),
        (Method::POST, "/v1/enrol", "application/json", b"{\"token\": \"x\"}"),
        (Method::POST, "/v1/enrol", "application/json", b"{\"token\": \"nme_x\", \"public_key\": \"not a key\"}"),
    ];
    for (method, path, ct, body) in cases {
        let a = send(control.clone(), method.clone(), path, ct, body).await;
        assert!(
            a.status.is_client_error(),
            "{method} {path} {:?} gave {}",
            String::from_utf8_lossy(body),
            a.status
        );
        let e: nanami_api::wire::ErrorBody = serde_json::from_slice(&a.body).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: not a JSON error: {:?}",
                String::from_utf8_lossy(&a.body)
            )
        });
        assert!(!e.error.is_empty());
    }
    // A gateway's own report with a bad shape.
    let cred = std::fs::read_to_string(f.a.state_dir.join("credential"))
        .unwrap()
        .trim()
        .to_owned();
    let a = f.env.client().with_credential(cred);
    for body in [
        &b"{}"[..],
        b"[1,2]",
        b"{\"public_key\": \"AAAA\", \"status\": {}, \"state\": {}}",
        b"\x00",
    ] {
        let r = a
            .send_raw(
                Method::PUT,
                "/v1/gateways/gw-a/observed",
                Some(("application/json", body.to_vec())),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let _: nanami_api::wire::ErrorBody = serde_json::from_slice(&r.body).unwrap();
    }
    let bad_query = a
        .send_raw(
            Method::GET,
            "/v1/gateways/gw-a/desired?after=minus-one",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(bad_query.status, StatusCode::BAD_REQUEST);
    let (counts_after, text_after) = db_dump(&f.env.db());
    assert_eq!(counts, counts_after, "row counts changed");
    assert_eq!(text, text_after, "stored rows changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_token_is_refused_on_second_use_even_concurrently() {
    let state = TempDir::new("token-keys");
    let ka = gateway_key(&state.0.join("a"));
    let kb = gateway_key(&state.0.join("b"));
    let env = Env::start("token", &topology(&ka, &kb, &[])).await;
    let token = env.token("gw-a").await;
    let request = EnrolRequest {
        token: token.clone(),
        public_key: ka,
        subject: None,
    };
    let first = env.client().enrol(&request).await.unwrap();
    assert_eq!(
        first.subject,
        Subject::Gateway(GatewayId::new("gw-a").unwrap())
    );
    let second = env.client().enrol(&request).await.unwrap_err();
    assert_eq!(second.status(), Some(StatusCode::UNAUTHORIZED));
    // Eight clients race for one fresh token: exactly one wins.
    let token = env.token("gw-b").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = env.client();
        let request = EnrolRequest {
            token: token.clone(),
            public_key: kb,
            subject: None,
        };
        tasks.push(tokio::spawn(
            async move { client.enrol(&request).await.is_ok() },
        ));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    // A node token only enrols the node's own key.
    let t = env
        .control()
        .create_token(&TokenRequest {
            subject: Subject::Node(NodeId::new("gw-a").unwrap()),
            ttl_seconds: Some(60),
        })
        .await
        .unwrap();
    let wrong = env
        .client()
        .enrol(&EnrolRequest {
            token: t.token.clone(),
            public_key: kb,
            subject: None,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.status(), Some(StatusCode::UNAUTHORIZED));
    // Lifetimes outside 1 s ..= 30 days are refused (no overflow, no token that is
    // born expired).
    for ttl in [0, u64::MAX, 30 * 24 * 3600 + 1] {
        let refused = env
            .control()
            .create_token(&TokenRequest {
                subject: Subject::Gateway(GatewayId::new("gw-a").unwrap()),
                ttl_seconds: Some(ttl),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST), "ttl {ttl}");
    }
    // An expired token is refused.
    let t = env
        .control()
        .create_token(&TokenRequest {
            subject: Subject::Gateway(GatewayId::new("gw-a").unwrap()),
            ttl_seconds: Some(1),
        })
        .await
        .unwrap();
    // Wait until the clock is past the token's expiry (the manager refuses it once
    // `expires_at` is no longer in the future): the condition itself.
    until("the token's expiry", Duration::from_secs(5), || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        async move { (now >= t.expires_at).then_some(()) }
    })
    .await;
    let expired = env
        .client()
        .enrol(&EnrolRequest {
            token: t.token,
            public_key: ka,
            subject: None,
        })
        .await
        .unwrap_err();
    assert_eq!(expired.status(), Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_in_any_log_line_api_body_or_store_row() {
    let mut f = fleet("secrets").await;
    let mut secrets = Vec::new();
    for dir in [&f.a.state_dir, &f.b.state_dir] {
        let text = std::fs::read_to_string(dir.join("private.key")).unwrap();
        let key = nanami_model::PrivateKey::from_base64(text.trim()).unwrap();
        secrets.push(key.to_base64_secret().to_string());
        secrets.push(key.to_hex_secret().to_string());
        // The raw bytes too, as they would appear in a hex dump of a blob.
        secrets.push(
            key.expose_secret()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
    }
    let control = f.env.control();
    let operator = f.env.operator();
    let mut bodies = String::new();
    for path in [
        "/v1/status",
        "/v1/topology",
        "/v1/gateways/gw-a/desired",
        "/v1/gateways/gw-a/observed",
        "/v1/gateways/gw-b/observed",
        "/v1/nodes/laptop-1/config",
        "/v1/nodes/laptop-1/config?format=wg-quick",
        "/metrics",
        "/openapi.json",
    ] {
        let a = control
            .send_raw(Method::GET, path, None, Duration::from_secs(5))
            .await
            .unwrap();
        bodies.push_str(&String::from_utf8_lossy(&a.body));
    }
    for path in [
        "/v1/oversight/regions",
        "/v1/oversight/workspaces",
        "/v1/oversight/gateways",
    ] {
        let a = operator
            .send_raw(Method::GET, path, None, Duration::from_secs(5))
            .await
            .unwrap();
        bodies.push_str(&String::from_utf8_lossy(&a.body));
    }
    f.a.stop().await;
    f.b.stop().await;
    f.env.manager.stop();
    let (_, rows) = db_dump(&f.env.db());
    let manager_log = std::fs::read_to_string(&f.env.manager.log).unwrap();
    let daemon_log = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
    assert!(
        manager_log.contains("enrolled"),
        "the manager log is captured"
    );
    assert!(
        daemon_log.contains("enrolled"),
        "the daemon log is captured"
    );
    assert!(bodies.contains("generation"), "the bodies were read");
    for secret in &secrets {
        for (what, hay) in [
            ("an API body", &bodies),
            ("a store row", &rows),
            ("the manager's log", &manager_log),
            ("a daemon's log", &daemon_log),
        ] {
            assert!(
                !hay.contains(secret.as_str()),
                "a private key appears in {what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_goes_offline_and_its_clients_fail_over() {
    let mut f = fleet("failover").await;
    let laptop = NodeId::new("laptop-1").unwrap();
    let before = f.env.control().node_config(&laptop).await.unwrap();
    assert_eq!(before.peers[0].gateway.as_str(), "gw-a");
    f.a.stop().await;
    let control = f.env.control();
    let config = until("failover to gw-b", Duration::from_secs(10), || {
        let control = control.clone();
        let laptop = laptop.clone();
        async move {
            let c = control.node_config(&laptop).await.ok()?;
            (c.peers.first()?.gateway.as_str() == "gw-b").then_some(c)
        }
    })
    .await;
    assert_eq!(config.peers.len(), 1);
    let status = f.env.converged(&["gw-b"]).await;
    let a = status.iter().find(|g| g.id.as_str() == "gw-a").unwrap();
    assert_eq!(a.health, nanami_api::wire::Liveness::Offline);
    let b = status.iter().find(|g| g.id.as_str() == "gw-b").unwrap();
    assert_eq!(
        (b.peers, b.observed_peers),
        (1, 1),
        "gw-b took the client over"
    );
    f.b.stop().await;
}

/// Enrols client node `id` (whose topology key is `key`) and returns a client with
/// its node credential.
async fn enrol_node(env: &Env, id: &str, key: nanami_model::PublicKey) -> nanami_api::Client {
    let token = env
        .control()
        .create_token(&TokenRequest {
            subject: Subject::Node(NodeId::new(id).unwrap()),
            ttl_seconds: Some(60),
        })
        .await
        .unwrap();
    let enrolled = env
        .client()
        .enrol(&EnrolRequest {
            token: token.token,
            public_key: key,
            subject: None,
        })
        .await
        .unwrap();
    env.client().with_credential(enrolled.credential)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_config_watch_long_polls_for_a_change_and_is_per_node() {
    let mut f = fleet("watch").await;
    let laptop2 = client_key();
    let ka = gateway_key(&f.a.state_dir);
    let kb = gateway_key(&f.b.state_dir);
    f.env
        .control()
        .put_topology(&topology(
            &ka,
            &kb,
            &[("laptop-1", f.client), ("laptop-2", laptop2)],
        ))
        .await
        .unwrap();
    let laptop = NodeId::new("laptop-1").unwrap();
    let node = enrol_node(&f.env, "laptop-1", f.client).await;

    // Query strings are percent-decoded (`wg%2Dquick` is `wg-quick`); one that
    // cannot be decoded is the JSON 400.
    let get = |path: &'static str| {
        let node = node.clone();
        async move {
            node.send_raw(Method::GET, path, None, Duration::from_secs(5))
                .await
                .unwrap()
        }
    };
    let wg_quick = get("/v1/nodes/laptop-1/config?format=wg%2Dquick&wait=0").await;
    assert_eq!(wg_quick.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&wg_quick.body).contains("[Interface]"));
    for bad in [
        "/v1/nodes/laptop-1/config?wait=%FF",
        "/v1/nodes/laptop-1/config?wait=1&wait=2",
        "/v1/nodes/laptop-1/config?format=yaml",
    ] {
        let answer = get(bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert!(body["error"].is_string(), "{bad}: {body}");
    }

    // No version: the configuration at once, with its version.
    let (v1, c1) = node
        .node_config_watch(&laptop, None, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c1, node.node_config(&laptop).await.unwrap());
    assert_eq!(c1.peers[0].gateway.as_str(), "gw-a");
    // The version is the same whatever the format.
    let text = node
        .send_raw(
            Method::GET,
            "/v1/nodes/laptop-1/config?format=wg-quick",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        text.headers
            .get(http::header::ETAG)
            .unwrap()
            .to_str()
            .unwrap(),
        format!("\"{v1}\"")
    );
    // Unchanged: None after the wait.
    let start = std::time::Instant::now();
    let none = node
        .node_config_watch(&laptop, Some(&v1), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(start.elapsed() >= Duration::from_millis(900));
    // A bad version is refused.
    let bad = node
        .node_config_watch(&laptop, Some("not-a-version"), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(StatusCode::BAD_REQUEST));
    // Another node's configuration is not this credential's to watch.
    let denied = node
        .node_config_watch(&NodeId::new("laptop-2").unwrap(), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(StatusCode::FORBIDDEN));

    // A change of health wakes a waiting watch.
    let watcher = {
        let (node, laptop, v1) = (node.clone(), laptop.clone(), v1.clone());
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let got = node
                .node_config_watch(&laptop, Some(&v1), Duration::from_secs(30))
                .await;
            (got, start.elapsed())
        })
    };
    // The watch is parked at the manager before the change (not a fixed pause).
    until(
        "the watch waits at the manager",
        Duration::from_secs(10),
        || {
            let env = &f.env;
            async move {
                let waiting = sample(
                    &scrape(env).await,
                    "nanami_long_polls_waiting",
                    &[("route", "node_config")],
                );
                (waiting >= Some(1.0)).then_some(())
            }
        },
    )
    .await;
    f.a.stop().await;
    let (got, took) = watcher.await.unwrap();
    let (v2, c2) = got.unwrap().expect("a new configuration");
    assert!(took < Duration::from_secs(10), "woke after {took:?}");
    assert_ne!(v2, v1);
    assert_eq!(c2.peers[0].gateway.as_str(), "gw-b");
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_targets_reach_each_egress_gateway_at_a_new_generation() {
    let mut f = fleet("targets").await;
    let ka = gateway_key(&f.a.state_dir);
    let kb = gateway_key(&f.b.state_dir);
    let control = f.env.control();
    let gw_a = GatewayId::new("gw-a").unwrap();
    let before = control
        .desired(&gw_a, None, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(before.health_targets.is_empty());
    let text = topology_with_targets(
        &ka,
        &kb,
        &[("laptop-1", f.client)],
        &["10.20.0.1", "10.20.0.2"],
    );
    let answer = control.put_topology(&text).await.unwrap();
    // The manager reads its file again at a restart: the same document there.
    std::fs::write(f.env.topology_file(), &text).unwrap();
    assert_eq!(
        answer.changed.len(),
        2,
        "both egress gateways probe: {answer:?}"
    );
    assert_eq!(answer.changed[&gw_a], before.generation + 1);
    let after = control
        .desired(&gw_a, None, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.state, before.state, "only the targets changed");
    let corp = &after.health_targets["corp"];
    assert_eq!(corp.len(), 2);
    f.env.converged(&["gw-a", "gw-b"]).await;
    // The daemon keeps them in its last-known-good state.
    let saved: nanami_api::wire::GatewayDesired =
        serde_json::from_slice(&std::fs::read(f.a.state_dir.join("desired.json")).unwrap())
            .unwrap();
    assert_eq!(saved, after);
    // Kept across a manager restart, at the same generation.
    f.env.restart_manager().await;
    let kept = f
        .env
        .control()
        .desired(&gw_a, None, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, after);
    f.a.stop().await;
    f.b.stop().await;
}

/// The first gateway of `node`'s list for `network` in `config`.
fn first_gateway(config: &nanami_model::NodeConfig, network: &str) -> String {
    config.gateways[network][0].gateway.to_string()
}

/// The networks the manager treats as unhealthy for `gateway`.
async fn unhealthy_networks(env: &Env, gateway: &str) -> Vec<String> {
    let status = env.control().status().await.unwrap();
    let s = status.iter().find(|g| g.id.as_str() == gateway).unwrap();
    assert_eq!(
        s.health,
        nanami_api::wire::Liveness::Online,
        "{gateway} still reports"
    );
    s.unhealthy_networks.iter().map(|n| n.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_path_to_one_network_fails_loses_only_that_networks_clients() {
    let mut f = fleet_with("path", two_networks).await;
    let laptop = NodeId::new("laptop-1").unwrap();
    let node = enrol_node(&f.env, "laptop-1", f.client).await;
    let (v1, c1) = node
        .node_config_watch(&laptop, None, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first_gateway(&c1, "corp"), first_gateway(&c1, "lab")),
        ("gw-a".into(), "gw-a".into())
    );
    assert_eq!(c1.gateways["corp"].len(), 2, "gw-b is corp's standby");

    // gw-a's LAN to corp's resources fails; it keeps reporting. Its corp clients
    // move to gw-b, its lab clients stay, and a waiting watch wakes.
    let watch = {
        let (node, laptop, v1) = (node.clone(), laptop.clone(), v1.clone());
        tokio::spawn(async move {
            node.node_config_watch(&laptop, Some(&v1), Duration::from_secs(20))
                .await
        })
    };
    let cut = std::time::Instant::now();
    f.a.prober.set_down(&["10.20.0.1"], true);
    let (_, c2) = watch.await.unwrap().unwrap().expect("a new configuration");
    let took = cut.elapsed();
    assert_eq!(first_gateway(&c2, "corp"), "gw-b");
    assert_eq!(first_gateway(&c2, "lab"), "gw-a", "only corp moved");
    assert!(took < Duration::from_secs(5), "moved after {took:?}");
    eprintln!(
        "path down -> client configuration changed: {took:?} (probes every 100 ms, 3 rounds)"
    );
    assert_eq!(unhealthy_networks(&f.env, "gw-a").await, ["corp"]);
    assert!(unhealthy_networks(&f.env, "gw-b").await.is_empty());
    let s = scrape(&f.env).await;
    for (gateway, network, healthy) in [
        ("gw-a", "corp", 0.0),
        ("gw-a", "lab", 1.0),
        ("gw-b", "corp", 1.0),
    ] {
        let labels = [("gateway", gateway), ("network", network)];
        assert_eq!(
            sample(&s, "nanami_gateway_path_healthy", &labels),
            Some(healthy),
            "{gateway} {network}"
        );
    }
    let observed = f
        .env
        .control()
        .observed(&GatewayId::new("gw-a").unwrap())
        .await
        .unwrap()
        .unwrap();
    let corp = &observed.report.health["corp"];
    assert_eq!(corp.state, nanami_api::wire::PathHealth::Unhealthy);
    assert!(
        corp.targets[&"10.20.0.1".parse::<std::net::IpAddr>().unwrap()].consecutive_failures >= 3
    );
    assert_eq!(
        observed.report.health["lab"].state,
        nanami_api::wire::PathHealth::Healthy
    );
    // gw-b's desired state now routes corp's client; the change converges.
    f.env.converged(&["gw-a", "gw-b"]).await;

    // A manager restart keeps the verdict (from the stored reports), even before
    // any daemon reports again.
    f.a.stop().await;
    f.b.stop().await;
    f.env.restart_manager().await;
    assert_eq!(unhealthy_networks(&f.env, "gw-a").await, ["corp"]);
    let (version, after_restart) = node
        .node_config_watch(&laptop, None, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_gateway(&after_restart, "corp"), "gw-b");
    let (a_dir, b_dir) = (f.a.state_dir.clone(), f.b.state_dir.clone());
    let lan_still_cut = Arc::new(FakeProber::default());
    lan_still_cut.set_down(&["10.20.0.1"], true);
    f.a = Daemon::start_with(&f.env, "gw-a", &a_dir, None, lan_still_cut).await;
    f.b = Daemon::start(&f.env, "gw-b", &b_dir, None).await;

    // The restarted daemon knows nothing yet (unknown): the manager keeps its
    // verdict, so corp's clients are not pulled back while the path is down.
    let unchanged = node
        .node_config_watch(&laptop, Some(&version), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        unchanged, None,
        "no bounce while the restarted daemon probes"
    );

    // The path returns: after the recovery rounds corp's clients go back to gw-a.
    f.a.prober.set_down(&["10.20.0.1"], false);
    let back = until("corp back on gw-a", Duration::from_secs(10), || {
        let (node, laptop) = (node.clone(), laptop.clone());
        async move {
            let c = node.node_config(&laptop).await.ok()?;
            (first_gateway(&c, "corp") == "gw-a").then_some(c)
        }
    })
    .await;
    assert_eq!(first_gateway(&back, "lab"), "gw-a");
    assert_eq!(back, c1, "the original configuration");
    until("gw-a healthy in the status", Duration::from_secs(5), || {
        let env = &f.env;
        async move {
            unhealthy_networks(env, "gw-a")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    f.a.stop().await;
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_gateway_of_a_network_is_unhealthy_clients_keep_theirs() {
    let mut f = fleet_with("allsick", two_networks).await;
    let laptop = NodeId::new("laptop-1").unwrap();
    let control = f.env.control();
    let before = control.node_config(&laptop).await.unwrap();
    // corp's probe target itself is down: both gateways report corp unhealthy.
    f.a.prober.set_down(&["10.20.0.1"], true);
    f.b.prober.set_down(&["10.20.0.1"], true);
    until(
        "both gateways unhealthy for corp",
        Duration::from_secs(10),
        || {
            let env = &f.env;
            async move {
                let a = unhealthy_networks(env, "gw-a").await;
                let b = unhealthy_networks(env, "gw-b").await;
                (a == ["corp"] && b == ["corp"]).then_some(())
            }
        },
    )
    .await;
    let after = control.node_config(&laptop).await.unwrap();
    assert_eq!(
        after, before,
        "nobody is stranded: the placement is the all-healthy one"
    );
    // One gateway recovers: it alone serves corp.
    f.b.prober.set_down(&["10.20.0.1"], false);
    let moved = until("corp on gw-b only", Duration::from_secs(10), || {
        let control = control.clone();
        let laptop = laptop.clone();
        async move {
            let c = control.node_config(&laptop).await.ok()?;
            (first_gateway(&c, "corp") == "gw-b").then_some(c)
        }
    })
    .await;
    assert_eq!(moved.gateways["corp"].len(), 1);
    assert_eq!(first_gateway(&moved, "lab"), "gw-a");
    f.a.stop().await;
    f.b.stop().await;
}

/// The gateway credential saved by a daemon in `state_dir`.
fn saved_credential(state_dir: &std::path::Path) -> String {
    std::fs::read_to_string(state_dir.join("credential"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Whether `credential` still reads `gateway`'s desired state.
async fn reads_desired(env: &Env, credential: &str, gateway: &str) -> bool {
    env.client()
        .with_credential(credential.to_owned())
        .send_raw(
            Method::GET,
            &format!("/v1/gateways/{gateway}/desired"),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .status
        == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_the_wrong_gateway_is_refused_before_it_is_spent() {
    let mut f = fleet("wrongtoken").await;
    let b_credential = saved_credential(&f.b.state_dir);
    assert!(reads_desired(&f.env, &b_credential, "gw-b").await);
    // gw-b's token given to the machine that means to be gw-a: refused, nothing
    // spent, gw-b's working credential untouched.
    let token = f.env.token("gw-b").await;
    let key = gateway_key(&f.a.state_dir);
    let refused = f
        .env
        .client()
        .enrol(&EnrolRequest {
            token: token.clone(),
            public_key: key,
            subject: Some(Subject::Gateway(GatewayId::new("gw-a").unwrap())),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
    assert!(
        refused.to_string().contains("gateway gw-b"),
        "the refusal says who the token is for: {refused}"
    );
    assert!(reads_desired(&f.env, &b_credential, "gw-b").await);
    // The real daemon started as gw-a with gw-b's token stops with that error and
    // leaves gw-b's credential working.
    let stray = f.env.tmp.0.join("stray");
    let mut daemon = Daemon::start(&f.env, "gw-a", &stray, Some(token.clone())).await;
    let ended = daemon.ended().await.unwrap_err();
    assert!(
        format!("{ended:#}").contains("this token is for gateway gw-b, not gateway gw-a"),
        "{ended:#}"
    );
    assert!(!stray.join("credential").exists());
    assert!(reads_desired(&f.env, &b_credential, "gw-b").await);
    // The token is unspent: gw-b itself can still use it (and that replaces the
    // old credential, as re-enrolment does).
    let enrolled = f
        .env
        .client()
        .enrol(&EnrolRequest {
            token,
            public_key: gateway_key(&f.b.state_dir),
            subject: Some(Subject::Gateway(GatewayId::new("gw-b").unwrap())),
        })
        .await
        .unwrap();
    assert!(reads_desired(&f.env, &enrolled.credential, "gw-b").await);
    assert!(!reads_desired(&f.env, &b_credential, "gw-b").await);
    f.a.stop().await;
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_cannot_fork_generations_silently() {
    let mut f = fleet("fork").await;
    let ka = gateway_key(&f.a.state_dir);
    let kb = gateway_key(&f.b.state_dir);
    let original = std::fs::read_to_string(f.env.topology_file()).unwrap();
    // Back up the store with the manager stopped (a consistent copy).
    f.env.manager.stop();
    let backup = f.env.tmp.0.join("backup.db");
    sqlite_copy(&f.env.db(), &backup);
    f.env.restart_manager().await;
    // Change A: gw-a (which serves the clients) moves to a new generation.
    let change_a = topology(
        &ka,
        &kb,
        &[("laptop-1", f.client), ("laptop-2", client_key())],
    );
    let a_gen = f
        .env
        .control()
        .put_topology(&change_a)
        .await
        .unwrap()
        .changed[&GatewayId::new("gw-a").unwrap()];
    f.env.converged(&["gw-a", "gw-b"]).await;
    let applied_a = desired_state(&f.a.state_dir);
    // Restore the backup (the topology file still holds the original document, so
    // the restarted manager serves the older history), then make change B.
    f.env.manager.stop();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", f.env.db().display()));
    }
    sqlite_copy(&backup, &f.env.db());
    std::fs::write(f.env.topology_file(), &original).unwrap();
    f.env.restart_manager().await;
    let change_b = topology(
        &ka,
        &kb,
        &[("laptop-1", f.client), ("laptop-3", client_key())],
    );
    f.env.control().put_topology(&change_b).await.unwrap();
    // The manager notices the daemon runs a generation it did not issue with that
    // content, shows it, and serves change B above every number the daemon saw.
    let control = f.env.control();
    let status = until("the fork healed", Duration::from_secs(15), || {
        let control = control.clone();
        async move {
            let s = control.status().await.ok()?;
            let a = s.into_iter().find(|g| g.id.as_str() == "gw-a")?;
            (a.generation_fork.as_ref()?.resolved
                && a.observed_generation == Some(a.desired_generation))
            .then_some(a)
        }
    })
    .await;
    let fork = status.generation_fork.clone().unwrap();
    assert_eq!(fork.reported_generation, a_gen);
    assert!(status.desired_generation > a_gen, "{status:?}");
    // The daemon never ran change B under change A's number: what it runs now is
    // the manager's change B at the new number, and A's number carried A.
    let now = desired_state(&f.a.state_dir);
    assert_ne!(now, applied_a);
    let served = f
        .env
        .control()
        .send_raw(
            Method::GET,
            "/v1/gateways/gw-a/desired",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let served: nanami_api::wire::GatewayDesired = serde_json::from_slice(&served.body).unwrap();
    assert_eq!(served.generation, status.desired_generation);
    assert_eq!(now, serde_json::to_value(&served.state).unwrap());
    let metrics = metrics_text(&f.env).await;
    assert!(
        !metrics.contains("nanami_generation_forks_total 0\n"),
        "{metrics}"
    );
    f.a.stop().await;
    f.b.stop().await;
}

/// Copies a SQLite database file (the manager is stopped: no WAL to merge).
fn sqlite_copy(from: &std::path::Path, to: &std::path::Path) {
    let src = rusqlite::Connection::open(from).unwrap();
    let _ = std::fs::remove_file(to);
    src.execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
}

/// The state a daemon saved as its last-known-good, as JSON.
fn desired_state(state_dir: &std::path::Path) -> serde_json::Value {
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("desired.json")).unwrap()).unwrap();
    saved["state"].clone()
}

type Exposition = openmetrics_parser::MetricsExposition<
    openmetrics_parser::PrometheusType,
    openmetrics_parser::PrometheusValue,
>;

/// The value of the sample of `name` whose labels include `labels`.
fn sample(scrape: &Exposition, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use openmetrics_parser::PrometheusValue as V;
    scrape
        .families
        .get(name)?
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.iter().any(|(name, value)| name == k && value == v))
        })
        .map(|s| match &s.value {
            V::Gauge(n) | V::Unknown(n) => n.as_f64(),
            V::Counter(c) => c.value.as_f64(),
            other @ (V::Histogram(_) | V::Summary(_)) => panic!("{name}: unexpected {other:?}"),
        })
}

/// The manager's `/metrics`, read by [`parse_exposition`].
async fn scrape(env: &Env) -> Exposition {
    parse_exposition(&metrics_text(env).await)
}

/// An exposition read by a Prometheus text-format parser: every line parses,
/// every sample belongs to a family with its HELP and TYPE.
fn parse_exposition(text: &str) -> Exposition {
    let scrape = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("{e:?} in\n{text}"));
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let parsed: usize = scrape
        .families
        .values()
        .map(|f| f.iter_samples().count())
        .sum();
    assert_eq!(parsed, samples, "every sample line is read:\n{text}");
    for family in scrape.families.values() {
        assert!(
            !family.help.is_empty(),
            "{} has no HELP",
            family.family_name
        );
    }
    scrape
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_gateway_and_on_request_each_peer() {
    let mut f = fleet_with_flags("metrics", &["--metrics-per-peer"], |ka, kb, client| {
        topology(ka, kb, &[("laptop-1", client)])
    })
    .await;
    let s = scrape(&f.env).await;
    for gw in ["gw-a", "gw-b"] {
        let g = [("gateway", gw)];
        assert_eq!(
            sample(
                &s,
                "nanami_gateway_up",
                &[("gateway", gw), ("workspace", "acme")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&s, "nanami_gateway_generation_lag", &g),
            Some(0.0),
            "converged"
        );
        assert!(sample(&s, "nanami_gateway_peers", &g).is_some());
        assert!(sample(&s, "nanami_gateway_observed_peers", &g).is_some());
    }
    assert_eq!(sample(&s, "nanami_gateways_online", &[]), Some(2.0));

    // gw-a reports traffic with its client (its daemon stopped first, so that the
    // report stays the last one).
    f.a.stop().await;
    let gw_a = GatewayId::new("gw-a").unwrap();
    let mut report = f
        .env
        .control()
        .observed(&gw_a)
        .await
        .unwrap()
        .unwrap()
        .report;
    let interface = report
        .state
        .interfaces
        .keys()
        .next()
        .expect("an interface")
        .clone();
    let handshake = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    report.telemetry = [(
        interface,
        [(
            f.client,
            nanami_reconcile::PeerTelemetry {
                last_handshake: Some(handshake),
                rx_bytes: 1000,
                tx_bytes: 2000,
            },
        )]
        .into(),
    )]
    .into();
    let gateway = f
        .env
        .client()
        .with_credential(saved_credential(&f.a.state_dir));
    gateway.report(&gw_a, &report).await.unwrap();
    let s = scrape(&f.env).await;
    let g = [("gateway", "gw-a")];
    assert_eq!(
        sample(&s, "nanami_gateway_receive_bytes_total", &g),
        Some(1000.0)
    );
    assert_eq!(
        sample(&s, "nanami_gateway_transmit_bytes_total", &g),
        Some(2000.0)
    );
    assert_eq!(
        sample(&s, "nanami_gateway_last_handshake_timestamp_seconds", &g),
        Some(1.8e9)
    );
    let key = f.client.to_string();
    let peer = [
        ("gateway", "gw-a"),
        ("peer", key.as_str()),
        ("node", "laptop-1"),
    ];
    assert_eq!(
        sample(&s, "nanami_peer_receive_bytes_total", &peer),
        Some(1000.0),
    );
    assert_eq!(
        sample(&s, "nanami_peer_transmit_bytes_total", &peer),
        Some(2000.0)
    );
    assert_eq!(
        sample(&s, "nanami_peer_last_handshake_timestamp_seconds", &peer),
        Some(1.8e9)
    );

    // The shipped Grafana dashboard queries only series the manager serves.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../dist/grafana/nanami.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queried = dashboard_series(&dashboard);
    assert!(queried.len() > 25, "{queried:?}");
    // gw-b's daemon serves the daemon series.
    let daemon = scrape_daemon(&f.b).await;
    for series in &queried {
        assert!(
            s.families.contains_key(series) || daemon.families.contains_key(series),
            "the dashboard queries {series}, which neither the manager's nor a daemon's /metrics serves"
        );
    }
    f.b.stop().await;
}

/// A daemon's own `/metrics`, read by [`parse_exposition`].
async fn scrape_daemon(daemon: &Daemon) -> Exposition {
    let answer = nanami_api::Client::new(&format!("http://{}", daemon.metrics), None)
        .unwrap()
        .send_raw(Method::GET, "/metrics", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    parse_exposition(std::str::from_utf8(&answer.body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_serves_its_own_metrics() {
    let mut f = fleet("daemon-metrics").await;
    let s = scrape_daemon(&f.a).await;
    let g = [("gateway", "gw-a")];
    let status = f.a.status.borrow().clone();
    let applied = status.applied_generation.expect("converged");
    assert!(sample(&s, "nanami_daemon_passes_total", &g).unwrap() >= 1.0);
    assert_eq!(sample(&s, "nanami_daemon_ready", &g), Some(1.0));
    assert_eq!(
        sample(&s, "nanami_daemon_consecutive_failures", &g),
        Some(0.0)
    );
    #[allow(clippy::cast_precision_loss)]
    let applied = applied as f64;
    assert_eq!(
        sample(&s, "nanami_daemon_applied_generation", &g),
        Some(applied)
    );
    assert!(sample(&s, "nanami_daemon_ops_applied_total", &g).unwrap() > 0.0);
    assert_eq!(sample(&s, "nanami_daemon_ops_failed_total", &g), Some(0.0));
    // The first desired state was accepted and applied: one latency measured.
    assert!(sample(&s, "nanami_daemon_applies_total", &g).unwrap() >= 1.0);
    assert!(sample(&s, "nanami_daemon_last_apply_seconds", &g).unwrap() > 0.0);
    assert!(s.families.contains_key("nanami_daemon_drift_repairs_total"));
    // Anything but /metrics is not served.
    let other = nanami_api::Client::new(&format!("http://{}", f.a.metrics), None)
        .unwrap()
        .send_raw(Method::GET, "/v1/status", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    f.a.stop().await;
    f.b.stop().await;
}

/// Every `nanami_*` series name in the queries of a Grafana dashboard (`expr`,
/// and the template variables' `query`/`definition`).
fn dashboard_series(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                            let mut rest = q.as_str();
                            while let Some(i) = rest.find("nanami_") {
                                let name: String = rest[i..]
                                    .chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                    .collect();
                                rest = &rest[i + name.len()..];
                                found.insert(name);
                            }
                        }
                        _ => stack.push(value),
                    }
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Null
            | serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::String(_) => {}
        }
    }
    found
}

async fn metrics_text(env: &Env) -> String {
    let answer = env
        .operator()
        .send_raw(Method::GET, "/metrics", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    String::from_utf8(answer.body.to_vec()).unwrap()
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs(std::path::PathBuf);
impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8) is needed (util-linux)");
        assert!(ok.success(), "mounting a tmpfs needs root");
        Self(dir.to_owned())
    }
    /// Writes a filler file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 16 << 10];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
    }
    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_still_fails_clients_over() {
    let mut f = fleet("diskfull").await;
    // Move the manager's directory onto a small filesystem.
    f.env.manager.stop();
    let small = f.env.tmp.0.join("small");
    let fs = SmallFs::mount(&small, "8m");
    let mdir = small.join("manager");
    std::fs::create_dir_all(&mdir).unwrap();
    for entry in std::fs::read_dir(f.env.mdir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), mdir.join(entry.file_name())).unwrap();
    }
    let port = f.env.manager.port;
    let log = f.env.tmp.0.join("manager-small.log");
    f.env.manager = spawn_manager(&mdir, &f.env.topology_file(), port, &log, &[]).await;
    f.env.converged(&["gw-a", "gw-b"]).await;
    let laptop = NodeId::new("laptop-1").unwrap();
    let before = f.env.control().node_config(&laptop).await.unwrap();
    assert_eq!(before.peers[0].gateway.as_str(), "gw-a");
    // The disk fills up, then gw-a falls silent.
    fs.fill();
    f.a.stop().await;
    let control = f.env.control();
    until("failover to gw-b", Duration::from_secs(15), || {
        let control = control.clone();
        let laptop = laptop.clone();
        async move {
            let c = control.node_config(&laptop).await.ok()?;
            (c.peers.first()?.gateway.as_str() == "gw-b").then_some(())
        }
    })
    .await;
    // gw-b is served the client and applies it; status and metrics show that the
    // store cannot write.
    let status = f.env.converged(&["gw-b"]).await;
    let a = status.iter().find(|g| g.id.as_str() == "gw-a").unwrap();
    assert_eq!(a.health, nanami_api::wire::Liveness::Offline);
    let b = status.iter().find(|g| g.id.as_str() == "gw-b").unwrap();
    assert_eq!(
        (b.peers, b.observed_peers),
        (1, 1),
        "gw-b took the client over"
    );
    assert!(
        b.store_error.as_deref().is_some_and(|e| e.contains("full")),
        "status shows the store error: {b:?}"
    );
    let metrics = metrics_text(&f.env).await;
    assert!(metrics.contains("nanami_store_ok 0\n"), "{metrics}");
    assert!(
        !metrics.contains("nanami_store_errors_total 0\n"),
        "{metrics}"
    );
    // Space comes back: what was served is stored, and the error clears.
    fs.free();
    until("the store writes again", Duration::from_secs(15), || {
        let control = control.clone();
        async move {
            let s = control.status().await.ok()?;
            s.iter().all(|g| g.store_error.is_none()).then_some(())
        }
    })
    .await;
    assert!(metrics_text(&f.env).await.contains("nanami_store_ok 1\n"));
    let served = f.env.control().status().await.unwrap();
    f.env.manager.stop();
    f.env.manager = spawn_manager(&mdir, &f.env.topology_file(), port, &log, &[]).await;
    let reloaded = f.env.control().status().await.unwrap();
    for (s, r) in served.iter().zip(&reloaded) {
        assert_eq!(
            (&s.id, s.desired_generation),
            (&r.id, r.desired_generation),
            "what was served was stored: {served:#?} {reloaded:#?}"
        );
    }
    f.env.manager.stop();
    f.b.stop().await;
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_the_json_error_and_the_store_is_private() {
    // Held until the manager listens on it.
    let metrics = nanami_testkit::port::Reserved::loopback();
    let metrics_addr = metrics.addr().to_string();
    let env = Env::start_with_flags(
        "odd",
        &topology(&client_key(), &client_key(), &[]),
        &["--metrics-listen", &metrics_addr],
    )
    .await;
    // Metrics on their own address need no credential (plain HTTP).
    let plain = nanami_api::Client::new(&format!("http://{metrics_addr}"), None).unwrap();
    let m = plain
        .send_raw(Method::GET, "/metrics", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(m.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&m.body).contains("nanami_gateways 2\n"));
    let other = plain
        .send_raw(Method::GET, "/v1/status", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::NOT_FOUND, "only /metrics there");
    let control = env.control();
    let error_of = |a: &nanami_api::client::Answer| {
        serde_json::from_slice::<nanami_api::wire::ErrorBody>(&a.body)
            .unwrap_or_else(|e| panic!("not the JSON error ({e}): {:?}", a.body))
    };
    // A topology whose content type is neither JSON nor YAML: 415.
    let text = std::fs::read_to_string(env.topology_file()).unwrap();
    let a = control
        .send_raw(
            Method::PUT,
            "/v1/topology",
            Some(("text/plain", text.into_bytes())),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    error_of(&a);
    // An enrolment body declared over its small limit: 413 at once, nothing read
    // (a raw request: headers only, so no unread bytes race the answer).
    let (code, body) = raw_request(
        &env,
        "POST /v1/enrol HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: 33554432\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<nanami_api::wire::ErrorBody>(&body).unwrap();
    // A very long request target: 414.
    let long = format!("/v1/status?{}", "x".repeat(10_000));
    let a = control
        .send_raw(Method::GET, &long, None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::URI_TOO_LONG);
    error_of(&a);
    // Every one of these is documented.
    let openapi = env
        .client()
        .send_raw(Method::GET, "/openapi.json", None, Duration::from_secs(5))
        .await
        .unwrap();
    let openapi: serde_json::Value = serde_json::from_slice(&openapi.body).unwrap();
    let put = &openapi["paths"]["/v1/topology"]["put"]["responses"];
    for code in ["413", "414", "415", "503"] {
        assert!(put.get(code).is_some(), "PUT /v1/topology documents {code}");
    }
    assert!(openapi["paths"]["/v1/enrol"]["post"]["responses"]
        .get("413")
        .is_some());
    // The store and its WAL files are private whatever the umask.
    use std::os::unix::fs::PermissionsExt as _;
    // (The manager is running in WAL mode: all three files exist.)
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", env.db().display());
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path}");
    }
}

/// Sends `head` (a whole request without a body) over a fresh TLS connection and
/// returns the answer's status and body (the request must ask `Connection: close`).
async fn raw_request(env: &Env, head: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tls = Raw::new(env).connect().await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .expect("the answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_gateway_is_served_its_uplink_and_a_change_of_hosting_ends_the_run() {
    let mut f = fleet("hosting").await;
    let ka = gateway_key(&f.a.state_dir);
    let kb = gateway_key(&f.b.state_dir);
    let plain = topology(&ka, &kb, &[("laptop-1", f.client)]);
    let hosted = plain.replacen(
        "endpoint: \"192.0.2.1:51820\"",
        "endpoint: \"192.0.2.1:51820\"\n        uplink: up-a",
        1,
    );
    assert_ne!(plain, hosted);
    let answer = f.env.control().put_topology(&hosted).await.unwrap();
    let gw_a = GatewayId::new("gw-a").unwrap();
    assert!(
        answer.changed.contains_key(&gw_a) && answer.changed.len() == 1,
        "hosting is part of gw-a's content, and only gw-a's: {answer:?}"
    );
    let served = f
        .env
        .control()
        .send_raw(
            Method::GET,
            "/v1/gateways/gw-a/desired",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let served: nanami_api::wire::GatewayDesired = serde_json::from_slice(&served.body).unwrap();
    assert_eq!(served.uplink.as_ref().map(|u| u.as_str()), Some("up-a"));
    // gw-a's daemon was started for the unhosted placement: its run ends with
    // HostingChanged (the binary then tears down and exits for a restart), and
    // it never applied the hosted state in the old placement.
    let ended = f.a.ended().await.unwrap_err();
    let changed = ended
        .downcast_ref::<nanami_gateway_daemon::HostingChanged>()
        .unwrap_or_else(|| panic!("{ended:#}"));
    assert_eq!(changed.to.as_ref().map(|u| u.as_str()), Some("up-a"));
    let saved: nanami_api::wire::GatewayDesired =
        serde_json::from_slice(&std::fs::read(f.a.state_dir.join("desired.json")).unwrap())
            .unwrap();
    assert_eq!(saved.uplink, None);
    // A fresh start learns the placement before building its platform.
    std::fs::remove_file(f.a.state_dir.join("desired.json")).unwrap();
    let config = nanami_gateway_daemon::DaemonConfig {
        manager: f.env.manager.url(),
        ca: Some(f.env.ca()),
        gateway: gw_a.clone(),
        state_dir: f.a.state_dir.clone(),
        token: None,
        report_every: Duration::from_millis(REPORT_MS),
        poll_wait: Duration::from_secs(1),
        reconcile: nanami_reconcile::Config::default(),
        facts: None,
        status_out: None,
        probe: PROBE,
        prober: None,
        uplink: None,
        metrics_listener: None,
    };
    let uplink = nanami_gateway_daemon::hosting(&config, ka).await.unwrap();
    assert_eq!(uplink.as_ref().map(|u| u.as_str()), Some("up-a"));
    let lkg = nanami_gateway_daemon::saved_desired(&config.state_dir)
        .unwrap()
        .unwrap();
    assert_eq!(lkg.uplink.as_ref().map(|u| u.as_str()), Some("up-a"));
    // The unhosted gateway is untouched and still converged.
    f.env.converged(&["gw-b"]).await;
    f.b.stop().await;
}

/// The entry of `gateway` in the explanation of network `network` of a node.
fn explained<'a>(
    why: &'a serde_json::Value,
    network: &str,
    gateway: &str,
) -> &'a serde_json::Value {
    why["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["network"] == network)
        .and_then(|n| n["gateways"].as_array())
        .and_then(|g| g.iter().find(|g| g["gateway"] == gateway))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_why_a_client_is_on_its_gateway_and_follows_a_failover() {
    let mut f = fleet("explain").await;
    let op = f.env.operator();
    let laptop = NodeId::new("laptop-1").unwrap();
    let gw_a = GatewayId::new("gw-a").unwrap();

    let why = op.explain_node(&laptop).await.unwrap();
    assert_eq!(why["node"], "laptop-1", "{why:#}");
    let corp = &why["networks"][0];
    assert_eq!(corp["network"], "corp", "{why:#}");
    assert_eq!(corp["policy"], "auto", "{why:#}");
    assert_eq!(corp["primary"], "gw-a", "{why:#}");
    let (a, b) = (
        explained(&why, "corp", "gw-a"),
        explained(&why, "corp", "gw-b"),
    );
    assert_eq!(
        (&a["verdict"], &a["outcome"]),
        (&"eligible".into(), &"primary".into()),
        "{why:#}"
    );
    assert_eq!(
        (&b["verdict"], &b["outcome"]),
        (&"eligible".into(), &"not_needed".into()),
        "redundancy 1: gw-b is eligible but not needed: {why:#}"
    );
    let carried = op.explain_gateway(&gw_a).await.unwrap();
    assert_eq!(carried["gateway"], "gw-a", "{carried:#}");
    assert_eq!(carried["load"], 1, "{carried:#}");
    let clients = &carried["networks"][0]["clients"];
    assert_eq!(clients[0]["node"], "laptop-1", "{carried:#}");
    assert_eq!(
        clients[0]["position"], 0,
        "gw-a is laptop-1's primary: {carried:#}"
    );

    // gw-a falls silent: the explanation follows the health verdict.
    f.a.stop().await;
    let why = until(
        "gw-a offline in the explanation",
        Duration::from_secs(10),
        || {
            let op = op.clone();
            let laptop = laptop.clone();
            async move {
                let why = op.explain_node(&laptop).await.ok()?;
                (why["networks"][0]["primary"] == "gw-b").then_some(why)
            }
        },
    )
    .await;
    let (a, b) = (
        explained(&why, "corp", "gw-a"),
        explained(&why, "corp", "gw-b"),
    );
    assert_eq!(
        (&a["verdict"], &a["outcome"]),
        (&"offline".into(), &"ineligible".into()),
        "{why:#}"
    );
    assert_eq!(
        (&b["verdict"], &b["outcome"]),
        (&"eligible".into(), &"primary".into()),
        "{why:#}"
    );
    let carried = op.explain_gateway(&gw_a).await.unwrap();
    assert_eq!(
        carried["networks"][0]["verdict"]["verdict"], "offline",
        "{carried:#}"
    );
    assert_eq!(carried["load"], 0, "{carried:#}");

    // The movement history says when, why and what triggered the move, newest
    // first; the first placement was not a movement.
    let moves = op.node_movements(&laptop).await.unwrap();
    let moves = moves.as_array().unwrap();
    assert_eq!(moves.len(), 1, "{moves:#?}");
    let m = &moves[0];
    assert_eq!(
        (
            &m["slot"],
            &m["network"],
            &m["from"],
            &m["to"],
            &m["trigger"]
        ),
        (
            &"network".into(),
            &"corp".into(),
            &"gw-a".into(),
            &"gw-b".into(),
            &"health".into()
        ),
        "{m:#}"
    );
    assert_eq!(
        (&m["cause"], &m["gateway"], &m["verdict"]["verdict"]),
        (&"left".into(), &"gw-a".into(), &"offline".into()),
        "{m:#}"
    );
    assert!(m["generation"].as_u64().is_some(), "{m:#}");
    assert!(
        m["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000,
        "{m:#}"
    );

    // The platform reads explanations too (the authorization table: reads are
    // everyone's but machines'); unknown ids are 404; a gateway's machine is not a
    // client (409).
    let control = f.env.control();
    assert_eq!(
        control.explain_node(&laptop).await.unwrap(),
        op.explain_node(&laptop).await.unwrap()
    );
    for path in [
        "/v1/oversight/nodes/laptop-1/explain",
        "/v1/oversight/gateways/gw-a/explain",
        "/v1/oversight/nodes/laptop-1/movements",
    ] {
        let anon = f
            .env
            .client()
            .send_raw(Method::GET, path, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(anon.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let unknown = op
        .explain_node(&NodeId::new("laptop-9").unwrap())
        .await
        .unwrap_err();
    assert_eq!(unknown.status(), Some(StatusCode::NOT_FOUND), "{unknown}");
    assert_eq!(
        op.explain_gateway(&GatewayId::new("gw-z").unwrap())
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    let machine = op
        .explain_node(&NodeId::new("gw-a").unwrap())
        .await
        .unwrap_err();
    assert_eq!(machine.status(), Some(StatusCode::CONFLICT), "{machine}");
    let bad = op
        .send_raw(
            Method::GET,
            "/v1/oversight/nodes/NOT_AN_ID/explain",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    f.b.stop().await;
}
