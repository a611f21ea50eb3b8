//! # nanami-reconcile
//!
//! Makes a machine match a desired [`GatewayState`], the kube way: observe, diff,
//! apply, and let the next observation be the truth.
//!
//! The crate has a pure core and a thin driver:
//!
//! - [`plan`] (data in, data out: no I/O, clock, randomness or hash order) diffs a
//!   desired state against an [`Observed`] one and returns a [`Plan`], an ordered list
//!   of [`Op`]s. [`Plan::apply_to`] is the model semantics of those ops, which the
//!   laws below are stated against.
//! - [`Reconciler`] runs level-triggered passes against any [`Platform`]: one
//!   [`Reconciler::pass`] takes the time as a parameter and returns the [`Action`]
//!   saying when to run next; failures go through one error policy (exponential
//!   backoff with jitter from an injected RNG). [`Reconciler::run`] is the tokio
//!   driver, the only place that reads the clock.
//! - [`sim::SimPlatform`] is an in-memory platform with fault injection, for tests of
//!   the controller and of whatever embeds it.
//!
//! The pure core (`plan`, [`Plan`], [`Op`], [`Observed`], [`Status`], [`Config`],
//! [`Backoff`]…) needs no runtime. [`Reconciler`], [`Platform`] and [`sim`] are the
//! driver, behind the default feature `driver`, the only part that uses tokio:
//! `default-features = false` gives the core alone.
//!
//! ## The laws of `plan`
//!
//! For any desired `d` that is fully owned (see [`GatewayState::owned`]) and any
//! observed `o` (which may hold foreign objects), with `p = plan(d, o)` and
//! `r = p.apply_to(o)`:
//!
//! 1. `plan(s.owned(), s)` is empty (equal states need nothing);
//! 2. `r.owned() == GatewayState { forwarding: o.forwarding ∪ d.forwarding, ..d }`:
//!    one pass converges, except that forwarding is only ever turned on (turning it
//!    back off is the platform's teardown, which restores the machine's sysctls);
//!    hence also `plan(d, r)` is empty;
//! 3. minimality: a peer whose endpoint, AllowedIPs or keepalive changed is exactly
//!    one [`Op::UpdatePeer`], never a remove and an add; every op touches an object
//!    that differs between `d` and `o`, at most once; `p.len()` is at most the size
//!    of the difference;
//! 4. foreign objects (non-`nm-` interfaces, routes and rules outside Nanami's
//!    table/protocol) are never in a plan, and `r` keeps every one of them; foreign
//!    objects in `d` are ignored;
//! 5. ordering is safe: all removals come first, routes and rules before the filter,
//!    peers, addresses and interfaces they depend on; then creation in the order
//!    interface → listen port/MTU → addresses → peers → filter/NAT → routes → rules →
//!    forwarding (see [`Phase`]).
//!
//! Each law is a proptest in `tests/laws.rs`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backoff;
mod observed;
mod op;
mod plan;
#[cfg(feature = "driver")]
mod platform;
#[cfg(feature = "driver")]
mod reconciler;
#[cfg(feature = "driver")]
pub mod sim;
mod status;

pub use backoff::Backoff;
pub use nanami_model::GatewayState;
pub use observed::{Observed, PeerTelemetry};
pub use op::{Op, OpKind, Phase};
pub use plan::{plan, Plan};
#[cfg(feature = "driver")]
pub use platform::{ObjectKind, Platform, PlatformEvent};
#[cfg(feature = "driver")]
pub use reconciler::Reconciler;
pub use status::{backoff_delay, Action, Condition, Config, Desired, OpError, PassError, Status};
