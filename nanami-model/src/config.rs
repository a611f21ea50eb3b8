//! A client's configuration, and its `wg-quick` / `wg setconf` text forms.
//!
//! ## Redundancy on the client
//!
//! With `redundancy: k`, a client has, per network, an ordered list of gateways
//! ([`NodeConfig::gateways`]): its primary, then its standbys. All of them hold the
//! client as a peer already, so failing over is a change on the client alone: a
//! client agent that finds its active gateway dead calls
//! [`NodeConfig::failed_over`] and applies the result, without asking the manager.
//!
//! WireGuard routes each address to exactly one peer (cryptokey routing: setting an
//! AllowedIP on a second peer silently takes it from the first), so a network's
//! addresses sit on its *active* gateway only. Every gateway of every list is a
//! [`ClientPeer`] (so its handshake and keepalive are warm before it is needed);
//! a gateway that is only a standby has no AllowedIPs, and its rendered `[Peer]`
//! section has no `AllowedIPs` line, which `wg setconf` accepts.
//!
//! ## The exit
//!
//! A client that wants an exit has a separate failover list for it
//! ([`NodeConfig::exit`]): exit-capable gateways of its exit network, in that
//! network's policy order (see [`crate::assign`]). The default route sits on the
//! first of them that is not down, whichever gateway carries the network's own
//! addresses; each is a peer, warm like any standby.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::compile::host_prefix;
use crate::id::{GatewayId, InterfaceName, NetworkId, NodeId, WorkspaceId};
use crate::key::{PrivateKey, PublicKey};
use crate::state::{GatewayState, InterfaceState, PeerState, Route, Rule};

/// Keepalive a client sends its gateways, in seconds: under the 30 s that common
/// NAT mappings for UDP survive idle, and wg-quick's customary value.
pub const CLIENT_KEEPALIVE: u16 = 25;

/// What stands where the private key goes in rendered text; the node fills it in
/// with its own key, which never leaves it.
pub const PRIVATE_KEY_PLACEHOLDER: &str = "<PRIVATE_KEY>";

/// Everything a client needs to join its workspace's networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node.
    pub node: NodeId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Its public key (the private half stays on the node).
    pub public_key: PublicKey,
    /// Its overlay addresses, as host prefixes.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpNet>))]
    pub addresses: BTreeSet<IpNet>,
    /// Tunnel MTU.
    pub mtu: u32,
    /// One peer per gateway it uses, active or standby, ordered by gateway id.
    pub peers: Vec<ClientPeer>,
    /// Networks of the node that no healthy gateway can serve right now.
    pub unassigned: BTreeSet<NetworkId>,
    /// For each network that has gateways, the gateways in failover order: the
    /// primary first, then the standbys. `peers` routes each network to the first of
    /// its list that is not down (the primary, as compiled).
    #[serde(default)]
    pub gateways: BTreeMap<NetworkId, Vec<GatewayChoice>>,
    /// The client's exit, when it wants one and an exit gateway could take it: the
    /// exit network and its exit gateways in failover order. `peers` gives the
    /// default route to the first of them that is not down. Absent in
    /// configurations compiled before exits were chosen on their own; those give
    /// the default route to the active gateway of the first network whose active
    /// gateway has `exit_routes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitChoice>,
}

/// A client's exit: the network it leaves through and the gateways that can
/// carry its default route, in failover order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExitChoice {
    /// The exit network: the first of the client's networks (by id) with
    /// `exit: true` whose exit gateways could take the client.
    pub network: NetworkId,
    /// The exit gateways: the first is the exit, the others its standbys. Each has
    /// the default routes in `exit_routes`, no `allowed_ips`, and its own addresses
    /// in the exit network in `addresses`.
    pub gateways: Vec<GatewayChoice>,
}

