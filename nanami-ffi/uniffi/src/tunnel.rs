//! The running tunnel: a Nanami device on the platform's TUN fd, plus one small
//! thread that polls it and reports status events to the app.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, SystemTime};

use nanami_wg::device::{Device, DeviceOptions, DeviceUpdate, TunSource};

use crate::config::TunnelConfig;
use crate::error::NanamiError;
use crate::events::{StopReason, TunnelEvent, Watcher};
use crate::follow::{self, ActiveGateway, FollowSettings, TunProvider};
use crate::state::{changes, TunnelState};

/// Implemented by the app to hear about the tunnel. Called from the tunnel's own
/// status thread, one event at a time; return quickly (post to the UI thread).
/// Calling `stop()` from inside is allowed.
#[uniffi::export(callback_interface)]
pub trait TunnelListener: Send + Sync {
    /// One status event.
    fn on_event(&self, event: TunnelEvent);
}

/// How the status thread watches the device.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TunnelOptions {
    /// How often the device is read for events, in milliseconds (at least 10).
    #[uniffi(default = 1000)]
    pub poll_interval_ms: u32,
    /// Seconds without a completed handshake after which a peer is reported stale.
    /// 180 s is WireGuard's REJECT_AFTER_TIME: a session older than that carries
    /// no traffic, and a live peer with keepalive re-handshakes every 120 s.
    #[uniffi(default = 180)]
    pub stale_after_secs: u32,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            stale_after_secs: 180,
        }
    }
}

/// One peer's counters, as `stats()` reads them.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PeerStats {
    /// The peer's public key, base64.
    pub public_key: String,
    /// Where the device currently sends to it (learned when the peer roams).
    pub endpoint: Option<String>,
    /// Bytes of authenticated WireGuard datagrams received from it.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent to it.
    pub tx_bytes: u64,
    /// The most recent completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
}

/// What `update()` changed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UpdateSummary {
    /// Peers added.
    pub added: u32,
    /// Peers changed in place (endpoint, AllowedIPs, keepalive, preshared key).
    pub changed: u32,
    /// Peers removed.
    pub removed: u32,
    /// Whether the private key or listen port changed.
    pub interface_changed: bool,
    /// Whether the addresses or MTU differ from the running config: the device
    /// does not own them, so the app must re-establish its VPN interface with
    /// the new config's `addresses()` / `mtu()` / `routes()`.
    pub platform_reconfigure_needed: bool,
}

/// What the tunnel's threads (the status poller, a following tunnel's agent)
/// and the app's calls share.
pub(crate) struct Shared {
    /// The device; `None` once stopped, or before a following tunnel's first
    /// configuration.
    pub device: RwLock<Option<Device>>,
    /// The state last applied: what the next change is planned against.
    pub applied: Mutex<Option<TunnelState>>,
    /// A following tunnel's agent (`None` for a tunnel started from a config).
    pub agent: Mutex<Option<follow::AgentHandle>>,
    /// Each network's gateway in use (a following tunnel).
    pub active: Mutex<Vec<ActiveGateway>>,
    listener: Option<Box<dyn TunnelListener>>,
}

impl Shared {
    pub fn emit(&self, event: TunnelEvent) {
        if let Some(l) = &self.listener {
            l.on_event(event);
        }
    }

    /// Stops a following tunnel's agent; joins its thread unless called from it.
    fn stop_agent(&self) {
        if let Some(agent) = lock(&self.agent).take() {
            agent.stop();
        }
    }

    /// Takes the device away and shuts it down, stops the agent (from any
    /// thread, its own included); the `Stopped` event, if there was a device or an
    /// agent to stop.
    pub fn shut_down(&self, reason: StopReason) {
        // The agent first: one still applying a configuration could put a new
        // device in after this one was taken.
        let had_agent = lock(&self.agent).is_some();
        self.stop_agent();
        let device = self
            .device
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if device.is_some() || had_agent {
            if let Some(device) = device {
                device.shutdown();
            }
            self.emit(TunnelEvent::Stopped { reason });
        }
    }
}

