//! A device's configuration without the device: a real [`State`] (one identity, two
//! peers with disjoint AllowedIPs) and a real boringtun `Tunn` for peer 1's far end,
//! for the unit tests and the fuzz target of [`super`]. Datagrams go through the
//! real [`handle_datagram`] exactly as the receive thread passes them (into a buffer
//! as long as the datagram); only the handshake thread is stood in for (see
//! [`Rig::handshake_thread`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use nanami_model::{PrivateKey, PublicKey};

use super::{drain_queued, handle_datagram, Datagram, RxScratch};
use crate::device::peer::Peer;
use crate::device::{apply_peers, apply_private_key, Counters, Identity, PeerUpdate, State};

/// The device's address, as the remote sees it.
pub(in crate::device) const DEVICE_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
/// Where peer 1's remote end sends from.
pub(in crate::device) const REMOTE_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 40001);
/// Where peer 1's remote end sends from after it roamed.
pub(in crate::device) const ROAMED_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 40002);
/// Peer 2's endpoint (nothing answers there).
pub(in crate::device) const PEER2_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820);
/// Peer 1's AllowedIPs.
pub(in crate::device) const PEER1_NETS: [&str; 2] = ["10.9.0.0/24", "fd00::/64"];
/// Peer 2's AllowedIPs, disjoint from peer 1's.
pub(in crate::device) const PEER2_NETS: [&str; 2] = ["10.9.1.0/24", "fd00:0:0:1::/64"];
/// Peer 1's persistent keepalive, in seconds.
pub(in crate::device) const KEEPALIVE: u16 = 25;

/// The device's private key and the peers'.
const DEVICE_KEY: [u8; 32] = [7; 32];
const PEER1_KEY: [u8; 32] = [9; 32];
const PEER2_KEY: [u8; 32] = [11; 32];

/// A device's state and counters, and peer 1's far end.
pub(in crate::device) struct Rig {
    /// The device's configuration: identity, peers, routes.
    pub(in crate::device) state: State,
    /// The device's counters.
    pub(in crate::device) counters: Counters,
    /// The receive thread's scratch.
    pub(in crate::device) rx: RxScratch,
    /// Peer 1's far end: holds peer 1's key, talks to the device.
    pub(in crate::device) remote: Tunn,
    /// The device's clock, advanced by hand.
    pub(in crate::device) now: Instant,
}

/// What [`Rig::receive`] gave: the verdict, and the bytes for the TUN if any.
pub(in crate::device) struct Received {
    /// The core's verdict.
    pub(in crate::device) verdict: Datagram,
    /// `out[range]` of a delivered packet.
    pub(in crate::device) delivered: Option<Vec<u8>>,
}

/// What the remote made of a datagram from the device.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::device) enum Opened {
    /// A packet for its TUN.
    Packet(Vec<u8>),
    /// Nothing for its TUN (a keepalive, a cookie).
    Nothing,
    /// Something to send back to the device (a handshake response).
    Reply(Vec<u8>),
    /// Refused.
    Refused,
}

/// A net of the constants above.
fn net(s: &str) -> IpNet {
    s.parse().expect("a constant net")
}

/// The public key of a constant private key.
pub(in crate::device) fn public(key: [u8; 32]) -> PublicKey {
    PrivateKey::from_bytes(key).public_key()
}

impl Rig {
    /// The device with its two peers (peer 2 at [`PEER2_ADDR`], peer 1 nowhere yet,
    /// with a persistent keepalive of [`KEEPALIVE`]); no session.
    pub(in crate::device) fn new() -> Self {
        let mut state = State::new(0);
        let identity = Identity::new(PrivateKey::from_bytes(DEVICE_KEY));
        apply_private_key(&mut state, Some(Arc::new(identity)));
        let peer = |key, nets: [&str; 2]| {
            nets.iter().fold(PeerUpdate::new(public(key)), |u, n| {
                u.add_allowed_ip(net(n))
            })
        };
        let peers = vec![
            peer(PEER1_KEY, PEER1_NETS).persistent_keepalive(KEEPALIVE),
            peer(PEER2_KEY, PEER2_NETS).endpoint(PEER2_ADDR),
        ];
        apply_peers(&mut state, false, peers);
        let secret = x25519::StaticSecret::from(PEER1_KEY);
        let limiter = RateLimiter::new(&x25519::PublicKey::from(&secret), u64::MAX);
        let remote = Tunn::new(
            secret,
            x25519::PublicKey::from(*public(DEVICE_KEY).as_bytes()),
            None,
            None,
            0x42,
            Some(Arc::new(limiter)),
        );
        Self {
            state,
            counters: Counters::default(),
            rx: RxScratch::new(),
            remote,
            now: Instant::now(),
        }
    }

