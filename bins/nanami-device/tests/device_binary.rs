//! The `nanami-device` binary: comes up with a UAPI socket `wg(8)` can use, and stops
//! cleanly on SIGTERM (exit 0, socket and TUN gone). Needs root and `wg`.

#[path = "../../../nanami-wg/tests/common/mod.rs"]
mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{ifname, Netns};

/// Kills the child if the test fails before it exits.
struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn runs_until_sigterm_then_stops_cleanly() {
    common::require(&["wg"]);
    let ns = Netns::new("bin");
    let name = ifname("d");
    let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
    let child = ns
        .command(env!("CARGO_BIN_EXE_nanami-device"))
        .args(["--foreground", &name])
        .stdin(Stdio::null())
        .spawn()
        .expect("start nanami-device");
    let mut guard = Guard(Some(child));
    wait_for("the UAPI socket", || sock.exists());

    let (key, public) = common::keypair();
    let (_, peer) = common::keypair();
    let peer_s = peer.to_string();
    ns.exec_stdin(
        "wg",
        &[
            "set",
            &name,
            "private-key",
            "/dev/stdin",
            "peer",
            &peer_s,
            "allowed-ips",
            "10.5.0.0/24",
        ],
        key.to_base64_secret().as_str(),
    );
    let shown = ns.exec("wg", &["show", &name]);
    assert!(shown.contains(&public.to_string()), "{shown}");
    assert!(shown.contains(&peer_s), "{shown}");

    let mut child = guard.0.take().expect("child");
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(5) {
            guard.0 = Some(child);
            panic!("nanami-device did not stop within 5 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists(), "socket left behind");
    assert!(
        !ns.try_exec("ip", &["link", "show", &name]),
        "TUN interface left behind"
    );
}

#[test]
fn stops_cleanly_when_its_interface_is_deleted() {
    common::require(&[]);
    let ns = Netns::new("bin");
    let name = ifname("e");
    let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
    let child = ns
        .command(env!("CARGO_BIN_EXE_nanami-device"))
        .args(["--foreground", &name])
        .stdin(Stdio::null())
        .spawn()
        .expect("start nanami-device");
    let mut guard = Guard(Some(child));
    wait_for("the UAPI socket", || sock.exists());
    ns.ip(&["link", "del", &name]);
    let child = guard.0.as_mut().expect("child");
    wait_for("the device to exit", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let status = child.try_wait().expect("wait").expect("exited");
    guard.0 = None;
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn with_netns_the_tun_is_inside_and_udp_stays_outside() {
    common::require(&["wg", "ss"]);
    let host = Netns::new("binh");
    let inner = Netns::new("bini");
    let name = ifname("n");
    let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
    let child = host
        .command(env!("CARGO_BIN_EXE_nanami-device"))
        .args(["--foreground", "--netns", inner.name(), &name])
        .stdin(Stdio::null())
        .spawn()
        .expect("start nanami-device");
    let mut guard = Guard(Some(child));
    wait_for("the UAPI socket", || sock.exists());
    let (key, _) = common::keypair();
    host.exec_stdin(
        "wg",
        &[
            "set",
            &name,
            "private-key",
            "/dev/stdin",
            "listen-port",
            "51830",
        ],
        key.to_base64_secret().as_str(),
    );
    assert!(inner.try_exec("ip", &["link", "show", &name]), "TUN inside");
    assert!(
        !host.try_exec("ip", &["link", "show", &name]),
        "no TUN outside"
    );
    let port = "sport = :51830";
    assert!(!host.exec("ss", &["-Huan", port]).is_empty(), "UDP outside");
    assert!(
        inner.exec("ss", &["-Huan", port]).is_empty(),
        "no UDP inside"
    );

    let mut child = guard.0.take().expect("child");
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!inner.try_exec("ip", &["link", "show", &name]));
}

#[test]
fn a_missing_netns_is_a_clear_error() {
    common::require(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanami-device"))
        .args([
            "--foreground",
            "--netns",
            "nmt-does-not-exist",
            &ifname("x"),
        ])
        .output()
        .expect("run nanami-device");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no network namespace nmt-does-not-exist"),
        "{err}"
    );
}