struct Poller {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// A running client tunnel. `stop()` it when done (dropping the last handle also
/// stops it, without a `Stopped` event).
#[derive(uniffi::Object)]
pub struct Tunnel {
    shared: Arc<Shared>,
    poller: Mutex<Option<Poller>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[uniffi::export]
impl Tunnel {
    /// Starts the tunnel on `tun_fd`, an open TUN delivering raw IP packets
    /// (Android: `ParcelFileDescriptor.detachFd()` of the `VpnService.Builder`'s
    /// interface; Linux: `/dev/net/tun` with `IFF_TUN | IFF_NO_PI`; iOS and macOS: the
    /// utun fd of the `NEPacketTunnelProvider`, whose 4-byte address-family header
    /// before each packet the tunnel strips and adds itself). The tunnel takes
    /// ownership of the fd and closes it when it stops, or at once if starting
    /// fails. The UDP sockets are created in the calling thread's network
    /// namespace. The platform sets the addresses, MTU and routes (`config`'s
    /// `addresses()`, `mtu()`, `routes()`); the tunnel does not.
    #[uniffi::constructor]
    pub fn start(
        config: Arc<TunnelConfig>,
        tun_fd: i32,
        listener: Option<Box<dyn TunnelListener>>,
        options: Option<TunnelOptions>,
    ) -> Result<Arc<Self>, NanamiError> {
        let state = config.spec.state();
        let device = open_device(tun_fd, &state)?;
        let shared = Shared::new(Some(device), Some(state), listener);
        Self::run(shared, options)
    }

    /// Starts a tunnel that follows its node's configuration from the manager,
    /// as `nanami connect` does: the key is made and kept in
    /// `settings.state_dir` (see [`state_dir_public_key`]); the first start
    /// enrols with `settings.enrolment_token` and saves the credential there; the
    /// configuration is long-polled, saved (last-known-good, served at once on
    /// the next start) and applied; the gateways of each network's failover list
    /// are probed through the tunnel, and a network moves to its next gateway
    /// when its gateway stops answering (back after the hold-down).
    ///
    /// The TUN comes from `provider`, asked with the addresses, MTU and routes of
    /// the first configuration, and again whenever they change (then the device
    /// moves to the new TUN; a route no longer wanted stays on the old one).
    /// Peer and failover changes never ask for a TUN.
    /// Events say what happens: `ConfigApplied`, `GatewaysDown`, `Error`, and a
    /// `Stopped` with `AgentFailed` when it cannot go on (not enrolled, token
    /// refused). Returns once the agent runs; nothing waits for the manager.
    #[uniffi::constructor]
    pub fn follow(
        settings: FollowSettings,
        provider: Box<dyn TunProvider>,
        listener: Option<Box<dyn TunnelListener>>,
        options: Option<TunnelOptions>,
    ) -> Result<Arc<Self>, NanamiError> {
        let shared = Shared::new(None, None, listener);
        follow::spawn(settings, provider, Arc::clone(&shared))?;
        Self::run(shared, options)
    }

    /// Applies a new configuration without dropping the tunnel: the same device,
    /// TUN and UDP port; only the peers that differ from the running config are
    /// touched (a new endpoint is an in-place change; a new gateway after a
    /// failover is one peer added and one removed), all in one atomic step: on
    /// error nothing changed.
    pub fn update(&self, config: Arc<TunnelConfig>) -> Result<UpdateSummary, NanamiError> {
        if lock(&self.shared.agent).is_some() {
            return Err(NanamiError::invalid_config(
                "this tunnel follows its manager: update() is for a tunnel started from a configuration",
            ));
        }
        self.shared.change_to(config.spec.state())
    }

    /// Each network's gateway in use, by network: a following tunnel's failover
    /// at work (`gateway` is `None` when none of the network's gateways answers).
    /// Empty for a tunnel started from a configuration.
    pub fn active_gateways(&self) -> Vec<ActiveGateway> {
        lock(&self.shared.active).clone()
    }

