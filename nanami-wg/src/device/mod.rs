//! Nanami's own WireGuard device.
//!
//! A [`Device`] owns a TUN (opened by name, or handed over as an fd), a UDP port (IPv4
//! and IPv6) and one boringtun [`Tunn`](boringtun::noise::Tunn) per peer, and runs its
//! own threads:
//!
//! - **tun**: reads packets from the TUN (on Linux 64 KiB TSO/USO super-packets,
//!   split into MTU-size packets by [`offload::split`]), routes each to a peer by
//!   longest-prefix match over AllowedIPs, encrypts, and sends the batch with
//!   `sendmmsg`, a flow's datagrams as one UDP GSO message (on Apple, which has
//!   none, one `sendto` a datagram);
//! - **udp-v4 / udp-v6**: receive batches with `recvmmsg` (UDP GRO on Linux;
//!   Apple: `recvfrom`s), queue handshake messages for the handshake thread, find
//!   the peer of each data message by its receiver index, decrypt, and write to the
//!   TUN only packets whose inner source is in that peer's AllowedIPs, a flow's
//!   packets coalesced into super-packets ([`offload::Coalescer`]) where the TUN
//!   takes them;
//! - **handshake**: verifies MAC1 (and under load the cookie, answering with cookie
//!   replies and limiting each source to 20 handshakes a second), identifies the peer
//!   of an initiation by its encrypted static key, and answers; "under load" is the
//!   depth of its bounded queue, as in wireguard-go (see `handshake.rs`);
//! - **timers**: drives `Tunn::update_timers` (handshake retries, rekey, keepalive),
//!   persistent keepalive and the handshake timestamps;
//! - **uapi** (optional): serves `wg(8)` on `/var/run/wireguard/<name>.sock`.
//!
//! Offloads are on by default and can be switched off per device ([`Offloads`]).
//!
//! The typed API ([`Device::get`], [`Device::apply`], [`Device::upsert_peer`], …) and
//! the UAPI share one code path. Changing a peer's endpoint, AllowedIPs or keepalive
//! updates it in place: its session and every other peer's are untouched.
//!
//! [`Device::shutdown`] (also run on drop) stops and joins every thread and removes
//! the UAPI socket. A process that owns a device stops it on SIGTERM by calling it;
//! see the `nanami-device` binary.

#![deny(missing_docs)]

mod allowed_ips;
mod config;
mod dataplane;
mod error;
mod handshake;
pub mod offload;
mod offloads;
mod packet_core;
mod peer;
mod ratelimit;
mod sys;
mod tun;
mod tun_frame;
mod uapi;
mod udp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use boringtun::x25519;
use ipnet::IpNet;
use nanami_model::{InterfaceName, PrivateKey, PublicKey};

pub use config::{
    DeviceInfo, DeviceUpdate, PeerConfig, PeerInfo, PeerStats, PeerUpdate, PresharedKey,
    PRESHARED_KEY_LEN,
};
pub use error::{DeviceError, UapiError};
pub use offloads::Offloads;
pub use uapi::{MAX_LINE_LEN, MAX_REQUEST_LEN};

use allowed_ips::AllowedIps;
use handshake::HandshakeQueue;
use offloads::OffloadSwitch;
use peer::Peer;
use sys::{Netns, WakePipe};
use tun::{MtuProbe, Tun};
use udp::UdpSockets;

/// The directory `wg(8)` looks in for userspace devices' sockets.
pub const DEFAULT_UAPI_DIR: &str = "/var/run/wireguard";

/// Where the TUN comes from.
#[derive(Debug)]
#[non_exhaustive]
pub enum TunSource {
    /// Create (or attach to) the TUN interface of this name in the calling thread's
    /// network namespace (gateways, Linux clients). Linux only.
    #[cfg(target_os = "linux")]
    Name(InterfaceName),
    /// Use an already open TUN fd (Android `VpnService`, Apple's utun, or a TUN
    /// opened by the caller). On Linux and Android it must deliver raw IP packets
    /// (`IFF_NO_PI`); on Apple each packet carries utun's 4-byte address-family
    /// header, which the device strips and adds. `name` names the UAPI socket; when
    /// `None` the name is asked from the fd (`TUNGETIFF`, Apple's `UTUN_OPT_IFNAME`).
    Fd {
        /// The open TUN; the device takes ownership and closes it on shutdown.
        fd: OwnedFd,
        /// The interface name, if the caller knows it.
        name: Option<InterfaceName>,
    },
}

