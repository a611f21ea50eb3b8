//! The operator pages in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromedriver), against a real manager with the lab topology (and a
//! second gateway) whose gateways are real daemons. Every page loads with 200 and
//! no console error and shows the expected gateways, clients and reasons (asserted
//! on the DOM); a drained gateway shows as drained with its clients moved and the
//! move in their history; requests without the operator credential get the login
//! or the denied page; the pages hold no script and work with JavaScript off.
//! Screenshots of every page are written as artifacts (see
//! `browser::screenshot_dir`).

mod browser;
mod common;

use std::time::Duration;

use browser::{screenshot_dir, Browser};
use common::*;
use nanami_api::wire::Precondition;
use nanami_model::{NodeId, PublicKey};

/// `examples/lab.yaml` (one gateway, two clients) with the gateway named `gw-a`,
/// a second gateway `gw-b` in the same region, and the daemons' and a client's
/// keys.
fn lab_topology(ka: &PublicKey, kb: &PublicKey, client: PublicKey) -> String {
    let lab = include_str!("../../../examples/lab.yaml")
        .replace("gw-lab", "gw-a")
        .replace(
            "8X4C2QwIBaOpONJxT0R3eWUCPX5oEfyQOroEBMH2I04=",
            &ka.to_base64(),
        )
        .replace(
            "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ=",
            &client.to_base64(),
        );
    let with_node = lab.replace(
        "      - id: client-1\n",
        &format!(
            "      - id: gw-b\n        public_key: \"{}\"\n        status: active\n        memberships: [{{ network: corp, address: 100.80.0.2 }}]\n      - id: client-1\n",
            kb.to_base64()
        ),
    );
    assert_ne!(with_node, lab, "examples/lab.yaml changed shape");
    format!(
        "{with_node}      - id: gw-b\n        node: gw-b\n        region: lab\n        networks: [corp]\n        roles: [ingress, egress]\n        endpoint: \"198.18.0.2:51820\"\n        listen_port: 51820\n"
    )
}

/// Loads `path`, checks it answered `status` with no console error, and writes
/// its screenshot as `name`.png. Chromium reports a document answered with an
/// error status as a console error of its own: for the login, denied and
/// not-found pages that one line is expected, and only it.
fn visit(b: &Browser, base: &str, path: &str, status: u16, name: &str) {
    let before = b.console_errors();
    let url = format!("{base}{path}");
    b.goto(&url);
    assert_eq!(b.status(), status, "{path}: {}", b.source());
    let own =
        format!("{url} - Failed to load resource: the server responded with a status of {status} ");
    let errors: Vec<String> = b
        .console_errors()
        .into_iter()
        .filter(|e| status == 200 || !e.starts_with(&own))
        .collect();
    assert!(
        errors.is_empty(),
        "{path}: console errors {errors:?} (before it: {before:?})"
    );
    assert!(
        !b.source().contains("<script"),
        "{path} holds a script: the pages are plain HTML"
    );
    b.screenshot(screenshot_dir().join(format!("{name}.png")));
}

fn log_in(b: &Browser, base: &str, credential: &str) {
    b.goto(&format!("{base}/ui/login"));
    b.fill("#credential", credential);
    b.submit("form.login");
}

