//! One peer's runtime state: its `Tunn`, endpoint, counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::Tunn;
use boringtun::x25519;
use nanami_model::PublicKey;

use super::config::PresharedKey;
use super::Identity;

/// How far a recomputed handshake time may drift before it counts as a new
/// handshake. `Tunn` reports the age of the session with the resolution of the timer
/// tick (250 ms); handshakes are at least `REKEY_TIMEOUT` (5 s) apart.
const HANDSHAKE_JITTER: Duration = Duration::from_secs(1);

/// A peer of the device.
pub(crate) struct Peer {
    pub(crate) public_key: PublicKey,
    /// The 24-bit index `Tunn` puts in the top bits of our session indices.
    pub(crate) index: u32,
    pub(crate) inner: Mutex<PeerInner>,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
}

/// The part of a peer the data plane changes, behind one lock.
pub(crate) struct PeerInner {
    /// The session state, made at first use ([`Peer::ensure_tunn`]): `None` until
    /// the peer sends, receives or keeps alive, and while the device has no private
    /// key. Boxed: a `Tunn` is 18 KiB (its sessions' replay windows inline), which
    /// a peer that never talks should not pay — 180 MiB at 10,000 peers.
    pub(crate) tunn: Option<Box<Tunn>>,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) preshared_key: Option<PresharedKey>,
    /// Persistent keepalive in seconds, 0 is off. Kept here rather than in `Tunn`
    /// (which cannot change it) so changing it never resets the session.
    pub(crate) keepalive: u16,
    pub(crate) last_handshake: Option<SystemTime>,
    /// Last time an authenticated packet was sent to or received from the peer.
    pub(crate) last_traversal: Option<Instant>,
    /// The TAI64N of the last initiation accepted from the peer. It outlives the `Tunn`
    /// (which is rebuilt on a new preshared key or private key) so that a captured
    /// initiation is never accepted twice.
    pub(crate) last_initiation: [u8; 12],
}

impl Peer {
    pub(crate) fn new(public_key: PublicKey, index: u32) -> Self {
        Self {
            public_key,
            index,
            inner: Mutex::new(PeerInner {
                tunn: None,
                endpoint: None,
                preshared_key: None,
                keepalive: 0,
                last_handshake: None,
                last_traversal: None,
                last_initiation: [0; 12],
            }),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add_tx(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_rx(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Makes the peer's `Tunn` if it has none yet and the device has a secret.
    ///
    /// `Tunn::new` costs two scalar multiplications (the device's public key and the
    /// static-static Diffie-Hellman, about 70 µs together here), so a device told
    /// about 10,000 peers pays them only for the peers that ever talk: configuring
    /// peers stays cheap, and so does their memory (a `Tunn` holds its handshake
    /// state, sessions and packet queue).
    pub(crate) fn ensure_tunn(&self, inner: &mut PeerInner, identity: Option<&Identity>) {
        if inner.tunn.is_some() {
            return;
        }
        if let Some(id) = identity {
            let mut tunn = Tunn::new(
                id.secret.clone(),
                x25519::PublicKey::from(*self.public_key.as_bytes()),
                inner.preshared_key.as_ref().map(|k| *k.expose_secret()),
                // Persistent keepalive is driven by the device (see PeerInner::keepalive).
                None,
                self.index,
                // The device's one limiter and cookie secret: every handshake is
                // verified once, on the handshake thread, against it.
                Some(id.limiter.clone()),
            );
            tunn.raise_handshake_timestamp(inner.last_initiation);
            inner.tunn = Some(Box::new(tunn));
        }
    }
}

impl PeerInner {
    /// Ends the session; the next one is made at first use. What must outlive it (the
    /// replay floor for initiations) is kept.
    pub(crate) fn end_session(&mut self) {
        self.remember_initiation();
        self.tunn = None;
    }

    /// Records the session's replay floor (after it accepted an initiation).
    pub(crate) fn remember_initiation(&mut self) {
        let Some(ts) = self.tunn.as_deref().map(Tunn::last_handshake_timestamp) else {
            return;
        };
        // TAI64N is big-endian seconds then nanoseconds: byte order is time order.
        if ts > self.last_initiation {
            self.last_initiation = ts;
        }
    }

    /// Turns `Tunn`'s "age of the current session" into a wall-clock timestamp that
    /// stays stable across reads and survives the session's expiry.
    pub(crate) fn refresh_handshake_time(&mut self) {
        let Some(age) = self
            .tunn
            .as_deref()
            .and_then(Tunn::time_since_last_handshake)
        else {
            return;
        };
        let Some(at) = SystemTime::now().checked_sub(age) else {
            return;
        };
        let moved = match self.last_handshake {
            None => true,
            Some(prev) => match at.duration_since(prev) {
                Ok(d) => d > HANDSHAKE_JITTER,
                Err(_) => false,
            },
        };
        if moved {
            self.last_handshake = Some(at);
        }
    }
}