    /// The device with a session with peer 1, whose far end is at [`REMOTE_ADDR`].
    pub(in crate::device) fn established() -> Self {
        let mut rig = Self::new();
        rig.handshake();
        rig
    }

    /// Peer `n` (1 or 2).
    pub(in crate::device) fn peer(&self, n: u8) -> &Arc<Peer> {
        let key = if n == 1 { PEER1_KEY } else { PEER2_KEY };
        &self.state.peers[&public(key)].peer
    }

    /// The remote initiates a handshake from [`REMOTE_ADDR`]; the device classifies the
    /// initiation for the handshake thread, which answers; the remote's keepalive
    /// confirms the session through [`handle_datagram`].
    pub(in crate::device) fn handshake(&mut self) {
        let mut buf = [0u8; 256];
        let TunnResult::WriteToNetwork(init) =
            self.remote.format_handshake_initiation(&mut buf, false)
        else {
            panic!("the remote makes no initiation");
        };
        let init = init.to_vec();
        let received = self.receive(REMOTE_ADDR, &init);
        assert_eq!(received.verdict, Datagram::Handshake);
        let replies = self.handshake_thread(REMOTE_ADDR, &init);
        let [response] = replies.as_slice() else {
            panic!("no single response: {replies:?}");
        };
        let Opened::Reply(keepalive) = self.open(response) else {
            panic!("the remote did not take the response");
        };
        assert_eq!(
            self.receive(REMOTE_ADDR, &keepalive).verdict,
            Datagram::Keepalive
        );
    }

    /// Stands in for the handshake thread (which needs the device's queue and
    /// sockets, and is tested through them): hands the message to peer 1's `Tunn`,
    /// which verifies its MAC1 against the device's limiter, and does what the thread
    /// does with an accepted one. Returns what the device would send back.
    pub(in crate::device) fn handshake_thread(
        &mut self,
        src: SocketAddr,
        message: &[u8],
    ) -> Vec<Vec<u8>> {
        let identity = self.state.identity.clone();
        let peer = self.peer(1).clone();
        let mut inner = peer.lock();
        peer.ensure_tunn(&mut inner, identity.as_deref());
        let Some(tunn) = inner.tunn.as_mut() else {
            return Vec::new();
        };
        let mut out = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(answer) =
            tunn.decapsulate(Some(src.ip()), message, &mut out)
        else {
            return Vec::new();
        };
        let mut replies = vec![answer.to_vec()];
        replies.extend(drain_queued(tunn, &mut out));
        inner.endpoint = Some(src);
        inner.last_traversal = Some(self.now);
        inner.remember_initiation();
        replies
    }

    /// The receive thread's part: `datagram` from `src` through [`handle_datagram`],
    /// into a buffer as long as the datagram.
    pub(in crate::device) fn receive(&mut self, src: SocketAddr, datagram: &[u8]) -> Received {
        let mut out = vec![0u8; datagram.len()];
        let verdict = handle_datagram(
            &self.state,
            &self.counters,
            src,
            datagram,
            &mut out,
            &mut self.rx,
            self.now,
        );
        let delivered = match &verdict {
            Datagram::Deliver(range) => out.get(range.clone()).map(<[u8]>::to_vec),
            Datagram::Handshake | Datagram::Keepalive | Datagram::Dropped(_) => None,
        };
        Received { verdict, delivered }
    }

    /// The remote seals `packet` for the device: the datagram (`None` when its `Tunn`
    /// made none, e.g. it queued the packet).
    pub(in crate::device) fn seal(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; super::room(packet.len())];
        match self.remote.encapsulate(packet, &mut out) {
            TunnResult::WriteToNetwork(datagram) => Some(datagram.to_vec()),
            TunnResult::Done
            | TunnResult::Err(_)
            | TunnResult::WriteToTunnelV4(..)
            | TunnResult::WriteToTunnelV6(..) => None,
        }
    }

    /// The remote receives `datagram` from the device.
    pub(in crate::device) fn open(&mut self, datagram: &[u8]) -> Opened {
        let mut out = vec![0u8; super::room(datagram.len())];
        match self
            .remote
            .decapsulate(Some(DEVICE_ADDR.ip()), datagram, &mut out)
        {
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                Opened::Packet(p.to_vec())
            }
            TunnResult::WriteToNetwork(reply) => Opened::Reply(reply.to_vec()),
            TunnResult::Done => Opened::Nothing,
            TunnResult::Err(_) => Opened::Refused,
        }
    }
}

#[cfg(test)]
/// An IPv4 packet from `src` to `dst` with `payload` (UDP, checksums left zero: the
/// core reads only addresses and lengths).
pub(in crate::device) fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

#[cfg(test)]
/// An IPv6 packet from `src` to `dst` with `payload`.
pub(in crate::device) fn ipv6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}
