//! Item 1 of `BENCHMARKS.md` (run by `bench/run`): compile generated topologies
//! (`bench/topology.py`), the topology already loaded.
//!
//! ```text
//! cargo bench -p nanami-model --bench compile -- ROUNDS topology-10k.json topology-100k.json
//! ```
//!
//! Each round compiles every file in turn (so that a change in machine load hits
//! all sizes alike): every gateway's state (`compile_all`), then every client's
//! configuration (`compile_nodes`). Prints `key=value` lines per file, prefixed
//! with the file's index (`f0.`, `f1.`, …); times in ms, one value per round.

use std::process::ExitCode;
use std::time::Instant;

use nanami_model::{compile_all, compile_nodes, Health, Topology};

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(Ok(rounds)), files) = (
        args.first().map(|r| r.parse::<usize>()),
        &args[1.min(args.len())..],
    ) else {
        eprintln!("usage: compile ROUNDS TOPOLOGY.json...");
        return ExitCode::from(2);
    };
    let health = Health::all_up();
    let mut loaded = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let start = Instant::now();
        let topology = match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Topology::from_json(&text).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let load = start.elapsed();
        let nodes: usize = topology.workspaces.values().map(|w| w.nodes.len()).sum();
        println!("f{i}.file={path}");
        println!("f{i}.nodes={nodes}");
        println!("f{i}.gateways={}", topology.gateway_ids().count());
        println!("f{i}.load_ms={:.3}", load.as_secs_f64() * 1e3);
        loaded.push((topology, Vec::new(), Vec::new(), 0usize, 0usize));
    }
    for _ in 0..rounds {
        for (topology, gateway_ms, client_ms, peers, clients) in &mut loaded {
            let start = Instant::now();
            let states = compile_all(topology, &health);
            gateway_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            let configs = compile_nodes(topology, &health);
            client_ms.push(start.elapsed().as_secs_f64() * 1e3);
            // Use the results so that no part of the work can be optimised away.
            *peers = states.values().map(|s| s.peer_count()).sum();
            *clients = configs.len();
        }
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for (i, (_, gateway_ms, client_ms, peers, clients)) in loaded.iter().enumerate() {
        println!("f{i}.gateway_peers={peers}");
        println!("f{i}.clients={clients}");
        println!("f{i}.compile_all_ms={}", list(gateway_ms));
        println!("f{i}.compile_nodes_ms={}", list(client_ms));
    }
    ExitCode::SUCCESS
}
