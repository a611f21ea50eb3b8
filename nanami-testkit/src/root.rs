//! The root check: suites that build namespaces fail without root (CI runs them as
//! root); they never skip silently.

use std::path::Path;

/// Fails the calling test unless it runs as root. `what` names what needs it
/// (e.g. "network namespaces and TUN devices"), for the message.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root for {what}: run it as root (scripts/test does)"
    );
}

/// Fails the calling test unless every tool in `tools` is on `PATH`, naming the
/// Debian package that has a missing one.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        assert!(
            on_path(tool),
            "this test needs `{tool}` on PATH (Debian package {}; scripts/deps installs it)",
            debian_package(tool)
        );
    }
}

/// [`require_root`] for namespaces (also `/dev/net/tun`) and [`require_tools`]
/// with `ip` added: what every namespace suite checks first.
pub fn require_netns(tools: &[&str]) {
    require_root("network namespaces and TUN devices");
    assert!(
        Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun"
    );
    require_tools(&["ip"]);
    require_tools(tools);
}

/// Whether `tool` is an executable file in a directory of `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn debian_package(tool: &str) -> &'static str {
    match tool {
        "wireguard-go" => "wireguard-go",
        "wg" | "wg-quick" => "wireguard-tools",
        "iperf3" => "iperf3",
        "ping" => "iputils-ping",
        "nft" => "nftables",
        "ip" | "bridge" => "iproute2",
        _ => "unknown: see scripts/deps",
    }
}
