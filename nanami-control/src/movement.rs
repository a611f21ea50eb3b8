//! Which clients a change moved: the scope of [`nanami_model::movement::movements`]
//! for two states the manager served one after the other.

use std::collections::BTreeSet;
use std::sync::Arc;

use nanami_model::movement::{movements, Movement};
use nanami_model::{Health, Topology, WorkspaceId};

use crate::verdict::moved_workspaces;

/// Every change of a client's primary gateway from (`before`, `health_before`) to
/// (`after`, `health_after`). Only the workspaces that can have moved a client
/// are assigned again: those replaced in the topology (workspaces are shared
/// between revisions that did not change them), those whose gateways' verdicts
/// changed, and every workspace when the region catalog changed. Nothing moved
/// before there was a topology (the first one places clients).
pub fn placement_changes(
    before: Option<&Topology>,
    health_before: &Health,
    after: &Topology,
    health_after: &Health,
) -> Vec<Movement> {
    let Some(before) = before else {
        return Vec::new();
    };
    let scope: BTreeSet<WorkspaceId> = if before.regions == after.regions {
        after
            .workspaces
            .iter()
            .filter(|(id, ws)| {
                before
                    .workspaces
                    .get(*id)
                    .is_none_or(|old| !Arc::ptr_eq(old, ws))
            })
            .map(|(id, _)| id.clone())
            .chain(moved_workspaces(after, health_before, health_after))
            .collect()
    } else {
        after.workspaces.keys().cloned().collect()
    };
    movements(before, health_before, after, health_after, &scope)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use nanami_model::movement::Cause;
    use nanami_model::GatewayId;

    fn example() -> Topology {
        Topology::from_yaml(include_str!("../../examples/topology.yaml")).unwrap()
    }

    #[test]
    fn a_health_change_is_assigned_again_in_its_workspace_only() {
        let t = example();
        let mut down = Health::all_up();
        down.offline.insert(GatewayId::new("gw-fra-1").unwrap());
        let moved = placement_changes(Some(&t), &Health::all_up(), &t, &down);
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|m| m.workspace.as_str() == "acme"));
        assert!(moved.iter().all(|m| matches!(m.cause, Cause::Left { .. })));
        // The same state twice moves nothing; the first topology moves nothing.
        assert!(placement_changes(Some(&t), &down, &t, &down).is_empty());
        assert!(placement_changes(None, &Health::all_up(), &t, &down).is_empty());
    }

    #[test]
    fn a_catalog_change_reaches_every_workspace() {
        let t = example();
        let draining = Topology::from_yaml(&include_str!("../../examples/topology.yaml").replacen(
            "state: active",
            "state: draining",
            1,
        ))
        .unwrap();
        // Same workspaces (rebuilt, so not shared either way): eu-central draining
        // moves acme's clients off gw-fra-1.
        let moved = placement_changes(Some(&t), &Health::all_up(), &draining, &Health::all_up());
        assert!(moved
            .iter()
            .any(|m| m.from.as_ref().map(GatewayId::as_str) == Some("gw-fra-1")));
    }
}
