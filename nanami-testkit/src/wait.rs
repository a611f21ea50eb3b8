//! Waiting on the condition itself, never on a fixed sleep: poll until it holds,
//! fail the test at a deadline with what was awaited and what was last seen.
//!
//! A condition returns an [`Outcome`]: `bool`, `Option<T>` or `Result<T, E>`. The
//! value it holds when it is met is what the wait returns; an `Err` is the last
//! observation the failure message quotes, so a condition that says what it sees
//! (`Err(format!("active is {active:?}"))`) makes a timed-out test explain itself.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// What a polled condition returns: met (with a value) or not yet (with what it
/// observed).
pub trait Outcome {
    /// What a met condition yields.
    type Value;
    /// `Ok` when met; otherwise a description of what was observed.
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("the condition was false".to_owned())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet (None)".to_owned())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

fn timed_out(what: &str, timeout: Duration, last: &str) -> ! {
    panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}")
}

/// Polls `condition` every [`POLL`] until it is met and returns its value; fails
/// the test after `timeout` with `what` and the last observation. The condition
/// is tried at least once, also with a zero timeout.
pub fn wait_until<O: Outcome>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + timeout;
    loop {
        match condition().into_result() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => timed_out(what, timeout, &last),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`wait_until`] for a condition that is a future (tokio's timer: call it inside
/// a runtime with time enabled).
pub async fn wait_until_async<O, F>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> F,
) -> O::Value
where
    O: Outcome,
    F: Future<Output = O>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match condition().await.into_result() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => timed_out(what, timeout, &last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
