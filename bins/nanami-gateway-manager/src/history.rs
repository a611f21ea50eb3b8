//! Movement history: each client's recent changes of primary gateway, with when,
//! at which revision, what triggered the change and why the client moved
//! ([`nanami_model::movement`] decides the why).
//!
//! The history is bounded twice: [`PER_NODE`] records per client, and
//! [`MAX_RECORDS`] in all (the oldest record anywhere goes first), so a platform
//! with millions of clients and a mass failover costs at most that. It lives in
//! the manager's memory and starts empty when the manager starts; managers that
//! share a store each record what they follow, so every one of them answers.

use std::collections::{BTreeMap, VecDeque};

use nanami_model::movement::Movement;
use nanami_model::{NodeId, Topology};
use serde::Serialize;

/// Most records kept per client (the newest).
pub const PER_NODE: usize = 32;

/// Most records kept in all.
pub const MAX_RECORDS: usize = 100_000;

/// What made the manager place clients again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A topology write on this manager (the revision says which).
    Revision,
    /// A health verdict: a gateway offline or back, a forwarding path down or
    /// healthy again.
    Health,
    /// A change another manager stored (a shared store).
    Followed,
}

/// One change of a client's primary gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MovementRecord {
    /// When the manager published it, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The topology revision in force after it.
    pub revision: u64,
    /// The generation of the new gateway's desired state that carries the client
    /// (none when it has no gateway now).
    pub generation: Option<u64>,
    /// What made the manager place clients again.
    pub trigger: Trigger,
    /// Which placement moved, from where to where, and why.
    #[serde(flatten)]
    pub movement: Movement,
}

/// The bounded history of every client.
#[derive(Debug, Default)]
pub struct History {
    by_node: BTreeMap<NodeId, VecDeque<(u64, MovementRecord)>>,
    /// Every kept record's (sequence, client), oldest first; entries whose record
    /// was dropped for [`PER_NODE`] are skipped when met.
    order: VecDeque<(u64, NodeId)>,
    kept: usize,
    seq: u64,
}

impl History {
    /// Records `records`, dropping the oldest beyond the bounds.
    pub fn record(&mut self, records: impl IntoIterator<Item = MovementRecord>) {
        for record in records {
            self.seq += 1;
            let node = record.movement.node.clone();
            self.order.push_back((self.seq, node.clone()));
            let list = self.by_node.entry(node).or_default();
            list.push_back((self.seq, record));
            self.kept += 1;
            if list.len() > PER_NODE {
                list.pop_front();
                self.kept -= 1;
            }
        }
        while self.kept > MAX_RECORDS {
            let Some((seq, node)) = self.order.pop_front() else {
                break;
            };
            self.drop_record(seq, &node);
        }
        // `order` keeps entries of records dropped per client until met: compact
        // it when they are most of it.
        if self.order.len() > 2 * self.kept.max(PER_NODE) {
            let by_node = &self.by_node;
            self.order.retain(|(seq, node)| {
                by_node
                    .get(node)
                    .is_some_and(|l| l.front().is_some_and(|(first, _)| first <= seq))
            });
        }
    }

    fn drop_record(&mut self, seq: u64, node: &NodeId) {
        let Some(list) = self.by_node.get_mut(node) else {
            return;
        };
        if list.front().is_some_and(|(first, _)| *first == seq) {
            list.pop_front();
            self.kept -= 1;
        }
        if list.is_empty() {
            self.by_node.remove(node);
        }
    }

    /// Forgets the clients no longer in `topology`.
    pub fn retain_in(&mut self, topology: &Topology) {
        let before = self.by_node.len();
        self.by_node
            .retain(|node, _| topology.node_workspace(node).is_some());
        if self.by_node.len() != before {
            self.kept = self.by_node.values().map(VecDeque::len).sum();
        }
    }

    /// `node`'s records, newest first.
    pub fn of(&self, node: &NodeId) -> Vec<MovementRecord> {
        self.by_node
            .get(node)
            .map(|l| l.iter().rev().map(|(_, r)| r.clone()).collect())
            .unwrap_or_default()
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.kept
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.kept == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use nanami_model::movement::{Cause, Slot};
    use nanami_model::{GatewayId, WorkspaceId};

    use super::*;

    fn record(node: &str, at: u64) -> MovementRecord {
        MovementRecord {
            at_unix_ms: at,
            revision: 1,
            generation: Some(2),
            trigger: Trigger::Health,
            movement: Movement {
                node: NodeId::new(node).unwrap(),
                workspace: WorkspaceId::new("acme").unwrap(),
                slot: Slot::Exit,
                from: Some(GatewayId::new("gw-a").unwrap()),
                to: Some(GatewayId::new("gw-b").unwrap()),
                cause: Cause::Topology,
            },
        }
    }

    #[test]
    fn newest_first_and_bounded_per_client() {
        let mut h = History::default();
        h.record((0..PER_NODE as u64 + 5).map(|i| record("laptop", i)));
        let list = h.of(&NodeId::new("laptop").unwrap());
        assert_eq!(list.len(), PER_NODE);
        assert_eq!(list[0].at_unix_ms, PER_NODE as u64 + 4);
        assert_eq!(list[PER_NODE - 1].at_unix_ms, 5);
        assert_eq!(h.len(), PER_NODE);
        assert!(h.of(&NodeId::new("phone").unwrap()).is_empty());
    }

    #[test]
    fn bounded_in_all_dropping_the_oldest_anywhere() {
        let mut h = History::default();
        h.record((0..MAX_RECORDS as u64).map(|i| record(&format!("n{i}"), i)));
        assert_eq!(h.len(), MAX_RECORDS);
        h.record([record("late", u64::MAX)]);
        assert_eq!(h.len(), MAX_RECORDS);
        assert!(h.of(&NodeId::new("n0").unwrap()).is_empty());
        assert_eq!(h.of(&NodeId::new("n1").unwrap()).len(), 1);
        assert_eq!(h.of(&NodeId::new("late").unwrap()).len(), 1);
        // Records dropped per client do not count against the rest.
        let mut h = History::default();
        h.record((0..10 * PER_NODE as u64).map(|i| record("busy", i)));
        h.record([record("quiet", 0)]);
        assert_eq!(h.len(), PER_NODE + 1);
        assert!(h.order.len() <= 2 * (PER_NODE + 1) + 1);
    }

    #[test]
    fn clients_gone_from_the_topology_are_forgotten() {
        let topology =
            Topology::from_yaml(include_str!("../../../examples/topology.yaml")).unwrap();
        let mut h = History::default();
        h.record([record("laptop-ana", 1), record("gone", 2)]);
        h.retain_in(&topology);
        assert_eq!(h.len(), 1);
        assert!(h.of(&NodeId::new("gone").unwrap()).is_empty());
    }
}
