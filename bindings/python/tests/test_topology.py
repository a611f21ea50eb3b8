"""Reading and validating topology documents."""

import json
import os
import threading
import time

import pytest

import documents
import nanami


def test_load_yaml_text_json_and_dict_agree(example_path, example_text, small_doc):
    from_file = nanami.Topology.load(example_path)
    from_text = nanami.Topology.from_yaml(example_text)
    assert from_file.gateway_ids() == from_text.gateway_ids() == ["gw-fra-1", "gw-nyc-1", "gx-gw-1"]
    assert from_file.workspaces == ["acme", "globex"]

    a = nanami.Topology.from_dict(small_doc)
    b = nanami.Topology.from_json(json.dumps(small_doc))
    c = nanami.Topology.from_yaml(json.dumps(small_doc))  # YAML reads JSON too
    for t in (a, b, c):
        assert t.node_ids() == ["gw-a", "laptop-1", "laptop-2"]
    assert a.compile_gateway("gw-a") == b.compile_gateway("gw-a") == c.compile_gateway("gw-a")


def test_load_accepts_str_and_pathlike_and_reads_json_by_extension(tmp_path, small_doc):
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(small_doc))
    assert nanami.Topology.load(path).gateway_ids() == ["gw-a"]
    assert nanami.Topology.load(str(path)).gateway_ids() == ["gw-a"]


def test_load_missing_file_is_file_not_found_with_its_name(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError) as info:
        nanami.Topology.load(missing)
    assert info.value.filename == str(missing)


def test_client_ids_are_active_non_gateway_nodes(example_path):
    t = nanami.Topology.load(example_path)
    assert t.client_ids() == ["ci-runner", "gx-build-1", "gx-laptop-1", "laptop-ana", "laptop-ben"]
    assert "phone-cho" in t.node_ids() and "gw-fra-1" in t.node_ids()
    assert repr(t) == "Topology(workspaces=2, nodes=11, gateways=3)"


def test_topology_has_no_public_constructor():
    with pytest.raises(TypeError):
        nanami.Topology()


def test_validate_valid_document_returns_no_issues(example_path, example_text, small_doc):
    assert nanami.validate(example_text) == []
    assert nanami.validate(example_path) == []
    assert nanami.validate(small_doc) == []
    assert nanami.Topology.validate(small_doc) == []


def broken(doc: dict) -> dict:
    ws = doc["workspaces"][0]
    ws["nodes"][1]["public_key"] = "not-a-key"
    ws["networks"][0]["overlay"] = "100.80.0.0/33"
    ws["gateways"][0]["region"] = "mars"
    return doc


def test_validate_reports_every_problem_with_its_path(small_doc):
    issues = nanami.validate(broken(small_doc))
    paths = [i.path for i in issues]
    assert "workspaces[acme].nodes[laptop-1].public_key" in paths
    assert "workspaces[acme].networks[corp].overlay" in paths
    assert "workspaces[acme].gateways[gw-a].region" in paths
    assert len(issues) >= 3
    key_issue = next(i for i in issues if i.path.endswith("public_key"))
    assert "WireGuard key" in key_issue.message
    assert str(key_issue) == f"{key_issue.path}: {key_issue.message}"
    assert isinstance(key_issue, nanami.Issue)
    assert key_issue == nanami.Issue(key_issue.path, key_issue.message)
    assert hash(key_issue) == hash(nanami.Issue(key_issue.path, key_issue.message))


@pytest.mark.parametrize("constructor", ["dict", "json", "yaml", "file"])
def test_constructors_raise_validation_error_carrying_all_issues(constructor, small_doc, tmp_path):
    doc = broken(small_doc)
    expected = nanami.validate(doc)
    with pytest.raises(nanami.ValidationError) as info:
        if constructor == "dict":
            nanami.Topology.from_dict(doc)
        elif constructor == "json":
            nanami.Topology.from_json(json.dumps(doc))
        elif constructor == "yaml":
            nanami.Topology.from_yaml(json.dumps(doc))
        else:
            path = tmp_path / "bad.json"
            path.write_text(json.dumps(doc))
            nanami.Topology.load(path)
    err = info.value
    assert isinstance(err, nanami.NanamiError)
    assert err.issues == expected
    assert f"{len(expected)} problems in the topology" in str(err)
    for issue in expected:
        assert str(issue) in str(err)


def test_unreadable_documents_raise_parse_error(small_doc):
    with pytest.raises(nanami.ParseError, match="YAML"):
        nanami.Topology.from_yaml("version: [1\n")
    with pytest.raises(nanami.ParseError, match="JSON"):
        nanami.Topology.from_json("{")


def test_unknown_fields_are_issues_with_their_paths(small_doc):
    # Reported by validation next to every other problem, not as a parse error.
    small_doc["surprise"] = True
    small_doc["workspaces"][0]["gateways"][0]["colour"] = "blue"
    paths = [i.path for i in nanami.validate(small_doc)]
    assert "surprise" in paths
    assert "workspaces[acme].gateways[gw-a].colour" in paths
    with pytest.raises(nanami.ValidationError, match="unknown field `surprise`"):
        nanami.Topology.from_dict(small_doc)


def test_unreadable_values_raise_parse_error():
    with pytest.raises(nanami.ParseError):
        nanami.validate({"version": 1, "regions": [], "workspaces": [], "x": object()})
    with pytest.raises(nanami.ParseError):
        nanami.validate("- just\n- a list\n")


def test_wrong_argument_types_are_type_errors():
    with pytest.raises(TypeError):
        nanami.validate(42)
    with pytest.raises(TypeError):
        nanami.Topology.from_yaml(b"version: 1")


def test_heavy_calls_release_the_gil():
    """A Python thread keeps running while Rust parses and compiles.

    Were the GIL held, the counting thread could not run at all during one call
    (the interpreter only switches threads between bytecodes)."""
    text = json.dumps(documents.big_doc(workspaces=10, nodes_per_workspace=1000))
    ticks = 0
    stop = False

    def count():
        nonlocal ticks
        while not stop:
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.02)
        before = ticks
        topology = nanami.Topology.from_json(text)
        parsing = ticks - before
        before = ticks
        topology.compile_all()
        compiling = ticks - before
    finally:
        stop = True
        counter.join()
    assert parsing > 1000
    assert compiling > 1000
