//! What the agent follows: a desired state with a version, and how two of them
//! compare ([`DesiredState`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;

use nanami_model::{GatewayChoice, GatewayId, NetworkId, NodeConfig};
use serde::{Deserialize, Serialize};

/// How an offered desired state compares with the one held (last-known-good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// It replaces the one held.
    Newer,
    /// It is the one held (the same version again, from the same manager or
    /// another after a switch): nothing to do.
    Same,
    /// It is older than the one held: refused, never applied nor saved (no
    /// rollback by a manager that is behind or restored from an old backup).
    Older,
    /// The same version with other content: the manager's history forked.
    /// Refused like an older one.
    Forked,
}

/// A desired state the agent follows: the gateway daemon's desired state, a
/// client's configuration. The agent only needs its version (what a long-poll
/// waits past), how it compares with the one held, whether it may be used at all,
/// and for a client, which gateways to probe and its failover lists.
pub trait DesiredState: Clone + Debug {
    /// What a long-poll waits past (`after=`): a generation, an opaque digest.
    type Version: Clone + PartialEq + Debug;

    /// Its version.
    fn version(&self) -> Self::Version;

    /// How it compares with `held`, the one in force.
    fn freshness(&self, held: &Self) -> Freshness;

    /// Whether it may be used at all (a gateway's state must only name objects
    /// Nanami owns). `Err` carries why not.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// The gateways to probe for failover, each with its addresses (none for a
    /// gateway's own desired state). A gateway without an address cannot be
    /// probed and is never judged dead.
    fn probe_targets(&self) -> BTreeMap<GatewayId, BTreeSet<IpAddr>> {
        BTreeMap::new()
    }

    /// Each network's gateways in failover order, for
    /// [`nanami_model::Failover::down_for`]; `None`: no failover lists.
    fn failover_lists(&self) -> Option<&BTreeMap<NetworkId, Vec<GatewayChoice>>> {
        None
    }
}

/// A client's configuration as the manager served it, with its version (the
/// answer's `ETag`): what `nanami connect` and a mobile client follow and save as
/// their last-known-good configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionedConfig {
    /// The manager's version of it (what the next long-poll waits past).
    pub version: String,
    /// The configuration.
    pub config: NodeConfig,
}

impl DesiredState for VersionedConfig {
    type Version = String;

    fn version(&self) -> String {
        self.version.clone()
    }

    /// Versions are digests of the content, not ordered: the same version or the
    /// same configuration is [`Freshness::Same`], anything else
    /// [`Freshness::Newer`]. A manager that is behind and serves an older
    /// configuration is not told apart from one whose topology went back to it;
    /// the next long-poll (after the version just taken) brings the newer one
    /// again from whichever manager is ahead.
    fn freshness(&self, held: &Self) -> Freshness {
        if self.version == held.version || self.config == held.config {
            Freshness::Same
        } else {
            Freshness::Newer
        }
    }

    fn probe_targets(&self) -> BTreeMap<GatewayId, BTreeSet<IpAddr>> {
        let mut targets = self.config.probe_addresses();
        targets.retain(|_, addresses| !addresses.is_empty());
        targets
    }

    fn failover_lists(&self) -> Option<&BTreeMap<NetworkId, Vec<GatewayChoice>>> {
        Some(&self.config.gateways)
    }
}

/// Compares two generations of a desired state whose generation is a number
/// that only grows (the gateway's): lower is older, equal is the same when the
/// content is, forked otherwise.
pub fn by_generation(offered: u64, held: u64, same_content: bool) -> Freshness {
    match offered.cmp(&held) {
        std::cmp::Ordering::Greater => Freshness::Newer,
        std::cmp::Ordering::Less => Freshness::Older,
        std::cmp::Ordering::Equal if same_content => Freshness::Same,
        std::cmp::Ordering::Equal => Freshness::Forked,
    }
}

#[cfg(test)]
mod tests {
    use nanami_model::{NodeId, WorkspaceId};

    use super::*;

    fn saved(version: &str, mtu: u32) -> VersionedConfig {
        VersionedConfig {
            version: version.into(),
            config: NodeConfig {
                node: NodeId::new("laptop-1").unwrap(),
                workspace: WorkspaceId::new("acme").unwrap(),
                public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
                    .parse()
                    .unwrap(),
                addresses: BTreeSet::new(),
                mtu,
                peers: Vec::new(),
                unassigned: BTreeSet::new(),
                gateways: BTreeMap::new(),
                exit: None,
            },
        }
    }

    #[test]
    fn a_client_configuration_already_in_force_is_the_same() {
        let current = saved("aa11", 1420);
        assert_eq!(
            saved("aa11", 1420).freshness(&current),
            Freshness::Same,
            "the same version again (another manager, after a switch)"
        );
        assert_eq!(
            saved("aa11", 1280).freshness(&current),
            Freshness::Same,
            "the version in force, whatever it carries"
        );
        assert_eq!(
            saved("bb22", 1420).freshness(&current),
            Freshness::Same,
            "the same configuration under another version"
        );
        assert_eq!(saved("bb22", 1280).freshness(&current), Freshness::Newer);
    }

    #[test]
    fn generations_order_and_fork() {
        assert_eq!(by_generation(3, 2, false), Freshness::Newer);
        assert_eq!(by_generation(1, 2, true), Freshness::Older);
        assert_eq!(by_generation(2, 2, true), Freshness::Same);
        assert_eq!(by_generation(2, 2, false), Freshness::Forked);
    }
}
