#!/usr/bin/env bash
# Data-plane benchmark: client → gateway → resource, one TCP stream (iperf3, 10 s,
# 3 runs per implementation, the same run for all).
#
#   client ──veth 172.31.1.0/24── gateway ──veth 172.31.2.0/24── resource
#      └──── WireGuard tunnel 10.98.0.1 ↔ 10.98.0.2 ────┘   (forwarding on)
#
# Implementations, the same one at both tunnel ends:
#   nanami     nanami-device (this repository, release build)
#   wggo       wireguard-go (Debian stable's package: 0.0.20220316, no offloads)
#   wggo25     wireguard-go 0.0.20250522 (Debian unstable's package, what a user
#              picks today: TUN TSO/GRO, UDP GSO/GRO), fetched on first use by
#              bench/wireguard-go-current into target/bench/ (a private package
#              list; nothing is installed)
#   boringtun  boringtun-cli (cargo install boringtun-cli --locked, if missing)
#   plain      no tunnel: plain veth routing (the ceiling)
#
# Usage: sudo bench/dataplane.sh [-t SECONDS] [-n RUNS] [-m] [IMPL...]
# -m: machine-readable: `<impl>_mbps=run1,run2,…` and `<impl>_retransmits=…` lines
# per implementation (as bench/run reads them) instead of the summary. TCP
# retransmissions are iperf3's count for the sender: a tunnel that drops packets
# inside (a full queue) makes TCP back off each time.
# NANAMI_DEVICE=/path/to/nanami-device skips the release build.
# Needs root, iproute2, iperf3, wg, wireguard-go. Everything runs inside network
# namespaces it creates (nmb-*) and deletes on exit.
set -euo pipefail

DURATION=10
RUNS=3
MACHINE=0
while getopts "t:n:m" opt; do
    case $opt in
        t) DURATION=$OPTARG ;;
        n) RUNS=$OPTARG ;;
        m) MACHINE=1 ;;
        *) echo "usage: $0 [-t SECONDS] [-n RUNS] [-m] [nanami|wggo|wggo25|boringtun|plain]..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
IMPLS=("$@")
[ ${#IMPLS[@]} -eq 0 ] && IMPLS=(plain wggo wggo25 boringtun nanami)

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

cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
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
        nanami)
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

run_iperf() { # → "Mbit/s-received retransmissions"
    ip netns exec "$C" iperf3 -c 172.31.2.2 -t "$DURATION" -J >"$WORK/iperf.json" 2>/dev/null || {
        echo "0 0"; return; }
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); e=d.get("end",{}); r=e.get("sum_received"); s=e.get("sum_sent",{}); print("%.0f %d" % (r["bits_per_second"]/1e6, s.get("retransmits",0)) if r else "0 0"); (not r) and sys.stderr.write("iperf3: %s\n" % d.get("error","no result"))' "$WORK/iperf.json"
}

setup_namespaces
ip netns exec "$R" iperf3 -s -D --pidfile "$WORK/iperf3.pid" >/dev/null
sleep 0.3

# Runs are interleaved (run 1 of every implementation, then run 2, …) so that a
# change in machine load hits every implementation alike.
declare -A RUNS_OF RETRANS_OF
for impl in "${IMPLS[@]}"; do
    case $impl in plain|nanami|wggo|wggo25|boringtun) ;; *) echo "unknown impl $impl" >&2; exit 2 ;; esac
    need_binary "$impl"
    RUNS_OF[$impl]=""
    RETRANS_OF[$impl]=""
done
for i in $(seq 1 "$RUNS"); do
    for impl in "${IMPLS[@]}"; do
        if [ "$impl" = plain ]; then plain_up; else tunnel_up "$impl"; fi
        read -r r rt < <(run_iperf)
        RUNS_OF[$impl]="${RUNS_OF[$impl]} $r"
        RETRANS_OF[$impl]="${RETRANS_OF[$impl]} $rt"
        echo "$impl run $i: $r Mbit/s, $rt retransmissions" >&2
        if [ "$impl" = plain ]; then plain_down; else tunnel_down; fi
    done
done
if [ "$MACHINE" = 1 ]; then
    for impl in "${IMPLS[@]}"; do
        echo "${impl}_mbps=$(echo ${RUNS_OF[$impl]} | tr ' ' ',')"
        echo "${impl}_retransmits=$(echo ${RETRANS_OF[$impl]} | tr ' ' ',')"
    done
    exit 0
fi
declare -A RESULT
for impl in "${IMPLS[@]}"; do
    median=$(printf '%s\n' ${RUNS_OF[$impl]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    RESULT[$impl]="$median (runs:${RUNS_OF[$impl]}; retransmissions:${RETRANS_OF[$impl]})"
    eval "MED_$impl=$median"
done

echo
echo "single TCP stream, client → gateway → resource, ${DURATION}s × ${RUNS} runs (median Mbit/s)"
for impl in "${IMPLS[@]}"; do
    printf '  %-10s %s\n' "$impl" "${RESULT[$impl]}"
done
for base in wggo wggo25; do
    b="MED_$base"
    [ -n "${!b:-}" ] && [ "${!b}" -gt 0 ] || continue
    for impl in nanami boringtun plain wggo wggo25; do
        v="MED_$impl"
        if [ "$impl" != "$base" ] && [ -n "${!v:-}" ]; then
            awk -v n="$impl" -v a="${!v}" -v b="${!b}" -v base="$base" \
                'BEGIN { printf "  %-10s %.2fx %s\n", n, a / b, base }'
        fi
    done
done