/// One gateway in a client's failover list for one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayChoice {
    /// The gateway.
    pub gateway: GatewayId,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where to reach it.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::SocketAddr))]
    pub endpoint: SocketAddr,
    /// What the client routes to it for this network while it is the network's
    /// active gateway: the overlay, and the routes when it has the egress role.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpNet>))]
    pub allowed_ips: BTreeSet<IpNet>,
    /// The default routes (one per overlay family) it carries when it is the
    /// client's exit; empty when it can't be (the node wants no exit, the network
    /// has no `exit: true`, or the gateway lacks the exit role). In a network's
    /// list this says the gateway could be an exit; which gateway is the exit is
    /// [`NodeConfig::exit`]'s to say.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpNet>))]
    pub exit_routes: BTreeSet<IpNet>,
    /// The gateway's own overlay addresses in this network: what a client agent
    /// probes through the tunnel to tell a live gateway from a dead one (see
    /// [`NodeConfig::client_state`]). Empty when the gateway's node has none.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpAddr>))]
    pub addresses: BTreeSet<IpAddr>,
}

/// A gateway as a client's peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientPeer {
    /// The gateway.
    pub gateway: GatewayId,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where to reach it.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::SocketAddr))]
    pub endpoint: SocketAddr,
    /// What the client routes to it: overlays, routes, and the default route for
    /// its exit gateway.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpNet>))]
    pub allowed_ips: BTreeSet<IpNet>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Networks it serves for this client.
    pub networks: BTreeSet<NetworkId>,
    /// Whether it carries the client's default route.
    pub exit: bool,
    /// Networks it is a standby for: it holds the client as a peer, but the client
    /// routes none of their addresses to it until it fails over.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub standby_for: BTreeSet<NetworkId>,
}

/// The peers a client has when each network is routed to the first of its
/// `gateways` that is not `down`, and the networks left with none.
///
/// The default route goes to one peer only: with an `exit` list, the first of
/// its gateways that is not down (none when all are); without one (a
/// configuration compiled before exits had their own list), the active gateway of
/// the first network (by id) whose active gateway has `exit_routes`.
pub fn peers_for(
    gateways: &BTreeMap<NetworkId, Vec<GatewayChoice>>,
    exit: Option<&ExitChoice>,
    down: &BTreeSet<GatewayId>,
) -> (Vec<ClientPeer>, BTreeSet<NetworkId>) {
    fn peer<'a>(
        peers: &'a mut BTreeMap<GatewayId, ClientPeer>,
        choice: &GatewayChoice,
    ) -> &'a mut ClientPeer {
        peers
            .entry(choice.gateway.clone())
            .or_insert_with(|| ClientPeer {
                gateway: choice.gateway.clone(),
                public_key: choice.public_key,
                endpoint: choice.endpoint,
                allowed_ips: BTreeSet::new(),
                persistent_keepalive: Some(CLIENT_KEEPALIVE),
                networks: BTreeSet::new(),
                exit: false,
                standby_for: BTreeSet::new(),
            })
    }
    let mut peers: BTreeMap<GatewayId, ClientPeer> = BTreeMap::new();
    let mut stranded = BTreeSet::new();
    let mut exit_taken = false;
    for (net, list) in gateways {
        let active = list.iter().position(|c| !down.contains(&c.gateway));
        if active.is_none() {
            stranded.insert(net.clone());
        }
        for (i, choice) in list.iter().enumerate() {
            let peer = peer(&mut peers, choice);
            if Some(i) != active {
                peer.standby_for.insert(net.clone());
                continue;
            }
            peer.networks.insert(net.clone());
            peer.allowed_ips.extend(choice.allowed_ips.iter().copied());
            if exit.is_none() && !exit_taken && !choice.exit_routes.is_empty() {
                exit_taken = true;
                peer.exit = true;
                peer.allowed_ips.extend(choice.exit_routes.iter().copied());
            }
        }
    }
    if let Some(exit) = exit {
        let active = exit
            .gateways
            .iter()
            .position(|c| !down.contains(&c.gateway));
        for (i, choice) in exit.gateways.iter().enumerate() {
            let peer = peer(&mut peers, choice);
            if Some(i) == active {
                peer.exit = true;
                peer.allowed_ips.extend(choice.exit_routes.iter().copied());
            }
        }
    }
    (peers.into_values().collect(), stranded)
}

