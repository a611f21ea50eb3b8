//! The model's verdicts, outcomes and causes in words, for the pages.

use nanami_model::assign::Verdict;
use nanami_model::explain::Outcome;
use nanami_model::movement::{Cause, Slot};

use crate::history::Trigger;

/// A gateway's [`Verdict`]: `eligible`, or the check it fails.
#[allow(clippy::wildcard_enum_match_arm)] // `Verdict` is non_exhaustive
pub fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Eligible => "eligible".into(),
        Verdict::NotServed => "does not serve the network".into(),
        Verdict::MissingRole { role } => format!("lacks the {} role", role_name(*role)),
        Verdict::NodeNotActive { status } => format!("its machine is {}", debug_word(status)),
        Verdict::NodeUnknown => "its machine is not in the workspace".into(),
        Verdict::Drained => "drained (maintenance)".into(),
        Verdict::RegionDraining => "its region is draining".into(),
        Verdict::RegionRetired => "its region is retired".into(),
        Verdict::RegionUnknown => "its region is not in the catalog".into(),
        Verdict::Offline => "offline".into(),
        Verdict::Unhealthy => "forwarding path down".into(),
        other => debug_word(other),
    }
}

/// Whether a verdict is worth drawing attention to (not eligible).
pub fn bad(v: &Verdict) -> bool {
    !v.is_eligible()
}

/// What became of a gateway for a client.
#[allow(clippy::wildcard_enum_match_arm)] // `Outcome` is non_exhaustive
pub fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Primary => "primary".into(),
        Outcome::Standby { position } => format!("standby {position}"),
        Outcome::CapacityFull { capacity, load } => format!("skipped: full ({load}/{capacity})"),
        Outcome::NotNeeded => "not needed (redundancy reached)".into(),
        Outcome::NotInManualList => "not in the manual list".into(),
        Outcome::Ineligible => "not a candidate".into(),
        other => debug_word(other),
    }
}

/// Why a client moved.
#[allow(clippy::wildcard_enum_match_arm)] // `Cause` is non_exhaustive
pub fn cause(c: &Cause) -> String {
    match c {
        Cause::Left {
            gateway,
            verdict: v,
        } => {
            format!("{gateway} can no longer hold it: {}", verdict(v))
        }
        Cause::Removed { gateway } => format!("{gateway} left the topology"),
        Cause::Returned { gateway, was } => {
            format!("{gateway} can hold it again (was: {})", verdict(was))
        }
        Cause::Topology => "the topology changed the choice".into(),
        other => debug_word(other),
    }
}

/// Which placement.
pub fn slot(s: &Slot) -> String {
    match s {
        Slot::Network { network } => format!("network {network}"),
        Slot::Exit => "exit".into(),
    }
}

/// What made the manager place clients again.
pub fn trigger(t: Trigger) -> &'static str {
    match t {
        Trigger::Revision => "topology revision",
        Trigger::Health => "health verdict",
        Trigger::Followed => "another manager's change",
    }
}

fn role_name(role: nanami_model::topology::Role) -> String {
    debug_word(&role)
}

/// A value's serde name (`snake_case` words), falling back to its `Debug` form.
fn debug_word<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s.replace('_', " "),
        Ok(serde_json::Value::Object(map)) => map
            .values()
            .next()
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("{v:?}"), |s| s.replace('_', " ")),
        _ => format!("{v:?}"),
    }
}

/// `ms` milliseconds ago in words, from `now_ms` (both Unix milliseconds).
pub fn ago(ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A byte count with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 10 * 1024 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use nanami_model::topology::{NodeStatus, Role};

    use super::*;

    #[test]
    fn words_read_well() {
        assert_eq!(verdict(&Verdict::Drained), "drained (maintenance)");
        assert_eq!(
            verdict(&Verdict::NodeNotActive {
                status: NodeStatus::Disabled
            }),
            "its machine is disabled"
        );
        assert_eq!(
            verdict(&Verdict::MissingRole { role: Role::Exit }),
            "lacks the exit role"
        );
        assert_eq!(outcome(&Outcome::Standby { position: 1 }), "standby 1");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5120 MiB");
        assert_eq!(ago(1_000, 61_000), "60 s ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
    }
}
