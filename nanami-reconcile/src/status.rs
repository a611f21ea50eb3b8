//! The reconciler's pure vocabulary: the desired state it is given, its timing, the
//! status it reports and its errors. No tokio: these travel in the manager's API and
//! are what an embedder without the driver (feature `driver`) still needs.

use nanami_model::ErrorKind;
use std::time::Duration;

use nanami_model::GatewayState;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::op::Op;

/// A desired state with its generation. Generations only grow: the reconciler
/// refuses one older than what it already has (no rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Monotonically increasing version, from the manager.
    pub generation: u64,
    /// The state the machine must have (fully owned: no foreign objects).
    pub state: GatewayState,
}

/// Timing of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A pass runs at least this often, even without events, because events can be
    /// missed. 30 s bounds how long unnoticed drift lasts without making `observe`
    /// (a netlink dump) a measurable load.
    pub resync: Duration,
    /// Backoff after the first failed pass. 250 ms rides out a transient EBUSY
    /// without hammering the kernel.
    pub backoff_initial: Duration,
    /// Backoff ceiling: a broken machine is retried at least once a minute.
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// What a pass asks for: when to run the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Duration,
}

impl Action {
    /// Run the next pass after `after`.
    pub fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: after,
        }
    }

    /// How long until the next pass.
    pub fn requeue_after(&self) -> Duration {
        self.requeue_after
    }
}

/// Where the machine stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "condition", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Condition {
    /// The last pass observed the machine matching the desired state.
    Ready,
    /// Not there yet, nothing wrong: no desired state yet, or a newer one arrived
    /// mid-pass and the next pass (already due) will apply it.
    Progressing,
    /// The last pass failed; it is retried with backoff.
    Degraded {
        /// Why, for people.
        reason: String,
    },
}

/// An op that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OpError {
    /// The op.
    pub op: Op,
    /// The platform's error, as text.
    pub error: String,
}

/// The reconciler's report, published after every pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The current condition.
    pub condition: Condition,
    /// Generation of the desired state the last pass worked on.
    pub desired_generation: Option<u64>,
    /// Latest generation the machine was observed to match.
    pub applied_generation: Option<u64>,
    /// Ops of the last pass that failed (a pass stops at its first failed op, so
    /// that the safe ordering of the plan is never skipped over).
    pub op_errors: Vec<OpError>,
    /// Failed passes in a row (0 once a pass succeeds).
    pub consecutive_failures: u32,
    /// Ops the last pass planned.
    pub last_plan_len: usize,
    /// Passes run so far.
    pub passes: u64,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            condition: Condition::Progressing,
            desired_generation: None,
            applied_generation: None,
            op_errors: Vec::new(),
            consecutive_failures: 0,
            last_plan_len: 0,
            passes: 0,
        }
    }
}

/// Why a pass failed. All go through [`Reconciler::error_policy`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassError<E: std::error::Error + 'static> {
    /// The platform could not be observed; nothing was changed. Retried with
    /// backoff.
    #[error("observing the machine failed: {0}")]
    Observe(#[source] E),
    /// An op failed; the ops before it were applied, the rest were not. Retried with
    /// backoff; the next pass plans from what it observes.
    #[error("`{op}` failed: {source}")]
    Apply {
        /// The op.
        op: Op,
        /// The platform's error.
        #[source]
        source: E,
    },
    /// Every op succeeded but the machine still differs (something changed it
    /// meanwhile, or the platform does not do what its ops say). Retried with
    /// backoff.
    #[error("{remaining} op(s) still needed after applying the plan, first `{first}`")]
    NotConverged {
        /// Ops the new plan holds.
        remaining: usize,
        /// Its first op.
        first: Box<Op>,
    },
}

impl<E: std::error::Error + 'static> PassError<E> {
    /// Always [`ErrorKind::Environment`]: the machine refused an observation or
    /// an op, or changed while the plan was applied; the next pass retries.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Environment
    }
}

/// The backoff before retrying after `failures` failed passes in a row: doubling
/// from `backoff_initial`, capped at `backoff_max`, jittered (see [`crate::backoff`]).
/// Pure: the randomness is the caller's.
pub fn backoff_delay(config: &Config, failures: u32, rng: &mut dyn RngCore) -> Duration {
    crate::backoff::jittered(config.backoff_initial, config.backoff_max, failures, rng)
}