/// Creates (or attaches to) the TUN interface `name` in the calling thread's network
/// namespace and returns its fd, for [`TunSource::Fd`]: a caller that runs this on a
/// thread inside another namespace ([`crate::netns::Netns::run`]) and then opens the
/// device from its own thread gets a TUN there and UDP sockets here. Linux only.
#[cfg(target_os = "linux")]
pub fn create_tun(name: &InterfaceName) -> Result<OwnedFd, DeviceError> {
    Tun::open(name.as_str())
        .map(Tun::into_fd)
        .map_err(|source| DeviceError::Tun {
            name: name.as_str().to_owned(),
            source,
        })
}

/// How to start a device.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// The directory of the UAPI socket `<name>.sock`, or `None` for no UAPI server.
    /// Defaults to [`DEFAULT_UAPI_DIR`].
    pub uapi_dir: Option<PathBuf>,
    /// The UDP port to bind at start (0 picks a free one; change it later with
    /// [`DeviceUpdate::listen_port`]).
    pub listen_port: u16,
    /// Use the TUN and UDP offloads where the platform has them (Linux: TSO/USO
    /// super-packets from the TUN, coalesced writes to it, UDP GSO and GRO); on by
    /// default. See [`Offloads`]; change it later with [`DeviceUpdate::offload`].
    pub offload: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            uapi_dir: Some(PathBuf::from(DEFAULT_UAPI_DIR)),
            listen_port: 0,
            offload: true,
        }
    }
}

/// Packets the device dropped, by reason, and other events worth counting. Every
/// counter only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceCounters {
    /// Datagrams that are not WireGuard messages (bad type or length).
    pub invalid_datagrams: u64,
    /// Data or handshake-response messages whose receiver index names no peer.
    pub unknown_index: u64,
    /// Handshake initiations from a key that is not a peer, or that do not verify.
    pub handshake_rejected: u64,
    /// Messages a peer's `Tunn` refused (bad MAC, replay, no session, …).
    pub decrypt_failed: u64,
    /// Decrypted packets whose inner source is outside the sender's AllowedIPs
    /// (cryptokey routing).
    pub disallowed_source: u64,
    /// Decrypted IPv4 packets cut shorter than their own header by their length
    /// field: dropped, as by wireguard-go.
    pub malformed_packets: u64,
    /// Cookie replies sent because the device was under load.
    pub cookie_replies: u64,
    /// Handshake messages with a valid cookie refused, under load, because their
    /// source was over its budget (20 a second).
    pub handshake_rate_limited: u64,
    /// Handshake messages dropped because the handshake queue was full.
    pub handshake_queue_full: u64,
    /// Packets read from the TUN that are not IPv4/IPv6.
    pub invalid_tun_packets: u64,
    /// TUN packets whose destination matches no peer's AllowedIPs.
    pub no_route: u64,
    /// TUN packets for a peer without an endpoint (or while no private key is set).
    pub no_endpoint: u64,
    /// Writes to the TUN that failed.
    pub tun_write_errors: u64,
    /// Datagrams the UDP sockets refused.
    pub udp_send_errors: u64,
    /// Super-packets read from the TUN (TSO/USO) and split by the device.
    pub tun_super_packets_read: u64,
    /// Super-packets written to the TUN, each coalesced from several received
    /// packets of one flow (GRO).
    pub tun_super_packets_written: u64,
}

#[derive(Default)]
struct Counters {
    invalid_datagrams: AtomicU64,
    unknown_index: AtomicU64,
    handshake_rejected: AtomicU64,
    decrypt_failed: AtomicU64,
    disallowed_source: AtomicU64,
    malformed_packets: AtomicU64,
    cookie_replies: AtomicU64,
    handshake_rate_limited: AtomicU64,
    handshake_queue_full: AtomicU64,
    invalid_tun_packets: AtomicU64,
    no_route: AtomicU64,
    no_endpoint: AtomicU64,
    tun_write_errors: AtomicU64,
    udp_send_errors: AtomicU64,
    tun_super_packets_read: AtomicU64,
    tun_super_packets_written: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> DeviceCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeviceCounters {
            invalid_datagrams: l(&self.invalid_datagrams),
            unknown_index: l(&self.unknown_index),
            handshake_rejected: l(&self.handshake_rejected),
            decrypt_failed: l(&self.decrypt_failed),
            disallowed_source: l(&self.disallowed_source),
            malformed_packets: l(&self.malformed_packets),
            cookie_replies: l(&self.cookie_replies),
            handshake_rate_limited: l(&self.handshake_rate_limited),
            handshake_queue_full: l(&self.handshake_queue_full),
            invalid_tun_packets: l(&self.invalid_tun_packets),
            no_route: l(&self.no_route),
            no_endpoint: l(&self.no_endpoint),
            tun_write_errors: l(&self.tun_write_errors),
            udp_send_errors: l(&self.udp_send_errors),
            tun_super_packets_read: l(&self.tun_super_packets_read),
            tun_super_packets_written: l(&self.tun_super_packets_written),
        }
    }
}