    /// Every configured peer's counters and last handshake, ordered by public key.
    pub fn stats(&self) -> Result<Vec<PeerStats>, NanamiError> {
        let guard = self
            .shared
            .device
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let device = guard.as_ref().ok_or(NanamiError::Stopped)?;
        Ok(device
            .get()
            .peers
            .iter()
            .map(|p| PeerStats {
                public_key: p.config.public_key.to_base64(),
                endpoint: p.config.endpoint.map(|e| e.to_string()),
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
                last_handshake: p.stats.last_handshake,
            })
            .collect())
    }

    /// The UDP port the tunnel listens on.
    pub fn listen_port(&self) -> Result<u16, NanamiError> {
        let guard = self
            .shared
            .device
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(guard.as_ref().ok_or(NanamiError::Stopped)?.listen_port())
    }

    /// Whether the tunnel runs (false after `stop()` or a device failure).
    pub fn is_running(&self) -> bool {
        self.shared
            .device
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(Device::is_running)
    }

    /// Stops the device (its threads end, the TUN fd and UDP sockets close) and the
    /// status thread, then sends `Stopped { Requested }`. Idempotent: a second call,
    /// or one after the device failed, does nothing.
    pub fn stop(&self) {
        self.stop_poller();
        self.shared.shut_down(StopReason::Requested);
    }
}

impl Shared {
    /// Takes the running device to `target` in one atomic update (on error
    /// nothing changed), and says what changed.
    pub fn change_to(&self, target: TunnelState) -> Result<UpdateSummary, NanamiError> {
        let guard = self.device.read().unwrap_or_else(PoisonError::into_inner);
        let device = guard.as_ref().ok_or(NanamiError::Stopped)?;
        let mut applied = lock(&self.applied);
        let running = applied.as_ref().ok_or(NanamiError::Stopped)?;
        let c = changes(running, &target);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let summary = UpdateSummary {
            added: count(c.added),
            changed: count(c.changed),
            removed: count(c.removed),
            interface_changed: c.interface_changed,
            platform_reconfigure_needed: c.platform_reconfigure_needed,
        };
        if c.touches_device() {
            device
                .apply(c.update)
                .map_err(|e| NanamiError::from_device(&e, None))?;
        }
        *applied = Some(target);
        Ok(summary)
    }

    fn new(
        device: Option<Device>,
        applied: Option<TunnelState>,
        listener: Option<Box<dyn TunnelListener>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            device: RwLock::new(device),
            applied: Mutex::new(applied),
            agent: Mutex::new(None),
            active: Mutex::new(Vec::new()),
            listener,
        })
    }
}

impl Tunnel {
    /// Starts the status thread of a tunnel whose device (or agent) runs.
    fn run(shared: Arc<Shared>, options: Option<TunnelOptions>) -> Result<Arc<Self>, NanamiError> {
        let options = options.unwrap_or_default();
        let (stop, stopped) = mpsc::channel();
        let s = shared.clone();
        let interval = Duration::from_millis(u64::from(options.poll_interval_ms.max(10)));
        let stale_after = Duration::from_secs(u64::from(options.stale_after_secs));
        let thread = std::thread::Builder::new()
            .name("nanami-status".into())
            .spawn(move || poll_loop(&s, &stopped, interval, stale_after));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                // Nothing must outlive a start that failed.
                shared.stop_agent();
                return Err(NanamiError::System {
                    reason: format!("spawning the status thread: {e}"),
                });
            }
        };
        Ok(Arc::new(Self {
            shared,
            poller: Mutex::new(Some(Poller { stop, thread })),
        }))
    }
}

