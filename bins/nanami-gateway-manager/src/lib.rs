//! # nanami-gateway-manager
//!
//! Holds the topology, compiles every gateway and client, bumps a gateway's
//! generation only when its compiled state changes, serves desired states to
//! daemons (long-poll) over TLS, records what they observe, and turns missed
//! heartbeats into `Health.offline` so clients fail over deterministically.
//!
//! The binary is `main.rs`; this library is what it and the tests run.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod history;
pub mod http;
pub mod init;
pub mod manager;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod server;
pub mod store;
mod ui;

pub use manager::{HealthConfig, Manager, ManagerError};
pub use store::{SqliteStore, Store};
