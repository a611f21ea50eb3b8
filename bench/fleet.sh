#!/usr/bin/env bash
# Fleet benchmark: 200 simulated daemons against one manager over TLS on loopback;
# prints p50/p99 of the time from a topology change until each gateway reported
# the new generation (target: p99 < 500 ms).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p nanami-gateway-manager --bench fleet