/// The device's static identity.
struct Identity {
    key: PrivateKey,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    /// The device's one MAC1 checker and cookie secret, shared by every peer's `Tunn`:
    /// the handshake thread verifies each handshake message against it once, before
    /// any Diffie-Hellman is spent, and decides "under load" itself.
    limiter: Arc<boringtun::noise::rate_limiter::RateLimiter>,
}

/// boringtun's own per-second count of handshakes, which `RateLimiter` needs at
/// construction; unused, because the device tells it when it is under load
/// (`verify_packet_under_load`) from the depth of its handshake queue.
const UNUSED_HANDSHAKE_COUNT_LIMIT: u64 = u64::MAX;

impl Identity {
    fn new(key: PrivateKey) -> Self {
        let secret = x25519::StaticSecret::from(*key.expose_secret());
        let public = x25519::PublicKey::from(&secret);
        let limiter = Arc::new(boringtun::noise::rate_limiter::RateLimiter::new(
            &public,
            UNUSED_HANDSHAKE_COUNT_LIMIT,
        ));
        Self {
            key,
            secret,
            public,
            limiter,
        }
    }
}

struct PeerEntry {
    peer: Arc<Peer>,
    allowed_ips: Vec<IpNet>,
}

/// Configuration and routing, read by every packet path, written by `apply`.
struct State {
    /// Shared with the threads, which take a clone and release the lock.
    identity: Option<Arc<Identity>>,
    fwmark: u32,
    peers: BTreeMap<PublicKey, PeerEntry>,
    by_index: HashMap<u32, Arc<Peer>>,
    routes: AllowedIps<Arc<Peer>>,
    next_index: u32,
}

/// Peer indices are 24 bits: `Tunn` shifts them left by 8 for its session ids.
const INDEX_MASK: u32 = 0x00ff_ffff;

impl State {
    /// No key, no peers; peer indices are allocated after `next_index`.
    fn new(next_index: u32) -> Self {
        Self {
            identity: None,
            fwmark: 0,
            peers: BTreeMap::new(),
            by_index: HashMap::new(),
            routes: AllowedIps::new(),
            next_index: next_index & INDEX_MASK,
        }
    }

    /// The device's public key, once it has a private key.
    fn own_public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|id| id.key.public_key())
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index.wrapping_add(1)) & INDEX_MASK;
            if self.next_index != 0 && !self.by_index.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    fn remove_peer(&mut self, key: &PublicKey) {
        if let Some(entry) = self.peers.remove(key) {
            self.by_index.remove(&entry.peer.index);
            for net in &entry.allowed_ips {
                self.remove_route(*net, &entry.peer);
            }
        }
    }

    fn remove_route(&mut self, net: IpNet, owner: &Arc<Peer>) {
        if let Some(prev) = self.routes.remove(net) {
            if !Arc::ptr_eq(&prev, owner) {
                self.routes.insert(net, prev);
            }
        }
    }

    fn clear_allowed_ips(&mut self, key: &PublicKey) {
        let Some(entry) = self.peers.get_mut(key) else {
            return;
        };
        let nets = std::mem::take(&mut entry.allowed_ips);
        let peer = entry.peer.clone();
        for net in nets {
            self.remove_route(net, &peer);
        }
    }

    fn add_allowed_ip(&mut self, key: &PublicKey, net: IpNet) {
        let net = net.trunc();
        let Some(entry) = self.peers.get_mut(key) else {
            return;
        };
        let peer = entry.peer.clone();
        if !entry.allowed_ips.contains(&net) {
            entry.allowed_ips.push(net);
        }
        if let Some(prev) = self.routes.insert(net, peer.clone()) {
            if !Arc::ptr_eq(&prev, &peer) {
                // A prefix belongs to one peer: it moves, as in WireGuard.
                if let Some(old) = self.peers.get_mut(&prev.public_key) {
                    old.allowed_ips.retain(|n| *n != net);
                }
            }
        }
    }
}

