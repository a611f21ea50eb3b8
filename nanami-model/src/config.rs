//! A client's configuration, and its `wg-quick` / `wg setconf` text forms.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::id::{GatewayId, NetworkId, NodeId, WorkspaceId};
use crate::key::{PrivateKey, PublicKey};

/// Keepalive a client sends its gateways, in seconds: under the 30 s that common
/// NAT mappings for UDP survive idle, and wg-quick's customary value.
pub const CLIENT_KEEPALIVE: u16 = 25;

/// What stands where the private key goes in rendered text; the node fills it in
/// with its own key, which never leaves it.
pub const PRIVATE_KEY_PLACEHOLDER: &str = "<PRIVATE_KEY>";

/// Everything a client needs to join its workspace's networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node.
    pub node: NodeId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Its public key (the private half stays on the node).
    pub public_key: PublicKey,
    /// Its overlay addresses, as host prefixes.
    pub addresses: BTreeSet<IpNet>,
    /// Tunnel MTU.
    pub mtu: u32,
    /// One peer per gateway it uses, ordered by gateway id.
    pub peers: Vec<ClientPeer>,
    /// Networks of the node that no healthy gateway can serve right now.
    pub unassigned: BTreeSet<NetworkId>,
}

/// A gateway as a client's peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPeer {
    /// The gateway.
    pub gateway: GatewayId,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where to reach it.
    pub endpoint: SocketAddr,
    /// What the client routes to it: overlays, routes, and the default route for
    /// its exit gateway.
    pub allowed_ips: BTreeSet<IpNet>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Networks it serves for this client.
    pub networks: BTreeSet<NetworkId>,
    /// Whether it carries the client's default route.
    pub exit: bool,
}

impl NodeConfig {
    /// The `wg-quick(8)` form. With `None`, the private key is
    /// [`PRIVATE_KEY_PLACEHOLDER`], for the node to fill in.
    ///
    /// `wg setconf` accepts this text once `wg-quick strip` has removed the
    /// wg-quick-only keys (`Address`, `MTU`), or use [`NodeConfig::to_wg`] directly.
    pub fn to_wg_quick(&self, private_key: Option<&PrivateKey>) -> String {
        self.render(private_key, true)
    }

    /// The `wg setconf` form (no `Address` or `MTU`).
    pub fn to_wg(&self, private_key: Option<&PrivateKey>) -> String {
        self.render(private_key, false)
    }

    fn render(&self, private_key: Option<&PrivateKey>, quick: bool) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# Nanami configuration for node {} (workspace {})",
            self.node, self.workspace
        );
        if !self.unassigned.is_empty() {
            let nets: Vec<&str> = self.unassigned.iter().map(|n| n.as_str()).collect();
            let _ = writeln!(out, "# no gateway available for: {}", nets.join(", "));
        }
        out.push_str("[Interface]\n");
        match private_key {
            Some(k) => {
                let _ = writeln!(out, "PrivateKey = {}", k.to_base64_secret().as_str());
            }
            None => {
                let _ = writeln!(out, "PrivateKey = {PRIVATE_KEY_PLACEHOLDER}");
            }
        }
        if quick {
            if !self.addresses.is_empty() {
                let _ = writeln!(out, "Address = {}", join(&self.addresses));
            }
            let _ = writeln!(out, "MTU = {}", self.mtu);
        }
        for peer in &self.peers {
            let nets: Vec<&str> = peer.networks.iter().map(|n| n.as_str()).collect();
            let _ = writeln!(
                out,
                "\n# gateway {} (networks: {}{})",
                peer.gateway,
                nets.join(", "),
                if peer.exit { "; exit" } else { "" }
            );
            out.push_str("[Peer]\n");
            let _ = writeln!(out, "PublicKey = {}", peer.public_key);
            let _ = writeln!(out, "Endpoint = {}", peer.endpoint);
            let _ = writeln!(out, "AllowedIPs = {}", join(&peer.allowed_ips));
            if let Some(k) = peer.persistent_keepalive {
                let _ = writeln!(out, "PersistentKeepalive = {k}");
            }
        }
        out
    }

    /// Pretty JSON, the form the manager serves.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn join(nets: &BTreeSet<IpNet>) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
