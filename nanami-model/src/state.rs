//! The state of one machine that Nanami manages: the value `compile` produces, the
//! platform observes, and the reconciler diffs.
//!
//! Every collection is ordered (`BTreeMap`/`BTreeSet`), so equal states serialize to
//! identical bytes. The same type describes desired and observed state; observed
//! state may also hold objects Nanami does not own (another program's interfaces,
//! routes in other tables), which [`GatewayState::owned`] strips.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::id::InterfaceName;
use crate::key::PublicKey;

/// Nanami's routing table. Chosen outside the kernel's reserved ids (253-255) and
/// away from wg-quick's habit (51820) so the two never collide.
pub const NANAMI_TABLE: u32 = 7373;

/// The routing protocol number (`ip route ... proto 73`) on every route and rule
/// Nanami installs: unassigned in `rtnetlink.h`/`rt_protos`, so `observe` can tell
/// Nanami's routes from everybody else's.
pub const NANAMI_PROTO: u8 = 73;

/// Priority of Nanami's policy rules: after `local` (0), before `main` (32766).
pub const NANAMI_RULE_PRIORITY: u32 = 7373;

/// The kernel's `main` routing table.
pub const MAIN_TABLE: u32 = 254;

/// Default tunnel MTU: 1500 minus the largest WireGuard overhead (IPv6 outer header,
/// 80 bytes), as wg-quick chooses.
pub const DEFAULT_MTU: u32 = 1420;

/// Name of the one nftables table Nanami owns (family `inet`).
pub const NFT_TABLE: &str = "nanami";

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of a prefix.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }
}

/// Everything Nanami manages on one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayState {
    /// WireGuard interfaces by name.
    pub interfaces: BTreeMap<InterfaceName, InterfaceState>,
    /// Routes (Nanami's carry [`NANAMI_TABLE`] and [`NANAMI_PROTO`]).
    pub routes: BTreeSet<Route>,
    /// Policy rules (Nanami's carry [`NANAMI_PROTO`]).
    pub rules: BTreeSet<Rule>,
    /// The `inet nanami` filter and NAT set; `None` when the table does not exist.
    pub filter: Option<FilterSet>,
    /// Address families whose forwarding sysctl is on (desired: must be on).
    pub forwarding: BTreeSet<IpFamily>,
}

impl GatewayState {
    /// Only what Nanami owns: `nm-` interfaces, routes and rules with Nanami's
    /// protocol and table, and the filter. Forwarding is kept as is: it is a machine
    /// setting that Nanami turns on but never claims.
    pub fn owned(&self) -> GatewayState {
        GatewayState {
            interfaces: self
                .interfaces
                .iter()
                .filter(|(name, _)| name.is_owned())
                .map(|(n, i)| (n.clone(), i.clone()))
                .collect(),
            routes: self
                .routes
                .iter()
                .filter(|r| r.is_owned())
                .cloned()
                .collect(),
            rules: self
                .rules
                .iter()
                .filter(|r| r.is_owned())
                .cloned()
                .collect(),
            filter: self.filter.clone(),
            forwarding: self.forwarding.clone(),
        }
    }

    /// Number of peers over all interfaces.
    pub fn peer_count(&self) -> usize {
        self.interfaces.values().map(|i| i.peers.len()).sum()
    }
}

/// One WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InterfaceState {
    /// UDP listen port; `None` lets the device choose.
    pub listen_port: Option<u16>,
    /// Link MTU.
    pub mtu: u32,
    /// Addresses with their prefix length.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpNet>))]
    pub addresses: BTreeSet<IpNet>,
    /// Peers by public key.
    pub peers: BTreeMap<PublicKey, PeerState>,
}

impl Default for InterfaceState {
    fn default() -> Self {
        Self {
            listen_port: None,
            mtu: DEFAULT_MTU,
            addresses: BTreeSet::new(),
            peers: BTreeMap::new(),
        }
    }
}

/// One WireGuard peer's configuration (its telemetry lives elsewhere).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PeerState {
    /// Where to send its packets; `None` until it contacts us.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::SocketAddr>))]
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses it may use and that are routed to it (cryptokey routing).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<crate::openapi::IpNet>))]
    pub allowed_ips: BTreeSet<IpNet>,
    /// Seconds between keepalives; `None` disables them.
    pub persistent_keepalive: Option<u16>,
}

/// A route: `ip route add <destination> dev <interface> table <table> proto <protocol>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Routing table.
    pub table: u32,
    /// Destination prefix.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::IpNet))]
    pub destination: IpNet,
    /// Outgoing interface.
    pub interface: InterfaceName,
    /// Routing protocol number ([`NANAMI_PROTO`] for Nanami's).
    pub protocol: u8,
}

