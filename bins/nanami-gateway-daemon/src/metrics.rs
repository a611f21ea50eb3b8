//! The daemon's own `/metrics`, served on a local address (`--metrics-listen`):
//! what the reconciler does on this machine and what the device counts, for the
//! machine's own Prometheus (the manager's `/metrics` has the fleet's view).
//!
//! Every series carries the `gateway` label (several daemons may share a host).
//!
//! - the reconciler: `nanami_daemon_passes_total`, `nanami_daemon_ready`,
//!   `nanami_daemon_consecutive_failures`, `nanami_daemon_last_plan_ops`,
//!   `nanami_daemon_desired_generation`, `nanami_daemon_applied_generation`,
//!   `nanami_daemon_ops_applied_total`, `nanami_daemon_ops_failed_total`,
//!   `nanami_daemon_drift_repairs_total` (passes that changed the machine although
//!   the generation in force was already applied: something else changed it);
//! - apply latency, from a desired state accepted to the machine observed matching
//!   it: `nanami_daemon_applies_total`, `nanami_daemon_apply_seconds_total`,
//!   `nanami_daemon_last_apply_seconds`;
//! - the device, per interface: `nanami_daemon_peers`,
//!   `nanami_daemon_receive_bytes_total`, `nanami_daemon_transmit_bytes_total`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use nanami_api::metrics::{count, Exposition, Kind};
use nanami_model::GatewayId;
use nanami_reconcile::{Condition, Observed, Status};
use tokio::sync::watch;

/// Ops applied and refused, counted by the platform wrapper as they happen.
#[derive(Debug, Default)]
pub struct OpCounts {
    applied: AtomicU64,
    failed: AtomicU64,
}

