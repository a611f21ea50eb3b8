//! [`LinuxPlatform`]: observe and apply ops on this machine's current network
//! namespace, or in a hosted gateway's own one ([`Hosting`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nanami_model::state::{NANAMI_PROTO, NANAMI_TABLE};
use nanami_model::{
    GatewayState, InterfaceName, InterfaceState, IpFamily, PeerState, PrivateKey, PublicKey,
};
use nanami_reconcile::{Observed, Op, PeerTelemetry, Platform, PlatformEvent};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::events::{self, Events};
use super::kernel::{self, KernelWg};
use super::netlink::{Link, Netlink};
use super::{nft, sysctl, PlatformError};
use crate::device::{
    create_tun, Device, DeviceInfo, DeviceOptions, PeerConfig, TunSource, DEFAULT_UAPI_DIR,
};
use crate::netns::Netns;
use crate::uapi_client::{UapiClient, UapiClientError};

/// Where the WireGuard devices run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeviceMode {
    /// In this process, driven through the typed API: for clients, tests and
    /// embedding. The tunnels stop with the process.
    #[default]
    InProcess,
    /// Each device in its own `nanami-device` process (started detached, in a new
    /// session), driven through its UAPI socket: the tunnels outlive this process,
    /// so a daemon can stop or upgrade without cutting users off, and a restarted
    /// daemon adopts the devices it finds.
    Detached {
        /// The `nanami-device` program.
        program: PathBuf,
    },
}

/// A gateway hosted in its own network namespace, so that gateways of several
/// workspaces (tenants) can share one machine while reusing the same overlays,
/// routes and client addresses: each sees only its own namespace.
///
/// The platform creates the namespace `name` (or adopts it after a restart), and
/// everything it manages lives there: the TUN, its addresses, routes, rules, the
/// `inet nanami` table (so NAT and conntrack), forwarding sysctls. The WireGuard UDP
/// socket stays in the *host* namespace (the one the platform was created in): the
/// endpoint and port the world sees. Gateways on one host therefore need distinct
/// listen ports.
///
/// The `uplink` is the gateway's way to its LAN (a VLAN, veth or NIC the operator
/// made for this workspace). The platform moves it from the host into the namespace
/// at start (one already inside is fine) and back on teardown. Its IP addresses and
/// up/down state travel with it both ways (the kernel would otherwise drop them), so
/// the operator configures the LAN address on the uplink in the host namespace as
/// usual; routes through it other than its connected prefixes (a LAN router behind
/// it) are the operator's to add inside the namespace (`ip -n <name> route add …`),
/// and are gone with the namespace on teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosting {
    /// The namespace's name: `nm-<gateway id>` ([`Hosting::for_gateway`]).
    pub name: String,
    /// The LAN interface to move into the namespace, if any.
    pub uplink: Option<String>,
}

impl Hosting {
    /// The namespace `nm-<gateway>` with `uplink`.
    pub fn for_gateway(gateway: &nanami_model::GatewayId, uplink: Option<String>) -> Self {
        Self {
            name: format!("nm-{gateway}"),
            uplink,
        }
    }
}

/// How a [`LinuxPlatform`] is set up.
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// The node's private key file (see [`super::keyfile`]).
    pub key_file: PathBuf,
    /// Where the platform keeps its own records (original sysctl values).
    pub state_dir: PathBuf,
    /// The directory of the devices' UAPI sockets; `None` for no UAPI server
    /// (in-process devices only; detached devices always serve one, in
    /// `/var/run/wireguard`).
    pub uapi_dir: Option<PathBuf>,
    /// Where the devices run when the kernel has no WireGuard.
    pub device: DeviceMode,
    /// Use the kernel's WireGuard when it has one (probed once, through its generic
    /// netlink family); the userspace `device` mode otherwise.
    pub prefer_kernel: bool,
    /// `None` (the default): the gateway owns the machine and everything happens in
    /// the namespace the platform is created in, as on a dedicated gateway.
    /// `Some`: the gateway is hosted in its own namespace (see [`Hosting`]); the
    /// platform must then be created in the host namespace. Kernel WireGuard is not
    /// supported in this mode yet: creating an interface fails with
    /// [`PlatformError::Hosting`] when the kernel has it and `prefer_kernel` is set.
    pub namespace: Option<Hosting>,
    /// The userspace devices' TUN and UDP offloads (TSO/USO, GRO, UDP GSO/GRO; see
    /// [`crate::device::Offloads`]); on by default. Turn them off for a kernel
    /// whose offload paths misbehave (a device also turns them off itself when the
    /// kernel refuses an offloaded write). The kernel's WireGuard has its own.
    pub offload: bool,
}