/// One generation of UDP sockets and the threads receiving on them.
struct SocketGen {
    sockets: Arc<UdpSockets>,
    wake: Arc<WakePipe>,
    handles: Vec<JoinHandle<()>>,
}

impl SocketGen {
    fn stop(self) {
        self.wake.wake();
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// Everything the threads share.
struct Shared {
    name: Option<String>,
    tun: Tun,
    state: RwLock<State>,
    sockets: RwLock<Arc<UdpSockets>>,
    udp: Mutex<Option<SocketGen>>,
    /// Serialises `apply` calls (UAPI and typed API).
    config_lock: Mutex<()>,
    stop: AtomicBool,
    wake: WakePipe,
    /// Set when a data-plane thread stopped on a fatal error (e.g. the TUN vanished).
    failed: AtomicBool,
    /// Handshake messages waiting for the handshake thread.
    handshakes: HandshakeQueue,
    /// Reads the TUN's MTU (which caps padding), when the TUN's namespace is known.
    mtu_probe: Option<MtuProbe>,
    /// The TUN's MTU as last read by the timer thread; 0 when unknown.
    mtu: AtomicUsize,
    counters: Counters,
    netns: Option<Netns>,
    offload: OffloadSwitch,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn sockets(&self) -> Arc<UdpSockets> {
        self.sockets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The TUN's MTU, when known.
    fn mtu(&self) -> Option<usize> {
        Some(self.mtu.load(Ordering::Relaxed)).filter(|m| *m > 0)
    }

    /// Reads the TUN's MTU again (it can change at any time).
    fn refresh_mtu(&self) {
        if let Some(mtu) = self.mtu_probe.as_ref().and_then(MtuProbe::mtu) {
            self.mtu.store(mtu, Ordering::Relaxed);
        }
    }

    /// Binds new sockets (in the device's namespace) and starts their receivers.
    fn bind(self: &Arc<Self>, port: u16, fwmark: u32) -> Result<SocketGen, DeviceError> {
        let sockets = sys::run_in(self.netns.as_ref().map(AsFd::as_fd), || {
            UdpSockets::bind(port, fwmark)
        })
        .and_then(|r| r)
        .map_err(|source| DeviceError::Bind { port, source })?;
        self.offload.set_sockets(&sockets);
        let sockets = Arc::new(sockets);
        let wake = Arc::new(WakePipe::new().map_err(|source| DeviceError::Io {
            op: "creating a pipe",
            source,
        })?);
        let mut handles = Vec::new();
        let families = [(sockets.v4.is_some(), "v4"), (sockets.v6.is_some(), "v6")];
        for (present, family) in families {
            if !present {
                continue;
            }
            let shared = self.clone();
            let (s, w) = (sockets.clone(), wake.clone());
            let v4 = family == "v4";
            let spawned = std::thread::Builder::new()
                .name(format!("nanami-udp-{family}"))
                .spawn(move || dataplane::udp_loop(&shared, &s, v4, &w));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    SocketGen {
                        sockets,
                        wake,
                        handles,
                    }
                    .stop();
                    return Err(DeviceError::Thread(e));
                }
            }
        }
        Ok(SocketGen {
            sockets,
            wake,
            handles,
        })
    }

    fn apply(self: &Arc<Self>, update: DeviceUpdate) -> Result<(), DeviceError> {
        if self.stopping() {
            return Err(DeviceError::ShutDown);
        }
        let _serial = lock(&self.config_lock);
        validate(&update)?;

        // 1. The only fallible step: the sockets. Done first so that a refused port
        //    leaves everything as it was.
        let current = self.sockets();
        let fwmark = update.fwmark.unwrap_or_else(|| self.read().fwmark);
        let mut old_gen = None;
        if let Some(port) = update.listen_port.filter(|p| *p != current.port) {
            let gen = self.bind(port, fwmark)?;
            *self.sockets.write().unwrap_or_else(PoisonError::into_inner) = gen.sockets.clone();
            old_gen = lock(&self.udp).replace(gen);
        } else if update.fwmark.is_some() && fwmark != self.read().fwmark {
            current
                .set_fwmark(fwmark)
                .map_err(|source| DeviceError::Io {
                    op: "setting SO_MARK",
                    source,
                })?;
        }

        // 2. Everything else cannot fail (offloads a kernel refuses are left off).
        if let Some(on) = update.offload {
            self.offload.set(on, &self.tun, &self.sockets());
        }
        // A new identity's public key (a scalar
        //    multiplication) is derived before the write lock is taken.
        let identity = update
            .private_key
            .map(|key| key.map(|k| Arc::new(Identity::new(k))));
        {
            let mut st = self.write();
            st.fwmark = fwmark;
            if let Some(identity) = identity {
                apply_private_key(&mut st, identity);
            }
            apply_peers(&mut st, update.replace_peers, update.peers);
        }
        if let Some(gen) = old_gen {
            gen.stop();
        }
        Ok(())
    }

    fn offloads(&self) -> Offloads {
        self.offload.get(&self.sockets())
    }

    fn get(&self) -> DeviceInfo {
        let st = self.read();
        let peers = st
            .peers
            .values()
            .map(|entry| {
                let mut inner = entry.peer.lock();
                inner.refresh_handshake_time();
                PeerInfo {
                    config: PeerConfig {
                        public_key: entry.peer.public_key,
                        preshared_key: inner.preshared_key.clone(),
                        endpoint: inner.endpoint,
                        allowed_ips: entry.allowed_ips.clone(),
                        persistent_keepalive: (inner.keepalive > 0).then_some(inner.keepalive),
                    },
                    stats: PeerStats {
                        rx_bytes: entry.peer.rx_bytes.load(Ordering::Relaxed),
                        tx_bytes: entry.peer.tx_bytes.load(Ordering::Relaxed),
                        last_handshake: inner.last_handshake,
                    },
                }
            })
            .collect();
        DeviceInfo {
            name: self.name.clone(),
            private_key: st.identity.as_ref().map(|i| i.key.clone()),
            listen_port: self.sockets().port,
            fwmark: st.fwmark,
            peers,
        }
    }
}

/// Checks what the types cannot: nothing of an invalid update is applied.
fn validate(update: &DeviceUpdate) -> Result<(), DeviceError> {
    for p in &update.peers {
        if let Some(ep) = p.endpoint {
            if ep.port() == 0 || ep.ip().is_unspecified() {
                return Err(DeviceError::InvalidConfig(format!(
                    "peer {}: endpoint {ep} has no address or port",
                    p.public_key
                )));
            }
        }
    }
    Ok(())
}

/// Sets or removes the private key. Every session ends (as in WireGuard); each peer
/// makes its next one with the new key at first use, so the write lock is held for no
/// Diffie-Hellman (a `Tunn` costs two) however many peers there are. A peer whose key
/// is the device's own public key is removed, as wireguard-go does.
fn apply_private_key(st: &mut State, identity: Option<Arc<Identity>>) {
    if let Some(new) = &identity {
        let same = st
            .identity
            .as_ref()
            .is_some_and(|id| id.key.expose_secret() == new.key.expose_secret());
        if same {
            return;
        }
    }
    for entry in st.peers.values() {
        entry.peer.lock().end_session();
    }
    st.identity = identity;
    if let Some(own) = st.own_public_key() {
        st.remove_peer(&own);
    }
}

fn apply_peers(st: &mut State, replace_peers: bool, updates: Vec<PeerUpdate>) {
    let mut reset: HashSet<PublicKey> = HashSet::new();
    if replace_peers {
        let named: HashSet<PublicKey> = updates
            .iter()
            .filter(|u| !u.remove)
            .map(|u| u.public_key)
            .collect();
        let gone: Vec<PublicKey> = st
            .peers
            .keys()
            .filter(|k| !named.contains(k))
            .copied()
            .collect();
        for k in gone {
            st.remove_peer(&k);
        }
        reset = st.peers.keys().copied().collect();
    }
    for u in updates {
        apply_peer(st, &mut reset, u);
    }
}

fn apply_peer(st: &mut State, reset: &mut HashSet<PublicKey>, u: PeerUpdate) {
    let key = u.public_key;
    if st.own_public_key() == Some(key) {
        // The device cannot be its own peer; ignored, as by the Linux module and
        // wireguard-go.
        tracing::debug!(peer = %key, "the device's own public key named as a peer; ignored");
        return;
    }
    if u.remove {
        st.remove_peer(&key);
        reset.remove(&key);
        return;
    }
    if !st.peers.contains_key(&key) {
        if u.update_only {
            return;
        }
        let index = st.alloc_index();
        let peer = Arc::new(Peer::new(key, index));
        st.by_index.insert(index, peer.clone());
        st.peers.insert(
            key,
            PeerEntry {
                peer,
                allowed_ips: Vec::new(),
            },
        );
    }
    // A peer named after `replace_peers` starts from defaults, except its session.
    let resetting = reset.remove(&key);
    let Some(entry) = st.peers.get(&key) else {
        return;
    };
    let peer = entry.peer.clone();
    {
        let mut inner = peer.lock();
        let mut psk = if resetting {
            None
        } else {
            inner.preshared_key.clone()
        };
        if let Some(new) = u.preshared_key {
            psk = new.filter(|k| !k.is_zero());
        }
        if psk != inner.preshared_key {
            // Only a new preshared key ends the session; the next one is made at
            // first use (`Peer::ensure_tunn`).
            inner.end_session();
            inner.preshared_key = psk;
        }
        if let Some(ep) = u.endpoint {
            inner.endpoint = Some(udp::canonical(ep));
        }
        let keepalive = match u.persistent_keepalive {
            Some(k) => k,
            None if resetting => 0,
            None => inner.keepalive,
        };
        if keepalive != inner.keepalive {
            inner.keepalive = keepalive;
            // A newly set keepalive fires at the next tick, as in WireGuard.
            inner.last_traversal = None;
        }
    }
    if u.replace_allowed_ips || resetting {
        st.clear_allowed_ips(&key);
    }
    for net in u.allowed_ips {
        st.add_allowed_ip(&key, net);
    }
}

/// A running WireGuard device. Dropping it shuts it down.
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    uapi_path: Option<PathBuf>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.shared.name)
            .field("uapi_path", &self.uapi_path)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the TUN, binds the UDP port, starts the threads and (unless
    /// `options.uapi_dir` is `None`) the UAPI server.
    ///
    /// The TUN (when opened by name) and the sockets are created in the calling
    /// thread's network namespace, and sockets rebound later stay in it. The device
    /// does not configure addresses, MTU or link state: that is the platform's job.
    pub fn open(tun: TunSource, options: DeviceOptions) -> Result<Self, DeviceError> {
        let (tun, tun_from_name) = match tun {
            #[cfg(target_os = "linux")]
            TunSource::Name(name) => {
                let t = Tun::open(name.as_str()).map_err(|source| DeviceError::Tun {
                    name: name.as_str().to_owned(),
                    source,
                })?;
                (t, true)
            }
            TunSource::Fd { fd, name } => {
                let mut t = Tun::from_fd(fd).map_err(|source| DeviceError::Tun {
                    name: "<fd>".into(),
                    source,
                })?;
                if let Some(n) = name {
                    t.set_name(n.as_str().to_owned());
                }
                (t, false)
            }
        };
        let name = tun.name().map(str::to_owned);
        let wake = WakePipe::new().map_err(|source| DeviceError::Io {
            op: "creating a pipe",
            source,
        })?;
        // The TUN opened by name is in this thread's namespace: its MTU can be read.
        // One handed over as an fd may be anywhere; padding is then uncapped (to 16,
        // as in wireguard-go without a known MTU).
        let mtu_probe = mtu_probe(tun_from_name, name.as_deref());
        let (handshakes, handshake_rx) = HandshakeQueue::new();
        let placeholder = Arc::new(UdpSockets::new(None, None, 0));
        let shared = Arc::new(Shared {
            name: name.clone(),
            tun,
            state: RwLock::new(State::new(random_u32())),
            sockets: RwLock::new(placeholder),
            udp: Mutex::new(None),
            config_lock: Mutex::new(()),
            stop: AtomicBool::new(false),
            wake,
            failed: AtomicBool::new(false),
            handshakes,
            mtu_probe,
            mtu: AtomicUsize::new(0),
            counters: Counters::default(),
            netns: Netns::current().ok(),
            offload: OffloadSwitch::new(options.offload),
        });
        let mut device = Device {
            shared: shared.clone(),
            threads: Vec::new(),
            uapi_path: None,
        };
        let gen = shared.bind(options.listen_port, 0)?;
        // The sockets took the switch when bound.
        shared.offload.set_tun(&shared.tun);
        *shared
            .sockets
            .write()
            .unwrap_or_else(PoisonError::into_inner) = gen.sockets.clone();
        *lock(&shared.udp) = Some(gen);

        let s = shared.clone();
        device.spawn("nanami-tun", move || dataplane::tun_loop(&s))?;
        let s = shared.clone();
        device.spawn("nanami-timers", move || dataplane::timer_loop(&s))?;
        let s = shared.clone();
        device.spawn("nanami-handshake", move || {
            handshake::handshake_loop(&s, &handshake_rx);
        })?;

        if let (Some(dir), Some(name)) = (options.uapi_dir, name) {
            let path = dir.join(format!("{name}.sock"));
            let listener = uapi::bind(&dir, &path)?;
            device.uapi_path = Some(path);
            let s = shared.clone();
            device.spawn("nanami-uapi", move || uapi::serve(&s, listener))?;
        }
        tracing::info!(name = ?shared.name, port = shared.sockets().port, "device started");
        Ok(device)
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), DeviceError> {
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(DeviceError::Thread)?;
        self.threads.push(h);
        Ok(())
    }

    /// The interface name, when known.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// The path of the UAPI socket, when the server runs.
    pub fn uapi_path(&self) -> Option<&Path> {
        self.uapi_path.as_deref()
    }

    /// The UDP port the device listens on.
    pub fn listen_port(&self) -> u16 {
        self.shared.sockets().port
    }

    /// Reads the whole device back: keys, port, peers with their stats (like
    /// `wg show`).
    pub fn get(&self) -> DeviceInfo {
        self.shared.get()
    }

    /// Applies `update` atomically: when it returns an error nothing was changed.
    pub fn apply(&self, update: DeviceUpdate) -> Result<(), DeviceError> {
        self.shared.apply(update)
    }

    /// Sets the private key (a no-op, keeping sessions, when it is already set).
    pub fn set_private_key(&self, key: PrivateKey) -> Result<(), DeviceError> {
        self.apply(DeviceUpdate::new().private_key(key))
    }

    /// Rebinds the UDP port (0 picks a free one); returns the bound port.
    pub fn set_listen_port(&self, port: u16) -> Result<u16, DeviceError> {
        self.apply(DeviceUpdate::new().listen_port(port))?;
        Ok(self.listen_port())
    }

    /// Adds the peer, or makes an existing one exactly `config` in place (its
    /// session survives unless the preshared key changes).
    pub fn upsert_peer(&self, config: &PeerConfig) -> Result<(), DeviceError> {
        self.apply(DeviceUpdate::new().peer(PeerUpdate::replace_with(config)))
    }

    /// Removes the peer; returns whether it existed.
    pub fn remove_peer(&self, key: &PublicKey) -> Result<bool, DeviceError> {
        let existed = self.shared.read().peers.contains_key(key);
        self.apply(DeviceUpdate::new().peer(PeerUpdate::remove(*key)))?;
        Ok(existed)
    }

    /// The offloads in use now.
    pub fn offloads(&self) -> Offloads {
        self.shared.offloads()
    }

    /// Turns offloads on or off (see [`DeviceOptions::offload`]).
    pub fn set_offload(&self, on: bool) -> Result<(), DeviceError> {
        self.apply(DeviceUpdate::new().offload(on))
    }

    /// Drop and event counters.
    pub fn counters(&self) -> DeviceCounters {
        self.shared.counters.snapshot()
    }

    /// Whether every data-plane thread still runs (false after the TUN vanished or
    /// after shutdown).
    pub fn is_running(&self) -> bool {
        !self.shared.stopping() && !self.shared.failed.load(Ordering::Acquire)
    }

    /// Stops every thread, waits for them and removes the UAPI socket.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) && self.threads.is_empty() {
            return;
        }
        self.shared.wake.wake();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        if let Some(gen) = lock(&self.shared.udp).take() {
            gen.stop();
        }
        if let Some(path) = self.uapi_path.take() {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(name = ?self.shared.name, "device stopped");
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The MTU probe of a TUN opened by name (only such a TUN is known to be in this
/// thread's namespace).
#[cfg(target_os = "linux")]
fn mtu_probe(tun_from_name: bool, name: Option<&str>) -> Option<MtuProbe> {
    name.filter(|_| tun_from_name)
        .and_then(|n| MtuProbe::new(n).ok())
}

/// No TUN is opened by name off Linux: no probe.
#[cfg(not(target_os = "linux"))]
fn mtu_probe(_tun_from_name: bool, _name: Option<&str>) -> Option<MtuProbe> {
    None
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_ne_bytes(b)
}

/// Apple has no `getrandom`: `getentropy` (at most 256 bytes a call).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getentropy writes exactly `b.len()` (≤ 256) bytes into the valid buffer.
    let _ = unsafe { libc::getentropy(b.as_mut_ptr().cast(), b.len()) };
    u32::from_ne_bytes(b)
}

// ---- Fuzzing seam (issue 10, fuzz/fuzz_targets/uapi.rs): keep it this small. ----
/// Not part of the API: entry points for the `fuzz/` crate and regression tests.
#[doc(hidden)]
pub mod fuzzing {
    /// Frames `stream` into requests and parses each, exactly as the UAPI server
    /// does with what arrives on its socket (without applying them).
    pub fn uapi_requests(stream: &[u8]) {
        let mut reader = std::io::Cursor::new(stream);
        while let Ok(Some(lines)) = super::uapi::read_request(&mut reader) {
            let _ = super::uapi::parse(&lines);
        }
    }

    /// Runs the op list `ops` through the data plane's real per-packet code
    /// (`handle_datagram`, `handle_tun`, `handle_timeout`) on a device with two peers
    /// and an established session with the first, checking its laws; see
    /// `packet_core/fuzz.rs` and `fuzz/README.md` for the format. Panics when a law
    /// breaks.
    pub fn dataplane(ops: &[u8]) {
        let _ = super::packet_core::fuzz::run(ops);
    }

    /// Splits `frame` as one TUN read, coalesces what it gave and splits again,
    /// checking the offloads' laws (`offload/fuzz.rs`). Panics when a law breaks.
    pub fn offload(frame: &[u8]) {
        super::offload::fuzz::run(frame);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn state() -> State {
        State::new(0)
    }

    fn key(b: u8) -> PublicKey {
        PrivateKey::from_bytes([b; 32]).public_key()
    }

    fn has_session(st: &State, k: u8) -> bool {
        st.peers[&key(k)].peer.lock().tunn.is_some()
    }

    /// Makes the peer's session as the data plane does at its first packet.
    fn talk(st: &State, k: u8) {
        let peer = &st.peers[&key(k)].peer;
        peer.ensure_tunn(&mut peer.lock(), st.identity.as_deref());
    }

    #[test]
    fn sessions_are_made_at_first_use_and_kept_across_updates() {
        let mut st = state();
        apply_private_key(
            &mut st,
            Some(Arc::new(Identity::new(PrivateKey::from_bytes([1; 32])))),
        );
        let peers = (2..5).map(|b| PeerUpdate::new(key(b))).collect();
        apply_peers(&mut st, false, peers);
        assert!(
            (2..5).all(|b| !has_session(&st, b)),
            "no session before use"
        );

        talk(&st, 2);
        assert!(has_session(&st, 2) && !has_session(&st, 3));
        // An update that leaves the preshared key keeps the session...
        let endpoint = "192.0.2.1:51820".parse().unwrap();
        apply_peers(
            &mut st,
            false,
            vec![PeerUpdate::new(key(2)).endpoint(endpoint)],
        );
        assert!(has_session(&st, 2));
        // ...a new private key ends every session (the next is made at first use)...
        apply_private_key(
            &mut st,
            Some(Arc::new(Identity::new(PrivateKey::from_bytes([9; 32])))),
        );
        assert!(!has_session(&st, 2) && !has_session(&st, 3));
        talk(&st, 2);
        // ...a new preshared key ends it.
        let psk = PresharedKey::from_bytes([5; 32]);
        apply_peers(
            &mut st,
            false,
            vec![PeerUpdate::new(key(2)).preshared_key(Some(psk))],
        );
        assert!(!has_session(&st, 2));
        talk(&st, 2);
        assert!(has_session(&st, 2));

        // Without a private key there is no session, and none is made.
        apply_private_key(&mut st, None);
        assert!(!has_session(&st, 2));
        talk(&st, 3);
        assert!(!has_session(&st, 3));
    }

    #[test]
    fn the_devices_own_key_is_never_a_peer() {
        let mut st = state();
        let id = |b: u8| Some(Arc::new(Identity::new(PrivateKey::from_bytes([b; 32]))));
        apply_private_key(&mut st, id(1));
        // Named as a peer: ignored.
        apply_peers(
            &mut st,
            false,
            vec![PeerUpdate::new(key(1)), PeerUpdate::new(key(2))],
        );
        assert!(!st.peers.contains_key(&key(1)));
        assert!(st.peers.contains_key(&key(2)));
        // A new private key whose public key is a peer's: that peer goes.
        apply_private_key(&mut st, id(2));
        assert!(st.peers.is_empty());
    }
}
