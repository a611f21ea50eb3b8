//! Longest-prefix match over AllowedIPs (cryptokey routing table).
//!
//! One hash map per prefix length that is in use, searched from the longest: a lookup
//! costs one hash probe per distinct prefix length present (a handful in practice),
//! and insert/remove are O(1), which keeps a 1,000-peer `syncconf` cheap.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// A table from prefixes to values with longest-prefix-match lookup.
#[derive(Debug, Clone)]
pub(crate) struct AllowedIps<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

#[derive(Debug, Clone)]
struct Family<K, T> {
    /// `(prefix length, masked address → value)`, longest prefix first; no empty maps.
    levels: Vec<(u8, HashMap<K, T>)>,
}

impl<K: std::hash::Hash + Eq + Copy, T> Family<K, T> {
    fn new() -> Self {
        Self { levels: Vec::new() }
    }

    fn insert(&mut self, len: u8, key: K, value: T) -> Option<T> {
        match self.levels.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(i) => self.levels[i].1.insert(key, value),
            Err(i) => {
                let mut map = HashMap::new();
                map.insert(key, value);
                self.levels.insert(i, (len, map));
                None
            }
        }
    }

    fn remove(&mut self, len: u8, key: K) -> Option<T> {
        let i = self.levels.binary_search_by(|(l, _)| len.cmp(l)).ok()?;
        let old = self.levels[i].1.remove(&key);
        if self.levels[i].1.is_empty() {
            self.levels.remove(i);
        }
        old
    }

    fn lookup(&self, mask: impl Fn(u8) -> K) -> Option<&T> {
        self.levels
            .iter()
            .find_map(|(len, map)| map.get(&mask(*len)))
    }
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => addr,
        l => addr & (u32::MAX << (32 - l)),
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => addr,
        l => addr & (u128::MAX << (128 - l)),
    }
}

impl<T> AllowedIps<T> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self {
            v4: Family::new(),
            v6: Family::new(),
        }
    }

    /// Maps `net` (host bits ignored) to `value`, returning the previous value.
    pub(crate) fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net.trunc() {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                self.v4
                    .insert(len, mask_v4(u32::from(n.network()), len), value)
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                self.v6
                    .insert(len, mask_v6(u128::from(n.network()), len), value)
            }
        }
    }

    /// Removes `net`, returning its value.
    pub(crate) fn remove(&mut self, net: IpNet) -> Option<T> {
        match net.trunc() {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                self.v4.remove(len, mask_v4(u32::from(n.network()), len))
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                self.v6.remove(len, mask_v6(u128::from(n.network()), len))
            }
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub(crate) fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.lookup(|len| mask_v4(a, len))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.lookup(|len| mask_v6(a, len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 0);
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.3/32"), 3);
        t.insert(net("::/0"), 10);
        t.insert(net("fd00::/8"), 11);
        let at = |s: &str| t.lookup(s.parse().unwrap()).copied();
        assert_eq!(at("10.1.2.3"), Some(3));
        assert_eq!(at("10.1.2.4"), Some(2));
        assert_eq!(at("10.2.0.1"), Some(1));
        assert_eq!(at("192.0.2.1"), Some(0));
        assert_eq!(at("fd12::1"), Some(11));
        assert_eq!(at("2001:db8::1"), Some(10));
    }

    #[test]
    fn host_bits_are_ignored_and_remove_works() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.1.2.3/16"), 1), None);
        assert_eq!(t.insert(net("10.1.0.0/16"), 2), Some(1));
        assert_eq!(t.lookup("10.1.9.9".parse().unwrap()), Some(&2));
        assert_eq!(t.remove(net("10.1.5.5/16")), Some(2));
        assert_eq!(t.lookup("10.1.9.9".parse().unwrap()), None);
        assert!(t.v4.levels.is_empty());
    }
}