impl NodeConfig {
    /// This configuration with every gateway in `down` treated as dead: each network
    /// is routed to the first gateway of its list that is not down, and a network
    /// whose whole list is down joins `unassigned`. The peers stay the same (a dead
    /// gateway remains a standby, ready for failing back); only AllowedIPs and the
    /// default route move. With an empty `down` it is the configuration as compiled.
    ///
    /// Pure: a client agent calls it when a gateway stops answering, and applies the
    /// result with `wg setconf` (or a minimal update), without the manager.
    #[must_use]
    pub fn failed_over(&self, down: &BTreeSet<GatewayId>) -> NodeConfig {
        let (peers, stranded) = peers_for(&self.gateways, self.exit.as_ref(), down);
        let mut unassigned: BTreeSet<NetworkId> = self
            .unassigned
            .iter()
            .filter(|n| !self.gateways.contains_key(*n))
            .cloned()
            .collect();
        unassigned.extend(stranded);
        NodeConfig {
            peers,
            unassigned,
            ..self.clone()
        }
    }

    /// The active gateway of `network`: the first of its list not in `down`.
    pub fn active_gateway(
        &self,
        network: &NetworkId,
        down: &BTreeSet<GatewayId>,
    ) -> Option<&GatewayId> {
        self.gateways
            .get(network)?
            .iter()
            .map(|c| &c.gateway)
            .find(|g| !down.contains(*g))
    }

    /// Each network's active gateway ([`NodeConfig::active_gateway`]), by network.
    pub fn active_gateways(
        &self,
        down: &BTreeSet<GatewayId>,
    ) -> BTreeMap<&NetworkId, Option<&GatewayId>> {
        self.gateways
            .keys()
            .map(|network| (network, self.active_gateway(network, down)))
            .collect()
    }

    /// The client's exit gateway: the first of its exit list not in `down`.
    pub fn active_exit(&self, down: &BTreeSet<GatewayId>) -> Option<&GatewayId> {
        self.exit
            .as_ref()?
            .gateways
            .iter()
            .map(|c| &c.gateway)
            .find(|g| !down.contains(*g))
    }

    /// Every gateway of the failover lists (the exit's included) with its own
    /// overlay addresses (the union over its networks), ordered by gateway id.
    pub fn probe_addresses(&self) -> BTreeMap<GatewayId, BTreeSet<IpAddr>> {
        let mut out: BTreeMap<GatewayId, BTreeSet<IpAddr>> = BTreeMap::new();
        let exit = self.exit.iter().flat_map(|e| e.gateways.iter());
        for choice in self.gateways.values().flatten().chain(exit) {
            out.entry(choice.gateway.clone())
                .or_default()
                .extend(choice.addresses.iter().copied());
        }
        out
    }

