#!/usr/bin/env python3
"""Turns bench/run's results (`item.key=v1,v2,…` lines) into the table: prints it and,
with --output, writes BENCHMARKS.md. Medians and spreads (min–max) over the runs;
each ratio is taken run by run (Nanami and its baseline of the same run), then its
median and spread are shown."""

from __future__ import annotations

import argparse
import statistics
import sys


def load(path: str) -> tuple[dict[str, str], dict[str, list[float]]]:
    machine, values = {}, {}
    for line in open(path, encoding="utf-8"):
        key, sep, value = line.rstrip("\n").partition("=")
        if not sep:
            continue
        if key.startswith("machine."):
            machine[key[len("machine."):]] = value
        else:
            try:
                values[key] = [float(v) for v in value.split(",") if v]
            except ValueError:
                machine[key] = value  # a text field (a file name)
    return machine, values


def num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


class Table:
    def __init__(self, values: dict[str, list[float]]):
        self.values = values
        self.rows: list[list[str]] = []

    def get(self, key: str) -> list[float] | None:
        v = self.values.get(key)
        return v if v else None

    def figure(self, key: str, unit: str, scale: float = 1.0) -> tuple[str, str]:
        v = self.get(key)
        if v is None:
            return "not measured", ""
        v = [x * scale for x in v]
        return f"{num(statistics.median(v))} {unit}", f"{num(min(v))}–{num(max(v))}"

    def ratio(self, key: str, base: str, lower_is_better: bool = True) -> str:
        a, b = self.get(key), self.get(base)
        if a is None or b is None or len(a) != len(b) or not all(b):
            return ""
        r = [x / y for x, y in zip(a, b)]
        f = lambda x: f"{x:.2f}" if x >= 0.01 else f"{x:.2g}"  # noqa: E731
        return f"{f(statistics.median(r))}× ({f(min(r))}–{f(max(r))})"

    def row(self, item: str, what: str, key: str, unit: str, base: str | None, base_label: str,
            target: str, command: str, scale: float = 1.0, ratio: str | None = None,
            spread_key: str | None = None) -> None:
        fig, spread = self.figure(key, unit, scale)
        if spread_key is not None:  # one pooled figure; its spread from another key's values
            spread = self.figure(spread_key, unit, scale)[1]
        if base is not None:
            bfig, bspread = self.figure(base, unit, scale)
            baseline = f"{base_label}: {bfig}" + (f" ({bspread})" if bspread else "")
            ratio = self.ratio(key, base) if ratio is None else ratio
        else:
            baseline = base_label
        self.rows.append([item, what, fig, spread, baseline, ratio or "", target, f"`{command}`"])

    def markdown(self) -> str:
        head = ["#", "benchmark", "Nanami (median)", "spread (min–max)", "baseline, same run (median, spread)",
                "ratio (median, min–max)", "target", "command"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def build(machine: dict[str, str], values: dict[str, list[float]]) -> tuple[Table, list[str]]:
    t = Table(values)
    runs = machine.get("runs", "?")
    dur = machine.get("duration", "?")
    notes: list[str] = []

    # 1 compile
    cmd1 = (f"cargo bench -p nanami-model --bench compile -- {runs} "
            "target/bench/topology-10k.json target/bench/topology-100k.json")
    n = {f: int(values.get(f"compile.{f}.{k}", [0])[0]) for f in ("f0", "f1") for k in ("nodes",)}
    g = {f: int(values.get(f"compile.{f}.gateways", [0])[0]) for f in ("f0", "f1")}
    c = {f: int(values.get(f"compile.{f}.clients", [0])[0]) for f in ("f0", "f1")}
    p = {f: int(values.get(f"compile.{f}.gateway_peers", [0])[0]) for f in ("f0", "f1")}
    target_ms = None
    all100 = t.get("compile.f1.compile_all_ms")
    if all100:
        target_ms = statistics.median(all100)
    t.row("1", f"compile: every gateway state (`compile_all`), {n['f1']:,} nodes, {g['f1']} gateways "
          f"({p['f1']:,} peers)", "compile.f1.compile_all_ms", "ms", "compile.f0.compile_all_ms",
          f"{n['f0']:,} nodes, {g['f0']} gateways", "< 1 s for 100k"
          + (" ✔" if target_ms is not None and target_ms < 1000 else " ✘" if target_ms else ""), cmd1)
    t.row("1", f"compile: every client's config (`compile_nodes`), {n['f1']:,} nodes ({c['f1']:,} clients)",
          "compile.f1.compile_nodes_ms", "ms", "compile.f0.compile_nodes_ms",
          f"{n['f0']:,} nodes ({c['f0']:,} clients)", "", cmd1)
    loads = [values.get(f"compile.{f}.load_ms") for f in ("f0", "f1")]
    if all(loads):
        notes.append(f"Item 1: loading the topology (read + JSON parse + validation, once per size) took "
                     f"{num(loads[0][0])} ms for {n['f0']:,} nodes and {num(loads[1][0])} ms for {n['f1']:,}; "
                     "the ratio column of item 1 is the growth from 10k to 100k nodes (10× the nodes).")

    # 2 apply
    cmd2 = f"cargo bench -p nanami-wg --bench apply -- peers --runs {runs} --count 10000"
    t.row("2", "apply 10,000 peers: one LinuxPlatform pass (observe + plan + apply: create the interface, "
          "its address, every peer) into an in-process Nanami device",
          "apply.nanami_apply_ms", "ms", "apply.wggo_setconf_ms", "`wg setconf` into wireguard-go",
          "ratio ≤ 1.0" + verdict(t, "apply.nanami_apply_ms", "apply.wggo_setconf_ms", 1.0), cmd2)
    ops = {k: t.get(f"apply.nanami_churn_{k}") for k in ("ops", "add", "update", "remove")}
    opsdesc = ""
    if all(ops.values()):
        opsdesc = (f"; plan: {int(statistics.median(ops['ops']))} ops = {int(statistics.median(ops['update']))} "
                   f"update + {int(statistics.median(ops['remove']))} remove + {int(statistics.median(ops['add']))} "
                   "add, exactly the changed peers (checked every run)")
    t.row("2", f"apply 1% churn (100 of 10,000 peers changed){opsdesc}", "apply.nanami_churn_ms", "ms",
          "apply.wggo_syncconf_churn_ms", "`wg syncconf` of the new config into wireguard-go", "", cmd2)

    # 3 routes
    cmd3 = f"cargo bench -p nanami-wg --bench apply -- routes --runs {runs} --count 10000"
    t.row("3", "routes: 10,000 routes (table 7373, proto 73, on a veth link) in one LinuxPlatform pass (rtnetlink)",
          "routes.nanami_routes_ms", "ms", "routes.ipbatch_routes_ms", "`ip -batch` of the same routes", "", cmd3)

    # 4 data plane: one TCP stream (`dataplane.*`), then 4 (`dataplane_p4.*`, if measured). Keys
    # name the implementation with `_` for `-` (nanami_nooff = nanami-device --no-offload).
    impls = "plain wggo wggo25 boringtun nanami nanami-nooff"
    labels = (("nanami", "nanami-device at both ends"),
              ("nanami_nooff", "nanami-device `--no-offload` (no TUN/UDP offloads) at both ends"),
              ("boringtun", "boringtun-cli at both ends"),
              ("wggo25", "wireguard-go 0.0.20250522 (offloads) at both ends"),
              ("wggo", "wireguard-go 0.0.20220316 at both ends"),
              ("plain", "plain veth routing"))
    for prefix, streams in (("dataplane", 1), ("dataplane_p4", 4)):
        if streams > 1 and not any(k.startswith(prefix + ".") for k in values):
            continue
        opt = "" if streams == 1 else f"-P {streams} "
        cmd4 = f"bench/dataplane.sh -m {opt}-n {runs} -t {dur} {impls}"
        load = "one iperf3 TCP stream" if streams == 1 else f"{streams} iperf3 TCP streams"

        def to_wggo(key: str, unit: str) -> str:
            return (f"to wireguard-go 0.0.20250522 {t.ratio(key, f'{prefix}.wggo25_{unit}')}, "
                    f"to 0.0.20220316 {t.ratio(key, f'{prefix}.wggo_{unit}')}; ")

        for impl, label in labels[:-1]:
            key = f"{prefix}.{impl}_mbps"
            extra = to_wggo(key, "mbps") if impl not in ("wggo", "wggo25") else ""
            t.row("4", f"data plane, {load}{'' if streams == 1 else ' (their sum)'} client → gateway → "
                  f"resource, {dur} s: {label}", key,
                  "Mbit/s", f"{prefix}.plain_mbps", "plain veth routing",
                  "", cmd4, ratio=f"{extra}to plain {t.ratio(key, f'{prefix}.plain_mbps')}")
        for impl, label in labels[:2]:
            key = f"{prefix}.{impl}_rtt_ms"
            t.row("4", f"data plane, ping round-trip time client → resource under {load} (average of "
                  f"5 pings a second, per run): {label}", key, "ms", f"{prefix}.plain_rtt_ms",
                  "plain veth routing", "", cmd4,
                  ratio=f"{to_wggo(key, 'rtt_ms')}to plain {t.ratio(key, f'{prefix}.plain_rtt_ms')}")
        rtts = []
        for impl, label in labels:
            fig, spread = t.figure(f"{prefix}.{impl}_rtt_ms", "ms")
            rtts.append(f"{label} {fig}" + (f" ({spread})" if spread else ""))
        notes.append(f"Item 4 ({streams} TCP stream{'s' if streams > 1 else ''}): ping round-trip time under "
                     "load, median (min–max): " + "; ".join(rtts) + ".")

    # 5 memory
    cmd5 = f"bench/memory.sh -n {min(int(runs) if runs.isdigit() else 3, 3)} -N 100000 -p 10000"
    t.row("5", "memory: nanami-gateway-manager RSS with 100,000 nodes (500 gateways) loaded",
          "memory.manager_rss_kib", "MiB", "memory.manager_idle_rss_kib", "the same manager, no topology", "",
          cmd5, scale=1 / 1024)
    peers = t.get("memory.daemon_peers")
    t.row("5", f"memory: nanami-gateway-daemon RSS (`--platform linux`, in-process device) with "
          f"{int(statistics.median(peers)) if peers else 10000:,} peers, converged",
          "memory.daemon_rss_kib", "MiB", "apply.wggo_rss_kib", "wireguard-go with 10,000 peers (item 2)", "",
          cmd5 + " (wireguard-go: " + cmd2 + ")", scale=1 / 1024,
          ratio=median_ratio(t, "memory.daemon_rss_kib", "apply.wggo_rss_kib"))
    hwm = [t.figure(k, "MiB", 1 / 1024)[0] for k in ("memory.manager_hwm_kib", "memory.daemon_hwm_kib")]
    load_s = t.figure("memory.manager_load_s", "s")[0]
    conv_s = t.figure("memory.daemon_converge_s", "s")[0]
    # Only the first run's growth means anything: later runs reuse memory freed by earlier ones.
    grew = t.get("apply.nanami_harness_rss_delta_kib")
    harness = f"{num(grew[0] / 1024)} MiB" if grew else "not measured"
    notes.append(f"Item 5: peak RSS (VmHWM) manager {hwm[0]}, daemon {hwm[1]}. The manager with 100k nodes "
                 f"answered /healthz {load_s} after start (reads, validates and compiles the topology first); "
                 f"the daemon had every peer {conv_s} after start (enrolment, first poll, one pass). "
                 f"Item 2's harness process grew by {harness} RSS while its Nanami device took 10,000 peers "
                 "(first run, fresh process).")
    # 6 control
    cmd6 = (f"cargo bench -p nanami-gateway-manager --bench control -- "
            f"{min(int(runs) if runs.isdigit() else 3, 3)} target/bench/topology-1m.json")
    cn = {k: int(values.get(f"control.{k}", [0])[0]) for k in ("nodes", "workspaces", "gateways")}
    inc = t.get("control.incremental_ms")
    changed = t.get("control.api_changed")
    t.row("6", f"control: one node disabled, compile work (its workspace validated against the rest, its gateways "
          f"compiled), {cn['nodes']:,} nodes in {cn['workspaces']:,} workspaces ({cn['gateways']:,} gateways)",
          "control.incremental_ms", "ms", "control.full_ms",
          "the whole recompile it replaces (whole document validated, every gateway compiled)",
          "< 10 ms" + (" ✔" if inc and statistics.median(inc) < 10 else " ✘" if inc else ""), cmd6)
    t.row("6", "control: the same change through the API (`POST …/nodes/{id}/disable` over HTTPS, until the "
          "answer, sent once the new generations are served; store write included), gateways whose generation "
          f"moved: {int(statistics.median(changed)) if changed else '?'} of {cn['gateways']:,}",
          "control.api_ms", "ms", "control.full_ms", "the whole recompile alone", "", cmd6)
    t.row("6", "control: the same change's work in the manager alone (`Manager::write`, no HTTP: validate, "
          "compile, one SQLite transaction, publish)", "control.manager_ms", "ms", "control.full_ms",
          "the whole recompile alone", "", cmd6)
    load = t.get("control.load_ms")
    if load:
        notes.append(f"Item 6: loading the {cn['nodes']:,}-node topology into the manager (one import: whole "
                     f"validation, every gateway compiled, {cn['workspaces']:,} workspace rows stored) took "
                     f"{num(load[0] / 1000)} s; the whole recompile found the same changed gateways as the "
                     "incremental one in every run (checked).")
    # 7 scale
    cmd7 = "cargo bench -p nanami-gateway-manager --bench scale_out"
    daemons = int(values.get("scale.daemons", [0])[0])
    rounds = int(values.get("scale.rounds", [0])[0])
    labels = {"sqlite": "one manager on SQLite", "pg": "one manager on PostgreSQL",
              "pg3": "three managers on one PostgreSQL database, every change written through one of them"}
    for config, label in labels.items():
        p99 = t.get(f"scale.{config}.p99_ms")
        goal = "p99 < 1 s" + (" ✔" if p99 and p99[0] < 1000 else " ✘" if p99 else "")
        what = (f"scale-out: a topology change that changes every gateway, until each of {daemons:,} simulated "
                f"daemons applied it (write's return → the daemon's reconciler status), p99 over {rounds} "
                f"changes × {daemons:,} daemons (spread: each change's p99): {label}")
        if config == "sqlite":
            t.row("7", what, f"scale.{config}.p99_ms", "ms", None, "this is the baseline (what runs today)",
                  goal, cmd7, spread_key=f"scale.{config}.round_p99_ms")
        else:
            # One pooled p99 per configuration: the ratio of the two, no spread.
            base = t.get("scale.sqlite.p99_ms")
            ratio = f"{p99[0] / base[0]:.2f}× (of the pooled p99s)" if p99 and base else ""
            t.row("7", what, f"scale.{config}.p99_ms", "ms", None,
                  f"one manager on SQLite: {num(base[0])} ms" if base else "one manager on SQLite: not measured",
                  goal, cmd7, ratio=ratio, spread_key=f"scale.{config}.round_p99_ms")
    parts = []
    for config in labels:
        p50, mx, enrol, write = (t.get(f"scale.{config}.{k}") for k in ("p50_ms", "max_ms", "enrol_s", "write_ms"))
        if not (p50 and mx and enrol and write):
            continue
        part = (f"{config}: p50 {num(p50[0])} ms, max {num(mx[0])} ms, the write itself {num(statistics.median(write))} "
                f"ms (median), enrolment of the whole fleet {num(enrol[0])} s")
        direct, catch = t.get(f"scale.{config}.direct_p99_ms"), t.get(f"scale.{config}.catch_up_ms")
        if direct and catch:
            part += (f"; p99 of the daemons of the manager written through {num(direct[0])} ms; the other managers "
                     f"served the change {num(statistics.median(catch))} ms after the write (median of the changes)")
        parts.append(part)
    if parts:
        notes.append("Item 7: " + "; ".join(parts) + ".")
    return t, notes


def median_ratio(t: Table, key: str, base: str) -> str:
    """For figures whose runs are not paired one to one: the ratio of the medians."""
    a, b = t.get(key), t.get(base)
    if not a or not b:
        return ""
    return f"{statistics.median(a) / statistics.median(b):.2f}× (of the medians)"


def verdict(t: Table, key: str, base: str, limit: float) -> str:
    a, b = t.get(key), t.get(base)
    if not a or not b:
        return ""
    r = statistics.median([x / y for x, y in zip(a, b)])
    return " ✔" if r <= limit else " ✘"


def markdown(machine: dict[str, str], t: Table, notes: list[str]) -> str:
    dirty = machine.get("dirty", "0")
    tree = machine.get("commit", "?") + ("" if dirty == "0" else f" (+{dirty} uncommitted changes in the tree)")
    out = [
        "# Benchmarks",
        "",
        "Written by `sudo bench/run` (which reruns them all and rewrites this file). Each speed figure is paired "
        "with a baseline measured in the same run, on the same machine, interleaved run by run; the ratio is "
        "Nanami ÷ baseline, taken per run (below 1.0 is faster for times, above 1.0 is faster for throughput). "
        "The machine is shared and noisy: read the ratios, not the absolute figures.",
        "",
        f"**Machine**: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('ram', '?')} RAM, "
        f"{machine.get('kernel', '?')}, {machine.get('os', '?')}. **Date**: {machine.get('date', '?')}. "
        f"**Commit**: {tree}. **Load average** (1, 5, 15 min) at start {machine.get('load_start', '?')}, "
        f"at end {machine.get('load_end', '?')}. **Runs** per figure: {machine.get('runs', '?')} "
        "(memory and control: at most 3).",
        "",
        t.markdown(),
        "",
        "Notes:",
        "",
    ]
    fixed = [
        "Item 1: topologies from `bench/topology.py NODES --per-workspace 400` (2 gateways per workspace; "
        "`bench/run` writes them to `target/bench/`); the figures are in-process times, the topology already loaded.",
        "Item 2: the Nanami figure is one whole reconciler pass in a fresh namespace: it includes creating the "
        "device and its link and adding its address, while `wg setconf` only configures an already running "
        "wireguard-go. Peers carry one /32 each, no endpoint, no keepalive (so no packet is sent). "
        "The harness checks that one pass converges. The Nanami device makes a peer's session state (boringtun's "
        "`Tunn`, whose construction computes the static-static Diffie-Hellman, about 70 µs) at the peer's first "
        "packet, not when it is configured; wireguard-go precomputes it while configuring. Most of the difference "
        "is that work deferred: paid once, at its first handshake, by each peer that ever talks (with sessions "
        "made while configuring, as in commit a39ce0e, the ratio was 1.06).",
        "Item 3: both sides in fresh namespaces, each with one veth pair; the Nanami figure is one pass "
        "(observe + plan + 10,000 `AddRoute`, each waiting for the kernel's answer before the next; the link "
        "index is looked up once per pass), `ip -batch` sends one request per line.",
        "Item 4: `bench/dataplane.sh` (same tunnel at both ends; runs of all six interleaved; the throughput ratio "
        "to wireguard-go is above 1.0 when faster, the round-trip-time ratio below 1.0 when faster), once with one "
        "TCP stream and once with 4 (`-P 4`, the same runs and duration). The round-trip time is ping's average "
        "from the client to the resource (through the tunnel), 5 pings a second from 1 s into each iperf3 run "
        "until about 0.6 s before its end (0 when no reply came).",
        "Item 5: the daemon is the real `nanami-gateway-daemon` enrolled with a real manager in a namespace, "
        "its desired state one gateway with every client of a generated workspace.",
        "Item 6: `bench/topology.py 1000000 --per-workspace 100` (2 gateways per workspace); a different "
        "workspace's client each run; the in-process figures repeat the API's change on the harness's own copy.",
        "Item 7: everything on one host: the managers, PostgreSQL (a private server, `fsync=off`; SQLite in WAL "
        "with `synchronous=NORMAL`) and the daemons (the real daemon loop on a simulated platform, all in the "
        "bench's process, over TLS on loopback, reporting every 5 s and long-polling for 30 s); daemon i talks to "
        "manager i mod 3. Each configuration starts from a fresh store; the write (validation, compile of every "
        "gateway, the store transaction) is not in the figure, it is timed apart; the manager publishes before the "
        "write returns, so a daemon of the manager written through can apply first (counted as 0 ms). Run once per "
        "`bench/run`: its repetitions are its changes.",
    ]
    # In item order; the measured notes of an item after its fixed one.
    ordered = sorted(fixed + notes, key=lambda n: n.split(":")[0])
    out += [f"- {n}" for n in ordered]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("--output")
    args = parser.parse_args()
    machine, values = load(args.results)
    table, notes = build(machine, values)
    text = markdown(machine, table, notes)
    print(text)
    plain = lambda v: f"{v:.3f}".rstrip("0").rstrip(".")  # noqa: E731
    raw = "\n".join(f"    {k}={','.join(plain(v) for v in vs)}" for k, vs in sorted(values.items()))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n<details><summary>Every run's figures</summary>\n\n" + raw + "\n\n</details>\n")
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
