#!/usr/bin/env python3
"""Generated topology documents for the benchmarks (bench/run, bench/python_compile.py).

    bench/topology.py NODES [--per-workspace N] [--gateways G] [--gateway-key KEY] > topology.json

`NODES` nodes in workspaces of `--per-workspace` (200): `--gateways` (2) gateways
serving two networks, clients in one or both, a few exit users, a few pending
nodes. Addresses are left to the allocator, as a control plane usually does.
`--gateway-key` replaces the key of the first workspace's first gateway (a real
daemon's key, for the memory benchmark).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import sys


def key(name: str) -> str:
    """A deterministic, valid WireGuard public key for `name`."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def prefix_for(hosts: int, widest: int) -> int:
    """The longest prefix length with room for `hosts`, at most `widest` bits long."""
    return 32 - max(widest, math.ceil(math.log2(hosts + 3)))


def generate(nodes: int, per_workspace: int = 200, gateways: int = 2, gateway_key: str | None = None) -> dict:
    if nodes < per_workspace or gateways < 1 or gateways >= per_workspace:
        raise SystemExit("need nodes >= per_workspace > gateways >= 1")
    # corp holds every node, lab a third: 10.W.0.0/22 and 10.W.64.0/24 for small
    # workspaces, wider (and still disjoint) for large ones.
    corp = prefix_for(per_workspace, 10)
    lab = prefix_for(per_workspace // 3 + gateways, 8)
    if corp < 18 or lab < 18:
        raise SystemExit("--per-workspace too large for the address plan")
    workspaces = []
    for w in range(math.ceil(nodes / per_workspace)):
        # Tenants pick their own private ranges: past 256 workspaces the address
        # plan repeats (allowed across workspaces); endpoints stay unique.
        o = w % 256
        ws = f"ws-{w}"
        size = min(per_workspace, nodes - w * per_workspace)
        gws = [f"g{w}-{g}" for g in range(min(gateways, size - 1))]
        node_docs = [
            {
                "id": f"{ws}-gw-{g}",
                "public_key": gateway_key if (gateway_key and w == 0 and g == 0) else key(f"{ws}-gw-{g}"),
                "status": "active",
                "memberships": [{"network": "corp"}, {"network": "lab"}],
            }
            for g in range(len(gws))
        ]
        for n in range(size - len(gws)):
            memberships = [{"network": "corp"}]
            if n % 3 == 0:
                memberships.append({"network": "lab"})
            node_docs.append(
                {
                    "id": f"{ws}-n{n}",
                    "public_key": key(f"{ws}-n{n}"),
                    "status": "pending" if n % 50 == 49 else "active",
                    "endpoints": [f"192.0.2.{n % 250 + 1}:{40000 + n % 20000}"] if n % 2 else [],
                    "memberships": memberships,
                    "exit": n % 10 == 0,
                }
            )
        workspaces.append(
            {
                "id": ws,
                "tenant": f"tenant-{w}",
                "regions": ["eu", "us"],
                "networks": [
                    {
                        "id": "corp",
                        "overlay": f"10.{o}.0.0/{corp}",
                        "routes": [f"172.16.{o}.0/24"],
                        "exit": True,
                    },
                    {
                        "id": "lab",
                        "overlay": [f"10.{o}.64.0/{lab}", f"fd00:{o:x}::/64"],
                        "routes": [f"192.168.{o}.0/24"],
                        "nat": False,
                        "gateways": {"policy": "manual", "manual": list(reversed(gws))},
                    },
                ],
                "nodes": node_docs,
                "gateways": [
                    {
                        "id": gws[g],
                        "node": f"{ws}-gw-{g}",
                        "region": ["eu", "us"][g % 2],
                        "networks": ["corp", "lab"],
                        "roles": ["ingress", "egress", "exit"],
                        "endpoint": f"198.{18 + (w >> 16)}.{(w >> 8) & 255}.{w & 255}:{51820 + g}",
                        "listen_port": 51820,
                    }
                    for g in range(len(gws))
                ],
            }
        )
    return {
        "version": 1,
        "regions": [{"id": "eu", "state": "active"}, {"id": "us", "state": "active"}],
        "workspaces": workspaces,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nodes", type=int)
    parser.add_argument("--per-workspace", type=int, default=200)
    parser.add_argument("--gateways", type=int, default=2, help="per workspace")
    parser.add_argument("--gateway-key", default=None)
    args = parser.parse_args()
    json.dump(generate(args.nodes, args.per_workspace, args.gateways, args.gateway_key), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
