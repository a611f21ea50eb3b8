//! # nanami-model
//!
//! Nanami's pure core. It reads the topology document (version 1), validates it
//! reporting every problem with its path, allocates overlay addresses, assigns
//! clients to gateways, and compiles each gateway's [`GatewayState`] and each
//! client's `NodeConfig`.
//!
//! Nothing here performs I/O, reads a clock, draws randomness or depends on
//! hash order: the same input always gives byte-identical output. Time, health and
//! randomness enter as parameters.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod id;
pub mod key;
pub mod state;

pub use id::{GatewayId, IdError, InterfaceName, NetworkId, NodeId, RegionId, WorkspaceId};
pub use key::{KeyError, PrivateKey, PublicKey};
pub use state::{
    Destination, FilterRule, FilterSet, GatewayState, InterfaceState, IpFamily, NatRule, PeerState,
    Route, Rule,
};
