//! The minimal change from one applied configuration's peers to the next.
//!
//! Diffing desired against desired (not against what the device reads back) is
//! deliberate: the device learns a roaming peer's endpoint, and an update that does
//! not change that peer's configured endpoint must not pull it back.

use std::collections::BTreeMap;

use nanami_model::PublicKey;
use nanami_wg::device::{DeviceUpdate, PeerConfig, PeerUpdate};

/// What changes. Never empty: "nothing to do" is `None` from [`diff_peers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerDiff {
    /// Peers to remove.
    pub removed: Vec<PublicKey>,
    /// New peers, in the new config's order.
    pub added: Vec<PeerConfig>,
    /// Peers whose configuration changed (made exactly this, in place: their
    /// sessions survive unless the preshared key changed).
    pub changed: Vec<PeerConfig>,
}

impl PeerDiff {
    /// One atomic device update: removals first, then upserts. With AllowedIPs
    /// unique across the new config (checked when it was parsed) the upserts' order
    /// cannot matter: a prefix moving between peers ends on its new owner.
    pub fn to_update(&self, base: DeviceUpdate) -> DeviceUpdate {
        let mut update = base;
        for key in &self.removed {
            update = update.peer(PeerUpdate::remove(*key));
        }
        for peer in self.added.iter().chain(&self.changed) {
            update = update.peer(PeerUpdate::replace_with(peer));
        }
        update
    }
}

/// The peers to remove, add and change to go from `old` to `new`; `None` when
/// they are the same.
pub(crate) fn diff_peers(old: &[PeerConfig], new: &[PeerConfig]) -> Option<PeerDiff> {
    let before: BTreeMap<PublicKey, &PeerConfig> = old.iter().map(|p| (p.public_key, p)).collect();
    let after: BTreeMap<PublicKey, &PeerConfig> = new.iter().map(|p| (p.public_key, p)).collect();
    let removed: Vec<PublicKey> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .copied()
        .collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for peer in new {
        match before.get(&peer.public_key) {
            None => added.push(peer.clone()),
            Some(prev) if *prev != peer => changed.push(peer.clone()),
            Some(_) => {}
        }
    }
    if removed.is_empty() && added.is_empty() && changed.is_empty() {
        None
    } else {
        Some(PeerDiff {
            removed,
            added,
            changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanami_model::PrivateKey;

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    fn peer(n: u8, endpoint: &str, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            endpoint: Some(endpoint.parse().unwrap()),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: Some(25),
            ..PeerConfig::new(key(n))
        }
    }

    /// The reference model: applying a diff as the device does (remove, then
    /// replace each upserted peer) to `old` yields `new`, as a map by key.
    fn apply(old: &[PeerConfig], diff: &PeerDiff) -> BTreeMap<PublicKey, PeerConfig> {
        let mut m: BTreeMap<_, _> = old.iter().map(|p| (p.public_key, p.clone())).collect();
        for k in &diff.removed {
            m.remove(k);
        }
        for p in diff.added.iter().chain(&diff.changed) {
            m.insert(p.public_key, p.clone());
        }
        m
    }

    #[test]
    fn same_peers_is_nothing_to_do() {
        let a = vec![peer(1, "192.0.2.1:51820", &["100.80.0.0/22"])];
        assert_eq!(diff_peers(&a, &a.clone()), None);
        assert_eq!(diff_peers(&[], &[]), None);
    }

    #[test]
    fn a_new_endpoint_is_one_change_not_remove_and_add() {
        let old = vec![
            peer(1, "192.0.2.1:51820", &["100.80.0.0/22"]),
            peer(2, "192.0.2.2:51820", &[]),
        ];
        let mut new = old.clone();
        new[0].endpoint = Some("192.0.2.9:51820".parse().unwrap());
        let d = diff_peers(&old, &new).unwrap();
        assert_eq!(d.removed, vec![]);
        assert_eq!(d.added, vec![]);
        assert_eq!(d.changed, vec![new[0].clone()]);
    }

    #[test]
    fn failover_moves_allowed_ips_between_two_changed_peers() {
        let old = vec![
            peer(1, "192.0.2.1:51820", &["100.80.0.0/22"]),
            peer(2, "192.0.2.2:51820", &[]),
        ];
        let new = vec![
            peer(1, "192.0.2.1:51820", &[]),
            peer(2, "192.0.2.2:51820", &["100.80.0.0/22"]),
        ];
        let d = diff_peers(&old, &new).unwrap();
        assert_eq!(d.changed.len(), 2);
        assert_eq!(
            apply(&old, &d),
            apply(
                &new,
                &PeerDiff {
                    removed: vec![],
                    added: vec![],
                    changed: vec![]
                }
            )
        );
    }

    #[test]
    fn a_new_gateway_replaces_the_old_one() {
        let old = vec![peer(1, "192.0.2.1:51820", &["100.80.0.0/22"])];
        let new = vec![peer(3, "192.0.2.3:51820", &["100.80.0.0/22"])];
        let d = diff_peers(&old, &new).unwrap();
        assert_eq!(d.removed, vec![key(1)]);
        assert_eq!(d.added, new);
        assert!(d.changed.is_empty());
        let u = d.to_update(DeviceUpdate::new());
        assert!(u.peers[0].remove, "removals come first");
        assert!(!u.replace_peers, "never a flush of the whole device");
    }

    #[test]
    fn diff_then_apply_converges_over_many_edits() {
        // A small deterministic sweep: every pair of subsets of four peers, each
        // peer in one of two variants.
        let variants =
            |n: u8, v: u8| peer(n, if v == 0 { "192.0.2.1:1" } else { "192.0.2.1:2" }, &[]);
        let set = |mask: u8, var: u8| -> Vec<PeerConfig> {
            (0..4u8)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| variants(i + 1, (var >> i) & 1))
                .collect()
        };
        for (m1, v1, m2, v2) in (0..16u8).flat_map(|a| {
            (0..16u8).flat_map(move |b| {
                (0..16u8).flat_map(move |c| [0u8, 5, 15].map(move |d| (a, b, c, d)))
            })
        }) {
            let (old, new) = (set(m1, v1), set(m2, v2));
            let want: BTreeMap<_, _> = new.iter().map(|p| (p.public_key, p.clone())).collect();
            match diff_peers(&old, &new) {
                None => assert_eq!(old, new),
                Some(d) => {
                    assert_eq!(apply(&old, &d), want);
                    // Minimal: nothing unchanged is touched.
                    for p in &d.changed {
                        assert!(!old.contains(p));
                    }
                }
            }
        }
    }
}
