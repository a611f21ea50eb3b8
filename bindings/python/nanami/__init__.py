"""Nanami from Python: validate a topology document, compile each gateway's desired
state and each client's WireGuard configuration, plan the changes that take a
gateway from what it has to what it must have, and drive a gateway manager's
object API (:class:`Manager`).

>>> import nanami
>>> topology = nanami.Topology.load("examples/topology.yaml")   # doctest: +SKIP
>>> state = topology.compile_gateway("gw-fra-1")                 # doctest: +SKIP
>>> print(topology.client_config("laptop-ben").to_wg_quick())    # doctest: +SKIP
>>> manager = nanami.Manager("https://127.0.0.1:7443", "ca.pem", token)  # doctest: +SKIP
>>> node = manager.node("acme", "laptop-1")                      # doctest: +SKIP
>>> manager.put_node("acme", {**node.object, "status": "disabled"},
...                  if_match=node.revision)                     # doctest: +SKIP

Everything here is implemented in Rust (``nanami._nanami``); this module only
re-exports it. Errors derive from :class:`NanamiError`.
"""

from nanami._nanami import (
    ApiError,
    AuditEntry,
    AuditPage,
    ClientConfig,
    ClientPeer,
    CompileError,
    ConflictError,
    EnrolmentToken,
    FilterRule,
    FilterSet,
    ForbiddenError,
    GatewayChoice,
    GatewayState,
    Health,
    Interface,
    InvalidIdError,
    InvalidKeyError,
    Issue,
    Manager,
    ManagerUnreachableError,
    NanamiError,
    NatRule,
    NodeIsGatewayError,
    NodeNotActiveError,
    NotFoundError,
    ObjectNotFoundError,
    Op,
    ParseError,
    Peer,
    Plan,
    PrivateKey,
    PublicKey,
    Route,
    Rule,
    Topology,
    UnauthorizedError,
    ValidationError,
    Versioned,
    WorkspaceCredential,
    Written,
    __version__,
    generate_keypair,
    plan,
    validate,
)

__all__ = [
    "ApiError",
    "AuditEntry",
    "AuditPage",
    "ClientConfig",
    "ClientPeer",
    "CompileError",
    "ConflictError",
    "EnrolmentToken",
    "FilterRule",
    "FilterSet",
    "ForbiddenError",
    "GatewayChoice",
    "GatewayState",
    "Health",
    "Interface",
    "InvalidIdError",
    "InvalidKeyError",
    "Issue",
    "Manager",
    "ManagerUnreachableError",
    "NanamiError",
    "NatRule",
    "NodeIsGatewayError",
    "NodeNotActiveError",
    "NotFoundError",
    "ObjectNotFoundError",
    "Op",
    "ParseError",
    "Peer",
    "Plan",
    "PrivateKey",
    "PublicKey",
    "Route",
    "Rule",
    "Topology",
    "UnauthorizedError",
    "ValidationError",
    "Versioned",
    "WorkspaceCredential",
    "Written",
    "__version__",
    "generate_keypair",
    "plan",
    "validate",
]