impl LinuxConfig {
    /// Key file and state under `state_dir`, UAPI sockets where `wg(8)` looks.
    pub fn in_dir(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            key_file: state_dir.join("private.key"),
            state_dir,
            uapi_dir: Some(PathBuf::from(DEFAULT_UAPI_DIR)),
            device: DeviceMode::InProcess,
            prefer_kernel: true,
            namespace: None,
            offload: true,
        }
    }
}

/// A WireGuard device, wherever it runs.
enum Wg {
    InProcess(Device),
    Detached(UapiClient),
    /// The kernel's WireGuard, by interface name.
    Kernel(KernelWg),
}

impl Wg {
    async fn get(&self, name: &InterfaceName) -> Result<DeviceInfo, PlatformError> {
        match self {
            Self::InProcess(d) => Ok(d.get()),
            Self::Detached(c) => c.get().map_err(uapi_error(name)),
            Self::Kernel(k) => k.get(name.as_str()).await,
        }
    }

    fn is_running(&self) -> bool {
        match self {
            Self::InProcess(d) => d.is_running(),
            Self::Detached(c) => c.path().exists(),
            Self::Kernel(_) => true,
        }
    }

    async fn set_private_key(
        &self,
        name: &InterfaceName,
        key: &PrivateKey,
    ) -> Result<(), PlatformError> {
        match self {
            Self::InProcess(d) => d.set_private_key(key.clone()).map_err(device_error(name)),
            Self::Detached(c) => c.set_private_key(key).map_err(uapi_error(name)),
            Self::Kernel(k) => {
                k.set(kernel::device_message(name.as_str(), Some(key), None))
                    .await
            }
        }
    }

    async fn set_listen_port(&self, name: &InterfaceName, port: u16) -> Result<(), PlatformError> {
        match self {
            Self::InProcess(d) => d
                .set_listen_port(port)
                .map(|_| ())
                .map_err(device_error(name)),
            Self::Detached(c) => c.set_listen_port(port).map_err(uapi_error(name)),
            Self::Kernel(k) => {
                k.set(kernel::device_message(name.as_str(), None, Some(port)))
                    .await
            }
        }
    }

    async fn upsert_peer(
        &self,
        name: &InterfaceName,
        peer: &PeerConfig,
    ) -> Result<(), PlatformError> {
        match self {
            Self::InProcess(d) => d.upsert_peer(peer).map_err(device_error(name)),
            Self::Detached(c) => c.upsert_peer(peer).map_err(uapi_error(name)),
            Self::Kernel(k) => k.set(kernel::peer_message(name.as_str(), peer)).await,
        }
    }

    async fn remove_peer(
        &self,
        name: &InterfaceName,
        key: &PublicKey,
    ) -> Result<(), PlatformError> {
        match self {
            Self::InProcess(d) => d.remove_peer(key).map(|_| ()).map_err(device_error(name)),
            Self::Detached(c) => c.remove_peer(key).map_err(uapi_error(name)),
            Self::Kernel(k) => k.set(kernel::remove_peer_message(name.as_str(), key)).await,
        }
    }

    /// Stops an in-process device; a detached or kernel one goes with its link.
    fn shutdown(self) {
        match self {
            Self::InProcess(d) => d.shutdown(),
            Self::Detached(_) | Self::Kernel(_) => {}
        }
    }
}

fn device_error(
    name: &InterfaceName,
) -> impl FnOnce(crate::device::DeviceError) -> PlatformError + '_ {
    move |source| PlatformError::Device {
        interface: name.to_string(),
        source,
    }
}

