//! Links, addresses, routes and rules over rtnetlink.
//!
//! Messages are built as plain values by the `*_message` functions (unit-tested
//! without root) and executed by [`Netlink`]; replies are parsed defensively, since a
//! netlink reply is input from outside: an attribute Nanami does not expect makes the
//! object foreign, never a panic. Each method says which `ip` command it equals.
//! "Already exists" on add and "not found" on delete are success.

// Netlink's message and attribute enums have dozens of variants; ignoring the ones
// Nanami does not read is the point of these matches.
#![allow(clippy::wildcard_enum_match_arm)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use nanami_model::{InterfaceName, Route, Rule};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::PlatformError;
use crate::netns::Netns;

const EEXIST: i32 = libc::EEXIST;

/// One link as Nanami needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Kernel index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

fn family(net: &IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

/// `ip route add <dst> dev <oif> table <table> proto <protocol> scope link`.
pub fn route_message(route: &Route, oif: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(&route.destination);
    msg.header.destination_prefix_length = route.destination.prefix_len();
    // Tables above 255 travel in RTA_TABLE; the header says "unspecified".
    msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.scope = RouteScope::Link;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            route.destination.network(),
        )));
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg.attributes.push(RouteAttribute::Table(route.table));
    msg
}

/// Reads a route message back; `None` for routes outside Nanami's shape (with a
/// gateway, multipath, no output interface, ...), which are foreign by definition.
pub fn parse_route(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst: Option<IpAddr> = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(_) | RouteAttribute::MultiPath(_) | RouteAttribute::Via(_) => {
                return None
            }
            _ => {}
        }
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
        (None, AddressFamily::Inet6) => IpAddr::from([0u16; 8]),
        (None, _) => return None,
    };
    let destination = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
    let interface = InterfaceName::new(names.get(&oif?)?.clone()).ok()?;
    Some(Route {
        table,
        destination,
        interface,
        protocol: u8::from(msg.header.protocol),
    })
}

/// `ip rule add to <dst> lookup <table> priority <priority> proto <protocol>`.
pub fn rule_message(rule: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = family(&rule.destination);
    msg.header.dst_len = rule.destination.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    msg.header.action = RuleAction::ToTable;
    // `to 0.0.0.0/0` is "all": the kernel takes and reports it without a destination.
    if rule.destination.prefix_len() > 0 {
        msg.attributes
            .push(RuleAttribute::Destination(rule.destination.network()));
    }
    msg.attributes.push(RuleAttribute::Table(rule.table));
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(rule.protocol)));
    if let Some(len) = rule.suppress_prefix_len {
        msg.attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::from(len)));
    }
    msg
}

/// Reads a rule back; `None` for rules outside Nanami's shape (a source selector, an
/// input interface, a mark, another action...), which are foreign by definition.
pub fn parse_rule(msg: &RuleMessage) -> Option<Rule> {
    if msg.header.action != RuleAction::ToTable || msg.header.src_len != 0 {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut priority = 0;
    let mut protocol = 0u8;
    let mut suppress_prefix_len = None;
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Destination(a) => dst = Some(*a),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Protocol(p) => protocol = u8::from(*p),
            // Older kernels report "none" as -1.
            RuleAttribute::SuppressPrefixLen(len) => {
                suppress_prefix_len = u8::try_from(*len).ok().filter(|l| *l <= 128);
            }
            RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::Source(_) => return None,
            _ => {}
        }
    }
    let dst = match (dst, msg.header.dst_len) {
        (Some(a), _) => a,
        (None, 0) if msg.header.family == AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
        (None, 0) if msg.header.family == AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        (None, _) => return None,
    };
    let destination = IpNet::new(dst, msg.header.dst_len).ok()?;
    Some(Rule {
        priority,
        destination,
        table,
        protocol,
        suppress_prefix_len,
    })
}

fn parse_link(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mtu = 0;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Some(Link {
        index: msg.header.index,
        name: name?,
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
    })
}

fn parse_address(msg: &AddressMessage) -> Option<(u32, IpNet)> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
    // otherwise (and the peer's on p2p), so prefer LOCAL.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some((
        msg.header.index,
        IpNet::new(ip, msg.header.prefix_len).ok()?,
    ))
}

