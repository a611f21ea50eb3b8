//! Deterministic overlay address allocation.
//!
//! The rule: for every network, members that name no address for a family get one in
//! that family's overlay prefix. Members are served in node-id order; each starts at a
//! host offset given by the 64-bit FNV-1a hash of `"<network>/<node>"` modulo the number
//! of usable hosts and takes the first free address from there, wrapping around.
//! Explicit addresses are reserved first. The network address (and for IPv4 the
//! broadcast address) is never used.
//!
//! So an address depends on the network, the node id and the addresses already taken,
//! never on document order, and adding a node moves nobody else unless its hash lands
//! on exactly the address another would have probed to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::id::{NetworkId, NodeId};
use crate::topology::{Network, Node};

/// Outcome of allocating one network.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Allocation {
    /// Every member has an address in every overlay family.
    Done,
    /// Not enough room in `prefix`.
    Exhausted {
        prefix: IpNet,
        usable: u128,
        needed: u128,
    },
}

/// Number of usable host addresses in `prefix`.
pub fn usable_hosts(prefix: &IpNet) -> u128 {
    match prefix {
        IpNet::V4(p) => {
            let size = 1u128 << (32 - u32::from(p.prefix_len()));
            size.saturating_sub(2)
        }
        IpNet::V6(p) => {
            let bits = 128 - u32::from(p.prefix_len());
            let size = if bits >= 128 {
                u128::MAX
            } else {
                1u128 << bits
            };
            size.saturating_sub(1)
        }
    }
}

/// Whether `addr` is a usable host of `prefix` (not its network or broadcast address).
pub fn is_host(prefix: &IpNet, addr: IpAddr) -> bool {
    if !prefix.contains(&addr) {
        return false;
    }
    match (prefix, addr) {
        (IpNet::V4(p), IpAddr::V4(a)) => a != p.network() && a != p.broadcast(),
        (IpNet::V6(p), IpAddr::V6(a)) => a != p.network(),
        _ => false,
    }
}

/// The `index`-th usable host (0-based) of `prefix`.
fn host(prefix: &IpNet, index: u128) -> IpAddr {
    match prefix {
        IpNet::V4(p) => {
            let base = u128::from(u32::from(p.network()));
            // index < usable_hosts, so base + 1 + index stays inside the prefix.
            let v = u32::try_from(base + 1 + index).unwrap_or(u32::MAX);
            IpAddr::V4(Ipv4Addr::from(v))
        }
        IpNet::V6(p) => {
            let base = u128::from(p.network());
            IpAddr::V6(Ipv6Addr::from(base.wrapping_add(1).wrapping_add(index)))
        }
    }
}

/// 64-bit FNV-1a: tiny, stable across releases and platforms (unlike `std`'s hasher).
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b'/');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Fills in missing addresses of `network`'s members in `nodes`.
pub(crate) fn allocate(
    network_id: &NetworkId,
    network: &Network,
    nodes: &mut BTreeMap<NodeId, Node>,
) -> Allocation {
    for prefix in &network.overlay {
        let v4 = prefix.addr().is_ipv4();
        let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
        let mut wanting: Vec<NodeId> = Vec::new();
        for node in nodes.values() {
            let Some(addrs) = node.memberships.get(network_id) else {
                continue;
            };
            match addrs.iter().find(|a| a.is_ipv4() == v4) {
                Some(a) => {
                    taken.insert(*a);
                }
                None => wanting.push(node.id.clone()),
            }
        }
        let usable = usable_hosts(prefix);
        let needed = (taken.len() + wanting.len()) as u128;
        if needed > usable {
            return Allocation::Exhausted {
                prefix: *prefix,
                usable,
                needed,
            };
        }
        for id in wanting {
            let start = u128::from(fnv1a(&[network_id.as_str(), id.as_str()])) % usable;
            // At least one free host exists (checked above), so this ends within
            // `usable` steps.
            let mut k = 0u128;
            let addr = loop {
                let candidate = host(prefix, (start + k) % usable);
                if !taken.contains(&candidate) {
                    break candidate;
                }
                k += 1;
            };
            taken.insert(addr);
            if let Some(addrs) = nodes
                .get_mut(&id)
                .and_then(|n| n.memberships.get_mut(network_id))
            {
                addrs.push(addr);
                addrs.sort_by_key(|a| a.is_ipv6());
            }
        }
    }
    Allocation::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_counts() {
        let p: IpNet = "100.80.0.0/30".parse().unwrap();
        assert_eq!(usable_hosts(&p), 2);
        assert_eq!(host(&p, 0), "100.80.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(host(&p, 1), "100.80.0.2".parse::<IpAddr>().unwrap());
        assert!(!is_host(&p, "100.80.0.3".parse().unwrap()));
        let p6: IpNet = "fd00::/126".parse().unwrap();
        assert_eq!(usable_hosts(&p6), 3);
        assert_eq!(host(&p6, 2), "fd00::3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn fnv_is_stable() {
        // Pinned: changing the hash would renumber every deployed node.
        assert_eq!(fnv1a(&["corp", "laptop-1"]), fnv1a(&["corp", "laptop-1"]));
        assert_eq!(fnv1a(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
    }
}