fn uapi_error(name: &InterfaceName) -> impl FnOnce(UapiClientError) -> PlatformError + '_ {
    move |source| PlatformError::Uapi {
        interface: name.to_string(),
        source,
    }
}

/// One Nanami device and what was last configured on it.
struct Managed {
    device: Wg,
    /// Endpoints as configured; the device reports the learned one, and a roaming
    /// client is not drift.
    endpoints: BTreeMap<PublicKey, Option<std::net::SocketAddr>>,
}

/// The Linux platform. Create it from a tokio runtime, inside the network namespace
/// it manages, or, for a hosted gateway ([`LinuxConfig::namespace`]), in the host
/// namespace.
pub struct LinuxPlatform {
    config: LinuxConfig,
    key: PrivateKey,
    netlink: Netlink,
    devices: BTreeMap<InterfaceName, Managed>,
    events: Option<(Events, Option<mpsc::Receiver<PlatformEvent>>)>,
    sysctls: sysctl::Record,
    /// The kernel backend once probed: `Some(None)` when the kernel has none.
    kernel: Option<Option<KernelWg>>,
    /// Link indexes by name, as of the last `observe` or since: thousands of route
    /// ops in one pass must not dump every link each (a link's index changes only if
    /// it is recreated, which a failed op and the next pass's `observe` correct).
    indexes: BTreeMap<String, u32>,
    /// The gateway's own namespace and the host's, when hosted.
    hosted: Option<Hosted>,
}

/// A hosted gateway's namespaces.
struct Hosted {
    name: String,
    /// The gateway's namespace: everything but the UDP socket.
    ns: Arc<Netns>,
    /// The namespace the platform was created in: UDP sockets, and where the uplink
    /// comes from and returns to.
    host: Arc<Netns>,
    uplink: Option<String>,
}

impl Hosted {
    fn open(hosting: &Hosting) -> Result<Self, PlatformError> {
        let host = Netns::current().map_err(|source| PlatformError::Io {
            context: "opening the host network namespace".into(),
            source,
        })?;
        if Netns::open(&hosting.name)?
            .map(|ns| ns.same_as(&host))
            .transpose()
            .map_err(|source| PlatformError::Io {
                context: "comparing network namespaces".into(),
                source,
            })?
            == Some(true)
        {
            return Err(PlatformError::Hosting {
                namespace: hosting.name.clone(),
                message: "the platform must be created in the host namespace, not inside \
                          the gateway's"
                    .into(),
            });
        }
        let ns = Netns::open_or_create(&hosting.name)?;
        info!(namespace = %hosting.name, uplink = ?hosting.uplink, "hosting the gateway in its own network namespace");
        Ok(Self {
            name: hosting.name.clone(),
            ns: Arc::new(ns),
            host: Arc::new(host),
            uplink: hosting.uplink.clone(),
        })
    }

    fn error(&self, message: impl Into<String>) -> PlatformError {
        PlatformError::Hosting {
            namespace: self.name.clone(),
            message: message.into(),
        }
    }

