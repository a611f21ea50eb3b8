"""Nanami from Python: validate a topology document, compile each gateway's desired
state and each client's WireGuard configuration, and plan the changes that take a
gateway from what it has to what it must have.

>>> import nanami
>>> topology = nanami.Topology.load("examples/topology.yaml")   # doctest: +SKIP
>>> state = topology.compile_gateway("gw-fra-1")                 # doctest: +SKIP
>>> print(topology.client_config("laptop-ben").to_wg_quick())    # doctest: +SKIP

Everything here is implemented in Rust (``nanami._nanami``); this module only
re-exports it. Errors derive from :class:`NanamiError`.
"""

from nanami._nanami import (
    ClientConfig,
    ClientPeer,
    CompileError,
    FilterRule,
    FilterSet,
    GatewayChoice,
    GatewayState,
    Health,
    Interface,
    InvalidIdError,
    InvalidKeyError,
    Issue,
    NanamiError,
    NatRule,
    NodeIsGatewayError,
    NodeNotActiveError,
    NotFoundError,
    Op,
    ParseError,
    Peer,
    Plan,
    PrivateKey,
    PublicKey,
    Route,
    Rule,
    Topology,
    ValidationError,
    __version__,
    generate_keypair,
    plan,
    validate,
)

__all__ = [
    "ClientConfig",
    "ClientPeer",
    "CompileError",
    "FilterRule",
    "FilterSet",
    "GatewayChoice",
    "GatewayState",
    "Health",
    "Interface",
    "InvalidIdError",
    "InvalidKeyError",
    "Issue",
    "NanamiError",
    "NatRule",
    "NodeIsGatewayError",
    "NodeNotActiveError",
    "NotFoundError",
    "Op",
    "ParseError",
    "Peer",
    "Plan",
    "PrivateKey",
    "PublicKey",
    "Route",
    "Rule",
    "Topology",
    "ValidationError",
    "__version__",
    "generate_keypair",
    "plan",
    "validate",
]
