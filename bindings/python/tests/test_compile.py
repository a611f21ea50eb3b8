"""Compiling gateways and clients, with attribute access and dict forms."""

import json

import pytest

import documents
import nanami


@pytest.fixture(scope="module")
def topology(example_path):
    return nanami.Topology.load(example_path)


def test_gateway_state_attributes(topology):
    state = topology.compile_gateway("gw-fra-1")
    assert isinstance(state, nanami.GatewayState)
    assert list(state.interfaces) == ["nm-gw-fra-1"]
    iface = state.interfaces["nm-gw-fra-1"]
    assert iface.name == "nm-gw-fra-1"
    assert iface.listen_port == 51820
    assert iface.mtu == 1420
    assert "100.80.0.1/32" in iface.addresses
    # laptop-ana (corp, explicit address) and laptop-ben (corp) are assigned here.
    assert state.peer_count == len(iface.peers) == 2
    ana = iface.peers["5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ="]
    assert ana.public_key == "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ="
    assert ana.allowed_ips == ["100.80.0.10/32"]
    assert ana.endpoint == "198.51.100.7:51820"
    assert ana.persistent_keepalive is None
    assert [r.destination for r in state.routes] == [
        "100.80.0.0/22",
        "100.81.0.0/24",
        "fd7a:115c:a1e0:81::/64",
    ]
    assert all(r.interface == "nm-gw-fra-1" and r.table == 7373 and r.protocol == 73 for r in state.routes)
    assert {r.destination for r in state.rules} == {r.destination for r in state.routes}
    assert state.forwarding == ["v4", "v6"]
    assert state.filter is not None
    destinations = {(a.source, a.destination) for a in state.filter.accept}
    assert ("100.80.0.0/22", "internet") in destinations  # exit role, exit network
    assert ("100.80.0.0/22", "10.20.0.0/16") in destinations  # egress to routes
    assert {(m.source, m.destination) for m in state.filter.masquerade} == {
        ("100.80.0.0/22", "10.20.0.0/16"),
        ("100.80.0.0/22", "internet"),
    }
    assert "nm-gw-fra-1" in repr(state)


def test_to_dict_is_the_json_form(topology):
    state = topology.compile_gateway("gw-fra-1")
    d = state.to_dict()
    assert d == json.loads(state.to_json())
    assert set(d) == {"interfaces", "routes", "rules", "filter", "forwarding"}
    assert d["interfaces"]["nm-gw-fra-1"]["listen_port"] == 51820
    assert d["forwarding"] == ["v4", "v6"]
    assert state.routes[0].to_dict() == d["routes"][0]
    assert state.interfaces["nm-gw-fra-1"].to_dict() == d["interfaces"]["nm-gw-fra-1"]
    # The dict form reads back to an equal state.
    assert nanami.GatewayState.from_dict(d) == state
    assert nanami.GatewayState.from_json(state.to_json()) == state


def test_compile_all_matches_compile_gateway(topology):
    every = topology.compile_all()
    assert list(every) == topology.gateway_ids()
    for gw, state in every.items():
        assert state == topology.compile_gateway(gw)


def test_client_config(topology):
    config = topology.client_config("laptop-ben")
    assert isinstance(config, nanami.ClientConfig)
    assert config.node == "laptop-ben"
    assert config.workspace == "acme"
    assert config.public_key == "0f9iE4KjyCGVSj+comoVDFBsdl5b1eq/4kXMiJ1oKiU="
    assert config.mtu == 1420
    assert config.unassigned == []
    assert len(config.addresses) == 3
    assert [p.gateway for p in config.peers] == ["gw-fra-1", "gw-nyc-1"]
    fra, nyc = config.peers
    assert fra.networks == ["corp"] and nyc.networks == ["lab"]  # lab is manual: nyc first
    assert fra.endpoint == "203.0.113.10:51820"
    assert fra.public_key == "8X4C2QwIBaOpONJxT0R3eWUCPX5oEfyQOroEBMH2I04="
    assert fra.persistent_keepalive == 25
    assert fra.exit is False
    assert "10.20.0.0/16" in fra.allowed_ips and "100.80.0.0/22" in fra.allowed_ips
    assert config.to_dict() == json.loads(config.to_json())
    assert config.to_dict()["peers"][0] == fra.to_dict()


def test_exit_client_gets_the_default_route(topology):
    ana = topology.client_config("laptop-ana")
    (peer,) = ana.peers
    assert peer.exit is True
    assert "0.0.0.0/0" in peer.allowed_ips


def test_wg_quick_text_with_placeholder_and_with_a_key(topology):
    config = topology.client_config("laptop-ben")
    text = config.to_wg_quick()
    assert "PrivateKey = <PRIVATE_KEY>" in text
    assert "Address = " in text and "MTU = 1420" in text
    assert text.count("[Peer]") == 2
    key, _ = nanami.generate_keypair()
    filled = config.to_wg_quick(key)
    assert f"PrivateKey = {key.expose_secret()}" in filled
    assert filled.replace(key.expose_secret(), "<PRIVATE_KEY>") == text
    wg = config.to_wg(private_key=key)
    assert "Address" not in wg and "MTU" not in wg and "[Peer]" in wg
    with pytest.raises(TypeError):
        config.to_wg_quick("a string is not a key")