    /// Moves the uplink into the namespace unless it is there already. Runs on a
    /// helper thread with its own runtime, so that the synchronous
    /// [`LinuxPlatform::new`] can do it without blocking on its caller's runtime.
    /// Also brings the namespace's loopback up (a fresh namespace has it down, and
    /// local services and probes of the gateway's own addresses need it).
    fn bring_uplink_in(&self) -> Result<(), PlatformError> {
        let work = || -> Result<(), PlatformError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| PlatformError::Io {
                    context: "starting a runtime to move the uplink".into(),
                    source,
                })?;
            rt.block_on(async {
                let inside = Netlink::connect_in(Some(&self.ns))?;
                let links = inside.links().await?;
                if let Some(lo) = links.iter().find(|l| l.name == "lo" && !l.up) {
                    inside.set_up(lo.index).await?;
                }
                let Some(uplink) = &self.uplink else {
                    return Ok(());
                };
                if links.iter().any(|l| &l.name == uplink) {
                    debug!(%uplink, namespace = %self.name, "the uplink is already inside");
                    return Ok(());
                }
                let host = Netlink::connect_in(Some(&self.host))?;
                if move_link(&host, &inside, &self.ns, uplink).await? {
                    info!(%uplink, namespace = %self.name, "moved the uplink into the namespace");
                    Ok(())
                } else {
                    Err(self.error(format!(
                        "the uplink {uplink} is neither in the host namespace nor inside"
                    )))
                }
            })
        };
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("nanami-uplink".into())
                .spawn_scoped(s, work)
                .map_err(|source| PlatformError::Io {
                    context: "starting a thread to move the uplink".into(),
                    source,
                })?
                .join()
                .unwrap_or_else(|_| Err(self.error("the uplink thread panicked")))
        })
    }

    /// Gives the uplink back to the host namespace (if it is inside).
    async fn return_uplink(&self, inside: &Netlink) -> Result<(), PlatformError> {
        let Some(uplink) = &self.uplink else {
            return Ok(());
        };
        let host = Netlink::connect_in(Some(&self.host))?;
        if move_link(inside, &host, &self.host, uplink).await? {
            info!(%uplink, namespace = %self.name, "gave the uplink back to the host namespace");
        }
        Ok(())
    }
}

/// Moves the link `name` from the namespace `from` speaks for to `to_ns` (which `to`
/// speaks for), carrying its IP addresses and up state, which the kernel drops on a
/// move (IPv6 link-local ones excepted: the kernel makes new ones). Returns `false`
/// when `from` has no such link.
async fn move_link(
    from: &Netlink,
    to: &Netlink,
    to_ns: &Netns,
    name: &str,
) -> Result<bool, PlatformError> {
    let Some(link) = from.links().await?.into_iter().find(|l| l.name == name) else {
        return Ok(false);
    };
    let addresses: Vec<ipnet::IpNet> = from
        .addresses()
        .await?
        .into_iter()
        .filter(|(index, net)| *index == link.index && !is_ipv6_link_local(net))
        .map(|(_, net)| net)
        .collect();
    from.set_link_netns(link.index, to_ns).await?;
    let Some(moved) = to.links().await?.into_iter().find(|l| l.name == name) else {
        return Err(PlatformError::NoInterface(name.to_owned()));
    };
    for net in addresses {
        to.add_address(moved.index, net).await?;
    }
    if link.up {
        to.set_up(moved.index).await?;
    }
    Ok(true)
}

