#!/usr/bin/env bash
# Data-plane benchmark: client → gateway → resource, one TCP stream or -P of them
# (iperf3, 10 s, 3 runs per implementation, the same run for all), and the ping
# round-trip time under that load.
#
#   client ──veth 172.31.1.0/24── gateway ──veth 172.31.2.0/24── resource
#      └──── WireGuard tunnel 10.98.0.1 ↔ 10.98.0.2 ────┘   (forwarding on)
#
# Implementations, the same one at both tunnel ends:
#   nanami     nanami-device (this repository, release build)
#   nanami-nooff  the same nanami-device with --no-offload (no TUN/UDP offloads)
#   wggo       wireguard-go (Debian stable's package: 0.0.20220316, no offloads)
#   wggo25     wireguard-go 0.0.20250522 (Debian unstable's package, what a user
#              picks today: TUN TSO/GRO, UDP GSO/GRO), fetched on first use by
#              bench/wireguard-go-current into target/bench/ (a private package
#              list; nothing is installed)
#   boringtun  boringtun-cli (cargo install boringtun-cli --locked, if missing)
#   plain      no tunnel: plain veth routing (the ceiling)
#
# Usage: sudo bench/dataplane.sh [-t SECONDS] [-n RUNS] [-P STREAMS] [-m] [IMPL...]
# (default IMPLs: plain wggo wggo25 boringtun nanami nanami-nooff)
# -P: parallel TCP streams (iperf3 -P, default 1); the throughput is their sum.
# -m: machine-readable: `<impl>_mbps=run1,run2,…`, `<impl>_retransmits=…` and
# `<impl>_rtt_ms=…` lines per implementation (as bench/run reads them) instead of
# the summary; a `-` in an implementation's name becomes `_` there
# (nanami_nooff_mbps). TCP retransmissions are iperf3's count for the sender,
# summed over the streams: a tunnel that drops packets inside (a full queue) makes
# TCP back off each time. The round-trip time is ping's average (ms) from the
# client to the resource (through the tunnel, if any), 5 pings a second from
# 1 s into the iperf3 run until about 0.6 s before its end; 0 when no reply came.
# NANAMI_DEVICE=/path/to/nanami-device skips the release build.
# Needs root, iproute2, iperf3, wg, wireguard-go. Everything runs inside network
# namespaces it creates (nmb-*) and deletes on exit.
set -euo pipefail

DURATION=10
RUNS=3
STREAMS=1
MACHINE=0
usage() {
    echo "usage: $0 [-t SECONDS] [-n RUNS] [-P STREAMS] [-m] [nanami|nanami-nooff|wggo|wggo25|boringtun|plain]..." >&2
    exit 2
}
while getopts "t:n:P:m" opt; do
    case $opt in
        t) DURATION=$OPTARG ;;
        n) RUNS=$OPTARG ;;
        P) STREAMS=$OPTARG ;;
        m) MACHINE=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
for v in "$DURATION" "$RUNS" "$STREAMS"; do [[ $v =~ ^[1-9][0-9]*$ ]] || usage; done
IMPLS=("$@")
[ ${#IMPLS[@]} -eq 0 ] && IMPLS=(plain wggo wggo25 boringtun nanami nanami-nooff)
# Pings under load: 5 a second from 1 s into the iperf3 run, the last one sent
# about 0.6 s before its end (-w bounds ping in any case).
PINGS=$(( DURATION * 5 - 7 > 1 ? DURATION * 5 - 7 : 1 ))

[ "$(id -u)" -eq 0 ] || { echo "dataplane.sh: needs root" >&2; exit 1; }
for tool in ip iperf3 wg wireguard-go; do
    command -v "$tool" >/dev/null || { echo "dataplane.sh: needs $tool" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=$$
C=nmb-$TAG-client
G=nmb-$TAG-gateway
R=nmb-$TAG-resource
IFC=nmb${TAG}c   # interface names: at most 15 bytes, unique per run
IFG=nmb${TAG}g
PIDS=()
LOAD_PIDS=()   # iperf3 client and ping of the current run

cleanup() {
    for pid in "${LOAD_PIDS[@]:-}" "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for ns in "$C" "$G" "$R"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "/var/run/wireguard/$IFC.sock" "/var/run/wireguard/$IFG.sock"
    rm -rf "$WORK"
}
umask 077
WORK=$(mktemp -d)
trap cleanup EXIT

need_binary() {
    case $1 in
        nanami|nanami-nooff)
            [ -n "${NANAMI:-}" ] && return 0   # one build for both
            NANAMI=${NANAMI_DEVICE:-$ROOT/target/release/nanami-device}
            if [ -z "${NANAMI_DEVICE:-}" ]; then
                echo "building nanami-device (release)…" >&2
                if ! (cd "$ROOT" && cargo build --release -q -p nanami-device) >&2; then
                    [ -x "$NANAMI" ] || { echo "dataplane.sh: build failed" >&2; exit 1; }
                    echo "dataplane.sh: build failed; using the existing $NANAMI" >&2
                fi
            fi
            ;;
        wggo25) WGGO25=$("$ROOT/bench/wireguard-go-current") ;;
        boringtun)
            if ! command -v boringtun-cli >/dev/null; then
                echo "installing boringtun-cli…" >&2
                cargo install boringtun-cli --locked -q >&2
            fi
            ;;
    esac
}

