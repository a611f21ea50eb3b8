//! Nanami data plane and Linux platform.
//!
//! Only [`device`] (with a TUN taken as an fd), [`uapi_client`], [`files`] and
//! [`keyfile`] build on every Unix (Apple and Android included, for the mobile
//! crate); the rest is Linux's.
//!
//! - [`device`]: Nanami's own WireGuard device (boringtun's `noise::Tunn` per peer,
//!   a TUN opened by name or taken as a file descriptor, a UAPI server for `wg(8)`).
//! - [`linux`]: [`linux::LinuxPlatform`], the reconciler's platform on a real
//!   machine — devices, addresses, routes and rules over rtnetlink, the
//!   `inet nanami` nftables table, forwarding sysctls, change events, teardown.
//! - [`files`] and [`keyfile`]: atomic writes and the node's private key file
//!   (every Unix: the agent's state directory, on phones too).
//! - [`uapi_client`]: drives a device in another process (a detached
//!   `nanami-device`, or `wireguard-go`) over its UAPI socket.
//! - [`netns`]: network namespaces (create like `ip netns add`, open, run a closure
//!   inside, delete): hosted gateways live in their own.
//! - [`probe`]: [`probe::Pinger`], ICMP echo probes over raw sockets (forwarding-path
//!   health).
#![deny(missing_docs)]

mod checksum;
pub mod device;
#[cfg(unix)]
pub mod files;
#[cfg(unix)]
pub mod keyfile;
#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub mod netns;
#[cfg(target_os = "linux")]
pub mod probe;
pub mod uapi_client;
