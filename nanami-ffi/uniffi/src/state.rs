//! The tunnel as the reconciler sees it, and the one device update that takes
//! the running tunnel from one configuration to the next.
//!
//! Nanami has one peer diff, [`nanami_reconcile::plan`]; this reads its ops. The
//! "observed" side is the configuration last applied, not what the device reads
//! back: the device learns a roaming peer's endpoint, and an update that does not
//! change that peer's configured endpoint must not pull it back.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use nanami_model::{
    GatewayId, GatewayState, InterfaceName, InterfaceState, NodeConfig, PeerState, PrivateKey,
    PublicKey, Route,
};
use nanami_reconcile::{plan, Observed, Op};
use nanami_wg::device::{DeviceUpdate, PeerConfig, PeerUpdate, PresharedKey};

/// The name the tunnel's state gives its interface. Only a key: the device runs
/// on the platform's TUN, whatever its name.
const INTERFACE: &str = "nm-tunnel";

/// Everything the tunnel runs: its interface (peers, addresses, MTU, listen
/// port) and the routes the platform sets, as a [`GatewayState`], plus what that
/// state never carries: the private key and the preshared keys.
#[derive(Debug, Clone)]
pub(crate) struct TunnelState {
    pub private_key: PrivateKey,
    pub state: GatewayState,
    pub preshared: BTreeMap<PublicKey, PresharedKey>,
}

impl TunnelState {
    /// The state of a tunnel with these addresses, MTU, listen port and peers;
    /// the routes are the peers' AllowedIPs.
    pub fn new(
        private_key: PrivateKey,
        addresses: &[IpNet],
        mtu: u32,
        listen_port: Option<u16>,
        peers: &[PeerConfig],
    ) -> Self {
        let interface = interface();
        let mut state = GatewayState::default();
        let mut iface = InterfaceState {
            listen_port,
            mtu,
            addresses: addresses.iter().copied().collect(),
            peers: BTreeMap::new(),
        };
        let mut preshared = BTreeMap::new();
        for peer in peers {
            for net in &peer.allowed_ips {
                state
                    .routes
                    .insert(Route::nanami(net.trunc(), interface.clone()));
            }
            iface.peers.insert(
                peer.public_key,
                PeerState {
                    endpoint: peer.endpoint,
                    allowed_ips: peer.allowed_ips.iter().copied().collect(),
                    persistent_keepalive: peer.persistent_keepalive,
                },
            );
            if let Some(psk) = &peer.preshared_key {
                preshared.insert(peer.public_key, psk.clone());
            }
        }
        state.interfaces.insert(interface, iface);
        Self {
            private_key,
            state,
            preshared,
        }
    }

    /// The state of a client following its manager: `config`'s
    /// [`NodeConfig::client_state`] under the failover's `down` set, as `nanami
    /// connect` runs it, kept to what a phone's tunnel has (the interface and its
    /// routes; the platform has no policy rules to set). The device picks its
    /// listen port.
    pub fn of_node(
        private_key: PrivateKey,
        config: &NodeConfig,
        down: &BTreeSet<GatewayId>,
    ) -> Self {
        let state = config.client_state(&interface(), 0, down);
        let mut state = GatewayState {
            interfaces: state.interfaces,
            routes: state.routes,
            ..GatewayState::default()
        };
        for iface in state.interfaces.values_mut() {
            iface.listen_port = None;
        }
        Self {
            private_key,
            state,
            preshared: BTreeMap::new(),
        }
    }

    fn interface(&self) -> Option<&InterfaceState> {
        self.state.interfaces.values().next()
    }

