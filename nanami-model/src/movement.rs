//! Movements: which clients changed primary gateway between two states of the
//! platform, and why.
//!
//! The manager keeps a history of each client's placement changes; this module is
//! the pure half of it. [`movements`] runs the assignment on the state before and
//! the state after a change (a topology revision, a health verdict) for the
//! workspaces the change touched, and reports every client whose primary gateway
//! changed in a network or for its exit, with a [`Cause`] read from the same checks
//! the assignment made ([`crate::assign::verdict`]):
//! - the gateway it left can no longer take it ([`Cause::Left`] with the exact
//!   [`Verdict`]: offline, unhealthy for the network, drained, region draining…),
//!   or is gone from the topology ([`Cause::Removed`]);
//! - the gateway it moved to could not take it before and can now
//!   ([`Cause::Returned`], with what it was: offline, drained…);
//! - otherwise the topology itself changed the choice ([`Cause::Topology`]: a
//!   policy, a capacity, a new gateway, the client's own networks).
//!
//! ```
//! use nanami_model::movement::{movements, Cause, Slot};
//! use nanami_model::assign::Verdict;
//! use nanami_model::{GatewayId, Health, NodeId, Topology};
//! let topology = Topology::from_yaml(include_str!("../../examples/topology.yaml")).unwrap();
//! let before = Health::all_up();
//! let mut after = Health::all_up();
//! after.offline.insert(GatewayId::new("gw-fra-1").unwrap());
//! let moved = movements(&topology, &before, &topology, &after, topology.workspaces.keys());
//! let ana = moved.iter().find(|m| m.node.as_str() == "laptop-ana" && matches!(m.slot, Slot::Network { .. })).unwrap();
//! assert_eq!(ana.from.as_ref().unwrap().as_str(), "gw-fra-1");
//! assert_eq!(ana.cause, Cause::Left { gateway: GatewayId::new("gw-fra-1").unwrap(), verdict: Verdict::Offline });
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::assign::{assign, verdict, Assignment, Duty, Verdict};
use crate::health::Health;
use crate::id::{GatewayId, NetworkId, NodeId, WorkspaceId};
use crate::topology::{Topology, Workspace};

/// Which of a client's placements moved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "slot")]
pub enum Slot {
    /// Its gateway in a network.
    Network {
        /// The network.
        network: NetworkId,
    },
    /// Its exit.
    Exit,
}

/// Why a client's primary gateway changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "cause")]
#[non_exhaustive]
pub enum Cause {
    /// The gateway it was on fails a check it passed before: `verdict` is the
    /// first it fails now (offline, unhealthy for the network, drained, its
    /// region draining, its machine not active…).
    Left {
        /// The gateway it left.
        gateway: GatewayId,
        /// Why that gateway cannot hold it now.
        verdict: Verdict,
    },
    /// The gateway it was on is no longer in the topology.
    Removed {
        /// The gateway it left.
        gateway: GatewayId,
    },
    /// The gateway it moved to failed a check before and passes it now (back
    /// online, healthy again, undrained…), and comes first in its order.
    Returned {
        /// The gateway it moved to.
        gateway: GatewayId,
        /// What that gateway was before.
        was: Verdict,
    },
    /// The topology changed the choice (a policy, a capacity, a gateway added,
    /// the client's networks or status).
    Topology,
}

/// One client's change of primary gateway in one of its placements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Movement {
    /// The client.
    pub node: NodeId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// The network (or the exit) whose gateway changed.
    #[serde(flatten)]
    pub slot: Slot,
    /// Its primary before; none when it had none there.
    pub from: Option<GatewayId>,
    /// Its primary after; none when it has none there now.
    pub to: Option<GatewayId>,
    /// Why.
    #[serde(flatten)]
    pub cause: Cause,
}

