//! The Rust side of `bench/python_compile.py`: times the same work on the same
//! topology file as the Python side, with nanami-model called directly.
//!
//! One round = `compile_all` + `compile_node` for every client (active nodes that
//! are not a gateway's machine), the topology already loaded. Prints one line per
//! figure, `key=value`, for the Python script to read:
//!
//! ```text
//! cargo run --release -p nanami-python --example compile_bench -- topology.json 7
//! ```
//!
//! It uses nothing from pyo3, so building it never links libpython.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nanami_model::{compile_all, compile_node, Health, NodeId, Topology};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), rounds) = (args.next(), args.next()) else {
        eprintln!("usage: compile_bench <topology.json> [rounds]");
        return ExitCode::from(2);
    };
    let rounds: usize = match rounds.map(|r| r.parse()) {
        None => 7,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("rounds must be a positive integer");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load_start = Instant::now();
    let topology = match Topology::from_json(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load = load_start.elapsed();

    let clients: Vec<NodeId> = topology
        .workspaces
        .values()
        .flat_map(|ws| {
            ws.nodes
                .values()
                .filter(|n| n.is_active() && !ws.is_gateway_node(&n.id))
                .map(|n| n.id.clone())
        })
        .collect();
    let health = Health::all_up();

    let mut times: Vec<Duration> = Vec::with_capacity(rounds);
    let mut checksum = 0usize;
    for _ in 0..rounds {
        let start = Instant::now();
        let gateways = compile_all(&topology, &health);
        let mut configs = Vec::with_capacity(clients.len());
        for id in &clients {
            match compile_node(&topology, &health, id) {
                Ok(c) => configs.push(c),
                Err(e) => {
                    eprintln!("{id}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        times.push(start.elapsed());
        // Use the results so that no part of the work can be optimised away.
        checksum = gateways.values().map(|g| g.peer_count()).sum::<usize>()
            + configs.iter().map(|c| c.peers.len()).sum::<usize>();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let nodes: usize = topology.workspaces.values().map(|w| w.nodes.len()).sum();
    println!("nodes={nodes}");
    println!("clients={}", clients.len());
    println!("gateways={}", topology.gateway_ids().count());
    println!("checksum={checksum}");
    println!("load_ms={:.3}", ms(load));
    println!("rounds={rounds}");
    println!("min_ms={:.3}", ms(times[0]));
    println!("median_ms={:.3}", ms(times[times.len() / 2]));
    let all: Vec<String> = times.iter().map(|t| format!("{:.3}", ms(*t))).collect();
    println!("times_ms={}", all.join(","));
    ExitCode::SUCCESS
}
