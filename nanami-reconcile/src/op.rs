//! One change to a machine, as plain data.

use std::fmt;

use ipnet::IpNet;
use nanami_model::state::NFT_TABLE;
use nanami_model::{
    FilterSet, GatewayState, InterfaceName, InterfaceState, IpFamily, PeerState, PublicKey, Route,
    Rule,
};
use serde::{Deserialize, Serialize};

/// One change to the machine. A [`Plan`](crate::Plan) is an ordered list of them.
///
/// Every op is idempotent on a real platform: an add of something that already
/// exists and a delete of something not found are success, so a pass interrupted
/// anywhere can simply be run again. Ops carry the full new value of what they set
/// (a peer's whole configuration, the whole filter), never a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// `ip link add <interface> type wireguard` with its MTU and listen port, no
    /// addresses and no peers yet.
    CreateInterface {
        /// The interface.
        interface: InterfaceName,
        /// Its UDP listen port (`None`: the device chooses).
        listen_port: Option<u16>,
        /// Its MTU.
        mtu: u32,
    },
    /// `ip link del <interface>`: its addresses and peers go with it.
    DeleteInterface {
        /// The interface.
        interface: InterfaceName,
    },
    /// `wg set <interface> listen-port <port>`.
    SetListenPort {
        /// The interface.
        interface: InterfaceName,
        /// The new port (`None`: the device chooses).
        listen_port: Option<u16>,
    },
    /// `ip link set <interface> mtu <mtu>`.
    SetMtu {
        /// The interface.
        interface: InterfaceName,
        /// The new MTU.
        mtu: u32,
    },
    /// `ip address add <address> dev <interface>`.
    AddAddress {
        /// The interface.
        interface: InterfaceName,
        /// Address with prefix length.
        #[cfg_attr(feature = "openapi", schema(value_type = nanami_model::openapi::IpNet))]
        address: IpNet,
    },
    /// `ip address del <address> dev <interface>`.
    RemoveAddress {
        /// The interface.
        interface: InterfaceName,
        /// Address with prefix length.
        #[cfg_attr(feature = "openapi", schema(value_type = nanami_model::openapi::IpNet))]
        address: IpNet,
    },
    /// `wg set <interface> peer <key> ...` for a peer the interface does not have.
    AddPeer {
        /// The interface.
        interface: InterfaceName,
        /// The peer.
        public_key: PublicKey,
        /// Its whole configuration.
        peer: PeerState,
    },
    /// `wg set <interface> peer <key> ... replace-allowed-ips`: changes a peer in
    /// place, keeping its session (no new handshake, no dropped packets).
    UpdatePeer {
        /// The interface.
        interface: InterfaceName,
        /// The peer.
        public_key: PublicKey,
        /// Its whole new configuration.
        peer: PeerState,
    },
    /// `wg set <interface> peer <key> remove`.
    RemovePeer {
        /// The interface.
        interface: InterfaceName,
        /// The peer.
        public_key: PublicKey,
    },
    /// Replace the whole `inet nanami` table in one nftables transaction (create it if
    /// missing).
    ReplaceFilter {
        /// The table's new contents.
        filter: FilterSet,
    },
    /// `nft delete table inet nanami`.
    DeleteFilter,
    /// `ip route add ...`.
    AddRoute {
        /// The route.
        route: Route,
    },
    /// `ip route del ...`.
    RemoveRoute {
        /// The route.
        route: Route,
    },
    /// `ip rule add ...`.
    AddRule {
        /// The rule.
        rule: Rule,
    },
    /// `ip rule del ...`.
    RemoveRule {
        /// The rule.
        rule: Rule,
    },
    /// `sysctl net.ipv4.ip_forward=1` (or IPv6's `conf.all.forwarding`). The platform
    /// records the previous value so teardown can restore it; plans never disable.
    EnableForwarding {
        /// The family.
        family: IpFamily,
    },
}

