//! The store conformance suite: every [`Store`] behaviour the manager relies on,
//! run against the embedded SQLite store and a real PostgreSQL server alike.
//!
//! Each check is a plain function of `&dyn Store`; `conformance!` makes one test
//! per backend of each. The PostgreSQL tests share one private server for the
//! suite (see `pg/mod.rs`), each in a database of its own.
#![allow(clippy::unwrap_used)]

mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nanami_api::wire::Subject;
use nanami_control::AuditObject;
use nanami_gateway_manager::store::{
    AuditEntry, GatewayRow, PgOptions, PgStore, Principal, Redeemed, SqliteStore, Store,
    StoreError, StoredHealth, TopologyWrite,
};
use nanami_model::{GatewayId, NetworkId, NodeId, PrivateKey, WorkspaceId};

/// A store for one test, and what keeps it alive.
struct Backend {
    store: Box<dyn Store>,
    _dir: Option<TempDir>,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sqlite(tag: &str) -> Backend {
    let dir = std::env::temp_dir().join(format!("nmt-conf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Backend {
        store: Box::new(SqliteStore::open(&dir.join("manager.db")).unwrap()),
        _dir: Some(TempDir(dir)),
    }
}

fn postgres(tag: &str) -> Backend {
    Backend {
        store: Box::new(pg_store(&pg::PgServer::shared().database(tag))),
        _dir: None,
    }
}

fn pg_store(url: &str) -> PgStore {
    PgStore::connect(&PgOptions {
        url: url.to_owned(),
        pool_size: 4,
        ca: None,
    })
    .unwrap()
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite_store {
            $( #[test] fn $check() { super::$check(super::sqlite(stringify!($check)).store.as_ref()) } )*
        }
        mod postgres_store {
            $( #[test] fn $check() { super::$check(super::postgres(stringify!($check)).store.as_ref()) } )*
        }
    };
}

conformance!(
    topology_rows_and_revisions,
    a_write_decided_on_an_old_state_is_refused_whole,
    changes_are_exactly_what_was_written_since,
    health_is_stored_whole_with_its_rows,
    reports_are_read_back_in_order,
    a_lease_is_one_holders_until_it_expires,
    a_token_is_redeemed_once_and_expires,
    credentials_are_found_replaced_and_revoked,
    the_audit_trail_pages_by_workspace,
    load_returns_everything_stored,
);

fn gw(id: &str) -> GatewayId {
    GatewayId::new(id).unwrap()
}

fn row(generation: u64, state: &str) -> GatewayRow {
    GatewayRow {
        generation,
        state_json: state.to_owned(),
        targets_json: "{}".to_owned(),
        uplink: None,
    }
}

fn audit(ws: Option<&str>, id: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at_unix_ms: 1,
        credential_id: "c1".to_owned(),
        credential_kind: "platform".to_owned(),
        object: AuditObject {
            kind: "node".to_owned(),
            workspace: ws.map(str::to_owned),
            id: id.to_owned(),
        },
        old_revision: None,
        new_revision: Some("r1".to_owned()),
        diff: "+ node".to_owned(),
    }
}

/// A topology write at `seq` of `workspaces` and `rows`.
fn put(
    store: &dyn Store,
    seq: u64,
    catalog: Option<&str>,
    workspaces: &[(String, Option<String>)],
    replace_all: bool,
    rows: &BTreeMap<GatewayId, GatewayRow>,
) -> Result<(u64, u64), StoreError> {
    let committed = store.put_topology(&TopologyWrite {
        expected_seq: seq,
        topology_changed: true,
        catalog,
        workspaces,
        replace_all,
        now_ms: 0,
        changed: rows,
        health: &StoredHealth::default(),
        audit: None,
        revoke: &[],
    })?;
    Ok((committed.revision, committed.seq))
}

fn ws(id: &str, doc: Option<&str>) -> (String, Option<String>) {
    (id.to_owned(), doc.map(str::to_owned))
}

fn topology_rows_and_revisions(store: &dyn Store) {
    let none = BTreeMap::new();
    let a = ws("a", Some("{\"id\":\"a\"}"));
    let b = ws("b", Some("{\"id\":\"b\"}"));
    let (rev, seq) = put(store, 0, Some("[1]"), &[a.clone(), b.clone()], true, &none).unwrap();
    assert_eq!((rev, seq), (1, 1));
    // A write that changes no document keeps the revision, not the sequence.
    let c = store
        .put_topology(&TopologyWrite {
            expected_seq: seq,
            topology_changed: false,
            catalog: None,
            workspaces: &[],
            replace_all: false,
            now_ms: 0,
            changed: &none,
            health: &StoredHealth::default(),
            audit: None,
            revoke: &[],
        })
        .unwrap();
    assert_eq!((c.revision, c.seq), (1, 2));
    let a2 = ws("a", Some("{\"id\":\"a\",\"x\":1}"));
    assert_eq!(
        put(store, 2, None, std::slice::from_ref(&a2), false, &none).unwrap(),
        (2, 3)
    );
    let stored = store.load().unwrap().topology.unwrap();
    assert_eq!(stored.revision, 2);
    assert_eq!(
        stored.catalog, "[1]",
        "a workspace change keeps the catalog"
    );
    assert_eq!(
        stored.workspaces,
        [
            ("a".to_owned(), a2.1.clone().unwrap()),
            ("b".to_owned(), b.1.clone().unwrap())
        ]
    );
    assert_eq!(
        put(store, 3, None, &[ws("b", None)], false, &none).unwrap(),
        (3, 4)
    );
    assert_eq!(store.load().unwrap().topology.unwrap().workspaces.len(), 1);
    // An import replaces every row.
    assert_eq!(
        put(store, 4, Some("[]"), std::slice::from_ref(&b), true, &none).unwrap(),
        (4, 5)
    );
    let stored = store.load().unwrap().topology.unwrap();
    assert_eq!(stored.workspaces, [("b".to_owned(), b.1.unwrap())]);
    assert_eq!(stored.catalog, "[]");
    let status = store.status().unwrap();
    assert_eq!(
        (status.version, status.seq, status.revision),
        (status.known, 5, 4)
    );
}

fn a_write_decided_on_an_old_state_is_refused_whole(store: &dyn Store) {
    let rows = BTreeMap::from([(gw("g1"), row(1, "{}"))]);
    put(store, 0, Some("[]"), &[ws("a", Some("{}"))], true, &rows).unwrap();
    let before = store.load().unwrap();
    let later = BTreeMap::from([(gw("g1"), row(2, "{\"x\":1}"))]);
    let err = put(store, 0, None, &[ws("a", Some("{\"y\":1}"))], false, &later).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Stale {
                expected: 0,
                current: 1
            }
        ),
        "{err}"
    );
    let health = StoredHealth {
        offline: BTreeSet::from([gw("g1")]),
        ..StoredHealth::default()
    };
    let err = store.put_health(7, &health, &later).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Stale {
                expected: 7,
                current: 1
            }
        ),
        "{err}"
    );
    let after = store.load().unwrap();
    assert_eq!(after.topology, before.topology, "nothing was written");
    assert_eq!(after.gateways, before.gateways);
    assert_eq!(after.offline, before.offline);
    assert_eq!(after.seq, 1);
}

