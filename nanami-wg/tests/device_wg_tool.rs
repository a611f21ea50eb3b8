//! `wg(8)` (Debian's wireguard-tools) against a Nanami device over its UAPI socket.
//! Needs root, `wireguard-go`, `wg`, `ping`; fails with a clear message otherwise.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use common::pair::{Pair, A_IN, A_PORT, B_IN, B_PORT, B_UNDER};
use common::{keypair, Netns};
use nanami_model::PublicKey;

/// `wg show <if> dump`, split into the interface line and the peer lines.
fn dump(ns: &Netns, ifname: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let out = ns.exec("wg", &["show", ifname, "dump"]);
    let mut lines = out
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>());
    let iface = lines.next().expect("interface line");
    (iface, lines.collect())
}

#[test]
fn wg_show_reports_key_endpoint_handshake_and_transfer() {
    let p = Pair::new();
    p.wait_up();
    assert!(p.a.ping_all(B_IN, 3, &[]));
    let (iface, peers) = dump(&p.a, &p.a_if);
    assert_eq!(iface[1], p.a_pub.to_string(), "public key");
    assert_eq!(iface[2], A_PORT.to_string(), "listen port");
    assert_eq!(peers.len(), 1);
    let peer = &peers[0];
    assert_eq!(peer[0], p.b_pub.to_string());
    assert_eq!(peer[2], format!("{B_UNDER}:{B_PORT}"), "endpoint");
    assert_eq!(peer[3], format!("{B_IN}/32"), "allowed ips");
    let handshake: u64 = peer[4].parse().expect("handshake seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        handshake > 0 && now.abs_diff(handshake) < 60,
        "latest handshake {handshake}, now {now}"
    );
    let rx: u64 = peer[5].parse().expect("rx");
    let tx: u64 = peer[6].parse().expect("tx");
    assert!(rx > 0 && tx > 0, "transfer rx {rx} tx {tx}");

    let human = p.a.exec("wg", &["show", &p.a_if]);
    for needle in ["public key:", "latest handshake:", "transfer:", "endpoint:"] {
        assert!(
            human.contains(needle),
            "`wg show` lacks {needle:?}:\n{human}"
        );
    }
}

#[test]
fn wg_set_with_a_bad_value_prints_the_real_error() {
    let p = Pair::new();
    let (_, extra) = keypair();
    // `wg` accepts the address; the device refuses an endpoint without an address.
    let out =
        p.a.command("wg")
            .args([
                "set",
                &p.a_if,
                "peer",
                &extra.to_string(),
                "endpoint",
                "0.0.0.0:51820",
            ])
            .output()
            .expect("run wg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wg set succeeded: {stderr}");
    // wg(8) reads `errno=-N` and prints strerror(N); a positive N printed
    // "Unknown error -22".
    assert!(
        stderr.contains("Invalid argument") && !stderr.contains("Unknown error"),
        "wg printed: {stderr}"
    );
    assert!(
        p.dev.get().peer(&extra).is_none(),
        "a refused set changed the device"
    );
}

#[test]
fn wg_set_adds_and_removes_a_peer() {
    let p = Pair::new();
    let (_, extra) = keypair();
    let extra_s = extra.to_string();
    p.a.exec(
        "wg",
        &[
            "set",
            &p.a_if,
            "peer",
            &extra_s,
            "allowed-ips",
            "10.77.0.0/16,fd77::/64",
            "endpoint",
            "172.30.0.9:51820",
        ],
    );
    let info = p.dev.get();
    let peer = info.peer(&extra).expect("peer added by wg set");
    assert_eq!(
        peer.config.allowed_ips,
        vec![
            "10.77.0.0/16".parse().expect("n"),
            "fd77::/64".parse().expect("n")
        ]
    );
    assert_eq!(
        peer.config.endpoint,
        Some("172.30.0.9:51820".parse().expect("ep"))
    );
    assert!(info.peer(&p.b_pub).is_some(), "the other peer must stay");

    p.a.exec("wg", &["set", &p.a_if, "peer", &extra_s, "remove"]);
    let info = p.dev.get();
    assert!(info.peer(&extra).is_none(), "peer not removed");
    let listed = p.a.exec("wg", &["show", &p.a_if, "peers"]);
    assert_eq!(listed.trim(), p.b_pub.to_string());
    // The tunnel to the remaining peer still works.
    p.wait_up();
}

