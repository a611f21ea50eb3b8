#!/usr/bin/env bash
# Memory benchmark (item 5 of BENCHMARKS.md), in network namespaces it creates
# (nmb-<pid>-*) and deletes on exit:
#   manager   nanami-gateway-manager serving a generated topology of NODES nodes
#             (bench/topology.py, 400 per workspace, 2 gateways each), loaded at
#             start (--topology); VmRSS once /healthz answers; and the same manager
#             with no topology (the baseline)
#   daemon    the real nanami-gateway-daemon (--platform linux, in-process
#             WireGuard device) enrolled with a manager serving one gateway with
#             PEERS clients; VmRSS once its interface has every peer
#
# Usage: sudo bench/memory.sh [-n RUNS] [-N NODES] [-p PEERS]
# Prints `name=run1,run2,…` lines (KiB, seconds, counts) on stdout.
# Uses target/release/{nanami-gateway-manager,nanami-gateway-daemon} (build them first).
set -euo pipefail

RUNS=3
NODES=100000
PEERS=10000
while getopts "n:N:p:" opt; do
    case $opt in
        n) RUNS=$OPTARG ;;
        N) NODES=$OPTARG ;;
        p) PEERS=$OPTARG ;;
        *) echo "usage: $0 [-n RUNS] [-N NODES] [-p PEERS]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "memory.sh: needs root" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
MANAGER=$BIN/nanami-gateway-manager
DAEMON=$BIN/nanami-gateway-daemon
for b in "$MANAGER" "$DAEMON"; do [ -x "$b" ] || { echo "memory.sh: build $b first" >&2; exit 1; }; done
for tool in ip wg curl python3; do
    command -v "$tool" >/dev/null || { echo "memory.sh: needs $tool" >&2; exit 1; }
done

NS=nmb-$$-mem
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# Waits (up to $2 s) for `$1` (a command) to succeed.
wait_for() {
    local deadline=$((SECONDS + $2))
    until eval "$1" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "memory.sh: timed out: $1" >&2; return 1; }
        sleep 0.1
    done
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; PIDS=(); }

# manager DIR [TOPOLOGY] → starts it in $NS on 127.0.0.1:7443 (plain HTTP), sets MPID.
manager() {
    rm -rf "$1"
    "$MANAGER" init --dir "$1" --san 127.0.0.1 >/dev/null 2>&1
    local topo=()
    [ -n "${2:-}" ] && topo=(--topology "$2")
    ip netns exec "$NS" "$MANAGER" serve --dir "$1" --listen 127.0.0.1:7443 "${topo[@]}" \
        ${3:-} 2>>"$WORK/manager.log" &
    MPID=$!
    PIDS=("$MPID")
}

ip netns add "$NS"
ip -n "$NS" link set lo up
python3 "$ROOT/bench/topology.py" "$NODES" --per-workspace 400 >"$WORK/big.json"
declare -A OUT
add() { OUT[$1]="${OUT[$1]:+${OUT[$1]},}$2"; }

for i in $(seq 1 "$RUNS"); do
    # The manager, idle and with the big topology.
    manager "$WORK/m" "" --insecure-http
    wait_for "ip netns exec $NS curl -sf http://127.0.0.1:7443/healthz" 60
    add manager_idle_rss_kib "$(kib "$MPID" VmRSS)"
    stop "$MPID"
    start=$(now)
    manager "$WORK/m" "$WORK/big.json" --insecure-http
    wait_for "ip netns exec $NS curl -sf http://127.0.0.1:7443/healthz" 300
    add manager_load_s "$(since "$start")"
    add manager_rss_kib "$(kib "$MPID" VmRSS)"
    add manager_hwm_kib "$(kib "$MPID" VmHWM)"
    stop "$MPID"
    echo "memory run $i: manager idle ${OUT[manager_idle_rss_kib]##*,} KiB, with $NODES nodes ${OUT[manager_rss_kib]##*,} KiB" >&2

    # The daemon with PEERS peers: one workspace, one gateway (its real key).
    rm -rf "$WORK/d"
    key=$("$DAEMON" --print-public-key --state-dir "$WORK/d" 2>/dev/null)
    python3 "$ROOT/bench/topology.py" "$((PEERS * 50 / 49 + 2))" --per-workspace "$((PEERS * 50 / 49 + 2))" \
        --gateways 1 --gateway-key "$key" >"$WORK/one.json"
    manager "$WORK/m" "$WORK/one.json"
    wait_for "ip netns exec $NS curl -sf --cacert $WORK/m/ca.pem https://127.0.0.1:7443/healthz" 60
    "$MANAGER" token --dir "$WORK/m" --gateway g0-0 >"$WORK/token" 2>/dev/null
    start=$(now)
    ip netns exec "$NS" "$DAEMON" --manager https://127.0.0.1:7443 --ca "$WORK/m/ca.pem" \
        --gateway g0-0 --state-dir "$WORK/d" --token-file "$WORK/token" --platform linux \
        2>>"$WORK/daemon.log" &
    DPID=$!
    PIDS+=("$DPID")
    ifc=""
    peers=0
    deadline=$((SECONDS + 300))
    while [ $SECONDS -lt $deadline ]; do
        ifc=$(ip -n "$NS" -o link show 2>/dev/null | grep -o 'nm-[^:@ ]*' | head -1 || true)
        if [ -n "$ifc" ]; then
            peers=$(wg show "$ifc" peers 2>/dev/null | wc -l || echo 0)
            [ "$peers" -ge "$PEERS" ] && break
        fi
        sleep 0.5
    done
    [ "$peers" -ge "$PEERS" ] || { echo "memory.sh: the daemon has $peers peers, not $PEERS" >&2; tail -5 "$WORK/daemon.log" >&2; exit 1; }
    add daemon_converge_s "$(since "$start")"
    sleep 1
    add daemon_peers "$peers"
    add daemon_rss_kib "$(kib "$DPID" VmRSS)"
    add daemon_hwm_kib "$(kib "$DPID" VmHWM)"
    echo "memory run $i: daemon with $peers peers ${OUT[daemon_rss_kib]##*,} KiB" >&2
    kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true
    stop "$MPID"
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip -n "$NS" link del "$ifc" 2>/dev/null || true
done
for k in "${!OUT[@]}"; do echo "$k=${OUT[$k]}"; done | sort