/// Every change of a client's primary gateway (per network, and of its exit)
/// between (`before`, `health_before`) and (`after`, `health_after`), in the
/// workspaces `scope` names, in (node, slot) order. A client that gets its first
/// gateway in a slot or loses its last one is included (from or to none); a
/// client new to the topology (placed, not moved) or gone from it is not.
pub fn movements<'a>(
    before: &Topology,
    health_before: &Health,
    after: &Topology,
    health_after: &Health,
    scope: impl IntoIterator<Item = &'a WorkspaceId>,
) -> Vec<Movement> {
    let mut out = Vec::new();
    let scope: BTreeSet<&WorkspaceId> = scope.into_iter().collect();
    for id in scope {
        let Some(ws_after) = after.workspaces.get(id) else {
            continue;
        };
        let ws_before = before.workspaces.get(id);
        let old = ws_before
            .map(|ws| primaries(&assign(before, ws, health_before)))
            .unwrap_or_default();
        let new = primaries(&assign(after, ws_after, health_after));
        let nodes: BTreeSet<&NodeId> = old.keys().chain(new.keys()).collect();
        let old_side = Side {
            topology: before,
            ws: ws_before.map(AsRef::as_ref),
            health: health_before,
        };
        let new_side = Side {
            topology: after,
            ws: Some(ws_after),
            health: health_after,
        };
        for node in nodes {
            let known = ws_before.is_some_and(|ws| ws.nodes.contains_key(node));
            if !known || !ws_after.nodes.contains_key(node) {
                continue;
            }
            let empty = BTreeMap::new();
            let was = old.get(node).unwrap_or(&empty);
            let is = new.get(node).unwrap_or(&empty);
            let slots: BTreeSet<&Slot> = was.keys().chain(is.keys()).collect();
            for slot in slots {
                let (from, to) = (was.get(slot), is.get(slot));
                if from.map(|(_, g)| g) == to.map(|(_, g)| g) {
                    continue;
                }
                let cause = cause(slot, from, to, &old_side, &new_side);
                out.push(Movement {
                    node: node.clone(),
                    workspace: id.clone(),
                    slot: slot.clone(),
                    from: from.map(|(_, g)| g.clone()),
                    to: to.map(|(_, g)| g.clone()),
                    cause,
                });
            }
        }
    }
    out
}

/// Each client's primary per slot, with the network it serves the slot in (an
/// exit's network is the exit network).
fn primaries(a: &Assignment) -> BTreeMap<NodeId, BTreeMap<Slot, (NetworkId, GatewayId)>> {
    let mut out: BTreeMap<NodeId, BTreeMap<Slot, (NetworkId, GatewayId)>> = BTreeMap::new();
    for (node, nets) in &a.by_node {
        let slots = out.entry(node.clone()).or_default();
        for (net, gw) in nets {
            slots.insert(
                Slot::Network {
                    network: net.clone(),
                },
                (net.clone(), gw.clone()),
            );
        }
    }
    for (node, (net, gws)) in &a.exits {
        if let Some(gw) = gws.first() {
            out.entry(node.clone())
                .or_default()
                .insert(Slot::Exit, (net.clone(), gw.clone()));
        }
    }
    out
}

/// One side of a change.
struct Side<'a> {
    topology: &'a Topology,
    ws: Option<&'a Workspace>,
    health: &'a Health,
}

impl Side<'_> {
    /// `gateway`'s verdict for `duty` in `network` on this side; none when the
    /// gateway is not in the workspace.
    fn verdict(&self, gateway: &GatewayId, network: &NetworkId, duty: Duty) -> Option<Verdict> {
        let ws = self.ws?;
        let gw = ws.gateways.get(gateway)?;
        Some(verdict(self.topology, ws, gw, network, duty, self.health))
    }
}

