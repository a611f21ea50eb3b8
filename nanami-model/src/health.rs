//! Which gateways can take clients: an input to assignment, so failover is a pure
//! function of the topology and this value.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::id::{GatewayId, NetworkId};

/// Gateway health as the manager sees it. A gateway named nowhere here is healthy.
///
/// ```
/// use nanami_model::{GatewayId, Health, NetworkId};
/// let gw = GatewayId::new("gw-a").unwrap();
/// let corp = NetworkId::new("corp").unwrap();
/// let mut health = Health::default();
/// assert!(health.is_up(&gw, &corp));
/// health.offline.insert(gw.clone());
/// assert!(!health.is_up(&gw, &corp));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Gateways that stopped reporting.
    #[serde(default)]
    pub offline: BTreeSet<GatewayId>,
    /// Gateways that report, but whose forwarding path to a network fails.
    #[serde(default)]
    pub unhealthy: BTreeSet<(GatewayId, NetworkId)>,
}

impl Health {
    /// Every gateway healthy.
    pub fn all_up() -> Self {
        Self::default()
    }

    /// Whether `gateway` can serve `network`.
    pub fn is_up(&self, gateway: &GatewayId, network: &NetworkId) -> bool {
        !self.offline.contains(gateway)
            && !self.unhealthy.contains(&(gateway.clone(), network.clone()))
    }
}