// The browser calls block their thread: the daemons run on the other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_pages_in_a_real_browser() {
    let f = fleet_with("ui", lab_topology).await;
    let base = f.env.manager.url();
    let control = f.env.control();
    let workspace = control
        .mint_workspace_credential("lab")
        .await
        .unwrap()
        .credential;
    let operator = f.env.operator.clone();
    let b = Browser::start();

    // Without a credential: the login page, 401, on every page.
    for path in ["/ui", "/ui/gateways/gw-a", "/ui/nodes/client-1"] {
        b.goto(&format!("{base}{path}"));
        assert_eq!(b.status(), 401, "{path}");
        assert!(b.exists("#login"), "{path}: {}", b.source());
    }
    visit(&b, &base, "/ui", 401, "login");
    // A workspace's credential is not an operator's: the denied page.
    log_in(&b, &base, &workspace);
    assert_eq!(b.status(), 403);
    assert!(b.text("#denied").contains("Not for this credential"));
    assert!(b.text("main").contains("workspace"), "{}", b.source());
    b.screenshot(screenshot_dir().join("denied.png"));
    // An unknown credential: the login page again, saying so.
    log_in(&b, &base, "nmo_not-a-credential");
    assert_eq!(b.status(), 401);
    assert!(b.text("#problem").contains("not known"));
    // The operator's, from a bookmarked page: back to it after the login.
    b.goto(&format!("{base}/ui/nodes/client-1"));
    b.fill("#credential", &operator);
    b.submit("form.login");
    assert!(
        b.current_url().ends_with("/ui/nodes/client-1"),
        "{}",
        b.current_url()
    );
    assert_eq!(b.status(), 200);

    // The overview: the catalog × workspaces matrix.
    visit(&b, &base, "/ui", 200, "overview");
    let cell = b.text("#matrix tr[data-region=lab] td[data-workspace=lab]");
    assert!(cell.contains("access"), "{cell}");
    assert!(cell.contains("gw-a") && cell.contains("gw-b"), "{cell}");
    assert!(b.text("#matrix").contains("Lab (this machine)"));
    assert!(b.text("#workspaces").contains("lab"));

    // Every gateway, online, healthy.
    visit(&b, &base, "/ui/gateways", 200, "gateways");
    for gw in ["gw-a", "gw-b"] {
        let health = b.text(&format!("#gateways tr[data-gateway={gw}] td.health"));
        assert_eq!(health, "online", "{gw}");
        let paths = b.text(&format!("#gateways tr[data-gateway={gw}] td.paths"));
        assert_eq!(paths, "healthy", "{gw}");
    }

    // The workspace: auto in region order then id: both clients on gw-a.
    visit(&b, &base, "/ui/workspaces/lab", 200, "workspace");
    for client in ["client-1", "client-2"] {
        let row = format!("#clients tr[data-node={client}]");
        assert_eq!(b.text(&format!("{row} a.primary")), "gw-a", "{client}");
    }
    let verdicts = b.text("#networks tr[data-network=corp]");
    assert!(verdicts.contains("gw-a: eligible"), "{verdicts}");

    // gw-a carries both, as their primary.
    visit(&b, &base, "/ui/gateways/gw-a", 200, "gateway-gw-a");
    assert_eq!(b.text("#load"), "2");
    assert_eq!(
        b.texts("table.clients[data-network=corp] tr[data-node] td:first-child"),
        ["client-1", "client-2"]
    );
    assert!(!b.exists("#drained-notice"));

    // client-1: why gw-a, and no movements yet.
    visit(&b, &base, "/ui/nodes/client-1", 200, "node-client-1");
    assert_eq!(b.text("strong.primary[data-network=corp]"), "gw-a");
    let why = b.text("table.explain[data-network=corp] tr[data-gateway=gw-b] td.outcome");
    assert_eq!(why, "not needed (redundancy reached)");
    assert!(b.exists("#no-movements"));

    // Drain gw-a (the object API, platform credential): its clients move to gw-b.
    let path = "/v1/workspaces/lab/gateways/gw-a";
    let mut gw = control
        .get_object::<serde_json::Value>(path)
        .await
        .unwrap()
        .object;
    gw["drain"] = true.into();
    control
        .put_object(path, &gw, &Precondition::Any)
        .await
        .unwrap();
    let op = f.env.operator();
    let client_1 = NodeId::new("client-1").unwrap();
    until("client-1 on gw-b", Duration::from_secs(10), || {
        let op = op.clone();
        let client_1 = client_1.clone();
        async move {
            let why = op.explain_node(&client_1).await.ok()?;
            (why["networks"][0]["primary"] == "gw-b").then_some(())
        }
    })
    .await;

    visit(&b, &base, "/ui/gateways/gw-a", 200, "gateway-gw-a-drained");
    assert!(b.exists("#drained-notice"));
    assert!(b
        .text("#gateway tr[data-gateway=gw-a] td.health")
        .contains("drained"));
    assert_eq!(b.text("#load"), "0");
    assert!(b.exists(".no-clients"));
    assert!(b.text("main").contains("drained (maintenance)"));

    visit(&b, &base, "/ui/workspaces/lab", 200, "workspace-drained");
    for client in ["client-1", "client-2"] {
        let row = format!("#clients tr[data-node={client}]");
        assert_eq!(b.text(&format!("{row} a.primary")), "gw-b", "{client}");
    }
    let verdicts = b.text("#networks tr[data-network=corp]");
    assert!(
        verdicts.contains("gw-a: drained (maintenance)"),
        "{verdicts}"
    );

    visit(&b, &base, "/ui/nodes/client-1", 200, "node-client-1-moved");
    assert_eq!(b.text("strong.primary[data-network=corp]"), "gw-b");
    assert_eq!(b.texts("#movements tbody tr").len(), 1);
    assert_eq!(b.text("#movements td.from"), "gw-a");
    assert_eq!(b.text("#movements td.to"), "gw-b");
    assert_eq!(
        b.text("#movements td.cause"),
        "gw-a can no longer hold it: drained (maintenance)"
    );
    assert!(b.text("#movements").contains("topology revision"));

    // Unknown ids and pages: a readable 404, not JSON.
    visit(&b, &base, "/ui/nodes/nobody", 404, "not-found");
    assert!(b.text("#error").starts_with("404"));
    // Logging out forgets the credential.
    b.goto(&format!("{base}/ui/gateways"));
    b.submit("header form");
    assert_eq!(b.status(), 200);
    assert!(b.exists("#login"));
    b.goto(&format!("{base}/ui"));
    assert_eq!(b.status(), 401);
    drop(b);

    // JavaScript off: the same login and pages work.
    let b = Browser::start_with(&["--blink-settings=scriptEnabled=false"]);
    log_in(&b, &base, &operator);
    assert!(b.current_url().ends_with("/ui"), "{}", b.current_url());
    visit(&b, &base, "/ui/nodes/client-1", 200, "node-client-1-no-js");
    assert_eq!(b.text("#movements td.to"), "gw-b");
}