/// The kind of an [`Op`], without its data: for fault injection, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OpKind {
    /// [`Op::CreateInterface`].
    CreateInterface,
    /// [`Op::DeleteInterface`].
    DeleteInterface,
    /// [`Op::SetListenPort`].
    SetListenPort,
    /// [`Op::SetMtu`].
    SetMtu,
    /// [`Op::AddAddress`].
    AddAddress,
    /// [`Op::RemoveAddress`].
    RemoveAddress,
    /// [`Op::AddPeer`].
    AddPeer,
    /// [`Op::UpdatePeer`].
    UpdatePeer,
    /// [`Op::RemovePeer`].
    RemovePeer,
    /// [`Op::ReplaceFilter`].
    ReplaceFilter,
    /// [`Op::DeleteFilter`].
    DeleteFilter,
    /// [`Op::AddRoute`].
    AddRoute,
    /// [`Op::RemoveRoute`].
    RemoveRoute,
    /// [`Op::AddRule`].
    AddRule,
    /// [`Op::RemoveRule`].
    RemoveRule,
    /// [`Op::EnableForwarding`].
    EnableForwarding,
}

/// The phases a plan is emitted in, in order: a plan's ops have non-decreasing
/// phases. Removal runs first and in the reverse order of creation, so nothing is
/// ever routed to a peer or interface that is about to go, and traffic is never
/// forwarded by a route whose filter is not in place yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Rules stop steering traffic into Nanami's table first.
    RemoveRules,
    /// Then the table's routes go.
    RemoveRoutes,
    /// The filter goes only once nothing routes through it.
    DeleteFilter,
    /// Peers of interfaces that stay.
    RemovePeers,
    /// Addresses of interfaces that stay.
    RemoveAddresses,
    /// Whole interfaces (with their peers and addresses).
    DeleteInterfaces,
    /// New interfaces.
    CreateInterfaces,
    /// Listen port and MTU of interfaces that stay.
    InterfaceAttributes,
    /// Addresses.
    AddAddresses,
    /// Peers added or updated in place.
    Peers,
    /// The filter/NAT table, before any route can forward into it.
    Filter,
    /// Routes, before the rules that steer traffic into their table.
    AddRoutes,
    /// Rules.
    AddRules,
    /// Forwarding last: only once everything it would expose is in place.
    Forwarding,
}

