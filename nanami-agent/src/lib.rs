//! # nanami-agent
//!
//! What every Nanami program that follows the manager does, once: the gateway
//! daemon, `nanami connect`, the mobile tunnel.
//!
//! ## The state machine ([`Agent`])
//!
//! Pure: no clock, no randomness of its own (a seed is given; the backoff's
//! jitter is [`nanami_reconcile::Backoff`] drawing from it), no I/O, nothing
//! async. Each input is a `handle_*` method taking `now`, a [`Duration`] since
//! any fixed origin (a monotonic clock in the driver, a plain number in tests),
//! and returning the [`Action`]s to take, in order. Generic over what is followed
//! ([`DesiredState`]: a gateway's desired state, a client's
//! [`VersionedConfig`]).
//!
//! Its rules:
//!
//! - **Enrolment, once.** [`Agent::handle_start`] with a saved credential
//!   follows the manager at once; without one it enrols with the one-time token
//!   ([`Action::Enrol`]), saves the credential ([`Action::PersistCredential`])
//!   and then follows. No credential and no token: [`Fatal::NotEnrolled`]. A
//!   refused token stops the agent ([`Fatal::EnrolmentRefused`]); a refused
//!   *credential* (401/403 on a long-poll) is said
//!   ([`Event::CredentialRefused`]) and retried with the backoff, the
//!   last-known-good state staying in force: the agent never enrols again on its
//!   own.
//! - **Following.** One long-poll at a time ([`Action::Poll`]): the first after
//!   start asks for the current state (`after` none, so a manager that went back
//!   in time is noticed), the next ones wait past the version held.
//! - **Several managers.** The agent asks one manager at a time and stays with
//!   the one that answers. One it cannot reach ([`Failure::Unreachable`]) sends
//!   it to the next at once; when every manager failed in a row it waits the
//!   backoff before the next round. Any answer resets the backoff.
//! - **Backoff.** Bounded and jittered: [`nanami_reconcile::Backoff`], between
//!   [`Config::backoff_first`] and [`Config::backoff_max`], each wait drawn from
//!   the upper half of its nominal value.
//! - **Last-known-good.** Served at once on start ([`Action::Apply`], not saved
//!   again). A newer desired state is saved ([`Action::PersistLkg`]) then
//!   applied; the same one is nothing; an older one, a forked one or one failing
//!   its checks is refused ([`Event::Refused`]) and neither saved nor applied,
//!   and the manager is asked again after the backoff. A state that could not be
//!   saved is applied anyway (a client: the manager has it too) or, with
//!   [`Config::apply_unsaved`] off (a gateway), refused like the others: the
//!   agent applies it only after [`Agent::handle_persisted`].
//! - **Reports** (a gateway, [`Config::report_every`]): every `report_every`
//!   once enrolled, and at once after [`Agent::handle_applied`] and
//!   [`Agent::handle_status_changed`] ([`Action::Report`], to the manager in
//!   use).
//! - **Failover** (a client, [`Config::failover`]): once the first desired state
//!   is applied, the gateways of its failover lists are probed every probe
//!   interval ([`Action::Probe`]; answers are [`Agent::handle_probe_reply`]), and
//!   [`nanami_model::Failover`] decides who is down, with its hold-down before a
//!   gateway that came back is used again; each change of the set is
//!   [`Action::SwitchGateways`].
//!
//! ## The driver's contract
//!
//! A driver (the async one in [`driver`], with the `driver` feature, or another:
//! a mobile app's own loop) does each action in order; calls back the answer of
//! each [`Action::Enrol`] and [`Action::Poll`] (at most one is out at a time;
//! answers to anything but the one out are ignored); calls
//! [`Agent::handle_tick`] when the last [`Action::Wait`] falls due (earlier is
//! harmless); calls [`Agent::handle_applied`] when the reconciler applied a
//! state, [`Agent::handle_probe_reply`] for each probe answer; stops at
//! [`Action::Stop`]. After each [`Action::PersistLkg`] it calls
//! [`Agent::handle_persisted`] or [`Agent::handle_persist_failed`] and does
//! what they return next (with [`Config::apply_unsaved`] on, nothing: the state
//! was applied anyway).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agent;
mod desired;
#[cfg(feature = "driver")]
pub mod driver;
#[cfg(test)]
mod tests;

pub use agent::{
    Action, Agent, Config, Credential, Event, Failure, Fatal, Refusal, Start, BACKOFF_FIRST,
    BACKOFF_MAX,
};
pub use desired::{by_generation, DesiredState, Freshness, VersionedConfig};

#[cfg(doc)]
use std::time::Duration;