impl std::fmt::Debug for LinuxPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxPlatform")
            .field("public_key", &self.key.public_key())
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LinuxPlatform {
    /// Loads the key, connects to rtnetlink and subscribes to change events; with
    /// [`LinuxConfig::namespace`], first creates (or adopts) the gateway's namespace
    /// and moves its uplink in, and does all of that inside it.
    pub fn new(config: LinuxConfig) -> Result<Self, PlatformError> {
        let key = crate::keyfile::load(&config.key_file)?;
        let hosted = config.namespace.as_ref().map(Hosted::open).transpose()?;
        if let Some(h) = &hosted {
            h.bring_uplink_in()?;
        }
        let ns = hosted.as_ref().map(|h| &*h.ns);
        let netlink = Netlink::connect_in(ns)?;
        let (ev, rx) = events::subscribe_in(ns)?;
        let sysctls =
            sysctl::Record::in_netns(&config.state_dir, hosted.as_ref().map(|h| h.ns.clone()));
        info!(public_key = %key.public_key(), namespace = ?hosted.as_ref().map(|h| &h.name), "linux platform ready");
        Ok(Self {
            config,
            key,
            netlink,
            devices: BTreeMap::new(),
            events: Some((ev, Some(rx))),
            sysctls,
            kernel: None,
            indexes: BTreeMap::new(),
            hosted,
        })
    }

    /// The gateway's own network namespace, when hosted.
    pub fn namespace(&self) -> Option<&str> {
        self.hosted.as_ref().map(|h| h.name.as_str())
    }

    /// Where everything but the UDP sockets lives: `None` for the current namespace.
    fn ns(&self) -> Option<&Netns> {
        self.hosted.as_ref().map(|h| &*h.ns)
    }

    /// The node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    async fn link(&self, name: &InterfaceName) -> Result<Option<Link>, PlatformError> {
        Ok(self
            .netlink
            .links()
            .await?
            .into_iter()
            .find(|l| l.name == name.as_str()))
    }

    async fn index(&mut self, name: &InterfaceName) -> Result<u32, PlatformError> {
        if let Some(index) = self.indexes.get(name.as_str()) {
            return Ok(*index);
        }
        let index = self
            .link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| PlatformError::NoInterface(name.to_string()))?;
        self.indexes.insert(name.to_string(), index);
        Ok(index)
    }

    fn device(&mut self, name: &InterfaceName) -> Result<&mut Managed, PlatformError> {
        self.devices
            .get_mut(name)
            .ok_or_else(|| PlatformError::NoInterface(name.to_string()))
    }

    async fn create_interface(
        &mut self,
        name: &InterfaceName,
        listen_port: Option<u16>,
        mtu: u32,
    ) -> Result<(), PlatformError> {
        if let Some(old) = self.devices.remove(name) {
            // Our device lost its link (deleted out of band): start afresh.
            old.device.shutdown();
        }
        if let Some(stale) = self.link(name).await? {
            // An nm- link no device of ours drives: a leftover; replace it.
            info!(interface = %name, "removing a stale link before creating the device");
            self.netlink.del_link(stale.index).await?;
        }
        let device = match (self.kernel_backend().await, &self.config.device) {
            (Some(_), _) if self.hosted.is_some() => {
                return Err(self.hosted_error(
                    "kernel WireGuard cannot serve a hosted gateway yet; set prefer_kernel \
                     to false to use Nanami's userspace device",
                ));
            }
            (Some(kernel), _) => {
                self.netlink.add_wireguard_link(name.as_str()).await?;
                kernel
                    .set(kernel::device_message(
                        name.as_str(),
                        None,
                        Some(listen_port.unwrap_or(0)),
                    ))
                    .await?;
                Wg::Kernel(kernel)
            }
            (None, DeviceMode::InProcess) => {
                let options = DeviceOptions {
                    uapi_dir: self.config.uapi_dir.clone(),
                    listen_port: listen_port.unwrap_or(0),
                    offload: self.config.offload,
                };
                let device = match &self.hosted {
                    None => Device::open(TunSource::Name(name.clone()), options),
                    // The TUN in the gateway's namespace, the device (and so its UDP
                    // sockets, now and after a port change) opened in the host's.
                    Some(h) => {
                        let fd =
                            h.ns.run(|| create_tun(name))
                                .map_err(|source| PlatformError::Io {
                                    context: format!("creating {name} in {}", h.name),
                                    source,
                                })?;
                        let fd = fd.map_err(device_error(name))?;
                        let tun = TunSource::Fd {
                            fd,
                            name: Some(name.clone()),
                        };
                        h.host
                            .run(|| Device::open(tun, options))
                            .map_err(|source| PlatformError::Io {
                                context: format!("opening {name} in the host namespace"),
                                source,
                            })?
                    }
                }
                .map_err(device_error(name))?;
                Wg::InProcess(device)
            }
            (None, DeviceMode::Detached { program }) => {
                // A predecessor whose link was just deleted removes its socket
                // when it exits; wait for that, or it would remove the new one.
                wait_for_socket_release(Path::new(DEFAULT_UAPI_DIR), name).await?;
                spawn_detached(program, name, self.hosted.as_ref(), self.config.offload).await?;
                let client = UapiClient::new(Path::new(DEFAULT_UAPI_DIR), name.as_str());
                client
                    .set_listen_port(listen_port.unwrap_or(0))
                    .map_err(uapi_error(name))?;
                Wg::Detached(client)
            }
        };
        device.set_private_key(name, &self.key).await?;
        self.devices.insert(
            name.clone(),
            Managed {
                device,
                endpoints: BTreeMap::new(),
            },
        );
        let index = self.index(name).await?;
        self.netlink.set_link(index, mtu).await
    }

    async fn upsert_peer(
        &mut self,
        name: &InterfaceName,
        key: &PublicKey,
        peer: &PeerState,
    ) -> Result<(), PlatformError> {
        let managed = self.device(name)?;
        let mut config = PeerConfig::new(*key);
        config.endpoint = peer.endpoint;
        config.allowed_ips = peer.allowed_ips.iter().copied().collect();
        config.persistent_keepalive = peer.persistent_keepalive;
        managed.device.upsert_peer(name, &config).await?;
        managed.endpoints.insert(*key, peer.endpoint);
        Ok(())
    }

    fn hosted_error(&self, message: &str) -> PlatformError {
        match &self.hosted {
            Some(h) => h.error(message),
            None => PlatformError::Unsupported(message.to_owned()),
        }
    }

    /// The kernel backend, probed on first use; `None` when the kernel has no
    /// WireGuard or the configuration prefers userspace.
    async fn kernel_backend(&mut self) -> Option<KernelWg> {
        if !self.config.prefer_kernel {
            return None;
        }
        if self.kernel.is_none() {
            let probed = KernelWg::probe().await;
            info!(kernel = probed.is_some(), "probed the kernel for WireGuard");
            self.kernel = Some(probed);
        }
        self.kernel.clone().flatten()
    }

    /// Which backend new interfaces get: `"kernel"`, `"in-process"` or `"detached"`.
    pub async fn backend(&mut self) -> &'static str {
        match (self.kernel_backend().await, &self.config.device) {
            (Some(_), _) => "kernel",
            (None, DeviceMode::InProcess) => "in-process",
            (None, DeviceMode::Detached { .. }) => "detached",
        }
    }

    /// In detached mode, takes over `nm-` devices left running by an earlier
    /// process (a daemon restart or upgrade): their tunnels never stopped.
    fn adopt_detached(&mut self, links: &[Link]) {
        if !matches!(self.config.device, DeviceMode::Detached { .. }) {
            return;
        }
        for link in links {
            let Ok(name) = InterfaceName::new(link.name.clone()) else {
                continue;
            };
            if !name.is_owned() || self.devices.contains_key(&name) {
                continue;
            }
            let client = UapiClient::new(Path::new(DEFAULT_UAPI_DIR), name.as_str());
            if client.get().is_ok() {
                info!(interface = %name, "adopting a running detached device");
                self.devices.insert(
                    name,
                    Managed {
                        device: Wg::Detached(client),
                        endpoints: BTreeMap::new(),
                    },
                );
            }
        }
    }

    /// Removes everything Nanami owns here: its devices and `nm-` links, its routes
    /// and rules, the `inet nanami` table; then restores the forwarding sysctls.
    /// A hosted gateway then gives its uplink back to the host namespace (with its
    /// addresses and state) and deletes its namespace.
    ///
    /// The removal is the plan from what is observed to nothing, applied op by op:
    /// the one ordering passes use (rules last added first, routes, the filter,
    /// peers, addresses, links). Then what no observation shows goes too: devices
    /// of this process whose link is gone, and `nm-` links whose device does not
    /// answer.
    pub async fn teardown(&mut self) -> Result<(), PlatformError> {
        let observed = self.observe().await?;
        let removal = nanami_reconcile::plan(&GatewayState::default(), &observed);
        for op in removal.ops() {
            self.apply(op).await?;
        }
        for (_, managed) in std::mem::take(&mut self.devices) {
            managed.device.shutdown();
        }
        for link in self.netlink.links().await? {
            if InterfaceName::new(link.name.clone()).is_ok_and(|n| n.is_owned()) {
                self.netlink.del_link(link.index).await?;
            }
        }
        self.sysctls.restore()?;
        if let Some(h) = &self.hosted {
            h.return_uplink(&self.netlink).await?;
            Netns::delete(&h.name)?;
            info!(namespace = %h.name, "deleted the gateway's network namespace");
        }
        info!(
            ops = removal.len(),
            "teardown complete: nothing of Nanami's is left"
        );
        Ok(())
    }
}