impl Op {
    /// Its kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::CreateInterface { .. } => OpKind::CreateInterface,
            Op::DeleteInterface { .. } => OpKind::DeleteInterface,
            Op::SetListenPort { .. } => OpKind::SetListenPort,
            Op::SetMtu { .. } => OpKind::SetMtu,
            Op::AddAddress { .. } => OpKind::AddAddress,
            Op::RemoveAddress { .. } => OpKind::RemoveAddress,
            Op::AddPeer { .. } => OpKind::AddPeer,
            Op::UpdatePeer { .. } => OpKind::UpdatePeer,
            Op::RemovePeer { .. } => OpKind::RemovePeer,
            Op::ReplaceFilter { .. } => OpKind::ReplaceFilter,
            Op::DeleteFilter => OpKind::DeleteFilter,
            Op::AddRoute { .. } => OpKind::AddRoute,
            Op::RemoveRoute { .. } => OpKind::RemoveRoute,
            Op::AddRule { .. } => OpKind::AddRule,
            Op::RemoveRule { .. } => OpKind::RemoveRule,
            Op::EnableForwarding { .. } => OpKind::EnableForwarding,
        }
    }

    /// The phase it belongs to in a plan.
    pub fn phase(&self) -> Phase {
        match self.kind() {
            OpKind::RemoveRule => Phase::RemoveRules,
            OpKind::RemoveRoute => Phase::RemoveRoutes,
            OpKind::DeleteFilter => Phase::DeleteFilter,
            OpKind::RemovePeer => Phase::RemovePeers,
            OpKind::RemoveAddress => Phase::RemoveAddresses,
            OpKind::DeleteInterface => Phase::DeleteInterfaces,
            OpKind::CreateInterface => Phase::CreateInterfaces,
            OpKind::SetListenPort | OpKind::SetMtu => Phase::InterfaceAttributes,
            OpKind::AddAddress => Phase::AddAddresses,
            OpKind::AddPeer | OpKind::UpdatePeer => Phase::Peers,
            OpKind::ReplaceFilter => Phase::Filter,
            OpKind::AddRoute => Phase::AddRoutes,
            OpKind::AddRule => Phase::AddRules,
            OpKind::EnableForwarding => Phase::Forwarding,
        }
    }

    /// Whether it removes something (a `-` line).
    pub fn is_removal(&self) -> bool {
        match self.kind() {
            OpKind::DeleteInterface
            | OpKind::RemoveAddress
            | OpKind::RemovePeer
            | OpKind::DeleteFilter
            | OpKind::RemoveRoute
            | OpKind::RemoveRule => true,
            OpKind::CreateInterface
            | OpKind::SetListenPort
            | OpKind::SetMtu
            | OpKind::AddAddress
            | OpKind::AddPeer
            | OpKind::UpdatePeer
            | OpKind::ReplaceFilter
            | OpKind::AddRoute
            | OpKind::AddRule
            | OpKind::EnableForwarding => false,
        }
    }

    /// The interface it works on, if it works on one (routes name theirs).
    pub fn interface(&self) -> Option<&InterfaceName> {
        match self {
            Op::CreateInterface { interface, .. }
            | Op::DeleteInterface { interface }
            | Op::SetListenPort { interface, .. }
            | Op::SetMtu { interface, .. }
            | Op::AddAddress { interface, .. }
            | Op::RemoveAddress { interface, .. }
            | Op::AddPeer { interface, .. }
            | Op::UpdatePeer { interface, .. }
            | Op::RemovePeer { interface, .. } => Some(interface),
            Op::AddRoute { route } | Op::RemoveRoute { route } => Some(&route.interface),
            Op::ReplaceFilter { .. }
            | Op::DeleteFilter
            | Op::AddRule { .. }
            | Op::RemoveRule { .. }
            | Op::EnableForwarding { .. } => None,
        }
    }

    /// The model semantics of the op: what it does to a state.
    ///
    /// Like a real platform it is idempotent: creating an existing interface leaves
    /// it as it is, adding an existing address, route or rule changes nothing, adding
    /// or updating a peer sets its configuration, removing something absent is a
    /// no-op. An op on an interface the state does not have changes nothing (a real
    /// platform reports "no such device"; plans never do that).
    pub fn apply(&self, state: &mut GatewayState) {
        match self {
            Op::CreateInterface {
                interface,
                listen_port,
                mtu,
            } => {
                state
                    .interfaces
                    .entry(interface.clone())
                    .or_insert_with(|| InterfaceState {
                        listen_port: *listen_port,
                        mtu: *mtu,
                        ..InterfaceState::default()
                    });
            }
            Op::DeleteInterface { interface } => {
                state.interfaces.remove(interface);
            }
            Op::SetListenPort {
                interface,
                listen_port,
            } => {
                if let Some(i) = state.interfaces.get_mut(interface) {
                    i.listen_port = *listen_port;
                }
            }
            Op::SetMtu { interface, mtu } => {
                if let Some(i) = state.interfaces.get_mut(interface) {
                    i.mtu = *mtu;
                }
            }
            Op::AddAddress { interface, address } => {
                if let Some(i) = state.interfaces.get_mut(interface) {
                    i.addresses.insert(*address);
                }
            }
            Op::RemoveAddress { interface, address } => {
                if let Some(i) = state.interfaces.get_mut(interface) {
                    i.addresses.remove(address);
                }
            }
            Op::AddPeer {
                interface,
                public_key,
                peer,
            }
            | Op::UpdatePeer {
                interface,
                public_key,
                peer,
            } => {
                if let Some(i) = state.interfaces.get_mut(interface) {
                    i.peers.insert(*public_key, peer.clone());
                }
            }
            Op::RemovePeer {
                interface,
                public_key,
            } => {
                if let Some(i) = state.interfaces.get_mut(interface) {
                    i.peers.remove(public_key);
                }
            }
            Op::ReplaceFilter { filter } => state.filter = Some(filter.clone()),
            Op::DeleteFilter => state.filter = None,
            Op::AddRoute { route } => {
                state.routes.insert(route.clone());
            }
            Op::RemoveRoute { route } => {
                state.routes.remove(route);
            }
            Op::AddRule { rule } => {
                state.rules.insert(rule.clone());
            }
            Op::RemoveRule { rule } => {
                state.rules.remove(rule);
            }
            Op::EnableForwarding { family } => {
                state.forwarding.insert(*family);
            }
        }
    }
}

