//! A daemon given several managers (`--manager a,b`, as for active-active managers
//! sharing one store): it converges through whichever answers, follows its manager
//! to another address when the first dies (kill -9), and accepts each generation
//! once and in order, also from a manager that is behind.
//!
//! Two SQLite managers cannot share one store, so "another manager" is the same
//! store served again elsewhere: the manager is killed and started over its
//! directory (or a backup of it) on the port the daemon knows as the second one.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    accepted_generations, client_key, copy_dir, daemon_log, gateway_key, spawn_manager,
    start_daemon_at, until, Env, PREAMBLE,
};
use nanami_model::PublicKey;
use nanami_testkit::port::Reserved;

/// Gateway `gateway` (with `key`) serving network `corp`, and one client per key
/// in `clients`: each client added is a new desired state for the gateway.
fn topology(gateway: &str, key: &PublicKey, clients: &[PublicKey]) -> String {
    let mut nodes = format!(
        "      - {{ id: {gateway}, public_key: \"{key}\", status: active, memberships: [{{ network: corp, address: 100.80.0.1 }}] }}\n"
    );
    for (i, key) in clients.iter().enumerate() {
        nodes.push_str(&format!(
            "      - {{ id: laptop-{i}, public_key: \"{key}\", status: active, memberships: [{{ network: corp }}] }}\n"
        ));
    }
    format!(
        "{PREAMBLE}      - {{ id: corp, overlay: 100.80.0.0/22, routes: [10.20.0.0/16] }}
    nodes:
{nodes}    gateways:
      - {{ id: {gateway}, node: {gateway}, region: lab, networks: [corp], roles: [ingress, egress], endpoint: \"192.0.2.1:51820\", listen_port: 51820 }}
"
    )
}

/// A manager driven through its API, with gateway `gateway`'s key in the
/// topology (no client yet); the gateway's state dir.
async fn setup(tag: &str, gateway: &str) -> (Env, std::path::PathBuf, PublicKey) {
    let env = Env::start_api(tag).await;
    let state = env.tmp.0.join(gateway);
    let key = gateway_key(&state);
    env.control()
        .put_topology(&topology(gateway, &key, &[]))
        .await
        .unwrap();
    (env, state, key)
}

/// The desired generation of `gateway` once its daemon reports it applied.
async fn converged(env: &Env, gateway: &str) -> u64 {
    let status = env.converged(&[gateway]).await;
    status
        .iter()
        .find(|s| s.id.as_str() == gateway)
        .unwrap()
        .desired_generation
}

/// The daemon accepted each generation once, in increasing order, the last being
/// `last`.
fn accepted_once_in_order(gateway: &str, last: u64) -> Vec<u64> {
    let accepted = accepted_generations(gateway);
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "generations accepted twice or out of order: {accepted:?}"
    );
    assert_eq!(accepted.last(), Some(&last), "{accepted:?}");
    accepted
}

/// Whether the daemon logged a switch to `url`.
fn switched_to(gateway: &str, url: &str) -> bool {
    daemon_log(gateway).iter().any(|l| {
        l.contains("switched to another manager")
            && (l.contains(&format!("to={url}")) || l.contains(&format!("to=\"{url}\"")))
    })
}

/// A loopback URL where nothing listens, and nothing else can while the port
/// is held.
fn nobody() -> (String, Reserved) {
    let port = Reserved::loopback();
    (format!("https://127.0.0.1:{}", port.port()), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_given_a_dead_manager_first_enrols_and_converges_through_the_next() {
    let (env, state, _) = setup("fo-dead", "gw-d").await;
    let token = env.token("gw-d").await;
    let (nobody, _held) = nobody();
    let managers = format!("{nobody},{}", env.manager.url());
    let _daemon = start_daemon_at(&env, &managers, "gw-d", &state, Some(token)).await;
    let generation = converged(&env, "gw-d").await;
    accepted_once_in_order("gw-d", generation);
    assert!(
        switched_to("gw-d", &env.manager.url()),
        "the switch is logged naming the manager: {:#?}",
        daemon_log("gw-d")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_follows_its_manager_to_the_next_address_and_applies_each_generation_once() {
    let (mut env, state, key) = setup("fo-move", "gw-s").await;
    let token = env.token("gw-s").await;
    // Held until the second manager binds it.
    let second = Reserved::loopback();
    let managers = format!("{},https://127.0.0.1:{}", env.manager.url(), second.port());
    let daemon = start_daemon_at(&env, &managers, "gw-s", &state, Some(token)).await;
    let first = converged(&env, "gw-s").await;
    let laptops = [client_key(), client_key()];
    env.control()
        .put_topology(&topology("gw-s", &key, &laptops[..1]))
        .await
        .unwrap();
    let before = converged(&env, "gw-s").await;
    assert!(before > first);

    // kill -9, and the same store served at the second address.
    env.manager.stop();
    let log = env.tmp.0.join("manager.log");
    env.manager = spawn_manager(&env.mdir(), &env.topology_file(), second.port(), &log, &[]).await;
    env.control()
        .put_topology(&topology("gw-s", &key, &laptops))
        .await
        .unwrap();
    let after = converged(&env, "gw-s").await;
    assert!(after > before, "{after} > {before}");
    assert_eq!(daemon.status.borrow().applied_generation, Some(after));
    let accepted = accepted_once_in_order("gw-s", after);
    assert!(accepted.contains(&before), "{accepted:?}");
    assert!(
        switched_to("gw-s", &env.manager.url()),
        "{:#?}",
        daemon_log("gw-s")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_is_behind_does_not_move_the_daemon_back() {
    let (mut env, state, key) = setup("fo-behind", "gw-r").await;
    let token = env.token("gw-r").await;
    // Held until the second manager binds it.
    let second = Reserved::loopback();
    let managers = format!("{},https://127.0.0.1:{}", env.manager.url(), second.port());
    let daemon = start_daemon_at(&env, &managers, "gw-r", &state, Some(token)).await;
    let old = converged(&env, "gw-r").await;

    // A backup of the store at generation `old` (copied while no manager runs).
    env.manager.stop();
    let backup = env.tmp.0.join("backup");
    copy_dir(&env.mdir(), &backup);
    let log = env.tmp.0.join("manager.log");
    let port = env.manager.port;
    env.manager = spawn_manager(&env.mdir(), &env.topology_file(), port, &log, &[]).await;
    env.control()
        .put_topology(&topology("gw-r", &key, &[client_key()]))
        .await
        .unwrap();
    let newer = converged(&env, "gw-r").await;
    assert!(newer > old);

    // The manager dies; the backup, behind at `old`, is served at the second address.
    env.manager.stop();
    env.manager = spawn_manager(&backup, Path::new("/nonexistent"), second.port(), &log, &[]).await;
    // It cannot serve `old` to a daemon waiting past `newer`; it notices the daemon
    // runs a generation it did not issue and serves its state again above it.
    let control = env.control();
    let healed = until("the fork healed", Duration::from_secs(20), || {
        let control = control.clone();
        async move {
            let status = control.status().await.ok()?;
            let gw = status.iter().find(|s| s.id.as_str() == "gw-r")?;
            (gw.desired_generation > newer && gw.observed_generation == Some(gw.desired_generation))
                .then_some(gw.desired_generation)
        }
    })
    .await;
    assert_eq!(daemon.status.borrow().applied_generation, Some(healed));
    // Strictly increasing: nothing at or below `newer` came after it.
    let accepted = accepted_once_in_order("gw-r", healed);
    assert!(accepted.contains(&newer), "{accepted:?}");
}