impl Platform for LinuxPlatform {
    type Error = PlatformError;

    async fn observe(&mut self) -> Result<Observed, PlatformError> {
        let links = self.netlink.links().await?;
        let names: BTreeMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        self.indexes = links.iter().map(|l| (l.name.clone(), l.index)).collect();
        let mut addresses: BTreeMap<u32, BTreeSet<ipnet::IpNet>> = BTreeMap::new();
        // IPv6 link-local addresses are the kernel's (it gives one to every link
        // that comes up), never Nanami's: a pass must not remove them.
        for (index, net) in self.netlink.addresses().await? {
            if !is_ipv6_link_local(&net) {
                addresses.entry(index).or_default().insert(net);
            }
        }
        self.adopt_detached(&links);
        let mut state = GatewayState::default();
        let mut telemetry = BTreeMap::new();
        // A device whose link vanished is reported absent, so the plan recreates it.
        for (name, managed) in &self.devices {
            let Some(link) = links.iter().find(|l| l.name == name.as_str()) else {
                continue;
            };
            if !managed.device.is_running() {
                continue;
            }
            let info = match managed.device.get(name).await {
                Ok(info) => info,
                // A device whose link exists but does not answer is not absent:
                // recreating it would cut its sessions over a transient failure.
                // The pass fails and is retried with backoff.
                Err(e) => return Err(e),
            };
            let mut iface = InterfaceState {
                listen_port: Some(info.listen_port),
                mtu: link.mtu,
                addresses: addresses.remove(&link.index).unwrap_or_default(),
                peers: BTreeMap::new(),
            };
            let mut tele = BTreeMap::new();
            for p in &info.peers {
                let key = p.config.public_key;
                iface.peers.insert(
                    key,
                    PeerState {
                        endpoint: managed
                            .endpoints
                            .get(&key)
                            .copied()
                            .unwrap_or(p.config.endpoint),
                        allowed_ips: p.config.allowed_ips.iter().copied().collect(),
                        persistent_keepalive: p.config.persistent_keepalive,
                    },
                );
                tele.insert(
                    key,
                    PeerTelemetry {
                        last_handshake: p.stats.last_handshake,
                        rx_bytes: p.stats.rx_bytes,
                        tx_bytes: p.stats.tx_bytes,
                    },
                );
            }
            state.interfaces.insert(name.clone(), iface);
            telemetry.insert(name.clone(), tele);
        }
        // Routes and rules in Nanami's table or with its protocol: its own, plus any
        // foreign ones there (which the plan leaves alone).
        state.routes = self
            .netlink
            .routes(&names)
            .await?
            .into_iter()
            .filter(|r| r.table == NANAMI_TABLE || r.protocol == NANAMI_PROTO)
            .collect();
        state.rules = self
            .netlink
            .rules()
            .await?
            .into_iter()
            .filter(|r| r.table == NANAMI_TABLE || r.protocol == NANAMI_PROTO)
            .collect();
        state.filter = nft::observe_in(self.ns()).await?;
        for family in [IpFamily::V4, IpFamily::V6] {
            if sysctl::read_in(self.ns(), family)? {
                state.forwarding.insert(family);
            }
        }
        Ok(Observed { state, telemetry })
    }