impl OpCounts {
    /// One op applied (`ok`) or refused.
    pub fn count(&self, ok: bool) {
        let counter = if ok { &self.applied } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The daemon's counters and the channels its gauges are read from.
pub struct DaemonMetrics {
    gateway: GatewayId,
    status: watch::Receiver<Status>,
    observed: watch::Receiver<Option<Observed>>,
    ops: Arc<OpCounts>,
    drift_repairs: AtomicU64,
    applies: AtomicU64,
    apply_nanos_total: AtomicU64,
    last_apply_nanos: AtomicU64,
    /// The accepted generation not applied yet, and when it was accepted.
    pending: Mutex<Option<(u64, Instant)>>,
}

impl DaemonMetrics {
    /// Metrics of `gateway`, reading the reconciler's status, the observations and
    /// the op counts.
    pub fn new(
        gateway: GatewayId,
        status: watch::Receiver<Status>,
        observed: watch::Receiver<Option<Observed>>,
        ops: Arc<OpCounts>,
    ) -> Self {
        Self {
            gateway,
            status,
            observed,
            ops,
            drift_repairs: AtomicU64::new(0),
            applies: AtomicU64::new(0),
            apply_nanos_total: AtomicU64::new(0),
            last_apply_nanos: AtomicU64::new(0),
            pending: Mutex::new(None),
        }
    }

    /// A desired generation was accepted: its apply latency starts now (a later
    /// generation accepted before it was applied takes over).
    pub fn accepted(&self, generation: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_none_or(|(g, _)| g != generation) {
            *pending = Some((generation, Instant::now()));
        }
    }

    /// Follows the reconciler's status until `stop`: ends the latency of an
    /// accepted generation once it is applied, and counts drift repairs.
    pub async fn follow(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut status = self.status.clone();
        let mut previous = status.borrow_and_update().clone();
        loop {
            tokio::select! {
                () = &mut stop => return,
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = status.borrow_and_update().clone();
                    if now.passes > previous.passes
                        && now.last_plan_len > 0
                        && previous.applied_generation.is_some()
                        && now.desired_generation == previous.applied_generation
                    {
                        self.drift_repairs.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((g, since)) = *pending {
                        if now.applied_generation >= Some(g) {
                            let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            self.applies.fetch_add(1, Ordering::Relaxed);
                            self.apply_nanos_total.fetch_add(nanos, Ordering::Relaxed);
                            self.last_apply_nanos.store(nanos, Ordering::Relaxed);
                            *pending = None;
                        }
                    }
                    drop(pending);
                    previous = now;
                }
            }
        }
    }

    /// The exposition.
    pub fn render(&self) -> String {
        let status = self.status.borrow().clone();
        let observed = self.observed.borrow().clone().unwrap_or_default();
        let gw = [("gateway", self.gateway.as_str())];
        let load = |a: &AtomicU64| count(a.load(Ordering::Relaxed));
        let seconds = |a: &AtomicU64| load(a) / 1e9;
        let mut e = Exposition::new();
        let mut one = |name: &str, kind: Kind, help: &str, value: f64| {
            e.family(name, kind, help).sample(name, &gw, value);
        };
        one(
            "nanami_daemon_passes_total",
            Kind::Counter,
            "Reconcile passes run.",
            count(status.passes),
        );
        one(
            "nanami_daemon_ready",
            Kind::Gauge,
            "1 when the machine matches the desired state in force.",
            f64::from(u8::from(matches!(status.condition, Condition::Ready))),
        );
        one(
            "nanami_daemon_consecutive_failures",
            Kind::Gauge,
            "Failed passes in a row (0 once a pass succeeds).",
            f64::from(status.consecutive_failures),
        );
        one(
            "nanami_daemon_last_plan_ops",
            Kind::Gauge,
            "Ops the last pass planned.",
            count(u64::try_from(status.last_plan_len).unwrap_or(u64::MAX)),
        );
        one(
            "nanami_daemon_desired_generation",
            Kind::Gauge,
            "Generation of the desired state the last pass worked on (0: none yet).",
            count(status.desired_generation.unwrap_or(0)),
        );
        one(
            "nanami_daemon_applied_generation",
            Kind::Gauge,
            "Latest generation the machine was observed to match (0: none yet).",
            count(status.applied_generation.unwrap_or(0)),
        );
        one(
            "nanami_daemon_ops_applied_total",
            Kind::Counter,
            "Ops applied to the machine.",
            load(&self.ops.applied),
        );
        one(
            "nanami_daemon_ops_failed_total",
            Kind::Counter,
            "Ops the machine refused.",
            load(&self.ops.failed),
        );
        one(
            "nanami_daemon_drift_repairs_total",
            Kind::Counter,
            "Passes that changed the machine although the generation in force was already applied (drift repaired).",
            load(&self.drift_repairs),
        );
        one(
            "nanami_daemon_applies_total",
            Kind::Counter,
            "Desired generations applied after they were accepted.",
            load(&self.applies),
        );
        one(
            "nanami_daemon_apply_seconds_total",
            Kind::Counter,
            "Time from each accepted desired generation to the machine observed matching it, summed.",
            seconds(&self.apply_nanos_total),
        );
        one(
            "nanami_daemon_last_apply_seconds",
            Kind::Gauge,
            "Time from the last accepted desired generation to the machine observed matching it.",
            seconds(&self.last_apply_nanos),
        );
        for (name, help, pick) in [
            ("nanami_daemon_peers", "Peers of the interface.", None),
            (
                "nanami_daemon_receive_bytes_total",
                "Bytes the interface received from its peers.",
                Some(true),
            ),
            (
                "nanami_daemon_transmit_bytes_total",
                "Bytes the interface sent to its peers.",
                Some(false),
            ),
        ] {
            let kind = if pick.is_some() {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            e.family(name, kind, help);
            for (interface, peers) in &observed.telemetry {
                let value = match pick {
                    None => u64::try_from(peers.len()).unwrap_or(u64::MAX),
                    Some(rx) => peers
                        .values()
                        .map(|t| if rx { t.rx_bytes } else { t.tx_bytes })
                        .fold(0, u64::saturating_add),
                };
                e.sample(
                    name,
                    &[
                        ("gateway", self.gateway.as_str()),
                        ("interface", interface.as_str()),
                    ],
                    count(value),
                );
            }
        }
        e.finish()
    }
}

/// Serves `metrics` at `GET /metrics` on `listener` until `stop`, with the bounds
/// of [`nanami_api::server`] (a few connections: only the local Prometheus asks).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<DaemonMetrics>,
    stop: impl Future<Output = ()>,
) {
    use axum::routing::get;
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        nanami_api::metrics::CONTENT_TYPE,
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let limits = nanami_api::server::ServerLimits {
        max_connections: 16,
        ..nanami_api::server::ServerLimits::default()
    };
    nanami_api::server::serve(listener, router, None, limits, stop).await;
}
