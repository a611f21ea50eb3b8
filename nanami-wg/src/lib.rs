//! Nanami data plane and Linux platform.
//!
//! - [`device`]: Nanami's own WireGuard device (boringtun's `noise::Tunn` per peer,
//!   a TUN opened by name or taken as a file descriptor, a UAPI server for `wg(8)`).

pub mod device;
pub mod linux;
pub mod uapi_client;