    /// The state a client agent gives its own machine with every gateway in `down`
    /// treated as dead (see [`NodeConfig::failed_over`]): one WireGuard interface
    /// `interface` listening on `listen_port`, with the node's addresses and one peer
    /// per gateway; a route in Nanami's table and a rule for every prefix routed
    /// into the tunnel. No filter and no forwarding: a client forwards nothing.
    ///
    /// Each peer also carries its gateway's own overlay addresses (host prefixes,
    /// more specific than the overlay the active gateway carries), so the agent can
    /// probe every gateway of its lists through the tunnel, standbys included.
    ///
    /// A default route (the active exit gateway's `0.0.0.0/0` or `::/0`) goes into
    /// Nanami's table with the rules of [`Rule::exit`]: routes `main` holds more
    /// specifically than its default route, and every gateway's endpoint, stay
    /// outside the tunnel.
    ///
    /// ```
    /// # use std::collections::BTreeSet;
    /// # use nanami_model::{InterfaceName, NodeConfig};
    /// # fn show(config: &NodeConfig) {
    /// let ifname = InterfaceName::new("nm-client").unwrap();
    /// let state = config.client_state(&ifname, 51900, &BTreeSet::new());
    /// assert!(state.filter.is_none() && state.forwarding.is_empty());
    /// # }
    /// ```
    pub fn client_state(
        &self,
        interface: &InterfaceName,
        listen_port: u16,
        down: &BTreeSet<GatewayId>,
    ) -> GatewayState {
        let probes = self.probe_addresses();
        let mut iface = InterfaceState {
            listen_port: Some(listen_port),
            mtu: self.mtu,
            addresses: self.addresses.clone(),
            peers: BTreeMap::new(),
        };
        let mut state = GatewayState::default();
        let peers = self.failed_over(down).peers;
        let endpoints: Vec<IpNet> = peers.iter().map(|p| host_prefix(p.endpoint.ip())).collect();
        for peer in peers {
            for net in &peer.allowed_ips {
                state.routes.insert(Route::nanami(*net, interface.clone()));
                if net.prefix_len() == 0 {
                    state
                        .rules
                        .extend(Rule::exit(*net, endpoints.iter().copied()));
                } else {
                    state.rules.insert(Rule::nanami(*net));
                }
            }
            let mut allowed_ips = peer.allowed_ips;
            // Routed even when every network of the gateway is stranded, so a
            // dead gateway's return is noticed.
            for own in probes.get(&peer.gateway).into_iter().flatten() {
                let own = host_prefix(*own);
                allowed_ips.insert(own);
                state.routes.insert(Route::nanami(own, interface.clone()));
                state.rules.insert(Rule::nanami(own));
            }
            iface.peers.insert(
                peer.public_key,
                PeerState {
                    endpoint: Some(peer.endpoint),
                    allowed_ips,
                    persistent_keepalive: peer.persistent_keepalive,
                },
            );
        }
        state.interfaces.insert(interface.clone(), iface);
        state
    }

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
        if self.gateways.values().any(|list| list.len() > 1) {
            out.push_str(
                "# failover order (only the active gateway of a network carries its AllowedIPs):\n",
            );
            for (net, list) in &self.gateways {
                let ids: Vec<&str> = list.iter().map(|c| c.gateway.as_str()).collect();
                let _ = writeln!(out, "#   {net}: {}", ids.join(", "));
            }
        }
        if let Some(exit) = self.exit.as_ref().filter(|e| e.gateways.len() > 1) {
            let ids: Vec<&str> = exit.gateways.iter().map(|c| c.gateway.as_str()).collect();
            let _ = writeln!(
                out,
                "# exit order (through {}; only the active exit carries the default route): {}",
                exit.network,
                ids.join(", ")
            );
        }
        for peer in &self.peers {
            let nets: Vec<&str> = peer.networks.iter().map(|n| n.as_str()).collect();
            let standby: Vec<&str> = peer.standby_for.iter().map(|n| n.as_str()).collect();
            let mut about = Vec::new();
            if !nets.is_empty() {
                about.push(format!("networks: {}", nets.join(", ")));
            }
            if peer.exit {
                about.push("exit".to_owned());
            } else if self
                .exit
                .as_ref()
                .is_some_and(|e| e.gateways.iter().any(|c| c.gateway == peer.gateway))
            {
                about.push("exit standby".to_owned());
            }
            if !standby.is_empty() {
                about.push(format!("standby for: {}", standby.join(", ")));
            }
            let _ = writeln!(out, "\n# gateway {} ({})", peer.gateway, about.join("; "));
            out.push_str("[Peer]\n");
            let _ = writeln!(out, "PublicKey = {}", peer.public_key);
            let _ = writeln!(out, "Endpoint = {}", peer.endpoint);
            // A standby-only peer routes nothing until failover; WireGuard accepts a
            // peer without AllowedIPs, and an address may belong to one peer only.
            if !peer.allowed_ips.is_empty() {
                let _ = writeln!(out, "AllowedIPs = {}", join(&peer.allowed_ips));
            }
            if let Some(k) = peer.persistent_keepalive {
                let _ = writeln!(out, "PersistentKeepalive = {k}");
            }
        }
        out
    }

    /// Pretty JSON, the form the manager serves.
    pub fn to_json(&self) -> Result<String, crate::doc::SerializeError> {
        serde_json::to_string_pretty(self)
            .map_err(|e| crate::doc::SerializeError::new("a node configuration", e))
    }
}

fn join(nets: &BTreeSet<IpNet>) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