fn changes_are_exactly_what_was_written_since(store: &dyn Store) {
    assert_eq!(
        store.changes(0).unwrap(),
        None,
        "an empty store has no changes"
    );
    let rows = BTreeMap::from([(gw("g1"), row(1, "{}")), (gw("g2"), row(1, "{}"))]);
    let (_, s1) = put(
        store,
        0,
        Some("[\"r\"]"),
        &[
            ws("a", Some("{\"id\":\"a\"}")),
            ws("b", Some("{\"id\":\"b\"}")),
        ],
        true,
        &rows,
    )
    .unwrap();
    let all = store.changes(0).unwrap().unwrap();
    assert_eq!(all.seq, s1);
    let t = all.topology.unwrap();
    assert_eq!((t.revision, t.catalog.as_str()), (1, "[\"r\"]"));
    assert_eq!(t.ids, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert_eq!(t.written.len(), 2);
    assert_eq!(all.gateways, rows);
    assert_eq!(store.changes(s1).unwrap(), None, "nothing since");
    // One workspace rewritten, one deleted, one gateway's generation: exactly that.
    let g2 = BTreeMap::from([(gw("g2"), row(2, "{\"p\":1}"))]);
    let (_, s2) = put(
        store,
        s1,
        None,
        &[ws("a", Some("{\"id\":\"a\",\"v\":2}")), ws("b", None)],
        false,
        &g2,
    )
    .unwrap();
    let since = store.changes(s1).unwrap().unwrap();
    assert_eq!(since.seq, s2);
    let t = since.topology.unwrap();
    assert_eq!(t.ids, BTreeSet::from(["a".to_owned()]), "b was deleted");
    assert_eq!(
        t.written,
        [("a".to_owned(), "{\"id\":\"a\",\"v\":2}".to_owned())]
    );
    assert_eq!(since.gateways, g2);
    // A health change carries no topology.
    let health = StoredHealth {
        offline: BTreeSet::from([gw("g1")]),
        unhealthy: BTreeSet::from([(gw("g2"), NetworkId::new("net").unwrap())]),
    };
    let s3 = store.put_health(s2, &health, &BTreeMap::new()).unwrap();
    let since = store.changes(s2).unwrap().unwrap();
    assert_eq!(since.seq, s3);
    assert_eq!(since.topology, None);
    assert!(since.gateways.is_empty());
    assert_eq!(since.health, health);
}

fn health_is_stored_whole_with_its_rows(store: &dyn Store) {
    let first = StoredHealth {
        offline: BTreeSet::from([gw("g1"), gw("g2")]),
        unhealthy: BTreeSet::from([(gw("g3"), NetworkId::new("a").unwrap())]),
    };
    let rows = BTreeMap::from([(gw("g1"), row(4, "{}"))]);
    let s1 = store.put_health(0, &first, &rows).unwrap();
    let snap = store.load().unwrap();
    assert_eq!(snap.offline, first.offline);
    assert_eq!(snap.gateways, rows);
    let second = StoredHealth {
        offline: BTreeSet::from([gw("g2")]),
        unhealthy: BTreeSet::new(),
    };
    store.put_health(s1, &second, &BTreeMap::new()).unwrap();
    assert_eq!(
        store.changes(0).unwrap().unwrap().health,
        second,
        "replaced whole"
    );
}

fn reports_are_read_back_in_order(store: &dyn Store) {
    assert!(store.observed_since(0, 10).unwrap().is_empty());
    store.put_observed(&gw("g1"), 100, "{\"n\":1}").unwrap();
    store.put_observed(&gw("g2"), 101, "{\"n\":2}").unwrap();
    let rows = store.observed_since(0, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].gateway, gw("g1"));
    assert!(rows[0].seq < rows[1].seq);
    // A newer report of g1 replaces its row and comes after g2's.
    store.put_observed(&gw("g1"), 102, "{\"n\":3}").unwrap();
    let after = store.observed_since(rows[1].seq, 10).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(
        (after[0].gateway.as_str(), after[0].report.as_str()),
        ("g1", "{\"n\":3}")
    );
    assert_eq!(after[0].received_unix_ms, 102);
    assert_eq!(
        store.observed_since(0, 1).unwrap().len(),
        1,
        "the limit holds"
    );
    let snap = store.load().unwrap();
    assert_eq!(snap.observed[&gw("g1")], (102, "{\"n\":3}".to_owned()));
    assert_eq!(snap.observed_cursor, after[0].seq);
}

