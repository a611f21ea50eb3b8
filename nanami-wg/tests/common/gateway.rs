//! A gateway's control loop (`Reconciler<LinuxPlatform>`) on a thread that entered a
//! test namespace, with its own tokio runtime: the platform acts in that namespace,
//! or, when `config.namespace` is set, hosts the gateway in its own `nm-<gw>`
//! namespace and keeps only the UDP socket in the test's.
//!
//! Include it with `#[path = "common/gateway.rs"] mod gateway;` next to `mod common;`.

use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use nanami_reconcile::{Condition, Config, Desired, Reconciler, Status};
use nanami_wg::linux::{LinuxConfig, LinuxPlatform};
use tokio::sync::{oneshot, watch};

use crate::common::Netns;

/// A running control loop; dropping it stops the loop with a teardown.
pub struct Gateway {
    /// Kept open: a closed channel would end the loop's desired-state watch.
    _desired: watch::Sender<Option<Arc<Desired>>>,
    pub status: watch::Receiver<Status>,
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Creates the platform from `config` on a thread inside `ns` and starts the
    /// loop with `first`; fails the test when the platform cannot be created.
    pub fn start(ns: &Netns, config: LinuxConfig, resync: Duration, first: Desired) -> Self {
        let netns = std::fs::File::open(format!("/var/run/netns/{}", ns.name()))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", ns.name()));
        let (desired_tx, desired_rx) = watch::channel(Some(Arc::new(first)));
        let (status_tx, status_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<bool>();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns with a namespace fd; affects only this thread (and the
            // threads it spawns afterwards).
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let platform = match LinuxPlatform::new(config) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = status_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let rec = Reconciler::new(
                    platform,
                    desired_rx,
                    Box::new(rand::rngs::OsRng),
                    Config {
                        resync,
                        ..Config::default()
                    },
                    Instant::now(),
                );
                let _ = status_tx.send(Ok(rec.subscribe_status()));
                let (teardown_tx, teardown_rx) = oneshot::channel();
                let mut rec = rec
                    .run(async move {
                        let teardown = stop_rx.await.unwrap_or(true);
                        let _ = teardown_tx.send(teardown);
                    })
                    .await;
                if teardown_rx.await.unwrap_or(true) {
                    rec.platform_mut().teardown().await.expect("teardown");
                }
            });
        });
        let status = status_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the gateway thread did not start")
            .unwrap_or_else(|e| panic!("creating the platform: {e}"));
        Self {
            _desired: desired_tx,
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Waits until the machine matches `generation`.
    pub fn wait_ready(&mut self, generation: u64) -> Duration {
        let start = Instant::now();
        nanami_testkit::wait_until(
            &format!("the gateway to converge to generation {generation}"),
            Duration::from_secs(20),
            || {
                let s = self.status.borrow_and_update();
                let ready =
                    s.condition == Condition::Ready && s.applied_generation == Some(generation);
                if ready {
                    Ok(())
                } else {
                    Err(format!("{:?}", *s))
                }
            },
        );
        start.elapsed()
    }

    /// Stops the loop; with `teardown`, removes everything Nanami owns.
    pub fn stop(mut self, teardown: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(teardown);
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("gateway thread");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