def test_health_moves_clients_to_the_next_gateway(topology):
    before = topology.client_config("laptop-ana")
    assert [p.gateway for p in before.peers] == ["gw-fra-1"]
    as_object = topology.client_config("laptop-ana", nanami.Health(offline=["gw-fra-1"]))
    as_dict = topology.client_config("laptop-ana", health={"offline": ["gw-fra-1"]})
    assert as_object == as_dict
    assert [p.gateway for p in as_object.peers] == ["gw-nyc-1"]
    assert topology.compile_gateway("gw-fra-1", health=nanami.Health(offline=["gw-fra-1"])).peer_count == 0
    # Every gateway of the lab network unhealthy: the probe target is more likely down
    # than every gateway, so the client keeps its gateway.
    h = nanami.Health(unhealthy=[("gw-fra-1", "lab"), ("gw-nyc-1", "lab")])
    assert topology.client_config("ci-runner", h).unassigned == []
    # Every gateway of the lab network offline: the client says so.
    h = nanami.Health(offline=["gw-fra-1", "gw-nyc-1"])
    assert topology.client_config("ci-runner", h).unassigned == ["lab"]
    assert topology.client_config("laptop-ben", None) == topology.client_config("laptop-ben")


def test_health_object():
    h = nanami.Health(offline=["gw-b", "gw-a"], unhealthy=[("gw-c", "corp")])
    assert h.offline == ["gw-a", "gw-b"]
    assert h.unhealthy == [("gw-c", "corp")]
    assert not h.is_up("gw-a", "corp") and not h.is_up("gw-c", "corp") and h.is_up("gw-c", "lab")
    assert h.to_dict() == {"offline": ["gw-a", "gw-b"], "unhealthy": [["gw-c", "corp"]]}
    assert nanami.Health.from_dict(h.to_dict()) == h
    assert nanami.Health.all_up() == nanami.Health()
    assert repr(h) == "Health(offline=['gw-a', 'gw-b'], unhealthy=[('gw-c', 'corp')])"
    with pytest.raises(nanami.InvalidIdError):
        nanami.Health(offline=["Not An Id"])
    with pytest.raises(nanami.ParseError):
        nanami.Health.from_dict({"offline": ["gw-a"], "typo": []})


def test_health_argument_of_the_wrong_type(topology):
    with pytest.raises(TypeError):
        topology.compile_gateway("gw-fra-1", health=["gw-fra-1"])
    with pytest.raises(nanami.ParseError):
        topology.compile_gateway("gw-fra-1", health={"offline": "gw-fra-1"})


def test_compile_errors_are_mapped_per_variant(topology):
    with pytest.raises(nanami.NotFoundError) as info:
        topology.compile_gateway("gw-nowhere")
    assert info.value.id == "gw-nowhere"
    assert isinstance(info.value, nanami.CompileError)
    assert isinstance(info.value, nanami.NanamiError)

    with pytest.raises(nanami.NotFoundError) as info:
        topology.client_config("ghost")
    assert info.value.id == "ghost"

    with pytest.raises(nanami.NodeNotActiveError) as info:
        topology.client_config("phone-cho")
    assert info.value.id == "phone-cho"
    assert info.value.status == "pending"
    with pytest.raises(nanami.NodeNotActiveError) as info:
        topology.client_config("laptop-old")
    assert info.value.status == "revoked"

    with pytest.raises(nanami.NodeIsGatewayError) as info:
        topology.client_config("gw-fra-1")
    assert info.value.id == "gw-fra-1"

    with pytest.raises(nanami.InvalidIdError, match="invalid gateway id"):
        topology.compile_gateway("GW_FRA")
    with pytest.raises(nanami.InvalidIdError, match="invalid node id"):
        topology.client_config("")


def test_disabled_nodes_get_nothing(small_doc):
    t = nanami.Topology.from_dict(small_doc)
    assert t.client_ids() == ["laptop-1"]
    state = t.compile_gateway("gw-a")
    assert list(state.interfaces["nm-gw-a"].peers) == [documents.CLIENT_KEY]
    with pytest.raises(nanami.NodeNotActiveError):
        t.client_config("laptop-2")


def test_results_are_deterministic(example_text):
    a = nanami.Topology.from_yaml(example_text)
    b = nanami.Topology.from_yaml(example_text)
    assert a.compile_gateway("gw-nyc-1").to_json() == b.compile_gateway("gw-nyc-1").to_json()
    assert a.client_config("laptop-ben").to_wg_quick() == b.client_config("laptop-ben").to_wg_quick()


def test_client_side_failover_with_a_standby(example_text):
    text = example_text.replace("gateways: { policy: auto, redundancy: 1 }", "gateways: { policy: auto, redundancy: 2 }")
    assert text != example_text
    t = nanami.Topology.from_yaml(text)
    config = t.client_config("laptop-ana")
    chain = [c.gateway for c in config.gateways["corp"]]
    assert chain == ["gw-fra-1", "gw-nyc-1"]
    assert config.gateways["corp"][0].exit_routes == ["0.0.0.0/0"]
    assert config.gateways["corp"][0].addresses == ["100.80.0.1"]  # probed in-tunnel
    assert config.active_gateway("corp") == "gw-fra-1"
    assert config.active_gateway("corp", ["gw-fra-1"]) == "gw-nyc-1"
    assert config.active_gateway("corp", ["gw-fra-1", "gw-nyc-1"]) is None
    standby = next(p for p in config.peers if p.gateway == "gw-nyc-1")
    assert standby.standby_for == ["corp"]
    moved = config.failed_over(["gw-fra-1"])
    assert [p.gateway for p in moved.peers] == [p.gateway for p in config.peers]  # same peers
    nyc = next(p for p in moved.peers if p.gateway == "gw-nyc-1")
    assert "100.80.0.0/22" in nyc.allowed_ips
    assert config.failed_over([]) == config
    assert moved.to_dict()["gateways"] == config.to_dict()["gateways"]
    with pytest.raises(nanami.InvalidIdError):
        config.failed_over(["Bad Id"])
