//! # nanami-api
//!
//! The gateway manager's HTTP API as Rust values: the wire types every party
//! shares ([`wire`]), the TLS set-up ([`tls`]), the typed client ([`client`]) that
//! the daemon, the `nanami` CLI and the fleet benchmark use, and the Prometheus
//! text format the manager and the daemon expose ([`metrics`]).
//! The `service` feature adds what a program run as a service needs: [`service`]
//! (logging, stop signals, the token file) and [`server`] (the bounded HTTP server
//! of the manager's API and the daemon's `/metrics`). The binaries turn it on, the
//! Python module does not.
//!
//! Authentication is a bearer credential in `Authorization: Bearer <token>`; the
//! kinds are told apart by prefix (see [`wire::CredentialKind`]). Only public keys
//! ever travel: nothing here can hold a private key.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
mod connect;
pub mod metrics;
pub mod objects;
#[cfg(feature = "service")]
pub mod server;
#[cfg(feature = "service")]
pub mod service;
pub mod tls;
pub mod wire;

pub use client::{ApiError, Client};
