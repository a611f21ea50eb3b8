#!/usr/bin/env python3
"""Compile a 10,000-node topology from Python and from Rust, and compare.

One round is what a control plane does after a change: compile every gateway
(`compile_all`) and every client's configuration (`client_config` for each active,
non-gateway node), with the topology already loaded. Both sides read the same
generated JSON file; the Rust side is `nanami-ffi/python/examples/compile_bench.rs`
calling nanami-model directly. Prints both figures and the ratio; exits 1 if
Python's fastest round takes more than --max-ratio (1.5) times Rust's.

Run it with an interpreter that has the release wheel installed, e.g. after
`scripts/test-python`:

    target/py-venv/test/bin/python bench/python_compile.py

Options: --nodes N (10000), --rounds R per batch (2), --batches B (3),
--rust-bin PATH (skip cargo build), --max-ratio X (1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import topology  # bench/topology.py, beside this file

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODES_PER_WORKSPACE = 200  # 2 gateways + 198 nodes: a mid-size tenant


def generate(nodes: int) -> dict:
    """The shared generator (bench/topology.py), in workspaces of 200."""
    if nodes % NODES_PER_WORKSPACE:
        raise SystemExit(f"--nodes must be a multiple of {NODES_PER_WORKSPACE}")
    return topology.generate(nodes, NODES_PER_WORKSPACE)


def run_rust(path: pathlib.Path, rounds: int, rust_bin: str | None) -> dict:
    if rust_bin is None:
        subprocess.run(
            ["cargo", "build", "--quiet", "--release", "-p", "nanami-python", "--example", "compile_bench"],
            cwd=ROOT,
            check=True,
        )
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        rust_bin = str(target / "release" / "examples" / "compile_bench")
    out = subprocess.run([rust_bin, str(path), str(rounds)], check=True, capture_output=True, text=True).stdout
    fields = dict(line.split("=", 1) for line in out.split())
    times = [float(t) for t in fields.pop("times_ms").split(",")]
    return {**{k: float(v) for k, v in fields.items()}, "times_ms": times}


class PythonSide:
    """The topology loaded once, as a Python control plane would keep it."""

    def __init__(self, path: pathlib.Path):
        import nanami

        self.module = nanami._nanami.__file__
        start = time.perf_counter()
        self.topology = nanami.Topology.load(path)
        self.load_ms = (time.perf_counter() - start) * 1e3
        self.clients = self.topology.client_ids()
        self.gateways = len(self.topology.gateway_ids())
        self.checksum = 0

    def run(self, rounds: int) -> list[float]:
        topology, clients, times = self.topology, self.clients, []
        for _ in range(rounds):
            start = time.perf_counter()
            gateways = topology.compile_all()
            configs = [topology.client_config(c) for c in clients]
            times.append((time.perf_counter() - start) * 1e3)
            self.checksum = sum(g.peer_count for g in gateways.values()) + sum(len(c.peers) for c in configs)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per batch")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--max-ratio", type=float, default=1.5)
    parser.add_argument("--rust-bin", default=None)
    args = parser.parse_args()

    doc = generate(args.nodes)
    out_dir = ROOT / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"topology-{args.nodes}.json"
    path.write_text(json.dumps(doc))

    # Alternate Rust and Python batches so that load from other processes on the
    # machine falls on both sides alike; compare the fastest rounds (least
    # disturbed) and show the medians too.
    py = PythonSide(path)
    rust_times: list[float] = []
    py_times: list[float] = []
    rust: dict = {}
    for batch in range(args.batches):
        rust = run_rust(path, args.rounds, args.rust_bin)
        args.rust_bin = args.rust_bin or str(
            pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "examples" / "compile_bench"
        )
        rust_times += rust["times_ms"]
        py_times += py.run(args.rounds)
    if (rust["clients"], rust["gateways"], rust["checksum"]) != (len(py.clients), py.gateways, py.checksum):
        print(f"the two sides did different work: rust={rust} python={vars(py)}", file=sys.stderr)
        return 1

    r_min, p_min = min(rust_times), min(py_times)
    r_med, p_med = statistics.median(rust_times), statistics.median(py_times)
    ratio = p_min / r_min
    n = len(rust_times)
    print(f"topology: {int(rust['nodes'])} nodes, {len(py.clients)} clients, {py.gateways} gateways ({path})")
    print(f"one round: compile_all + {len(py.clients)} client configs; {n} rounds per side in {args.batches} alternating batches")
    print(f"python module: {py.module}")
    print(f"load (parse+validate, once): rust {rust['load_ms']:.1f} ms, python {py.load_ms:.1f} ms")
    print(f"rust:   min {r_min:.1f} ms, median {r_med:.1f} ms")
    print(f"python: min {p_min:.1f} ms, median {p_med:.1f} ms")
    verdict = "OK" if ratio <= args.max_ratio else "TOO SLOW"
    print(f"ratio python/rust: {ratio:.2f}x on min, {p_med / r_med:.2f}x on median (limit {args.max_ratio}x): {verdict}")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
