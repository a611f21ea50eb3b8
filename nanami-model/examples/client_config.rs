//! Compiles the repository's example topology and prints one client's configuration.
//!
//! Shows the pure core end to end: parse and validate a topology document
//! ([`Topology::from_yaml`]), compile one client with every gateway healthy
//! ([`compile_node`]), and render the result for `wg-quick(8)` with the private-key
//! placeholder the client fills in.
//!
//! Run: `cargo run -p nanami-model --example client_config [NODE]` (default
//! `laptop-ana`, a client of `examples/topology.yaml`).

use nanami_model::{compile_node, Health, NodeId, Topology};

/// The document every example and doctest uses, embedded at build time.
const TOPOLOGY: &str = include_str!("../../examples/topology.yaml");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "laptop-ana".into());
    let topology = Topology::from_yaml(TOPOLOGY)?;
    let config = compile_node(&topology, &Health::all_up(), &NodeId::new(&node)?)?;
    println!("# {node}: compiled from examples/topology.yaml, all gateways up");
    print!("{}", config.to_wg_quick(None));
    Ok(())
}