    /// The interface addresses, sorted.
    pub fn addresses(&self) -> Vec<IpNet> {
        self.interface()
            .map(|i| i.addresses.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The listen port asked for (`None`: the device picks one).
    pub fn listen_port(&self) -> Option<u16> {
        self.interface().and_then(|i| i.listen_port)
    }

    /// The MTU.
    pub fn mtu(&self) -> u32 {
        self.interface()
            .map_or(nanami_model::state::DEFAULT_MTU, |i| i.mtu)
    }

    /// The prefixes the platform routes into the tunnel, sorted.
    pub fn routes(&self) -> Vec<IpNet> {
        let all: BTreeSet<IpNet> = self.state.routes.iter().map(|r| r.destination).collect();
        all.into_iter().collect()
    }

    /// The device's peers, by public key.
    pub fn peers(&self) -> Vec<PeerConfig> {
        self.interface()
            .into_iter()
            .flat_map(|i| &i.peers)
            .map(|(key, peer)| self.peer(*key, peer))
            .collect()
    }

    fn peer(&self, key: PublicKey, peer: &PeerState) -> PeerConfig {
        PeerConfig {
            public_key: key,
            preshared_key: self.preshared.get(&key).cloned(),
            endpoint: peer.endpoint,
            allowed_ips: peer.allowed_ips.iter().copied().collect(),
            persistent_keepalive: peer.persistent_keepalive,
        }
    }
}

fn interface() -> InterfaceName {
    #[allow(clippy::expect_used)] // a constant, valid name
    InterfaceName::new(INTERFACE).expect("nm-tunnel is a valid interface name")
}

/// What it takes to go from one [`TunnelState`] to the next.
#[derive(Debug)]
pub(crate) struct Changes {
    /// One atomic device update (empty when the device needs nothing).
    pub update: DeviceUpdate,
    /// Peers added (a peer whose preshared key changed is replaced whole: added).
    pub added: usize,
    /// Peers changed in place.
    pub changed: usize,
    /// Peers removed.
    pub removed: usize,
    /// Whether the private key or the listen port changed.
    pub interface_changed: bool,
    /// Whether addresses, MTU or routes changed: the platform's part.
    pub platform_reconfigure_needed: bool,
}

impl Changes {
    /// Whether the device has anything to do.
    pub fn touches_device(&self) -> bool {
        self.interface_changed || self.added + self.changed + self.removed > 0
    }
}

/// The changes from `from` (running) to `to`: [`plan`]'s ops, read as one
/// device update and a word for the platform.
#[allow(clippy::wildcard_enum_match_arm)] // `Op` is non_exhaustive: see the last arm
pub(crate) fn changes(from: &TunnelState, to: &TunnelState) -> Changes {
    let mut update = DeviceUpdate::new();
    let mut interface_changed = false;
    if from.private_key.public_key() != to.private_key.public_key() {
        update = update.private_key(to.private_key.clone());
        interface_changed = true;
    }
    // A preshared key is no part of the reconciler's state: a peer whose key
    // changed is "not there", so the plan sets it whole.
    let mut observed = from.state.clone();
    for iface in observed.interfaces.values_mut() {
        iface
            .peers
            .retain(|key, _| from.preshared.get(key) == to.preshared.get(key));
    }
    let (mut added, mut changed, mut removed) = (0, 0, 0);
    let mut platform_reconfigure_needed = false;
    for op in plan(&to.state, &Observed::from(observed)).ops() {
        match op {
            Op::AddPeer {
                public_key, peer, ..
            } => {
                added += 1;
                update = update.peer(PeerUpdate::replace_with(&to.peer(*public_key, peer)));
            }
            Op::UpdatePeer {
                public_key, peer, ..
            } => {
                changed += 1;
                update = update.peer(PeerUpdate::replace_with(&to.peer(*public_key, peer)));
            }
            Op::RemovePeer { public_key, .. } => {
                removed += 1;
                update = update.peer(PeerUpdate::remove(*public_key));
            }
            // A port no longer asked for stays as it is.
            Op::SetListenPort {
                listen_port: Some(port),
                ..
            } => {
                update = update.listen_port(*port);
                interface_changed = true;
            }
            Op::AddAddress { .. }
            | Op::RemoveAddress { .. }
            | Op::SetMtu { .. }
            | Op::AddRoute { .. }
            | Op::RemoveRoute { .. } => platform_reconfigure_needed = true,
            // Neither state has rules, a filter or forwarding, and both name the
            // same one interface: nothing else can come.
            _ => {}
        }
    }
    Changes {
        update,
        added,
        changed,
        removed,
        interface_changed,
        platform_reconfigure_needed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    fn peer(n: u8, endpoint: &str, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            endpoint: Some(endpoint.parse().unwrap()),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: Some(25),
            ..PeerConfig::new(key(n))
        }
    }

    fn tunnel(peers: &[PeerConfig]) -> TunnelState {
        let addresses = ["100.64.0.2/32".parse().unwrap()];
        TunnelState::new(
            PrivateKey::from_bytes([9; 32]),
            &addresses,
            1380,
            None,
            peers,
        )
    }

    /// What the device ends with: `from`'s peers with `update` applied as the
    /// device applies it (removals, then each peer replaced whole).
    fn apply(from: &TunnelState, update: &DeviceUpdate) -> BTreeMap<PublicKey, PeerConfig> {
        let mut peers: BTreeMap<_, _> = from
            .peers()
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect();
        for u in &update.peers {
            if u.remove {
                peers.remove(&u.public_key);
            } else {
                peers.insert(
                    u.public_key,
                    PeerConfig {
                        public_key: u.public_key,
                        preshared_key: u.preshared_key.clone().flatten(),
                        endpoint: u.endpoint,
                        allowed_ips: u.allowed_ips.clone(),
                        persistent_keepalive: u.persistent_keepalive.filter(|k| *k != 0),
                    },
                );
            }
        }
        peers
    }

    fn by_key(state: &TunnelState) -> BTreeMap<PublicKey, PeerConfig> {
        state
            .peers()
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect()
    }

    #[test]
    fn the_same_configuration_is_nothing_to_do() {
        let a = tunnel(&[peer(1, "192.0.2.1:51820", &["100.80.0.0/22"])]);
        let c = changes(&a, &a.clone());
        assert!(!c.touches_device() && !c.platform_reconfigure_needed);
        assert!(c.update.peers.is_empty());
    }

    #[test]
    fn a_new_endpoint_is_one_change_in_place() {
        let old = [
            peer(1, "192.0.2.1:51820", &["100.80.0.0/22"]),
            peer(2, "192.0.2.2:51820", &[]),
        ];
        let mut new = old.clone();
        new[0].endpoint = Some("192.0.2.9:51820".parse().unwrap());
        let c = changes(&tunnel(&old), &tunnel(&new));
        assert_eq!((c.added, c.changed, c.removed), (0, 1, 0));
        assert_eq!(c.update.peers, vec![PeerUpdate::replace_with(&new[0])]);
        assert!(!c.platform_reconfigure_needed);
    }

    #[test]
    fn failover_moves_a_prefix_between_two_peers_changed_in_place() {
        let old = tunnel(&[
            peer(1, "192.0.2.1:51820", &["100.80.0.0/22"]),
            peer(2, "192.0.2.2:51820", &[]),
        ]);
        let new = tunnel(&[
            peer(1, "192.0.2.1:51820", &[]),
            peer(2, "192.0.2.2:51820", &["100.80.0.0/22"]),
        ]);
        let c = changes(&old, &new);
        assert_eq!((c.added, c.changed, c.removed), (0, 2, 0));
        assert_eq!(apply(&old, &c.update), by_key(&new));
        assert!(
            !c.platform_reconfigure_needed,
            "the same prefixes are routed"
        );
    }

    #[test]
    fn a_new_gateway_replaces_the_old_one_without_a_flush() {
        let old = tunnel(&[peer(1, "192.0.2.1:51820", &["100.80.0.0/22"])]);
        let new = tunnel(&[peer(3, "192.0.2.3:51820", &["100.80.0.0/22"])]);
        let c = changes(&old, &new);
        assert_eq!((c.added, c.changed, c.removed), (1, 0, 1));
        assert!(!c.update.replace_peers, "never a flush of the whole device");
        assert_eq!(apply(&old, &c.update), by_key(&new));
    }

    #[test]
    fn a_new_preshared_key_replaces_the_peer_whole() {
        let old = tunnel(&[peer(1, "192.0.2.1:51820", &["100.80.0.0/22"])]);
        let mut with_psk = peer(1, "192.0.2.1:51820", &["100.80.0.0/22"]);
        with_psk.preshared_key = Some(PresharedKey::from_bytes([7; 32]));
        let new = tunnel(&[with_psk.clone()]);
        let c = changes(&old, &new);
        assert_eq!((c.added, c.changed, c.removed), (1, 0, 0));
        assert_eq!(c.update.peers, vec![PeerUpdate::replace_with(&with_psk)]);
        assert_eq!(changes(&new, &new.clone()).update.peers, vec![]);
    }

    #[test]
    fn addresses_mtu_and_routes_are_the_platforms_part() {
        let peers = [peer(1, "192.0.2.1:51820", &["100.80.0.0/22"])];
        let old = tunnel(&peers);
        let mut mtu = old.clone();
        for i in mtu.state.interfaces.values_mut() {
            i.mtu = 1280;
        }
        let c = changes(&old, &mtu);
        assert!(c.platform_reconfigure_needed && !c.touches_device());
        let wider = tunnel(&[peer(1, "192.0.2.1:51820", &["100.80.0.0/16"])]);
        let c = changes(&old, &wider);
        assert!(c.platform_reconfigure_needed);
        assert_eq!(c.changed, 1);
    }

    #[test]
    fn a_new_private_key_and_port_change_the_interface() {
        let old = tunnel(&[]);
        let mut new = TunnelState::new(
            PrivateKey::from_bytes([8; 32]),
            &old.addresses(),
            old.mtu(),
            Some(51999),
            &[],
        );
        let c = changes(&old, &new);
        assert!(c.interface_changed);
        assert_eq!(c.update.listen_port, Some(51999));
        assert!(c.update.private_key.is_some());
        // A port no longer asked for is kept.
        for i in new.state.interfaces.values_mut() {
            i.listen_port = None;
        }
        let back = changes(&tunnel(&[]).clone(), &new);
        assert_eq!(back.update.listen_port, None);
    }

    #[test]
    fn changes_then_apply_converge_over_many_edits() {
        // Every pair of subsets of four peers, each peer in one of two variants.
        let variant =
            |n: u8, v: u8| peer(n, if v == 0 { "192.0.2.1:1" } else { "192.0.2.1:2" }, &[]);
        let set = |mask: u8, var: u8| -> Vec<PeerConfig> {
            (0..4u8)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| variant(i + 1, (var >> i) & 1))
                .collect()
        };
        for (m1, v1, m2, v2) in (0..16u8).flat_map(|a| {
            (0..16u8).flat_map(move |b| {
                (0..16u8).flat_map(move |c| [0u8, 5, 15].map(move |d| (a, b, c, d)))
            })
        }) {
            let (old, new) = (tunnel(&set(m1, v1)), tunnel(&set(m2, v2)));
            let c = changes(&old, &new);
            assert_eq!(apply(&old, &c.update), by_key(&new));
            // Minimal: one update per peer that differs, none for the others.
            let differ = by_key(&old)
                .into_iter()
                .filter(|(k, p)| by_key(&new).get(k) != Some(p))
                .count()
                + by_key(&new)
                    .keys()
                    .filter(|k| !by_key(&old).contains_key(k))
                    .count();
            assert_eq!(c.update.peers.len(), differ);
        }
    }
}