/// The kernel's errno in a netlink error (positive), 0 when the error is not the
/// kernel's.
pub(crate) fn errno(e: &rtnetlink::packet_core::ErrorMessage) -> i32 {
    e.code.map(|c| -c.get()).unwrap_or(0)
}

fn ok_if_errno(result: Result<(), rtnetlink::Error>, benign: &[i32]) -> Result<(), PlatformError> {
    match result {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) => {
            let errno = errno(&e);
            if benign.contains(&errno) {
                Ok(())
            } else {
                Err(PlatformError::Netlink {
                    errno,
                    message: e.to_io().to_string(),
                })
            }
        }
        Err(e) => Err(PlatformError::Netlink {
            errno: 0,
            message: e.to_string(),
        }),
    }
}

fn gone() -> [i32; 4] {
    // Deleting what is not there: no such route/rule/address/device.
    [libc::ENOENT, libc::ESRCH, libc::EADDRNOTAVAIL, libc::ENODEV]
}

fn dump_error(e: rtnetlink::Error) -> PlatformError {
    PlatformError::Netlink {
        errno: match &e {
            rtnetlink::Error::NetlinkError(m) => errno(m),
            _ => 0,
        },
        message: e.to_string(),
    }
}

/// A cloneable rtnetlink connection (its connection task runs on the current tokio
/// runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the current network namespace.
    pub fn connect() -> Result<Self, PlatformError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| PlatformError::Netlink {
                errno: e.raw_os_error().unwrap_or(0),
                message: e.to_string(),
            })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a connection in `netns` (the current namespace when `None`): a netlink
    /// socket belongs to the namespace it was created in.
    pub fn connect_in(netns: Option<&Netns>) -> Result<Self, PlatformError> {
        super::in_netns(netns, Self::connect)
    }

    /// `ip link show`.
    pub async fn links(&self) -> Result<Vec<Link>, PlatformError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(dump_error)?;
        Ok(msgs.iter().filter_map(parse_link).collect())
    }

    /// `ip link set dev <index> mtu <mtu> up`.
    pub async fn set_link(&self, index: u32, mtu: u32) -> Result<(), PlatformError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        ok_if_errno(self.handle.link().set(msg).execute().await, &[])
    }

    /// `ip link set dev <index> up`.
    pub async fn set_up(&self, index: u32) -> Result<(), PlatformError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        ok_if_errno(self.handle.link().set(msg).execute().await, &[])
    }

    /// `ip link set dev <index> netns <fd>`: moves the link into the namespace
    /// `netns` (the kernel takes it down and drops its addresses on the way).
    pub async fn set_link_netns(&self, index: u32, netns: &Netns) -> Result<(), PlatformError> {
        use std::os::fd::AsRawFd as _;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        ok_if_errno(self.handle.link().set(msg).execute().await, &[])
    }

    /// `ip link add <name> type wireguard` (kernel backend only).
    pub async fn add_wireguard_link(&self, name: &str) -> Result<(), PlatformError> {
        let msg = rtnetlink::LinkWireguard::new(name).build();
        ok_if_errno(self.handle.link().add(msg).execute().await, &[EEXIST])
    }

    /// `ip link del dev <index>`.
    pub async fn del_link(&self, index: u32) -> Result<(), PlatformError> {
        ok_if_errno(self.handle.link().del(index).execute().await, &gone())
    }

    /// `ip address show` (every link).
    pub async fn addresses(&self) -> Result<Vec<(u32, IpNet)>, PlatformError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(dump_error)?;
        Ok(msgs.iter().filter_map(parse_address).collect())
    }

    /// `ip address add <net> dev <index>`.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), PlatformError> {
        ok_if_errno(
            self.handle
                .address()
                .add(index, net.addr(), net.prefix_len())
                .execute()
                .await,
            &[EEXIST],
        )
    }

    /// `ip address del <net> dev <index>`.
    pub async fn del_address(&self, index: u32, net: IpNet) -> Result<(), PlatformError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(&net);
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(net.addr()));
        msg.attributes.push(AddressAttribute::Address(net.addr()));
        ok_if_errno(self.handle.address().del(msg).execute().await, &gone())
    }

    /// `ip route show table all` for both families, parsed; routes of other shapes
    /// are left out.
    pub async fn routes(&self, names: &BTreeMap<u32, String>) -> Result<Vec<Route>, PlatformError> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let query = match version {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(dump_error)?;
            out.extend(msgs.iter().filter_map(|m| parse_route(m, names)));
        }
        Ok(out)
    }

    /// `ip route add ...` (see [`route_message`]).
    pub async fn add_route(&self, route: &Route, oif: u32) -> Result<(), PlatformError> {
        let msg = route_message(route, oif);
        ok_if_errno(self.handle.route().add(msg).execute().await, &[EEXIST])
    }

    /// `ip route del ...`.
    pub async fn del_route(&self, route: &Route, oif: Option<u32>) -> Result<(), PlatformError> {
        let mut msg = route_message(route, oif.unwrap_or(0));
        if oif.is_none() {
            msg.attributes
                .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        }
        ok_if_errno(self.handle.route().del(msg).execute().await, &gone())
    }

    /// `ip rule show` for both families, parsed; rules of other shapes left out.
    pub async fn rules(&self) -> Result<Vec<Rule>, PlatformError> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let msgs: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(dump_error)?;
            out.extend(msgs.iter().filter_map(parse_rule));
        }
        Ok(out)
    }

    /// `ip rule add ...` (see [`rule_message`]).
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), PlatformError> {
        let mut req = self.handle.rule().add();
        *req.message_mut() = rule_message(rule);
        ok_if_errno(req.execute().await, &[EEXIST])
    }

    /// `ip rule del ...`.
    pub async fn del_rule(&self, rule: &Rule) -> Result<(), PlatformError> {
        let msg = rule_message(rule);
        ok_if_errno(self.handle.rule().del(msg).execute().await, &gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanami_model::state::{NANAMI_PROTO, NANAMI_TABLE};

    #[test]
    fn route_messages_round_trip() {
        let names = BTreeMap::from([(7, "nm-gw-a".to_owned())]);
        for dst in ["100.80.0.0/22", "fd7a::/64", "0.0.0.0/0"] {
            let route = Route::nanami(dst.parse().unwrap(), InterfaceName::new("nm-gw-a").unwrap());
            let msg = route_message(&route, 7);
            assert_eq!(msg.header.scope, RouteScope::Link);
            assert_eq!(parse_route(&msg, &names), Some(route));
        }
    }

    #[test]
    fn routes_of_other_shapes_are_foreign() {
        let names = BTreeMap::from([(7, "eth0".to_owned())]);
        let route = Route::nanami(
            "10.0.0.0/8".parse().unwrap(),
            InterfaceName::new("eth0").unwrap(),
        );
        let mut msg = route_message(&route, 7);
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                [10, 0, 0, 1].into(),
            )));
        assert_eq!(parse_route(&msg, &names), None);
        // An interface index nobody knows.
        assert_eq!(parse_route(&route_message(&route, 99), &names), None);
    }

    #[test]
    fn rule_messages_round_trip() {
        let rule = Rule::nanami("100.80.0.0/22".parse().unwrap());
        let msg = rule_message(&rule);
        let back = parse_rule(&msg).unwrap();
        assert_eq!(back, rule);
        assert_eq!(back.table, NANAMI_TABLE);
        assert_eq!(back.protocol, NANAMI_PROTO);
        let mut foreign = msg.clone();
        foreign.attributes.push(RuleAttribute::FwMark(1));
        assert_eq!(parse_rule(&foreign), None);
    }

    #[test]
    fn exit_rules_round_trip_without_a_destination() {
        for default in ["0.0.0.0/0", "::/0"] {
            let endpoint = if default == "::/0" {
                "2001:db8::1/128"
            } else {
                "192.0.2.1/32"
            };
            for rule in Rule::exit(default.parse().unwrap(), [endpoint.parse().unwrap()]) {
                let msg = rule_message(&rule);
                let has_dst = msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Destination(_)));
                assert_eq!(has_dst, rule.destination.prefix_len() > 0, "{rule:?}");
                assert_eq!(parse_rule(&msg), Some(rule));
            }
        }
        // "No suppression" as an older kernel reports it.
        let mut msg = rule_message(&Rule::nanami("10.0.0.0/8".parse().unwrap()));
        msg.attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        assert_eq!(parse_rule(&msg).unwrap().suppress_prefix_len, None);
    }
}
