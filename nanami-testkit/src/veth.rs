//! Links between namespaces: veth pairs, bridges and bridge ports.

use std::process::Command;

use crate::netns::{ifname, run, Netns};

/// Connects `a` and `b` with a veth pair of unique names, puts `a_addr` and
/// `b_addr` (`address/prefix`) on its ends and sets both up; returns the names of
/// `a`'s end and `b`'s end.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let (ia, ib) = (ifname("va"), ifname("vb"));
    veth_named(a, &ia, &[a_addr], b, &ib, &[b_addr]);
    (ia, ib)
}

/// A veth pair `a_dev` (in `a`) – `b_dev` (in `b`) with the names given, each end
/// with its addresses (`address/prefix`, possibly none) and up.
pub fn veth_named(
    a: &Netns,
    a_dev: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_dev: &str,
    b_addrs: &[&str],
) {
    run(Command::new("ip").args([
        "link",
        "add",
        a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]));
    for (ns, dev, addrs) in [(a, a_dev, a_addrs), (b, b_dev, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", dev]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// A bridge `name` in `ns` with `addrs` (`address/prefix`), up.
pub fn bridge(ns: &Netns, name: &str, addrs: &[&str]) {
    ns.ip(&["link", "add", name, "type", "bridge"]);
    for addr in addrs {
        ns.ip(&["addr", "add", addr, "dev", name]);
    }
    ns.ip(&["link", "set", name, "up"]);
}

/// Plugs `ns` into bridge `bridge` of `bridge_ns`: a veth `dev` in `ns` (with
/// `addrs`) whose peer `port` is a port of the bridge; all up.
pub fn plug(ns: &Netns, dev: &str, addrs: &[&str], bridge_ns: &Netns, bridge: &str, port: &str) {
    veth_named(ns, dev, addrs, bridge_ns, port, &[]);
    bridge_ns.ip(&["link", "set", port, "master", bridge]);
}

/// Sets `dev` in `ns` up or down (a cable plugged or pulled).
pub fn set_link(ns: &Netns, dev: &str, up: bool) {
    ns.ip(&["link", "set", "dev", dev, if up { "up" } else { "down" }]);
}
