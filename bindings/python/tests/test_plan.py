"""nanami.plan: the ops that take an observed gateway to its desired state."""

import json

import pytest

import nanami

EMPTY = {"interfaces": {}, "routes": [], "rules": [], "filter": None, "forwarding": []}


@pytest.fixture(scope="module")
def desired(example_path):
    return nanami.Topology.load(example_path).compile_gateway("gw-fra-1")


def test_equal_states_need_nothing(desired):
    p = nanami.plan(desired, desired)
    assert isinstance(p, nanami.Plan)
    assert len(p) == 0 and not p and p.is_converged
    assert list(p) == [] and p.ops == []
    assert p.render().strip() == "= converged"
    assert json.loads(p.to_json()) == {"ops": []}
    assert repr(p) == "Plan(0 ops)"


def test_from_nothing_builds_everything_in_phase_order(desired):
    p = nanami.plan(desired, EMPTY)
    ops = list(p)
    assert len(ops) == len(p) > 0 and not p.is_converged
    assert all(isinstance(op, nanami.Op) for op in ops)
    kinds = [op.kind for op in ops]
    assert kinds[0] == "create_interface"
    assert kinds[-1] == "enable_forwarding"
    assert kinds.index("add_peer") < kinds.index("replace_filter") < kinds.index("add_route") < kinds.index("add_rule")
    assert [op.phase for op in ops] == sorted(
        (op.phase for op in ops),
        key=[
            "create_interfaces",
            "interface_attributes",
            "add_addresses",
            "peers",
            "filter",
            "add_routes",
            "add_rules",
            "forwarding",
        ].index,
    )
    lines = p.render().splitlines()
    assert len(lines) == len(ops)
    assert [str(op) for op in ops] == lines
    assert p[0] == ops[0] and p[-1] == ops[-1]
    with pytest.raises(IndexError):
        p[len(p)]
    assert p.to_dict() == json.loads(p.to_json())
    assert p.to_dict()["ops"][0] == ops[0].to_dict()


def test_op_fields_are_attributes(desired):
    ops = list(nanami.plan(desired, EMPTY))
    create = ops[0]
    assert create.interface == "nm-gw-fra-1"
    assert create.listen_port == 51820
    assert create.mtu == 1420
    assert create.to_dict() == {"op": "create_interface", "interface": "nm-gw-fra-1", "listen_port": 51820, "mtu": 1420}
    peer = next(op for op in ops if op.kind == "add_peer")
    assert peer.peer["allowed_ips"]
    assert len(peer.public_key) == 44
    with pytest.raises(AttributeError):
        create.public_key
    with pytest.raises(AttributeError):
        create.op
    assert "create_interface" in repr(create)


def test_apply_to_converges_in_one_pass(desired):
    p = nanami.plan(desired, EMPTY)
    after = p.apply_to(EMPTY)
    assert after == desired
    assert nanami.plan(desired, after).is_converged


def test_changed_peer_endpoint_is_one_update(desired):
    observed = desired.to_dict()
    peers = observed["interfaces"]["nm-gw-fra-1"]["peers"]
    key = next(k for k, v in peers.items() if v["endpoint"])
    peers[key]["endpoint"] = "192.0.2.99:4444"
    p = nanami.plan(desired, observed)
    assert [op.kind for op in p] == ["update_peer"]
    assert p[0].public_key == key
    assert p[0].peer["endpoint"] == "198.51.100.7:51820"


def test_foreign_objects_are_never_touched_and_report_form_is_read(desired):
    observed = desired.to_dict()
    observed["interfaces"]["eth0"] = {"listen_port": None, "mtu": 1500, "addresses": ["192.0.2.1/24"], "peers": {}}
    observed["routes"].append({"table": 254, "destination": "0.0.0.0/0", "interface": "eth0", "protocol": 4})
    assert nanami.plan(desired, observed).is_converged
    report = {"state": observed, "telemetry": {}}
    assert nanami.plan(desired, report).is_converged
    del observed["interfaces"]["nm-gw-fra-1"]
    p = nanami.plan(desired, {"state": observed})
    assert "eth0" not in p.render()
    assert p[0].kind == "create_interface"


def test_bad_states_raise_parse_error(desired):
    with pytest.raises(nanami.ParseError, match="observed state"):
        nanami.plan(desired, {"interfaces": 5})
    with pytest.raises(nanami.ParseError, match="desired state"):
        nanami.plan({"nonsense": True}, desired)
    with pytest.raises(nanami.ParseError):
        nanami.GatewayState.from_json("{")
