//! The device's configuration as values: what [`Device::get`](super::Device::get)
//! returns and what [`Device::apply`](super::Device::apply) takes.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use nanami_model::{PrivateKey, PublicKey};
use zeroize::Zeroize;

/// Length of a WireGuard preshared key.
pub const PRESHARED_KEY_LEN: usize = 32;

/// A WireGuard preshared key: zeroized on drop, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; PRESHARED_KEY_LEN]);

impl PresharedKey {
    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; PRESHARED_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Named so that every use is visible in review.
    pub fn expose_secret(&self) -> &[u8; PRESHARED_KEY_LEN] {
        &self.0
    }

    /// Whether every byte is zero (the UAPI's way of saying "no key").
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// One peer's configuration, as set by the caller (or learned: the endpoint roams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's static public key: its identity.
    pub public_key: PublicKey,
    /// The optional preshared key mixed into the handshake.
    pub preshared_key: Option<PresharedKey>,
    /// Where to send to the peer; updated when the peer roams.
    pub endpoint: Option<SocketAddr>,
    /// The inner addresses routed to this peer and accepted from it, in order.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives when idle; `None` is off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A peer with only its key set.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }
}

/// One peer's traffic counters and handshake time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Bytes of authenticated WireGuard datagrams received from the peer.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent to the peer.
    pub tx_bytes: u64,
    /// Wall-clock time of the most recent completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
}

/// A peer as read back from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// What is configured (with the endpoint as currently learned).
    pub config: PeerConfig,
    /// What has happened.
    pub stats: PeerStats,
}

/// The whole device as read back by [`Device::get`](super::Device::get).
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The interface name, when known.
    pub name: Option<String>,
    /// The device's private key, when set. Its `Debug` shows only the public half.
    pub private_key: Option<PrivateKey>,
    /// The UDP port the device listens on (the actual one when 0 was asked for).
    pub listen_port: u16,
    /// The `SO_MARK` set on the UDP sockets; 0 is none.
    pub fwmark: u32,
    /// The peers, ordered by public key.
    pub peers: Vec<PeerInfo>,
}

impl DeviceInfo {
    /// The device's public key, when a private key is set.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.private_key.as_ref().map(PrivateKey::public_key)
    }

    /// The peer with `key`, if present.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerInfo> {
        self.peers.iter().find(|p| p.config.public_key == *key)
    }
}

/// A change to one peer, with the UAPI's semantics (each field a UAPI key).
///
/// Build it with the methods; fields left at their default change nothing.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer to change (UAPI `public_key`).
    pub public_key: PublicKey,
    /// Remove the peer (UAPI `remove=true`); every other field is ignored.
    pub remove: bool,
    /// Only change the peer if it exists; never create it (UAPI `update_only=true`).
    pub update_only: bool,
    /// `Some(None)` clears the preshared key, `Some(Some(k))` sets it.
    pub preshared_key: Option<Option<PresharedKey>>,
    /// Sets the endpoint (UAPI `endpoint`).
    pub endpoint: Option<SocketAddr>,
    /// Sets the persistent keepalive; `Some(0)` turns it off.
    pub persistent_keepalive: Option<u16>,
    /// Drop the peer's AllowedIPs before adding [`PeerUpdate::allowed_ips`]
    /// (UAPI `replace_allowed_ips=true`).
    pub replace_allowed_ips: bool,
    /// AllowedIPs to add (UAPI `allowed_ip`); a prefix owned by another peer moves here.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    /// An update that changes nothing (yet) on the peer with `public_key`, creating
    /// it if it does not exist.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }

    /// An update that makes the peer exactly `config` (created if missing).
    pub fn replace_with(config: &PeerConfig) -> Self {
        Self {
            public_key: config.public_key,
            remove: false,
            update_only: false,
            preshared_key: Some(config.preshared_key.clone()),
            endpoint: config.endpoint,
            persistent_keepalive: Some(config.persistent_keepalive.unwrap_or(0)),
            replace_allowed_ips: true,
            allowed_ips: config.allowed_ips.clone(),
        }
    }

    /// An update that removes the peer.
    pub fn remove(public_key: PublicKey) -> Self {
        Self {
            remove: true,
            ..Self::new(public_key)
        }
    }

    /// Only update an existing peer.
    pub fn update_only(mut self) -> Self {
        self.update_only = true;
        self
    }

    /// Sets (or with `None` clears) the preshared key.
    pub fn preshared_key(mut self, key: Option<PresharedKey>) -> Self {
        self.preshared_key = Some(key);
        self
    }

    /// Sets the endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Sets the persistent keepalive interval in seconds (0 is off).
    pub fn persistent_keepalive(mut self, seconds: u16) -> Self {
        self.persistent_keepalive = Some(seconds);
        self
    }

    /// Replaces the AllowedIPs with `nets`.
    pub fn replace_allowed_ips(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.replace_allowed_ips = true;
        self.allowed_ips = nets.into_iter().collect();
        self
    }

    /// Adds `net` to the AllowedIPs.
    pub fn add_allowed_ip(mut self, net: IpNet) -> Self {
        self.allowed_ips.push(net);
        self
    }
}

/// A change to the device, applied all at once by
/// [`Device::apply`](super::Device::apply): either all of it or (on error) none.
#[must_use]
#[derive(Debug, Clone, Default)]
pub struct DeviceUpdate {
    /// `Some(None)` removes the private key; `Some(Some(k))` sets it (a no-op when
    /// it is already the key, so sessions survive).
    pub private_key: Option<Option<PrivateKey>>,
    /// Rebinds the UDP socket to this port (0 picks a free one).
    pub listen_port: Option<u16>,
    /// Sets the `SO_MARK` of the UDP sockets (0 clears it).
    pub fwmark: Option<u32>,
    /// Turns the TUN and UDP offloads on or off ([`Offloads`](super::Offloads);
    /// UAPI key `nanami_offload`).
    pub offload: Option<bool>,
    /// Remove every peer not named in [`DeviceUpdate::peers`]; those named are reset
    /// to their defaults before their updates apply (their sessions are kept when the
    /// preshared key does not change).
    pub replace_peers: bool,
    /// Peer changes, applied in order.
    pub peers: Vec<PeerUpdate>,
}

impl DeviceUpdate {
    /// An update that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the private key.
    pub fn private_key(mut self, key: PrivateKey) -> Self {
        self.private_key = Some(Some(key));
        self
    }

    /// Sets the listen port.
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    /// Sets the fwmark.
    pub fn fwmark(mut self, mark: u32) -> Self {
        self.fwmark = Some(mark);
        self
    }

    /// Turns offloads on or off.
    pub fn offload(mut self, on: bool) -> Self {
        self.offload = Some(on);
        self
    }

    /// Replace all peers by those in this update.
    pub fn replace_peers(mut self) -> Self {
        self.replace_peers = true;
        self
    }

    /// Adds a peer change.
    pub fn peer(mut self, update: PeerUpdate) -> Self {
        self.peers.push(update);
        self
    }
}