impl Route {
    /// A route Nanami owns, in its table.
    pub fn nanami(destination: IpNet, interface: InterfaceName) -> Self {
        Self {
            table: NANAMI_TABLE,
            destination,
            interface,
            protocol: NANAMI_PROTO,
        }
    }

    /// Whether Nanami owns it (its table and its protocol).
    pub fn is_owned(&self) -> bool {
        self.table == NANAMI_TABLE && self.protocol == NANAMI_PROTO
    }
}

/// A policy rule: `ip rule add to <destination> lookup <table> priority <priority>
/// proto <protocol> [suppress_prefixlength <n>]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Rule priority.
    pub priority: u32,
    /// Destination selector (its family is the rule's family).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::IpNet))]
    pub destination: IpNet,
    /// Table to look up.
    pub table: u32,
    /// Routing protocol number ([`NANAMI_PROTO`] for Nanami's).
    pub protocol: u8,
    /// Ignore the table's routes with a prefix this short or shorter
    /// (`suppress_prefixlength`; 0 ignores only its default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_prefix_len: Option<u8>,
}

impl Rule {
    /// A rule Nanami owns, sending `destination` to its table.
    pub fn nanami(destination: IpNet) -> Self {
        Self {
            priority: NANAMI_RULE_PRIORITY,
            destination,
            table: NANAMI_TABLE,
            protocol: NANAMI_PROTO,
            suppress_prefix_len: None,
        }
    }

    /// The three rules that send `default` (`0.0.0.0/0` or `::/0`) into Nanami's
    /// table (an exit), after every [`Rule::nanami`] rule, as `wg-quick` does with
    /// its fwmark but without one:
    ///
    /// 1. `lookup main suppress_prefixlength 0`: whatever `main` routes more
    ///    specifically than its default route (the LAN, the manager next door)
    ///    stays outside the tunnel;
    /// 2. `to <endpoint> lookup main` for each of `endpoints`: the tunnel's own
    ///    packets to its gateways never enter the tunnel;
    /// 3. `to <default> lookup 7373`: everything else goes through the exit.
    ///
    /// Endpoints of the other family are left out.
    pub fn exit(default: IpNet, endpoints: impl IntoIterator<Item = IpNet>) -> Vec<Self> {
        let rule = |priority, destination, table, suppress_prefix_len| Self {
            priority,
            destination,
            table,
            protocol: NANAMI_PROTO,
            suppress_prefix_len,
        };
        let mut rules = vec![rule(NANAMI_RULE_PRIORITY + 1, default, MAIN_TABLE, Some(0))];
        rules.extend(
            endpoints
                .into_iter()
                .filter(|e| IpFamily::of(e) == IpFamily::of(&default))
                .map(|e| rule(NANAMI_RULE_PRIORITY + 2, e, MAIN_TABLE, None)),
        );
        rules.push(rule(NANAMI_RULE_PRIORITY + 3, default, NANAMI_TABLE, None));
        rules
    }

    /// Whether Nanami owns it (its protocol).
    pub fn is_owned(&self) -> bool {
        self.protocol == NANAMI_PROTO
    }
}

/// Where forwarded traffic may go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// One prefix.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::IpNet))]
    Prefix(IpNet),
    /// The internet: every destination outside [`PRIVATE_RANGES`], of both families.
    Internet,
}

/// Destinations that [`Destination::Internet`] excludes: private, shared, link-local
/// and unique-local space, so an exit gateway never hands a client its LAN.
pub const PRIVATE_RANGES: [&str; 8] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "127.0.0.0/8",
];

/// Accept traffic arriving on `interface` from `source` toward `destination`.
/// Everything else arriving on an `nm-` interface is dropped; replies to accepted
/// traffic return (connection tracking).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// The Nanami interface the traffic arrives on.
    pub interface: InterfaceName,
    /// Allowed source prefix (a network's overlay).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::IpNet))]
    pub source: IpNet,
    /// Allowed destination.
    pub destination: Destination,
}

/// Masquerade traffic from `source` toward `destination` as it leaves the gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NatRule {
    /// Source prefix (a network's overlay).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::IpNet))]
    pub source: IpNet,
    /// Destination it applies to.
    pub destination: Destination,
}

/// The normalized contents of the `inet nanami` nftables table, always replaced as a
/// whole in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FilterSet {
    /// Forwarding accepts.
    pub accept: BTreeSet<FilterRule>,
    /// Masquerades.
    pub masquerade: BTreeSet<NatRule>,
}
