//! The kernel WireGuard backend, over generic netlink (what `wg(8)` speaks to the
//! `wireguard` module).
//!
//! Chosen only when the kernel has the `wireguard` generic netlink family (the
//! module is loaded or built in): [`KernelWg::probe`] resolves it, and a machine
//! without it never gets here. Messages are built as values (`*_message`), so their
//! shape is unit-tested without the module; the round trip itself needs a kernel
//! with WireGuard, which this project's test machines do not have.

// The packet crate's enums are open-ended; ignoring what Nanami does not read is the
// point of these matches.
#![allow(clippy::wildcard_enum_match_arm)]

use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt as _;
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use nanami_model::{PrivateKey, PublicKey};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

use super::PlatformError;
use crate::device::{DeviceInfo, PeerConfig, PeerInfo, PeerStats};

fn error(message: impl Into<String>) -> PlatformError {
    PlatformError::Netlink {
        errno: 0,
        message: format!("wireguard genetlink: {}", message.into()),
    }
}

/// A generic netlink connection to the kernel's WireGuard.
#[derive(Clone)]
pub struct KernelWg {
    handle: GenetlinkHandle,
}

impl std::fmt::Debug for KernelWg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelWg")
    }
}

impl KernelWg {
    /// Connects and resolves the `wireguard` family; `None` when the kernel has no
    /// WireGuard (as on machines that need the userspace device).
    pub async fn probe() -> Option<Self> {
        let (conn, handle, _) = genetlink::new_connection().ok()?;
        tokio::spawn(conn);
        handle.resolve_family::<WireguardMessage>().await.ok()?;
        Some(Self { handle })
    }

    async fn request(
        &self,
        message: WireguardMessage,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, PlatformError> {
        let mut nl = NetlinkMessage::from(GenlMessage::from_payload(message));
        nl.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(nl).await.map_err(|e| error(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|e| error(e.to_string()))?;
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(PlatformError::Netlink {
                        errno: super::netlink::errno(&e),
                        message: e.to_io().to_string(),
                    })
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// `wg show <name> dump`.
    pub async fn get(&self, name: &str) -> Result<DeviceInfo, PlatformError> {
        let replies = self
            .request(get_message(name), NLM_F_REQUEST | NLM_F_DUMP)
            .await?;
        Ok(parse_device(name, &replies))
    }

    /// `wg set <name> ...` with an already built message.
    pub async fn set(&self, message: WireguardMessage) -> Result<(), PlatformError> {
        self.request(message, NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }
}

/// `WG_CMD_GET_DEVICE` for `name`.
pub fn get_message(name: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_owned())],
    }
}

/// `wg set <name> private-key … listen-port …`.
pub fn device_message(name: &str, key: Option<&PrivateKey>, port: Option<u16>) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfName(name.to_owned())];
    if let Some(k) = key {
        attributes.push(WireguardAttribute::PrivateKey(*k.expose_secret()));
    }
    if let Some(p) = port {
        attributes.push(WireguardAttribute::ListenPort(p));
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.network()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// `wg set <name> peer <key> …`: an in-place update whose AllowedIPs replace the
/// old ones (the session is kept).
pub fn peer_message(name: &str, peer: &PeerConfig) -> WireguardMessage {
    let mut attrs = vec![
        WireguardPeerAttribute::PublicKey(*peer.public_key.as_bytes()),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::PersistentKeepalive(peer.persistent_keepalive.unwrap_or(0)),
        WireguardPeerAttribute::AllowedIps(peer.allowed_ips.iter().map(allowed_ip).collect()),
    ];
    if let Some(ep) = peer.endpoint {
        attrs.push(WireguardPeerAttribute::Endpoint(ep));
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(name.to_owned()),
            WireguardAttribute::Peers(vec![WireguardPeer(attrs)]),
        ],
    }
}

/// `wg set <name> peer <key> remove`.
pub fn remove_peer_message(name: &str, key: &PublicKey) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(name.to_owned()),
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*key.as_bytes()),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])]),
        ],
    }
}