/// A key as people read it in a diff: its first six base64 characters, an ellipsis
/// and the padding, like `HIgo9x…=`.
struct ShortKey<'a>(&'a PublicKey);

impl fmt::Display for ShortKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_base64();
        let head = text.get(..6).unwrap_or(&text);
        let tail = text.get(text.len().saturating_sub(1)..).unwrap_or("");
        write!(f, "{head}…{tail}")
    }
}

fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

fn write_peer(f: &mut fmt::Formatter<'_>, peer: &PeerState) -> fmt::Result {
    f.write_str(" allowed ")?;
    if peer.allowed_ips.is_empty() {
        f.write_str("(none)")?;
    }
    for (i, net) in peer.allowed_ips.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{net}")?;
    }
    if let Some(endpoint) = peer.endpoint {
        write!(f, " endpoint {endpoint}")?;
    }
    if let Some(keepalive) = peer.persistent_keepalive {
        write!(f, " keepalive {keepalive}")?;
    }
    Ok(())
}

fn write_port(f: &mut fmt::Formatter<'_>, port: Option<u16>) -> fmt::Result {
    match port {
        Some(port) => write!(f, "listen {port}"),
        None => f.write_str("listen auto"),
    }
}

/// One line of a people's diff: `+` adds, `~` changes in place, `-` removes.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateInterface {
                interface,
                listen_port,
                mtu,
            } => {
                write!(f, "+ interface {interface} ")?;
                write_port(f, *listen_port)?;
                write!(f, " mtu {mtu}")
            }
            Op::DeleteInterface { interface } => write!(f, "- interface {interface}"),
            Op::SetListenPort {
                interface,
                listen_port,
            } => {
                write!(f, "~ interface {interface} ")?;
                write_port(f, *listen_port)
            }
            Op::SetMtu { interface, mtu } => write!(f, "~ interface {interface} mtu {mtu}"),
            Op::AddAddress { interface, address } => {
                write!(f, "+ address {interface} {address}")
            }
            Op::RemoveAddress { interface, address } => {
                write!(f, "- address {interface} {address}")
            }
            Op::AddPeer {
                interface,
                public_key,
                peer,
            } => {
                write!(f, "+ peer {interface} {}", ShortKey(public_key))?;
                write_peer(f, peer)
            }
            Op::UpdatePeer {
                interface,
                public_key,
                peer,
            } => {
                write!(f, "~ peer {interface} {}", ShortKey(public_key))?;
                write_peer(f, peer)
            }
            Op::RemovePeer {
                interface,
                public_key,
            } => write!(f, "- peer {interface} {}", ShortKey(public_key)),
            Op::ReplaceFilter { filter } => write!(
                f,
                "~ filter inet {NFT_TABLE} ({} accept, {} masquerade)",
                filter.accept.len(),
                filter.masquerade.len()
            ),
            Op::DeleteFilter => write!(f, "- filter inet {NFT_TABLE}"),
            Op::AddRoute { route } => write!(f, "+ route {}", RouteText(route)),
            Op::RemoveRoute { route } => write!(f, "- route {}", RouteText(route)),
            Op::AddRule { rule } => write!(f, "+ rule {}", RuleText(rule)),
            Op::RemoveRule { rule } => write!(f, "- rule {}", RuleText(rule)),
            Op::EnableForwarding { family } => {
                write!(f, "+ forwarding {}", family_name(*family))
            }
        }
    }
}

struct RouteText<'a>(&'a Route);

impl fmt::Display for RouteText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(
            f,
            "{} dev {} table {} proto {}",
            r.destination, r.interface, r.table, r.protocol
        )
    }
}

struct RuleText<'a>(&'a Rule);

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(
            f,
            "to {} lookup {} priority {} proto {}",
            r.destination, r.table, r.priority, r.protocol
        )?;
        match r.suppress_prefix_len {
            Some(len) => write!(f, " suppress_prefixlength {len}"),
            None => Ok(()),
        }
    }
}