    #[allow(clippy::wildcard_enum_match_arm)] // `Op` is non_exhaustive: see the last arm
    async fn apply(&mut self, op: &Op) -> Result<(), PlatformError> {
        debug!(%op, "apply");
        match op {
            Op::CreateInterface {
                interface,
                listen_port,
                mtu,
            } => {
                self.indexes.remove(interface.as_str());
                self.create_interface(interface, *listen_port, *mtu).await
            }
            Op::DeleteInterface { interface } => {
                self.indexes.remove(interface.as_str());
                if let Some(managed) = self.devices.remove(interface) {
                    managed.device.shutdown();
                }
                if let Some(link) = self.link(interface).await? {
                    self.netlink.del_link(link.index).await?;
                }
                Ok(())
            }
            Op::SetListenPort {
                interface,
                listen_port,
            } => {
                let managed = self.device(interface)?;
                managed
                    .device
                    .set_listen_port(interface, listen_port.unwrap_or(0))
                    .await
            }
            Op::SetMtu { interface, mtu } => {
                let index = self.index(interface).await?;
                self.netlink.set_link(index, *mtu).await
            }
            Op::AddAddress { interface, address } => {
                let index = self.index(interface).await?;
                self.netlink.add_address(index, *address).await
            }
            Op::RemoveAddress { interface, address } => match self.link(interface).await? {
                Some(link) => self.netlink.del_address(link.index, *address).await,
                None => Ok(()),
            },
            Op::AddPeer {
                interface,
                public_key,
                peer,
            }
            | Op::UpdatePeer {
                interface,
                public_key,
                peer,
            } => self.upsert_peer(interface, public_key, peer).await,
            Op::RemovePeer {
                interface,
                public_key,
            } => {
                if let Some(managed) = self.devices.get_mut(interface) {
                    managed.device.remove_peer(interface, public_key).await?;
                    managed.endpoints.remove(public_key);
                }
                Ok(())
            }
            Op::ReplaceFilter { filter } => {
                nft::run_script_in(self.ns(), &nft::replace_script(filter)).await
            }
            Op::DeleteFilter => nft::run_script_in(self.ns(), &nft::delete_script()).await,
            Op::AddRoute { route } => {
                let index = self.index(&route.interface).await?;
                let added = self.netlink.add_route(route, index).await;
                if added.is_err() {
                    // Perhaps a stale index: look it up afresh next time.
                    self.indexes.remove(route.interface.as_str());
                }
                added
            }
            Op::RemoveRoute { route } => {
                let index = self.link(&route.interface).await?.map(|l| l.index);
                self.netlink.del_route(route, index).await
            }
            Op::AddRule { rule } => self.netlink.add_rule(rule).await,
            Op::RemoveRule { rule } => self.netlink.del_rule(rule).await,
            Op::EnableForwarding { family } => self.sysctls.enable(*family),
            other => Err(PlatformError::Unsupported(other.to_string())),
        }
    }