setup_namespaces() {
    for ns in "$C" "$G" "$R"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    ip link add vc netns "$C" type veth peer name vg netns "$G"
    ip link add vl netns "$G" type veth peer name vr netns "$R"
    ip -n "$C" addr add 172.31.1.1/24 dev vc
    ip -n "$G" addr add 172.31.1.2/24 dev vg
    ip -n "$G" addr add 172.31.2.1/24 dev vl
    ip -n "$R" addr add 172.31.2.2/24 dev vr
    for pair in "$C vc" "$G vg" "$G vl" "$R vr"; do
        set -- $pair; ip -n "$1" link set "$2" up
    done
    ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$R" route add 10.98.0.0/24 via 172.31.2.1
    ip -n "$R" route add 172.31.1.0/24 via 172.31.2.1
}

wait_socket() {
    local i
    for i in $(seq 1 250); do [ -S "/var/run/wireguard/$1.sock" ] && return 0; sleep 0.02; done
    echo "dataplane.sh: $1.sock did not appear" >&2; return 1
}

start_impl() { # impl ns ifname
    local impl=$1 ns=$2 ifn=$3
    case $impl in
        nanami) ip netns exec "$ns" "$NANAMI" --foreground "$ifn" 2>"$WORK/$ifn.log" & ;;
        nanami-nooff) ip netns exec "$ns" "$NANAMI" --foreground --no-offload "$ifn" 2>"$WORK/$ifn.log" & ;;
        wggo) LOG_LEVEL=error ip netns exec "$ns" wireguard-go -f "$ifn" >"$WORK/$ifn.log" 2>&1 & ;;
        wggo25) LOG_LEVEL=error ip netns exec "$ns" "$WGGO25" -f "$ifn" >"$WORK/$ifn.log" 2>&1 & ;;
        boringtun) WG_LOG_LEVEL=error ip netns exec "$ns" boringtun-cli --foreground \
            --disable-drop-privileges "$ifn" >"$WORK/$ifn.log" 2>&1 & ;;
    esac
    PIDS+=($!)
    wait_socket "$ifn"
}

tunnel_up() { # impl
    local impl=$1
    wg genkey >"$WORK/c.key"; wg pubkey <"$WORK/c.key" >"$WORK/c.pub"
    wg genkey >"$WORK/g.key"; wg pubkey <"$WORK/g.key" >"$WORK/g.pub"
    start_impl "$impl" "$C" "$IFC"
    start_impl "$impl" "$G" "$IFG"
    ip netns exec "$C" wg set "$IFC" private-key "$WORK/c.key" listen-port 51820 \
        peer "$(cat "$WORK/g.pub")" endpoint 172.31.1.2:51820 allowed-ips 10.98.0.0/24,172.31.2.0/24
    ip netns exec "$G" wg set "$IFG" private-key "$WORK/g.key" listen-port 51820 \
        peer "$(cat "$WORK/c.pub")" endpoint 172.31.1.1:51820 allowed-ips 10.98.0.1/32
    ip -n "$C" addr add 10.98.0.1/24 dev "$IFC"
    ip -n "$G" addr add 10.98.0.2/24 dev "$IFG"
    ip -n "$C" link set "$IFC" mtu 1420 up
    ip -n "$G" link set "$IFG" mtu 1420 up
    ip -n "$C" route add 172.31.2.0/24 dev "$IFC"
    local i
    for i in $(seq 1 50); do
        ip netns exec "$C" ping -c 1 -W 1 172.31.2.2 >/dev/null 2>&1 && return 0
    done
    echo "dataplane.sh: $impl tunnel does not carry traffic" >&2; return 1
}

tunnel_down() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    PIDS=()
    ip -n "$C" link del "$IFC" 2>/dev/null || true
    ip -n "$G" link del "$IFG" 2>/dev/null || true
    ip -n "$C" route del 172.31.2.0/24 2>/dev/null || true
}

plain_up() { ip -n "$C" route add 172.31.2.0/24 via 172.31.1.2; }
plain_down() { ip -n "$C" route del 172.31.2.0/24 via 172.31.1.2; }

