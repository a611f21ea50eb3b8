//! # nanami-model
//!
//! Nanami's pure core. It reads the topology document (version 1), validates it
//! reporting every problem with its path, allocates overlay addresses, assigns
//! clients to gateways, explains that assignment, and compiles each gateway's [`GatewayState`] and each
//! client's [`NodeConfig`].
//!
//! Nothing here performs I/O, reads a clock, draws randomness or depends on
//! hash order: the same input always gives byte-identical output. Time, health and
//! randomness enter as parameters.
//!
//! ```
//! use nanami_model::{compile, Health, Topology, GatewayId};
//! let yaml = include_str!("../../examples/topology.yaml");
//! let topology = Topology::from_yaml(yaml).unwrap();
//! let gw = GatewayId::new("gw-fra-1").unwrap();
//! let state = compile(&topology, &Health::all_up(), &gw).unwrap();
//! assert!(state.peer_count() > 0);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod alloc;
pub mod assign;
pub mod compile;
pub mod config;
pub mod doc;
mod error;
pub mod explain;
pub mod failover;
pub mod health;
pub mod id;
pub mod key;
pub mod movement;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod probes;
pub mod state;
pub mod topology;
pub mod validate;
mod yaml_depth;

pub use assign::Assignment;
pub use compile::{
    compile, compile_all, compile_node, compile_nodes, compile_workspace, compile_workspace_nodes,
    CompileError,
};
pub use config::{ClientPeer, ExitChoice, GatewayChoice, NodeConfig};
pub use doc::{Document, ParseError, SerializeError};
pub use error::ErrorKind;
pub use explain::{
    explain_gateway, explain_node, ExplainError, GatewayExplanation, NodeExplanation,
};
pub use failover::{Failover, ProbePolicy};
pub use health::Health;
pub use id::{GatewayId, IdError, InterfaceName, NetworkId, NodeId, RegionId, WorkspaceId};
pub use key::{KeyError, PrivateKey, PublicKey};
pub use probes::{health_targets, HealthTargets};
pub use state::{
    Destination, FilterRule, FilterSet, GatewayState, InterfaceState, IpFamily, NatRule, PeerState,
    Route, Rule,
};
pub use topology::{Topology, TopologyError};
pub use validate::{Issue, ValidationErrors};
