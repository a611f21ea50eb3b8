//! Machine facts the manager cannot know: which interfaces face the LAN and the
//! WAN, and whether kernel WireGuard is present. Read from `/proc` and `/sys` of the
//! current network namespace.

use std::collections::BTreeSet;

use nanami_api::wire::Facts;

/// Interfaces holding an IPv4 default route (`/proc/net/route`: destination and
/// mask both zero).
fn default_route_interfaces() -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return BTreeSet::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect()
}

/// Reads the facts of this machine (network namespace).
pub fn read() -> Facts {
    let wan = default_route_interfaces();
    let mut lan: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n != "lo" && !n.starts_with("nm-") && !wan.contains(n))
                .collect()
        })
        .unwrap_or_default();
    lan.sort();
    Facts {
        lan_interfaces: lan,
        wan_interfaces: wan.into_iter().collect(),
        kernel_wireguard: std::path::Path::new("/sys/module/wireguard").exists(),
    }
}