    fn events(&mut self) -> Option<mpsc::Receiver<PlatformEvent>> {
        self.events.as_mut().and_then(|(_, rx)| rx.take())
    }
}

fn is_ipv6_link_local(net: &ipnet::IpNet) -> bool {
    match net {
        ipnet::IpNet::V6(v6) => v6.addr().is_unicast_link_local(),
        ipnet::IpNet::V4(_) => false,
    }
}

/// Starts `program <name>` (which daemonizes itself and returns once its UAPI socket
/// exists) in this thread's network namespace; for a hosted gateway,
/// `program --netns <namespace> <name>` in the host namespace, so its TUN is in the
/// gateway's namespace and its UDP sockets in the host's. `--no-offload` is added
/// when `offload` is off.
async fn spawn_detached(
    program: &Path,
    name: &InterfaceName,
    hosted: Option<&Hosted>,
    offload: bool,
) -> Result<(), PlatformError> {
    let mut cmd = tokio::process::Command::new(program);
    if let Some(h) = hosted {
        crate::netns::enter_before_exec(&mut cmd, Some(&h.host));
        cmd.args(["--netns", h.name.as_str()]);
    }
    if !offload {
        cmd.arg("--no-offload");
    }
    let out = cmd
        .arg(name.as_str())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| PlatformError::Io {
            context: format!("starting {}", program.display()),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PlatformError::Io {
            context: format!(
                "{} {name} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: std::io::Error::other("device did not start"),
        })
    }
}

/// Waits (up to 5 s) for the socket of `name` to disappear: a device whose link was
/// deleted stops within a second and removes it. A socket that outlives the wait
/// and still answers belongs to a live device: an error. One that does not answer
/// is a leftover of a crash, which the new device replaces.
async fn wait_for_socket_release(dir: &Path, name: &InterfaceName) -> Result<(), PlatformError> {
    let client = UapiClient::new(dir, name.as_str());
    for _ in 0..100 {
        if !client.path().exists() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if client.get().is_ok() {
        return Err(PlatformError::Io {
            context: format!(
                "{} is still served by a running device",
                client.path().display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        });
    }
    Ok(())
}