fn write_conf(
    path: &std::path::Path,
    key: &nanami_model::PrivateKey,
    peers: &[(PublicKey, String, Option<String>)],
) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[Interface]\nPrivateKey = {}\nListenPort = {A_PORT}\n",
        key.to_base64_secret().as_str()
    );
    for (k, allowed, endpoint) in peers {
        let _ = writeln!(s, "[Peer]\nPublicKey = {k}\nAllowedIPs = {allowed}");
        if let Some(ep) = endpoint {
            let _ = writeln!(s, "Endpoint = {ep}");
        }
        s.push('\n');
    }
    std::fs::write(path, s).expect("write config");
}

struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn wg_syncconf_replaces_10_of_1000_peers() {
    let p = Pair::new();
    let real = (
        p.b_pub,
        format!("{B_IN}/32"),
        Some(format!("{B_UNDER}:{B_PORT}")),
    );
    let fake = |i: usize| {
        let (_, k) = keypair();
        (k, format!("10.100.{}.{}/32", i / 250, i % 250 + 1), None)
    };
    let mut peers: Vec<(PublicKey, String, Option<String>)> = (0..999).map(fake).collect();
    peers.push(real);

    let conf1 = TempFile(std::env::temp_dir().join(format!("nmt-{}-1.conf", std::process::id())));
    write_conf(&conf1.0, &p.a_key, &peers);
    p.a.exec("wg", &["setconf", &p.a_if, conf1.0.to_str().expect("path")]);
    assert_eq!(p.dev.get().peers.len(), 1000);
    p.wait_up();
    let handshake_before = p
        .dev
        .get()
        .peer(&p.b_pub)
        .and_then(|x| x.stats.last_handshake)
        .expect("handshake");

    // Replace the first 10 peers by 10 new ones.
    let mut next = peers.split_off(10);
    let added: Vec<_> = (2000..2010).map(fake).collect();
    next.extend(added.iter().cloned());
    let conf2 = TempFile(std::env::temp_dir().join(format!("nmt-{}-2.conf", std::process::id())));
    write_conf(&conf2.0, &p.a_key, &next);
    p.a.exec(
        "wg",
        &["syncconf", &p.a_if, conf2.0.to_str().expect("path")],
    );

    let expected: BTreeSet<String> = next.iter().map(|(k, _, _)| k.to_string()).collect();
    let listed: BTreeSet<String> =
        p.a.exec("wg", &["show", &p.a_if, "peers"])
            .lines()
            .map(str::to_owned)
            .collect();
    assert_eq!(listed.len(), 1000);
    assert_eq!(listed, expected, "wg syncconf left the wrong peers");
    let info = p.dev.get();
    for (k, allowed, _) in &added {
        let peer = info.peer(k).expect("added peer");
        assert_eq!(peer.config.allowed_ips, vec![allowed.parse().expect("n")]);
    }
    // The kept peer was updated in place: same session, traffic without a handshake.
    assert!(p.a.ping_all(B_IN, 3, &[]), "kept peer lost traffic");
    assert!(
        p.b.ping_all(A_IN, 3, &[]),
        "kept peer lost traffic (reverse)"
    );
    let handshake_after = p
        .dev
        .get()
        .peer(&p.b_pub)
        .and_then(|x| x.stats.last_handshake)
        .expect("handshake");
    assert_eq!(
        handshake_before, handshake_after,
        "the kept peer's session was recreated"
    );
}