# One iperf3 run with pings beside it → MBPS (received, all streams), RETRANS
# (sender, all streams), RTT (ping's average, ms; 0 if no reply). Runs in this
# shell (not a subshell), so that both children are waited for here and the exit
# trap knows them.
run_iperf() {
    local ipid ppid out
    rm -f "$WORK/iperf.json" "$WORK/ping.txt"
    ip netns exec "$C" iperf3 -c 172.31.2.2 -t "$DURATION" -P "$STREAMS" -J >"$WORK/iperf.json" 2>/dev/null &
    ipid=$!
    LOAD_PIDS=("$ipid")
    sleep 1
    # `ip netns exec` execs ping: $! is ping itself.
    ip netns exec "$C" ping -q -i 0.2 -c "$PINGS" -w "$DURATION" 172.31.2.2 >"$WORK/ping.txt" 2>&1 &
    ppid=$!
    LOAD_PIDS+=("$ppid")
    wait "$ipid" || true
    # iperf3 failing early must not leave ping running into the next run: SIGINT
    # (ping still prints its summary), then the deadline bounds it anyway.
    if kill -0 "$ppid" 2>/dev/null; then sleep 1.5; kill -INT "$ppid" 2>/dev/null || true; fi
    wait "$ppid" || true
    LOAD_PIDS=()
    out=$(python3 -c 'import json,sys
try:
    d = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    d = {"error": "no JSON output (%s)" % e}
e = d.get("end", {}); r = e.get("sum_received"); s = e.get("sum_sent", {})
print("%.0f %d" % (r["bits_per_second"] / 1e6, s.get("retransmits", 0)) if r else "0 0")
if not r:
    sys.stderr.write("iperf3: %s\n" % d.get("error", "no result"))' "$WORK/iperf.json")
    read -r MBPS RETRANS <<<"$out"
    RTT=$(sed -n 's#^.*min/avg/max/mdev = [0-9.]*/\([0-9.]*\)/.*#\1#p' "$WORK/ping.txt")
    if [ -z "$RTT" ]; then
        echo "dataplane.sh: ping under load gave no round-trip time (reported as 0): $(tr '\n' ' ' <"$WORK/ping.txt")" >&2
        RTT=0
    fi
}

setup_namespaces
ip netns exec "$R" iperf3 -s -D --pidfile "$WORK/iperf3.pid" >/dev/null
sleep 0.3

# Runs are interleaved (run 1 of every implementation, then run 2, …) so that a
# change in machine load hits every implementation alike.
declare -A RUNS_OF RETRANS_OF RTT_OF
for impl in "${IMPLS[@]}"; do
    case $impl in plain|nanami|nanami-nooff|wggo|wggo25|boringtun) ;; *) echo "unknown impl $impl" >&2; exit 2 ;; esac
    need_binary "$impl"
    RUNS_OF[$impl]=""
    RETRANS_OF[$impl]=""
    RTT_OF[$impl]=""
done
for i in $(seq 1 "$RUNS"); do
    for impl in "${IMPLS[@]}"; do
        if [ "$impl" = plain ]; then plain_up; else tunnel_up "$impl"; fi
        run_iperf
        RUNS_OF[$impl]="${RUNS_OF[$impl]} $MBPS"
        RETRANS_OF[$impl]="${RETRANS_OF[$impl]} $RETRANS"
        RTT_OF[$impl]="${RTT_OF[$impl]} $RTT"
        echo "$impl run $i: $MBPS Mbit/s, $RETRANS retransmissions, ping under load $RTT ms" >&2
        if [ "$impl" = plain ]; then plain_down; else tunnel_down; fi
    done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
if [ "$MACHINE" = 1 ]; then
    for impl in "${IMPLS[@]}"; do
        key=${impl//-/_}
        echo "${key}_mbps=$(echo ${RUNS_OF[$impl]} | tr ' ' ',')"
        echo "${key}_retransmits=$(echo ${RETRANS_OF[$impl]} | tr ' ' ',')"
        echo "${key}_rtt_ms=$(echo ${RTT_OF[$impl]} | tr ' ' ',')"
    done
    exit 0
fi
declare -A RESULT
for impl in "${IMPLS[@]}"; do
    med=$(median ${RUNS_OF[$impl]})
    RESULT[$impl]="$med (runs:${RUNS_OF[$impl]}; retransmissions:${RETRANS_OF[$impl]}; ping under load $(median ${RTT_OF[$impl]}) ms, runs:${RTT_OF[$impl]})"
    eval "MED_${impl//-/_}=$med"
done

echo
if [ "$STREAMS" = 1 ]; then what="single TCP stream"; else what="$STREAMS TCP streams"; fi
echo "$what, client → gateway → resource, ${DURATION}s × ${RUNS} runs (median Mbit/s)"
for impl in "${IMPLS[@]}"; do
    printf '  %-12s %s\n' "$impl" "${RESULT[$impl]}"
done
for base in wggo wggo25; do
    b="MED_$base"
    [ -n "${!b:-}" ] && [ "${!b}" -gt 0 ] || continue
    for impl in nanami nanami-nooff boringtun plain wggo wggo25; do
        v="MED_${impl//-/_}"
        if [ "$impl" != "$base" ] && [ -n "${!v:-}" ]; then
            awk -v n="$impl" -v a="${!v}" -v b="${!b}" -v base="$base" \
                'BEGIN { printf "  %-12s %.2fx %s\n", n, a / b, base }'
        fi
    done
done