impl Tunnel {
    fn stop_poller(&self) {
        let Some(poller) = lock(&self.poller).take() else {
            return;
        };
        // A send error means the thread already ended; either way it ends now.
        let _ = poller.stop.send(());
        // From inside a listener callback the status thread is this thread: it
        // ends by itself when the callback returns.
        let this: ThreadId = std::thread::current().id();
        if poller.thread.thread().id() != this {
            let _ = poller.thread.join();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop_poller();
        // The agent holds `shared` too: stop it, or the device would never drop.
        self.shared.stop_agent();
        // The device (if still here) shuts down as it drops with `shared`.
    }
}

/// Opens the device on the TUN `tun_fd` (taking the fd: closed on error) and
/// applies `state` to it whole.
pub(crate) fn open_device(tun_fd: i32, state: &TunnelState) -> Result<Device, NanamiError> {
    let fd = take_fd(tun_fd)?;
    // On error `fd` drops here: the tunnel took it, and closes it.
    check_tun(&fd).map_err(|reason| NanamiError::InvalidTunFd { fd: tun_fd, reason })?;
    let device = Device::open(
        TunSource::Fd { fd, name: None },
        DeviceOptions {
            uapi_dir: None,
            listen_port: state.listen_port().unwrap_or(0),
            // The UDP side's offloads (Linux); an app's TUN fd has no
            // virtio_net_hdr, so its packets go one by one either way.
            offload: true,
        },
    )
    .map_err(|e| NanamiError::from_device(&e, Some(tun_fd)))?;
    let mut update = DeviceUpdate::new()
        .private_key(state.private_key.clone())
        .replace_peers();
    for peer in state.peers() {
        update = update.peer(nanami_wg::device::PeerUpdate::replace_with(&peer));
    }
    // On error the device is dropped here, which shuts it down and closes the fd.
    device
        .apply(update)
        .map_err(|e| NanamiError::from_device(&e, None))?;
    Ok(device)
}

/// Takes ownership of `fd` after checking it is an open descriptor (wrapping a
/// closed one in `OwnedFd` would later close a descriptor someone else reuses).
fn take_fd(fd: i32) -> Result<OwnedFd, NanamiError> {
    if fd < 0 {
        return Err(NanamiError::InvalidTunFd {
            fd,
            reason: "negative descriptor".into(),
        });
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; any int is a valid argument.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(NanamiError::InvalidTunFd {
            fd,
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    // SAFETY: `fd` is open (checked above) and the caller hands its ownership to
    // the tunnel (documented on `Tunnel::start`): nothing else closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Refuses an fd that is not a TUN (or is a TAP): the device would read garbage
/// from it. `IFF_NO_PI` is not checked: the kernel here reports it in TUNGETIFF's
/// flags even for a TUN opened without it, so the flag cannot be trusted.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_tun(fd: &OwnedFd) -> Result<(), String> {
    use std::os::fd::AsRawFd;

    /// `struct ifreq` as TUNGETIFF fills it: the name, then the flags (a union
    /// padded to 24 bytes).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which has its layout
    // and size; `fd` is open for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut req) };
    if rc != 0 {
        return Err(format!(
            "not a TUN device (TUNGETIFF: {})",
            std::io::Error::last_os_error()
        ));
    }
    let flags = i32::from(req.flags);
    if flags & libc::IFF_TUN == 0 {
        return Err("a TAP device; a TUN (IFF_TUN) is needed".into());
    }
    Ok(())
}

/// Other platforms' TUN fds (a utun on Apple systems) answer no TUNGETIFF.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check_tun(_fd: &OwnedFd) -> Result<(), String> {
    Ok(())
}

fn poll_loop(
    shared: &Shared,
    stopped: &mpsc::Receiver<()>,
    interval: Duration,
    stale_after: Duration,
) {
    let mut watcher = Watcher::new(stale_after);
    loop {
        let (peers, running) = {
            let guard = shared.device.read().unwrap_or_else(PoisonError::into_inner);
            match guard.as_ref() {
                Some(device) => {
                    let peers: Vec<_> = device
                        .get()
                        .peers
                        .iter()
                        .map(|p| (p.config.public_key, p.stats.last_handshake))
                        .collect();
                    (peers, device.is_running())
                }
                // A following tunnel before its first configuration.
                None => (Vec::new(), true),
            }
        };
        if !running {
            shared.shut_down(StopReason::DeviceFailed);
            return;
        }
        for event in watcher.observe(&peers, SystemTime::now()) {
            shared.emit(event);
        }
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
