//! A validated client configuration: from the manager's JSON (`NodeConfig`) or
//! from wg-quick text, plus the app's private key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;
use nanami_model::{NodeConfig, PrivateKey as CoreKey, PublicKey};
use nanami_wg::device::PeerConfig;

use crate::error::NanamiError;
use crate::key::PrivateKey;
use crate::state::TunnelState;
use crate::wg_quick::{self, KeyLine};

/// The configuration as the tunnel uses it.
#[derive(Debug, Clone)]
pub(crate) struct ClientSpec {
    pub private_key: CoreKey,
    pub addresses: Vec<IpNet>,
    pub mtu: Option<u32>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerConfig>,
}

impl ClientSpec {
    /// The state the tunnel runs for this configuration.
    pub fn state(&self) -> TunnelState {
        TunnelState::new(
            self.private_key.clone(),
            &self.addresses,
            self.mtu.unwrap_or(nanami_model::state::DEFAULT_MTU),
            self.listen_port,
            &self.peers,
        )
    }

    /// Refuses what WireGuard would accept but silently resolve in a way the
    /// config's author did not mean: a peer listed twice (the second wins), a prefix
    /// on two peers (the last wins), ourselves as a peer.
    fn validate(self) -> Result<Self, NanamiError> {
        let own = self.private_key.public_key();
        let mut keys = BTreeSet::new();
        let mut owners: BTreeMap<IpNet, PublicKey> = BTreeMap::new();
        for peer in &self.peers {
            if peer.public_key == own {
                return Err(NanamiError::invalid_config(format!(
                    "peer {} is this client's own key",
                    peer.public_key
                )));
            }
            if !keys.insert(peer.public_key) {
                return Err(NanamiError::invalid_config(format!(
                    "peer {} is listed twice",
                    peer.public_key
                )));
            }
            for net in &peer.allowed_ips {
                if let Some(other) = owners.insert(net.trunc(), peer.public_key) {
                    return Err(NanamiError::invalid_config(format!(
                        "AllowedIP {net} is on two peers ({other} and {}): an address routes to one peer only",
                        peer.public_key
                    )));
                }
            }
        }
        Ok(self)
    }
}

/// One peer of a configuration, for display (the preshared key stays inside).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PeerSummary {
    /// The peer's public key, base64.
    pub public_key: String,
    /// `ip:port`, when the config gives one.
    pub endpoint: Option<String>,
    /// The prefixes routed to this peer (empty for a standby gateway).
    pub allowed_ips: Vec<String>,
    /// Keepalive interval in seconds, when on.
    pub persistent_keepalive: Option<u16>,
    /// Whether a preshared key is set.
    pub has_preshared_key: bool,
}

/// A client configuration, validated, with the private key it runs with. Build it
/// with `from_node_config_json` or `from_wg_quick`; read from it what the platform
/// must set on its VPN interface (`addresses`, `mtu`, `routes`).
#[derive(Debug, uniffi::Object)]
pub struct TunnelConfig {
    pub(crate) spec: ClientSpec,
}

#[uniffi::export]
impl TunnelConfig {
    /// The manager's JSON for this node (the `NodeConfig` it serves), with the
    /// app's own private key, whose public half must be the config's `public_key`.
    #[uniffi::constructor]
    pub fn from_node_config_json(
        json: String,
        private_key: Arc<PrivateKey>,
    ) -> Result<Arc<Self>, NanamiError> {
        let config: NodeConfig = serde_json::from_str(&json).map_err(|e| {
            NanamiError::invalid_config(format!("not a Nanami client config (JSON): {e}"))
        })?;
        let key = private_key.key.clone();
        if key.public_key() != config.public_key {
            return Err(NanamiError::invalid_config(format!(
                "the config is for key {}, but the private key's public key is {}",
                config.public_key,
                key.public_key()
            )));
        }
        let peers = config
            .peers
            .iter()
            .map(|p| PeerConfig {
                public_key: p.public_key,
                preshared_key: None,
                endpoint: Some(p.endpoint),
                allowed_ips: p.allowed_ips.iter().copied().collect(),
                persistent_keepalive: p.persistent_keepalive.filter(|k| *k != 0),
            })
            .collect();
        let spec = ClientSpec {
            private_key: key,
            addresses: config.addresses.iter().copied().collect(),
            mtu: Some(config.mtu),
            listen_port: None,
            peers,
        }
        .validate()?;
        Ok(Arc::new(Self { spec }))
    }

    /// wg-quick text as Nanami renders it. Its `PrivateKey` is either the
    /// placeholder `<PRIVATE_KEY>`, in which case `private_key` is required, or a
    /// real key, in which case `private_key` must be absent or the same key.
    #[uniffi::constructor]
    pub fn from_wg_quick(
        text: String,
        private_key: Option<Arc<PrivateKey>>,
    ) -> Result<Arc<Self>, NanamiError> {
        let parsed = wg_quick::parse(&text).map_err(|e| NanamiError::ConfigSyntax {
            line: e.line,
            reason: e.reason,
        })?;
        let key = match (parsed.private_key, private_key) {
            (KeyLine::Placeholder, Some(k)) => k.key.clone(),
            (KeyLine::Placeholder, None) => {
                return Err(NanamiError::invalid_config(
                    "the text has the <PRIVATE_KEY> placeholder and no private key was given",
                ))
            }
            (KeyLine::Key(k), None) => k,
            (KeyLine::Key(k), Some(given)) => {
                if k.public_key() != given.key.public_key() {
                    return Err(NanamiError::invalid_config(
                        "the text's PrivateKey differs from the private key given",
                    ));
                }
                k
            }
        };
        let spec = ClientSpec {
            private_key: key,
            addresses: parsed.addresses,
            mtu: parsed.mtu,
            listen_port: parsed.listen_port,
            peers: parsed.peers,
        }
        .validate()?;
        Ok(Arc::new(Self { spec }))
    }

    /// This client's public key, base64.
    pub fn public_key(&self) -> String {
        self.spec.private_key.public_key().to_base64()
    }

    /// The interface addresses (`100.80.0.10/32`), for the platform's VPN builder.
    pub fn addresses(&self) -> Vec<String> {
        self.spec
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The tunnel MTU, when the config sets one.
    pub fn mtu(&self) -> Option<u32> {
        self.spec.mtu
    }

    /// The UDP port to listen on, when the config sets one (otherwise a free one).
    pub fn listen_port(&self) -> Option<u16> {
        self.spec.listen_port
    }

    /// Every prefix routed into the tunnel (the union of the peers' AllowedIPs,
    /// sorted): the routes the platform's VPN builder must add.
    pub fn routes(&self) -> Vec<String> {
        self.spec
            .state()
            .routes()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The peers, in config order.
    pub fn peers(&self) -> Vec<PeerSummary> {
        self.spec
            .peers
            .iter()
            .map(|p| PeerSummary {
                public_key: p.public_key.to_base64(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                persistent_keepalive: p.persistent_keepalive,
                has_preshared_key: p.preshared_key.is_some(),
            })
            .collect()
    }
}