/// Folds the (possibly several, for many peers) dump replies into one device.
/// Peers whose key or AllowedIPs do not parse are left out: the next plan re-adds
/// them rather than trusting a garbled reply.
pub fn parse_device(name: &str, replies: &[WireguardMessage]) -> DeviceInfo {
    let mut info = DeviceInfo {
        name: Some(name.to_owned()),
        private_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    for msg in replies {
        for attr in &msg.attributes {
            match attr {
                WireguardAttribute::PrivateKey(k) => {
                    info.private_key = Some(PrivateKey::from_bytes(*k))
                }
                WireguardAttribute::ListenPort(p) => info.listen_port = *p,
                WireguardAttribute::Fwmark(m) => info.fwmark = *m,
                WireguardAttribute::Peers(peers) => {
                    info.peers.extend(peers.iter().filter_map(parse_peer));
                }
                _ => {}
            }
        }
    }
    info.peers.sort_by_key(|p| p.config.public_key);
    info
}

fn parse_peer(peer: &WireguardPeer) -> Option<PeerInfo> {
    let mut key = None;
    let mut config_endpoint = None;
    let mut keepalive = None;
    let mut allowed = Vec::new();
    let mut stats = PeerStats::default();
    for attr in &peer.0 {
        match attr {
            WireguardPeerAttribute::PublicKey(k) => key = PublicKey::from_bytes(*k).ok(),
            WireguardPeerAttribute::Endpoint(ep) => config_endpoint = Some(*ep),
            WireguardPeerAttribute::PersistentKeepalive(k) => keepalive = (*k != 0).then_some(*k),
            WireguardPeerAttribute::RxBytes(b) => stats.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => stats.tx_bytes = *b,
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 => {
                let secs = u64::try_from(t.seconds).ok()?;
                let nanos = u32::try_from(t.nano_seconds.clamp(0, 999_999_999)).ok()?;
                stats.last_handshake = UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
            }
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let mut addr = None;
                    let mut cidr = None;
                    for a in &ip.0 {
                        match a {
                            WireguardAllowedIpAttr::IpAddr(x) => addr = Some(*x),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
                            _ => {}
                        }
                    }
                    allowed.push(IpNet::new(addr?, cidr?).ok()?);
                }
            }
            _ => {}
        }
    }
    let mut config = PeerConfig::new(key?);
    config.endpoint = config_endpoint;
    config.persistent_keepalive = keepalive;
    config.allowed_ips = allowed;
    Some(PeerInfo { config, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_messages_carry_what_the_plan_says() {
        let key = PrivateKey::from_bytes([5; 32]).public_key();
        let mut peer = PeerConfig::new(key);
        peer.allowed_ips = vec!["100.80.0.10/32".parse().unwrap()];
        peer.endpoint = Some("198.51.100.7:51820".parse().unwrap());
        peer.persistent_keepalive = Some(25);
        let msg = peer_message("nm-gw-a", &peer);
        assert_eq!(msg.cmd, WireguardCmd::SetDevice);
        // What the kernel would answer for this peer parses back to it.
        let WireguardAttribute::Peers(peers) = &msg.attributes[1] else {
            panic!("no peers attribute")
        };
        let back = parse_device(
            "nm-gw-a",
            &[WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(peers.clone())],
            }],
        );
        assert_eq!(back.peers[0].config, peer);
        let rm = remove_peer_message("nm-gw-a", &key);
        assert!(format!("{rm:?}").contains("RemoveMe"));
    }

    #[test]
    fn garbled_peers_are_left_out() {
        let bad = WireguardPeer(vec![WireguardPeerAttribute::PublicKey([0; 32])]);
        let info = parse_device(
            "x",
            &[WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(vec![bad])],
            }],
        );
        assert!(info.peers.is_empty(), "a low-order key is not a peer");
    }

    #[tokio::test]
    async fn this_machine_has_no_kernel_wireguard_so_it_is_never_chosen() {
        // The project's machines have no WireGuard module (the reason Nanami has its
        // own device). If one ever does, this test says so rather than passing
        // silently: the userspace suites would then not be testing what runs.
        let has_module = std::path::Path::new("/sys/module/wireguard").exists();
        assert_eq!(KernelWg::probe().await.is_some(), has_module);
    }
}
