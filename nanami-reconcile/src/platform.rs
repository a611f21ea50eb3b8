//! What the reconciler drives: a machine that can be observed and changed one op at
//! a time.

use std::future::Future;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::observed::Observed;
use crate::op::Op;

/// The kind of object a platform event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ObjectKind {
    /// A link.
    Interface,
    /// An address of a link.
    Address,
    /// A WireGuard peer.
    Peer,
    /// A route.
    Route,
    /// A policy rule.
    Rule,
    /// The `inet nanami` nftables table.
    Filter,
    /// A forwarding sysctl.
    Forwarding,
}

/// Something changed on the machine. Events only hint: the reconciler answers any
/// of them with a full pass (observe, plan, apply), and resyncs on a timer anyway
/// because events can be missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PlatformEvent {
    /// An object of this kind changed (perhaps out of band).
    Changed {
        /// What kind of object.
        kind: ObjectKind,
    },
    /// Events were lost (a netlink socket overflowed, say): anything may have
    /// changed.
    Overflow,
}

/// A machine the [`Reconciler`](crate::Reconciler) can drive: the Linux platform, a
/// userspace device, or [`SimPlatform`](crate::sim::SimPlatform) in tests.
///
/// Contract for implementations:
/// - [`Platform::apply`] is idempotent: "already exists" on an add and "not found" on
///   a remove or delete are success, so an interrupted pass can be rerun. It changes
///   only the object the op names, and never flushes what Nanami does not own.
/// - [`Platform::observe`] reports the whole machine as it is now, foreign objects
///   included (the plan ignores them), with telemetry. The reconciler never assumes
///   an op took effect; the next observation is the truth.
/// - Own changes may or may not produce events; a platform that echoes them only
///   costs one extra, empty pass.
///
/// Implementations write `async fn observe` and `async fn apply`; their futures must
/// be `Send`, so that [`Reconciler::run`](crate::Reconciler::run) can be spawned on a
/// multi-threaded runtime. The trait is only used generically, never as
/// `dyn Platform`, so it needs no `async_trait`.
pub trait Platform: Send {
    /// The platform's error, kept whole (with errno or the like) for the status.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads the machine's current state.
    fn observe(&mut self) -> impl Future<Output = Result<Observed, Self::Error>> + Send;

    /// Applies one op (idempotently, see the trait docs).
    fn apply(&mut self, op: &Op) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Hands over the receiver of this platform's events. The first call returns it;
    /// later calls, and platforms without events, return `None` (the periodic resync
    /// then does all the work).
    fn events(&mut self) -> Option<mpsc::Receiver<PlatformEvent>>;
}
