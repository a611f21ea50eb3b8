"""Documents written as Python data, so the tests need no YAML library."""

GW_KEY = "8X4C2QwIBaOpONJxT0R3eWUCPX5oEfyQOroEBMH2I04="
CLIENT_KEY = "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ="
OTHER_KEY = "0f9iE4KjyCGVSj+comoVDFBsdl5b1eq/4kXMiJ1oKiU="

SMALL_DOC = {
    "version": 1,
    "regions": [{"id": "eu", "state": "active"}],
    "workspaces": [
        {
            "id": "acme",
            "tenant": "acme-corp",
            "regions": ["eu"],
            "networks": [
                {"id": "corp", "overlay": "100.80.0.0/24", "routes": ["10.20.0.0/16"]}
            ],
            "nodes": [
                {
                    "id": "gw-a",
                    "public_key": GW_KEY,
                    "status": "active",
                    "memberships": [{"network": "corp", "address": "100.80.0.1"}],
                },
                {
                    "id": "laptop-1",
                    "public_key": CLIENT_KEY,
                    "status": "active",
                    "endpoints": ["198.51.100.7:51820"],
                    "memberships": [{"network": "corp", "address": "100.80.0.10"}],
                },
                {
                    "id": "laptop-2",
                    "public_key": OTHER_KEY,
                    "status": "disabled",
                    "memberships": [{"network": "corp"}],
                },
            ],
            "gateways": [
                {
                    "id": "gw-a",
                    "node": "gw-a",
                    "region": "eu",
                    "networks": ["corp"],
                    "roles": ["ingress", "egress"],
                    "endpoint": "203.0.113.10:51820",
                    "listen_port": 51820,
                }
            ],
        }
    ],
}


def big_doc(workspaces: int, nodes_per_workspace: int) -> dict:
    """A valid document of workspaces x nodes (2 gateways each), keys derived from
    the ids so it is the same every time."""
    import base64
    import hashlib

    def key(name: str) -> str:
        return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()

    wss = []
    for w in range(workspaces):
        ws = f"ws-{w}"
        nodes = []
        for g in range(2):
            nodes.append(
                {
                    "id": f"{ws}-gw-{g}",
                    "public_key": key(f"{ws}-gw-{g}"),
                    "status": "active",
                    "memberships": [{"network": "corp"}],
                }
            )
        for n in range(nodes_per_workspace - 2):
            nodes.append(
                {
                    "id": f"{ws}-n-{n}",
                    "public_key": key(f"{ws}-n-{n}"),
                    "status": "active",
                    "memberships": [{"network": "corp"}],
                }
            )
        wss.append(
            {
                "id": ws,
                "tenant": f"tenant-{w}",
                "regions": ["eu"],
                "networks": [
                    {
                        "id": "corp",
                        "overlay": f"10.{w}.0.0/20",
                        "routes": [f"172.16.{w}.0/24"],
                    }
                ],
                "nodes": nodes,
                "gateways": [
                    {
                        "id": f"g{w}-{g}",
                        "node": f"{ws}-gw-{g}",
                        "region": "eu",
                        "networks": ["corp"],
                        "roles": ["ingress", "egress"],
                        "endpoint": f"198.18.{w}.{g + 1}:51820",
                        "listen_port": 51820,
                    }
                    for g in range(2)
                ],
            }
        )
    return {"version": 1, "regions": [{"id": "eu", "state": "active"}], "workspaces": wss}


def key(seed: str) -> str:
    """A valid public key derived from `seed` (the same every run)."""
    import nanami

    return nanami.PrivateKey.from_base64(_seed_key(seed)).public_key.to_base64()


def _seed_key(seed: str) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def workspace_contents(ws: str, n: int) -> dict:
    """Workspace `ws`: network `corp`, gateway `gw-<ws>` and client `laptop-<ws>`
    (node ids are unique across the document). `n` picks the public endpoint."""
    return {
        "networks": [{"id": "corp", "overlay": "100.80.0.0/22", "routes": ["10.20.0.0/16"]}],
        "nodes": [
            {
                "id": f"gw-{ws}",
                "public_key": key(f"gw-{ws}"),
                "status": "active",
                "memberships": [{"network": "corp", "address": "100.80.0.1"}],
            },
            {
                "id": f"laptop-{ws}",
                "public_key": key(f"laptop-{ws}"),
                "status": "active",
                "memberships": [{"network": "corp"}],
            },
        ],
        "gateways": [
            {
                "id": f"gw-{ws}",
                "node": f"gw-{ws}",
                "region": "eu",
                "networks": ["corp"],
                "roles": ["ingress", "egress"],
                "endpoint": f"203.0.113.{n}:51820",
                "listen_port": 51820,
            }
        ],
    }


def two_workspaces() -> dict:
    """Regions `eu` and `us`; workspaces `acme` and `globex` (tenants reuse the same
    overlay and routes), each with network, gateway and client."""
    return {
        "version": 1,
        "regions": [{"id": "eu", "state": "active"}, {"id": "us", "state": "active"}],
        "workspaces": [
            {"id": "acme", "tenant": "acme-corp", "regions": ["eu"], **workspace_contents("acme", 10)},
            {"id": "globex", "tenant": "globex-inc", "regions": ["eu"], **workspace_contents("globex", 20)},
        ],
    }