fn a_lease_is_one_holders_until_it_expires(store: &dyn Store) {
    assert!(store.try_lease("health", "a", 400).unwrap());
    assert!(!store.try_lease("health", "b", 400).unwrap(), "a holds it");
    assert!(store.try_lease("health", "a", 400).unwrap(), "a renews it");
    assert!(
        store.try_lease("other", "b", 400).unwrap(),
        "leases are by name"
    );
    // Once a stops renewing, b gets it within the lease's time.
    let start = Instant::now();
    while !store.try_lease("health", "b", 60_000).unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the lease never expired"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "expired early: {:?}",
        start.elapsed()
    );
    assert!(
        !store.try_lease("health", "a", 400).unwrap(),
        "now b holds it"
    );
}

fn a_token_is_redeemed_once_and_expires(store: &dyn Store) {
    let key = PrivateKey::from_bytes([7; 32]).public_key();
    let subject = Subject::Gateway(gw("g1"));
    store.add_token(&[1; 32], &subject, 1_000).unwrap();
    store.add_token(&[2; 32], &subject, 10).unwrap();
    assert_eq!(
        store.token_subject(&[1; 32], 500).unwrap(),
        Some(subject.clone())
    );
    assert_eq!(store.token_subject(&[2; 32], 500).unwrap(), None, "expired");
    let other = Subject::Node(NodeId::new("n1").unwrap());
    assert_eq!(
        store
            .redeem_token(&[1; 32], 500, &other, &key, &[9; 32])
            .unwrap(),
        Redeemed::Refused,
        "for another subject"
    );
    assert_eq!(
        store
            .redeem_token(&[1; 32], 500, &subject, &key, &[9; 32])
            .unwrap(),
        Redeemed::Enrolled(subject.clone())
    );
    assert_eq!(
        store
            .redeem_token(&[1; 32], 501, &subject, &key, &[8; 32])
            .unwrap(),
        Redeemed::Refused,
        "used"
    );
    assert_eq!(
        store.principal(&[9; 32]).unwrap().unwrap().0,
        Principal::Gateway(gw("g1"))
    );
    assert_eq!(store.load().unwrap().gateway_keys[&gw("g1")], key);
    // Used at 500, expired at 10: both go before 600; nothing unexpired does.
    store.add_token(&[3; 32], &subject, 10_000).unwrap();
    assert_eq!(store.expire_tokens(600).unwrap(), 2);
    assert_eq!(store.token_subject(&[3; 32], 600).unwrap(), Some(subject));
}