fn cause(
    slot: &Slot,
    from: Option<&(NetworkId, GatewayId)>,
    to: Option<&(NetworkId, GatewayId)>,
    before: &Side<'_>,
    after: &Side<'_>,
) -> Cause {
    let duty = match slot {
        Slot::Network { .. } => Duty::Network,
        Slot::Exit => Duty::Exit,
    };
    if let Some((net, gw)) = from {
        match after.verdict(gw, net, duty) {
            None => {
                return Cause::Removed {
                    gateway: gw.clone(),
                }
            }
            Some(now) if !now.is_eligible() && before.verdict(gw, net, duty) != Some(now) => {
                return Cause::Left {
                    gateway: gw.clone(),
                    verdict: now,
                };
            }
            Some(_) => {}
        }
    }
    if let Some((net, gw)) = to {
        if let (Some(was), Some(now)) =
            (before.verdict(gw, net, duty), after.verdict(gw, net, duty))
        {
            if !was.is_eligible() && now.is_eligible() {
                return Cause::Returned {
                    gateway: gw.clone(),
                    was,
                };
            }
        }
    }
    Cause::Topology
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::PrivateKey;

    fn key(n: u8) -> String {
        let mut seed = [n; 32];
        seed[0] = 1;
        PrivateKey::from_bytes(seed).public_key().to_base64()
    }

    /// Two ingress+exit gateways (`gw-a` in `eu`, `gw-b` in `us`, `auto`: region
    /// order prefers `gw-a`) and one client; `edit` changes the YAML first.
    fn topology(edit: impl Fn(String) -> String) -> Topology {
        let yaml = format!(
            "version: 1
regions:
  - id: eu
    state: active
  - id: us
    state: active
workspaces:
  - id: acme
    tenant: acme
    regions: [eu, us]
    networks:
      - id: corp
        overlay: 100.80.0.0/22
        routes: [10.20.0.0/16]
        exit: true
        gateways: {{ policy: auto, redundancy: 1 }}
    nodes:
      - {{ id: host-a, public_key: \"{}\", status: active, memberships: [{{ network: corp }}] }}
      - {{ id: host-b, public_key: \"{}\", status: active, memberships: [{{ network: corp }}] }}
      - {{ id: laptop, public_key: \"{}\", status: active, memberships: [{{ network: corp }}], exit: true }}
    gateways:
      - id: gw-a
        node: host-a
        region: eu
        networks: [corp]
        roles: [ingress, exit]
        endpoint: \"127.0.0.1:51820\"
        listen_port: 51820
      - id: gw-b
        node: host-b
        region: us
        networks: [corp]
        roles: [ingress, exit]
        endpoint: \"127.0.0.1:51821\"
        listen_port: 51821
",
            key(1),
            key(2),
            key(3)
        );
        Topology::from_yaml(&edit(yaml)).unwrap()
    }

    fn gw(id: &str) -> GatewayId {
        GatewayId::new(id).unwrap()
    }

    fn corp() -> Slot {
        Slot::Network {
            network: NetworkId::new("corp").unwrap(),
        }
    }

    fn all(t: &Topology) -> Vec<WorkspaceId> {
        t.workspaces.keys().cloned().collect()
    }

    #[test]
    fn a_gateway_going_offline_moves_its_clients_with_offline_as_the_cause() {
        let t = topology(|y| y);
        let mut down = Health::all_up();
        down.offline.insert(gw("gw-a"));
        let moved = movements(&t, &Health::all_up(), &t, &down, &all(&t));
        assert_eq!(moved.len(), 2, "{moved:?}");
        for (m, slot) in moved.iter().zip([corp(), Slot::Exit]) {
            assert_eq!(m.slot, slot);
            assert_eq!(
                (m.from.clone(), m.to.clone()),
                (Some(gw("gw-a")), Some(gw("gw-b")))
            );
            assert_eq!(
                m.cause,
                Cause::Left {
                    gateway: gw("gw-a"),
                    verdict: Verdict::Offline
                }
            );
        }
        // And back: the cause is the gateway it returns to.
        let back = movements(&t, &down, &t, &Health::all_up(), &all(&t));
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[0].cause,
            Cause::Returned {
                gateway: gw("gw-a"),
                was: Verdict::Offline
            }
        );
    }

    #[test]
    fn a_path_going_down_moves_the_network_but_not_the_exit() {
        let t = topology(|y| y);
        let mut sick = Health::all_up();
        sick.unhealthy
            .insert((gw("gw-a"), NetworkId::new("corp").unwrap()));
        let moved = movements(&t, &Health::all_up(), &t, &sick, &all(&t));
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert_eq!(moved[0].slot, corp());
        assert_eq!(
            moved[0].cause,
            Cause::Left {
                gateway: gw("gw-a"),
                verdict: Verdict::Unhealthy
            }
        );
    }

    #[test]
    fn draining_a_gateway_says_drained() {
        let before = topology(|y| y);
        let after = topology(|y| y.replace("region: eu\n", "region: eu\n        drain: true\n"));
        let h = Health::all_up();
        let moved = movements(&before, &h, &after, &h, &all(&after));
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert!(moved.iter().all(|m| m.cause
            == Cause::Left {
                gateway: gw("gw-a"),
                verdict: Verdict::Drained
            }));
    }

    #[test]
    fn a_region_draining_and_a_removed_gateway_are_told_apart() {
        let before = topology(|y| y);
        let h = Health::all_up();
        let draining = topology(|y| y.replace("eu\n    state: active", "eu\n    state: draining"));
        let moved = movements(&before, &h, &draining, &h, &all(&draining));
        assert_eq!(
            moved[0].cause,
            Cause::Left {
                gateway: gw("gw-a"),
                verdict: Verdict::RegionDraining
            }
        );
        let removed = topology(|y| {
            let at = y.find("      - id: gw-a").unwrap();
            let end = y.find("      - id: gw-b").unwrap();
            format!("{}{}", &y[..at], &y[end..])
        });
        let moved = movements(&before, &h, &removed, &h, &all(&removed));
        // gw-a's machine is a client now: placed (from none), by the topology.
        let host = moved.iter().find(|m| m.node.as_str() == "host-a").unwrap();
        assert_eq!(
            (host.from.clone(), host.cause.clone()),
            (None, Cause::Topology)
        );
        let laptop = moved.iter().find(|m| m.node.as_str() == "laptop").unwrap();
        assert_eq!(
            laptop.cause,
            Cause::Removed {
                gateway: gw("gw-a")
            }
        );
    }

    #[test]
    fn losing_every_gateway_and_a_policy_change_are_recorded() {
        let t = topology(|y| y);
        let mut dark = Health::all_up();
        dark.offline.extend([gw("gw-a"), gw("gw-b")]);
        let moved = movements(&t, &Health::all_up(), &t, &dark, &all(&t));
        assert_eq!(moved[0].to, None);
        // A manual list naming gw-b first: the topology chose, no gateway changed.
        let manual = topology(|y| {
            y.replace(
                "{ policy: auto, redundancy: 1 }",
                "{ policy: manual, manual: [gw-b, gw-a] }",
            )
        });
        let h = Health::all_up();
        let moved = movements(&t, &h, &manual, &h, &all(&manual));
        assert_eq!(moved[0].slot, corp());
        assert_eq!(moved[0].cause, Cause::Topology);
    }

    #[test]
    fn new_clients_are_placed_not_moved_and_nothing_moves_without_a_change() {
        let before = topology(|y| y.replace("id: laptop,", "id: unused,"));
        let after = topology(|y| y);
        let h = Health::all_up();
        assert!(movements(&before, &h, &after, &h, &all(&after)).is_empty());
        assert!(movements(&after, &h, &after, &h, &all(&after)).is_empty());
        // Out of scope: not looked at.
        let mut down = Health::all_up();
        down.offline.insert(gw("gw-a"));
        assert!(movements(&after, &h, &after, &down, &[]).is_empty());
    }
}
