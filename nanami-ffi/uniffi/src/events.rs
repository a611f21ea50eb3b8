//! Status events, derived from successive reads of the device by a pure watcher:
//! the poller thread gives it the peers' handshake times and the wall clock, so the
//! rules below are tested with a virtual clock.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use nanami_model::PublicKey;

/// Why a tunnel stopped.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum StopReason {
    /// The app called `stop()`.
    Requested,
    /// A data-plane thread ended (the TUN fd was closed or failed): the tunnel no
    /// longer carries traffic. Start a new one with a new fd.
    DeviceFailed,
    /// A following tunnel's agent cannot go on (not enrolled, enrolment token
    /// refused); an `Error` event before this one says why.
    AgentFailed,
}

/// Something the app may want to show or act on.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TunnelEvent {
    /// A handshake with the peer completed: traffic flows (again).
    HandshakeCompleted {
        /// The peer's public key, base64.
        public_key: String,
        /// When, by the wall clock.
        at: SystemTime,
    },
    /// The peer has not completed a handshake for `stale_after` (since its last
    /// one, or since it was configured): its gateway is likely unreachable, and a
    /// client agent may fail over. Sent once until the next handshake.
    PeerStale {
        /// The peer's public key, base64.
        public_key: String,
        /// The last completed handshake, if there ever was one.
        last_handshake: Option<SystemTime>,
    },
    /// A following tunnel runs a configuration: the manager's newest, or the
    /// same one under a new failover. `new_tun` when it asked the app's
    /// `TunProvider` for a TUN with these addresses, MTU and routes.
    ConfigApplied {
        /// The manager's version of the configuration.
        version: String,
        /// The interface addresses.
        addresses: Vec<String>,
        /// The MTU.
        mtu: u32,
        /// The prefixes routed into the tunnel.
        routes: Vec<String>,
        /// Whether the device moved to a new TUN.
        new_tun: bool,
    },
    /// A following tunnel's probes changed their mind: these gateways do not
    /// answer (empty: every gateway answers again), and their networks are
    /// routed to the next gateway of their failover lists.
    GatewaysDown {
        /// The gateways' ids.
        gateways: Vec<String>,
    },
    /// Something went wrong that the tunnel survives (a configuration it could
    /// not apply), or, before `Stopped { AgentFailed }`, why it stops.
    Error {
        /// What happened.
        message: String,
    },
    /// The tunnel stopped; no event follows.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

#[derive(Debug, Clone)]
struct PeerWatch {
    last_handshake: Option<SystemTime>,
    /// When the watcher first saw the peer: the reference for a peer that never
    /// completed a handshake.
    since: SystemTime,
    stale_reported: bool,
}

/// Remembers what was last seen of every peer.
#[derive(Debug)]
pub(crate) struct Watcher {
    stale_after: Duration,
    peers: BTreeMap<PublicKey, PeerWatch>,
}

impl Watcher {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            stale_after,
            peers: BTreeMap::new(),
        }
    }

    /// The events between the previous observation and this one. `peers` is every
    /// configured peer with its last handshake; `now` is the wall clock.
    pub fn observe(
        &mut self,
        peers: &[(PublicKey, Option<SystemTime>)],
        now: SystemTime,
    ) -> Vec<TunnelEvent> {
        self.peers
            .retain(|k, _| peers.iter().any(|(key, _)| key == k));
        let mut events = Vec::new();
        for (key, handshake) in peers {
            let watch = self.peers.entry(*key).or_insert(PeerWatch {
                last_handshake: None,
                since: now,
                stale_reported: false,
            });
            if let Some(at) = handshake {
                if watch.last_handshake.is_none_or(|prev| *at > prev) {
                    watch.last_handshake = Some(*at);
                    watch.stale_reported = false;
                    events.push(TunnelEvent::HandshakeCompleted {
                        public_key: key.to_base64(),
                        at: *at,
                    });
                }
            }
            let reference = watch.last_handshake.unwrap_or(watch.since);
            // A clock stepped backwards gives an error here: treat it as fresh.
            let age = now.duration_since(reference).unwrap_or_default();
            if !watch.stale_reported && age >= self.stale_after {
                watch.stale_reported = true;
                events.push(TunnelEvent::PeerStale {
                    public_key: key.to_base64(),
                    last_handshake: watch.last_handshake,
                });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanami_model::PrivateKey;

    const STALE: Duration = Duration::from_secs(180);

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn handshake(n: u8, at: SystemTime) -> TunnelEvent {
        TunnelEvent::HandshakeCompleted {
            public_key: key(n).to_base64(),
            at,
        }
    }

    #[test]
    fn a_handshake_is_reported_once() {
        let mut w = Watcher::new(STALE);
        assert_eq!(w.observe(&[(key(1), None)], t(0)), vec![]);
        assert_eq!(
            w.observe(&[(key(1), Some(t(1)))], t(2)),
            vec![handshake(1, t(1))]
        );
        assert_eq!(w.observe(&[(key(1), Some(t(1)))], t(3)), vec![]);
        assert_eq!(
            w.observe(&[(key(1), Some(t(121)))], t(122)),
            vec![handshake(1, t(121))]
        );
    }

    #[test]
    fn a_silent_peer_goes_stale_once_and_recovers() {
        let mut w = Watcher::new(STALE);
        let p = [(key(1), Some(t(0)))];
        assert_eq!(w.observe(&p, t(0)).len(), 1);
        assert_eq!(w.observe(&p, t(179)), vec![]);
        let stale = TunnelEvent::PeerStale {
            public_key: key(1).to_base64(),
            last_handshake: Some(t(0)),
        };
        assert_eq!(w.observe(&p, t(180)), vec![stale]);
        assert_eq!(w.observe(&p, t(400)), vec![], "reported once");
        let back = [(key(1), Some(t(401)))];
        assert_eq!(w.observe(&back, t(402)), vec![handshake(1, t(401))]);
        assert_eq!(
            w.observe(&back, t(581)).len(),
            1,
            "stale again after another silence"
        );
    }

    #[test]
    fn a_peer_that_never_answers_is_stale_from_when_it_was_configured() {
        let mut w = Watcher::new(STALE);
        assert_eq!(w.observe(&[(key(1), None)], t(0)), vec![]);
        assert_eq!(w.observe(&[(key(1), None), (key(2), None)], t(100)), vec![]);
        let ev = w.observe(&[(key(1), None), (key(2), None)], t(200));
        assert_eq!(
            ev,
            vec![TunnelEvent::PeerStale {
                public_key: key(1).to_base64(),
                last_handshake: None
            }]
        );
    }

    #[test]
    fn a_removed_then_readded_peer_starts_afresh() {
        let mut w = Watcher::new(STALE);
        w.observe(&[(key(1), Some(t(0)))], t(0));
        w.observe(&[], t(10));
        // Re-added: its old handshake is news again (the device kept none, or this
        // is a fresh session), and staleness counts from now.
        assert_eq!(w.observe(&[(key(1), None)], t(20)), vec![]);
        assert_eq!(w.observe(&[(key(1), None)], t(199)), vec![]);
    }

    #[test]
    fn a_clock_stepped_backwards_is_not_staleness() {
        let mut w = Watcher::new(STALE);
        w.observe(&[(key(1), Some(t(1000)))], t(1000));
        assert_eq!(w.observe(&[(key(1), Some(t(1000)))], t(0)), vec![]);
    }
}