fn credentials_are_found_replaced_and_revoked(store: &dyn Store) {
    store
        .set_api_credential(&Principal::Platform, &[1; 32])
        .unwrap();
    store
        .set_api_credential(&Principal::Operator, &[2; 32])
        .unwrap();
    store
        .set_api_credential(&Principal::Platform, &[3; 32])
        .unwrap();
    assert_eq!(store.principal(&[1; 32]).unwrap(), None, "replaced");
    assert_eq!(
        store.principal(&[3; 32]).unwrap(),
        Some((Principal::Platform, [3; 32]))
    );
    assert_eq!(
        store.principal(&[2; 32]).unwrap(),
        Some((Principal::Operator, [2; 32]))
    );
    let acme = WorkspaceId::new("acme").unwrap();
    store
        .add_workspace_credential(&acme, &[4; 32], &audit(Some("acme"), "cred"))
        .unwrap();
    store
        .add_workspace_credential(&acme, &[5; 32], &audit(Some("acme"), "cred"))
        .unwrap();
    assert_eq!(
        store.principal(&[5; 32]).unwrap(),
        Some((Principal::Workspace(acme.clone()), [5; 32]))
    );
    assert!(store
        .set_api_credential(&Principal::Workspace(acme.clone()), &[6; 32])
        .is_err());
    // A write that revokes the workspace ends both of its credentials.
    store
        .put_topology(&TopologyWrite {
            expected_seq: 0,
            topology_changed: true,
            catalog: Some("[]"),
            workspaces: &[],
            replace_all: true,
            now_ms: 0,
            changed: &BTreeMap::new(),
            health: &StoredHealth::default(),
            audit: None,
            revoke: &[Principal::Workspace(acme)],
        })
        .unwrap();
    assert_eq!(store.principal(&[4; 32]).unwrap(), None);
    assert_eq!(store.principal(&[5; 32]).unwrap(), None);
    assert!(store.principal(&[3; 32]).unwrap().is_some(), "others stay");
}

