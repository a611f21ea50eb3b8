//! The manager's background loops (heartbeats, following other managers), and the
//! bounded HTTP server it serves its API with ([`nanami_api::server`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

pub use nanami_api::server::{
    connection_cap, plain_http_allowed, serve, ServerLimits, RESERVED_FDS, SHUTDOWN_GRACE,
};

use crate::manager::Manager;

/// Runs the heartbeat check every `tick` until `shutdown`.
pub async fn health_loop(
    manager: Arc<Manager>,
    tick: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {
                // Compile and store work: on a blocking thread, never on the
                // async workers.
                let m = manager.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || m.tick()).await {
                    warn!(error = %e, "bug: the health check's task failed");
                }
            }
        }
    }
}

/// Catches the manager up whenever its shared store says another manager wrote
/// (returns at once for a store no other manager writes). Notifications that
/// arrive during a catch-up are folded into the next one.
pub async fn follow_changes(manager: Arc<Manager>, shutdown: impl Future<Output = ()>) {
    let Some(mut changes) = manager.store().subscribe() else {
        return;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        changes.borrow_and_update();
        let m = manager.clone();
        match tokio::task::spawn_blocking(move || m.catch_up()).await {
            Ok(Ok(_)) => {}
            // The tick retries; the next notification does too.
            Ok(Err(e)) => warn!(error = %e, "cannot catch up with the store"),
            Err(e) => warn!(error = %e, "bug: the catch-up task failed"),
        }
    }
}
