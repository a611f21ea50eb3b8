//! Nanami for mobile apps: a WireGuard client tunnel on the TUN fd the platform
//! hands over (Android `VpnService`, a Linux TUN), exposed through uniffi to Kotlin
//! and Swift (and to Python, which drives the same surface in CI).
//!
//! The surface, as foreign code sees it:
//! - `PrivateKey` — `generate()`, `from_base64()`, `public_key()`,
//!   `expose_secret_base64()`: the key is made and kept in the app;
//! - `TunnelConfig` — `from_node_config_json(json, key)` (the manager's
//!   `NodeConfig`), `from_wg_quick(text, key?)` (a strict parser for the text
//!   Nanami renders), and what the platform's VPN builder needs: `addresses()`,
//!   `mtu()`, `routes()`, `peers()`;
//! - `Tunnel` — `start(config, tun_fd, listener?, options?)`, `update(config)`
//!   (the reconciler's plan applied in place, never a new device), `stats()`,
//!   `stop()`; or `follow(settings, provider, listener?, options?)`: the same
//!   agent as `nanami connect` (enrolment, long-poll over several managers,
//!   last-known-good, gateway failover by probes), asking the app's
//!   `TunProvider` for the TUN; `active_gateways()`;
//! - `state_dir_public_key(dir)` — the key a following tunnel enrols with, made
//!   in the app's state directory;
//! - `TunnelListener` — the app's callback for `TunnelEvent`s;
//! - `NanamiError` (`NanamiException` in Kotlin) — mapped explicitly from the
//!   core's errors.
//!
//! The core crates know nothing of uniffi; this crate owns the FFI-only types and
//! the extra threads beside the device's own: status polling, and a following
//! tunnel's agent.
#![deny(missing_docs)]

uniffi::setup_scaffolding!();

mod config;
mod error;
mod events;
mod follow;
mod key;
mod state;
mod tunnel;
mod wg_quick;

pub use config::{PeerSummary, TunnelConfig};
pub use error::NanamiError;
pub use events::{StopReason, TunnelEvent};
pub use follow::{state_dir_public_key, ActiveGateway, FollowSettings, TunProvider, TunRequest};
pub use key::PrivateKey;
pub use tunnel::{PeerStats, Tunnel, TunnelListener, TunnelOptions, UpdateSummary};