fn the_audit_trail_pages_by_workspace(store: &dyn Store) {
    let acme = WorkspaceId::new("acme").unwrap();
    for (i, ws) in ["acme", "globex", "acme"].iter().enumerate() {
        store
            .add_workspace_credential(
                &WorkspaceId::new(*ws).unwrap(),
                &[u8::try_from(i).unwrap() + 10; 32],
                &audit(Some(ws), &format!("c{i}")),
            )
            .unwrap();
    }
    let all = store.audit(0, 10, None).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    assert_eq!(all[1].object.id, "c1");
    let page = store.audit(all[0].seq, 1, None).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, all[1].seq);
    let acme_only = store.audit(0, 10, Some(&acme)).unwrap();
    assert_eq!(
        acme_only
            .iter()
            .map(|e| e.object.id.as_str())
            .collect::<Vec<_>>(),
        ["c0", "c2"]
    );
}

fn load_returns_everything_stored(store: &dyn Store) {
    let rows = BTreeMap::from([(
        gw("g1"),
        GatewayRow {
            uplink: Some("eth1".to_owned()),
            targets_json: "{\"net\":[\"10.0.0.1\"]}".to_owned(),
            ..row(3, "{\"s\":1}")
        },
    )]);
    let (_, seq) = put(store, 0, Some("[]"), &[ws("a", Some("{}"))], true, &rows).unwrap();
    let health = StoredHealth {
        offline: BTreeSet::from([gw("g2")]),
        ..StoredHealth::default()
    };
    let seq = store.put_health(seq, &health, &BTreeMap::new()).unwrap();
    store.put_observed(&gw("g1"), 5, "{}").unwrap();
    let snap = store.load().unwrap();
    assert_eq!(snap.seq, seq);
    assert_eq!(snap.gateways, rows);
    assert_eq!(snap.offline, health.offline);
    assert_eq!(snap.observed.len(), 1);
    assert_eq!(snap.topology.unwrap().revision, 1);
}

// PostgreSQL only: what several managers on one database need.

#[test]
fn postgres_a_write_through_one_store_wakes_every_other() {
    let url = pg::PgServer::shared().database("wakes");
    let (a, b) = (pg_store(&url), pg_store(&url));
    let mut rx = b.subscribe().unwrap();
    // The listener is up once it has moved the channel the first time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *rx.borrow_and_update() == 0 {
        assert!(Instant::now() < deadline, "b never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = *rx.borrow();
    put(&a, 0, Some("[]"), &[], true, &BTreeMap::new()).unwrap();
    while *rx.borrow() == seen {
        assert!(Instant::now() < deadline, "b was not told of a's write");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.changes(0).unwrap().unwrap().seq, 1);
    assert!(
        b.shared()
            && !SqliteStore::open(
                &std::env::temp_dir().join(format!("nmt-conf-shared-{}.db", std::process::id()))
            )
            .unwrap()
            .shared()
    );
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("nmt-conf-shared-{}.db", std::process::id())),
    );
}

#[test]
fn postgres_managers_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let server = pg::PgServer::shared();
    let url = server.database("migrate");
    let stores: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| pg_store(&url))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let status = stores[0].status().unwrap();
    assert_eq!(status.version, status.known);
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        server.psql(name, "SELECT count(*) FROM schema_version"),
        "1"
    );
    drop(stores);
    server.psql(
        name,
        &format!("UPDATE schema_version SET version = {}", status.known + 1),
    );
    let err = PgStore::connect(&PgOptions {
        url: url.clone(),
        pool_size: 1,
        ca: None,
    })
    .unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    let inspected = PgStore::inspect(&PgOptions {
        url,
        pool_size: 1,
        ca: None,
    })
    .unwrap()
    .status()
    .unwrap();
    assert_eq!(inspected.version, status.known + 1, "nothing was changed");
}

