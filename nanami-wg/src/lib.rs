//! Nanami data plane and Linux platform.
//!
//! - [`device`]: Nanami's own WireGuard device (boringtun's `noise::Tunn` per peer,
//!   a TUN opened by name or taken as a file descriptor, a UAPI server for `wg(8)`).
//! - [`linux`]: [`linux::LinuxPlatform`], the reconciler's platform on a real
//!   machine — devices, addresses, routes and rules over rtnetlink, the
//!   `inet nanami` nftables table, forwarding sysctls, change events, teardown.
//! - [`uapi_client`]: drives a device in another process (a detached
//!   `nanami-device`, or `wireguard-go`) over its UAPI socket.
//! - [`netns`]: network namespaces (create like `ip netns add`, open, run a closure
//!   inside, delete): hosted gateways live in their own.
//! - [`probe`]: [`probe::Pinger`], ICMP echo probes over raw sockets (forwarding-path
//!   health).
#![deny(missing_docs)]

pub mod device;
pub mod linux;
pub mod netns;
pub mod probe;
pub mod uapi_client;