#[test]
fn postgres_a_bad_url_or_missing_ca_is_a_clear_error_and_the_url_is_never_shown() {
    let options = |url: &str| PgOptions {
        url: url.to_owned(),
        pool_size: 1,
        ca: None,
    };
    let err = PgStore::connect(&options(
        "postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus",
    ))
    .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = PgStore::connect(&options(
        "postgres://u:hunter2@127.0.0.1:1/db?sslmode=require",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("--store-ca"), "{err}");
    assert!(!format!("{:?}", options("postgres://u:hunter2@h/db")).contains("hunter2"));
    // Nothing listens there: unavailable, quickly, without the password.
    let start = Instant::now();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PgStore::connect(&options(&format!(
        "postgres://u:hunter2@127.0.0.1:{port}/db"
    )))
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// `check` changes nothing and fails until `migrate` ran; then both succeed, on
/// PostgreSQL and on SQLite.
#[test]
fn migrate_and_check_commands() {
    let manager = env!("CARGO_BIN_EXE_nanami-gateway-manager");
    let dir = std::env::temp_dir().join(format!("nmt-conf-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str], store: &str| {
        let out = std::process::Command::new(manager)
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .env("NANAMI_STORE", store)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let server = pg::PgServer::shared();
    let url = server.database("cli");
    let (ok, text) = run(&["check"], &url);
    assert!(!ok && text.contains("migrate"), "{text}");
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        server.psql(
            name,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0",
        "check created nothing"
    );
    let (ok, text) = run(&["migrate"], &url);
    assert!(ok, "{text}");
    let (ok, text) = run(&["check"], &url);
    assert!(ok && text.contains("schema version 1"), "{text}");
    // SQLite: init creates and migrates the store; check reads it.
    let (ok, text) = run(&["init"], "sqlite");
    assert!(ok, "{text}");
    let (ok, text) = run(&["check"], "sqlite");
    assert!(ok, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// TLS to the database: a server that refuses plain connections is reached with
/// `--store-ca`, verified; without it, or with another CA, nothing connects.
#[test]
fn postgres_over_tls_is_verified_against_the_given_ca() {
    let manager = env!("CARGO_BIN_EXE_nanami-gateway-manager");
    let dir = std::env::temp_dir().join(format!("nmt-conf-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two certificate authorities, each with a certificate for 127.0.0.1.
    for name in ["db", "other"] {
        let ok = std::process::Command::new(manager)
            .args(["init", "--san", "127.0.0.1", "--dir"])
            .arg(dir.join(name))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "init {name}");
    }
    let certs = dir.join("db");
    let server = pg::PgServer::start_with(
        "tls",
        &[
            "ssl=on".to_owned(),
            "ssl_cert_file=server.pem".to_owned(),
            "ssl_key_file=server.key".to_owned(),
        ],
        |data| {
            for file in ["server.pem", "server.key"] {
                std::fs::copy(certs.join(file), data.join(file)).unwrap();
            }
            // TLS or nothing, over TCP.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
        },
    );
    let url = format!("{}?sslmode=require", server.database("tls"));
    let with = |ca: Option<std::path::PathBuf>| {
        PgStore::connect(&PgOptions {
            url: url.clone(),
            pool_size: 1,
            ca,
        })
    };
    let store = with(Some(dir.join("db/ca.pem"))).unwrap();
    assert_eq!(
        store.status().unwrap().version,
        store.status().unwrap().known
    );
    let err = with(Some(dir.join("other/ca.pem"))).unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_)),
        "another CA: {err}"
    );
    let err = with(None).unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "no CA: {err}");
    let plain = PgStore::connect(&PgOptions {
        url: url.replace("sslmode=require", "sslmode=disable"),
        pool_size: 1,
        ca: None,
    })
    .unwrap_err();
    assert!(
        matches!(plain, StoreError::Unavailable(_)),
        "plain: {plain}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
