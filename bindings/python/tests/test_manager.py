"""`nanami.Manager` against a real gateway manager process (see conftest.py):
objects with revisions, scopes, conflicts, validation, node lifecycle, audit."""

import copy
import socket
import threading

import pytest

import documents
import nanami


def node_doc(ws: str, id: str, **fields) -> dict:
    doc = {
        "id": id,
        "public_key": documents.key(id),
        "status": "active",
        "memberships": [{"network": "corp"}],
    }
    doc.update(fields)
    return doc


# Objects -------------------------------------------------------------------------


def test_objects_round_trip_with_revisions(manager):
    m = manager.client()
    assert [r.id for r in m.regions()] == ["eu", "us"]
    assert [w.id for w in m.workspaces()] == ["acme", "globex"]
    assert m.workspace("acme").object == {"id": "acme", "tenant": "acme-corp", "regions": ["eu"]}

    nodes = m.nodes("acme")
    assert [n.id for n in nodes] == ["gw-acme", "laptop-acme"]
    laptop = m.node("acme", "laptop-acme")
    assert laptop == nodes[1]
    assert laptop.object["public_key"] == documents.key("laptop-acme")
    assert laptop.to_dict() == {"revision": laptop.revision, "object": laptop.object}

    # Create (create-only), read back, replace at its revision, delete at its revision.
    new = node_doc("acme", "phone-acme")
    created = m.put_node("acme", new, create_only=True)
    assert (created.kind, created.workspace, created.id) == ("node", "acme", "phone-acme")
    assert created.object == new
    assert "gw-acme" in created.changed, "the gateway serving the new client changed"
    read = m.node("acme", "phone-acme")
    assert read.revision == created.revision
    assert read.object["id"] == "phone-acme"

    changed = m.put_node("acme", {**read.object, "endpoints": ["198.51.100.9:51820"]},
                         if_match=read.revision)
    assert changed.revision != read.revision
    assert m.node("acme", "phone-acme").object["endpoints"] == ["198.51.100.9:51820"]

    deleted = m.delete_node("acme", "phone-acme", if_match=changed.revision)
    assert deleted.revision is None and deleted.object is None
    with pytest.raises(nanami.ObjectNotFoundError) as e:
        m.node("acme", "phone-acme")
    assert e.value.status == 404

    # Networks, gateways and regions the same way.
    net = m.network("acme", "corp")
    assert m.put_network("acme", {**net.object, "routes": ["10.20.0.0/16", "10.21.0.0/16"]},
                         if_match=net.revision).revision != net.revision
    gw = m.gateway("acme", "gw-acme")
    assert m.put_gateway("acme", {**gw.object, "capacity": 10}, if_match=gw.revision).revision
    assert m.gateway("acme", "gw-acme").object["capacity"] == 10
    assert m.put_region({"id": "ap", "state": "active", "display_name": "Asia Pacific"},
                        create_only=True).kind == "region"
    assert m.region("ap").object["display_name"] == "Asia Pacific"
    m.delete_region("ap", if_match=m.region("ap").revision)
    assert [r.id for r in m.regions()] == ["eu", "us"]

    # A workspace created, given contents, exported, deleted.
    m.put_workspace({"id": "initech", "tenant": "initech", "regions": ["us"]}, create_only=True)
    m.put_network("initech", {"id": "corp", "overlay": "100.80.0.0/22"})
    doc = m.export_topology()
    assert [w["id"] for w in doc["workspaces"]] == ["acme", "globex", "initech"]
    assert nanami.validate(doc) == []
    m.delete_workspace("initech", if_match=m.workspace("initech").revision)
    assert [w.id for w in m.workspaces()] == ["acme", "globex"]


def test_preconditions(manager):
    m = manager.client()
    laptop = m.node("acme", "laptop-acme")
    # create_only on an existing object: 412 with its revision.
    with pytest.raises(nanami.ConflictError) as e:
        m.put_node("acme", laptop.object, create_only=True)
    assert e.value.current_revision == laptop.revision
    assert e.value.status == 412
    # if_match="*" on a missing object: 412, nothing there.
    with pytest.raises(nanami.ConflictError) as e:
        m.put_node("acme", node_doc("acme", "ghost"), if_match="*")
    assert e.value.current_revision is None
    with pytest.raises(nanami.ObjectNotFoundError):
        m.node("acme", "ghost")
    with pytest.raises(ValueError, match="exclude each other"):
        m.put_node("acme", laptop.object, if_match=laptop.revision, create_only=True)
    # A stale revision on delete.
    m.put_node("acme", {**laptop.object, "status": "disabled"}, if_match=laptop.revision)
    with pytest.raises(nanami.ConflictError):
        m.delete_node("acme", "laptop-acme", if_match=laptop.revision)
    assert m.node("acme", "laptop-acme").object["status"] == "disabled"


@pytest.mark.parametrize("round", range(5))
def test_two_writers_with_one_revision_exactly_one_wins_and_nothing_is_lost(manager, round):
    start = manager.client().node("acme", "laptop-acme")
    endpoint = [f"198.51.100.{round + 1}:51820"]
    membership = [{"network": "corp", "address": f"100.80.0.{50 + round}"}]
    writers = {  # each its own Manager, as two programs would be
        "a": (manager.client(), {**start.object, "endpoints": endpoint}),
        "b": (manager.client(), {**start.object, "memberships": membership}),
    }
    barrier = threading.Barrier(len(writers))
    outcomes = {}

    def write(name):
        client, doc = writers[name]
        barrier.wait()
        try:
            outcomes[name] = client.put_node("acme", doc, if_match=start.revision)
        except nanami.ConflictError as e:
            outcomes[name] = e

    threads = [threading.Thread(target=write, args=(n,)) for n in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()

    won = [n for n, o in outcomes.items() if isinstance(o, nanami.Written)]
    lost = [n for n, o in outcomes.items() if isinstance(o, nanami.ConflictError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner, loser = won[0], lost[0]
    # The loser is told the winner's revision, and the stored object is the winner's.
    assert outcomes[loser].current_revision == outcomes[winner].revision
    now = manager.client().node("acme", "laptop-acme")
    assert now.revision == outcomes[winner].revision
    assert now.object == writers[winner][1]
    # One audit entry for the one accepted write.
    entries = [e for e in manager.client().audit().entries if e.id == "laptop-acme"]
    assert [(e.old_revision, e.new_revision) for e in entries] == [
        (start.revision, outcomes[winner].revision)
    ]

    # Nothing is lost: the loser re-reads, merges its change and writes again.
    client, mine = writers[loser]
    merged = dict(now.object)
    for k, v in mine.items():
        if start.object.get(k) != v:
            merged[k] = v
    client.put_node("acme", merged, if_match=now.revision)
    final = manager.client().node("acme", "laptop-acme").object
    assert final["endpoints"] == endpoint
    assert final["memberships"] == membership


def test_an_invalid_write_raises_validation_error_with_the_local_issues(manager):
    m = manager.client()
    before = m.export_topology()
    bad = node_doc("acme", "bad-node", public_key="not-a-key",
                   memberships=[{"network": "nowhere"}])
    with pytest.raises(nanami.ValidationError) as e:
        m.put_node("acme", bad)
    # The same issues local validation finds in the document the write would make.
    after = copy.deepcopy(before)
    after["workspaces"][0]["nodes"].append(bad)
    local = nanami.validate(after)
    assert len(local) == 2
    assert e.value.issues == local
    assert all(isinstance(i, nanami.Issue) for i in e.value.issues)
    assert e.value.status == 422
    # Nothing changed.
    assert m.export_topology() == before
    with pytest.raises(nanami.ObjectNotFoundError):
        m.node("acme", "bad-node")


# Scopes --------------------------------------------------------------------------


def globex_attempts(m: nanami.Manager, platform: nanami.Manager):
    """Every way a client can read, list, change or mint for globex's objects."""
    net = platform.network("globex", "corp").object
    node = platform.node("globex", "laptop-globex").object
    gw = platform.gateway("globex", "gw-globex").object
    return {
        "get workspace": lambda: m.workspace("globex"),
        "list networks": lambda: m.networks("globex"),
        "get network": lambda: m.network("globex", "corp"),
        "put network": lambda: m.put_network("globex", {**net, "routes": []}),
        "delete network": lambda: m.delete_network("globex", "corp"),
        "list nodes": lambda: m.nodes("globex"),
        "get node": lambda: m.node("globex", "laptop-globex"),
        "put node": lambda: m.put_node("globex", {**node, "status": "disabled"}),
        "create node": lambda: m.put_node("globex", node_doc("globex", "intruder"), create_only=True),
        "delete node": lambda: m.delete_node("globex", "laptop-globex"),
        "list gateways": lambda: m.gateways("globex"),
        "get gateway": lambda: m.gateway("globex", "gw-globex"),
        "put gateway": lambda: m.put_gateway("globex", {**gw, "capacity": 1}),
        "delete gateway": lambda: m.delete_gateway("globex", "gw-globex"),
        "enable node": lambda: m.enable_node("globex", "laptop-globex"),
        "disable node": lambda: m.disable_node("globex", "laptop-globex"),
        "revoke node": lambda: m.revoke_node("globex", "laptop-globex"),
        "rotate key": lambda: m.rotate_key("globex", "laptop-globex", documents.key("new")),
        "token for gateway": lambda: m.create_token(gateway="gw-globex"),
        "token for node": lambda: m.create_token(node="laptop-globex"),
        "mint credential": lambda: m.mint_workspace_credential("globex"),
        "change workspace": lambda: m.put_workspace(
            {"id": "globex", "tenant": "globex-inc", "regions": ["eu", "us"]}),
        "delete workspace": lambda: m.delete_workspace("globex"),
        # A workspace that does not exist reads the same as one that is hidden, so
        # creating one cannot tell whether its id is taken.
        "create workspace": lambda: m.put_workspace(
            {"id": "initech", "tenant": "initech", "regions": ["eu"]}),
        "get missing workspace": lambda: m.workspace("nowhere"),
        "list missing workspace": lambda: m.nodes("nowhere"),
    }


def platform_attempts(m: nanami.Manager):
    """Platform scope: the region catalog, its own workspace's region access
    grants, credentials, the whole document."""
    return {
        "list regions": lambda: m.regions(),
        "get region": lambda: m.region("eu"),
        "put region": lambda: m.put_region({"id": "eu", "state": "draining"}),
        "create region": lambda: m.put_region({"id": "ap", "state": "active"}),
        "delete region": lambda: m.delete_region("us"),
        "grant own workspace a region": lambda: m.put_workspace(
            {"id": "acme", "tenant": "acme-corp", "regions": ["eu", "us"]}),
        "delete own workspace": lambda: m.delete_workspace("acme"),
        "mint own credential": lambda: m.mint_workspace_credential("acme"),
        "import topology": lambda: m.import_topology(documents.two_workspaces()),
        "export topology": lambda: m.export_topology(),
    }


def test_a_workspace_credential_cannot_see_or_touch_another_workspace(manager):
    platform = manager.client()
    credential = platform.mint_workspace_credential("acme")
    assert credential.workspace == "acme"
    assert credential.expose_secret().startswith("nmw_")
    assert credential.expose_secret() not in repr(credential)
    acme = manager.client(credential)
    before = platform.export_topology()
    audit_before = len(platform.audit().entries)

    failures = []
    for name, attempt in globex_attempts(acme, platform).items():
        try:
            attempt()
            failures.append(f"{name}: succeeded")
        except nanami.ObjectNotFoundError as e:
            assert e.status == 404
        except Exception as e:  # noqa: BLE001 - anything else is a failure listed below
            failures.append(f"{name}: {type(e).__name__}: {e}")
    for name, attempt in platform_attempts(acme).items():
        try:
            attempt()
            failures.append(f"{name}: succeeded")
        except nanami.ForbiddenError as e:
            assert e.status == 403
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert failures == [], "\n".join(failures)
    # Hidden reads exactly like missing.
    with pytest.raises(nanami.ObjectNotFoundError) as hidden:
        acme.node("globex", "x")
    with pytest.raises(nanami.ObjectNotFoundError) as missing:
        acme.node("nowhere", "x")
    assert str(hidden.value).replace("globex", "X") == str(missing.value).replace("nowhere", "X")

    # It sees that only its own workspace exists, and works in it.
    assert [w.id for w in acme.workspaces()] == ["acme"]
    assert [n.id for n in acme.nodes("acme")] == ["gw-acme", "laptop-acme"]
    written = acme.disable_node("acme", "laptop-acme")
    assert written.workspace == "acme"
    token = acme.create_token(node="laptop-acme")
    assert (token.subject_kind, token.subject_id) == ("node", "laptop-acme")
    assert token.expose_secret() not in repr(token)
    # Its audit view is its own workspace's entries; globex is untouched.
    assert {e.workspace for e in acme.audit().entries} == {"acme"}
    after = platform.export_topology()
    assert after["workspaces"][1] == before["workspaces"][1]
    assert after["regions"] == before["regions"]
    assert len(platform.audit().entries) == audit_before + 1


def test_operator_reads_but_never_writes(manager):
    op = manager.operator()
    assert [w.id for w in op.workspaces()] == ["acme", "globex"]
    assert op.node("globex", "laptop-globex").id == "laptop-globex"
    with pytest.raises(nanami.ForbiddenError):
        op.disable_node("globex", "laptop-globex")
    with pytest.raises(nanami.ForbiddenError):
        op.put_region({"id": "ap", "state": "active"})


def test_no_or_a_wrong_credential_is_unauthorized(manager):
    for m in [manager.client("nmw_" + "0" * 40), nanami.Manager(manager.url, manager.ca)]:
        with pytest.raises(nanami.UnauthorizedError) as e:
            m.workspaces()
        assert e.value.status == 401


# Node lifecycle and audit -------------------------------------------------------------


def test_node_lifecycle(manager):
    m = manager.client()
    start = m.node("acme", "laptop-acme")
    disabled = m.disable_node("acme", "laptop-acme", if_match=start.revision)
    assert m.node("acme", "laptop-acme").object["status"] == "disabled"
    assert disabled.changed, "the client's gateway lost its peer"
    with pytest.raises(nanami.ConflictError) as e:
        m.enable_node("acme", "laptop-acme", if_match=start.revision)
    assert e.value.current_revision == disabled.revision
    m.enable_node("acme", "laptop-acme", if_match=disabled.revision)
    assert m.node("acme", "laptop-acme").object["status"] == "active"

    _, public = nanami.generate_keypair()
    m.rotate_key("acme", "laptop-acme", public)
    assert m.node("acme", "laptop-acme").object["public_key"] == public.to_base64()
    m.rotate_key("acme", "laptop-acme", documents.key("rotated"))
    assert m.node("acme", "laptop-acme").object["public_key"] == documents.key("rotated")
    with pytest.raises(nanami.ValidationError):
        m.rotate_key("acme", "laptop-acme", documents.key("gw-acme"))  # another node's key

    m.revoke_node("acme", "laptop-acme")
    assert m.node("acme", "laptop-acme").object["status"] == "revoked"
    with pytest.raises(nanami.ObjectNotFoundError):
        m.disable_node("acme", "no-such-node")


def test_audit_pages(manager):
    m = manager.client()
    for status in ["disabled", "active", "disabled"]:
        node = m.node("acme", "laptop-acme")
        m.put_node("acme", {**node.object, "status": status}, if_match=node.revision)
    everything = m.audit()
    assert everything.next_after is None
    mine = [e for e in everything.entries if e.id == "laptop-acme"]
    assert len(mine) == 3
    assert [e.credential_kind for e in mine] == ["platform"] * 3
    assert all("status" in e.diff for e in mine), [e.diff for e in mine]
    assert mine[1].old_revision == mine[0].new_revision
    assert mine[0].to_dict()["object"] == {"kind": "node", "workspace": "acme", "id": "laptop-acme"}

    pages, after = [], None
    while True:
        page = m.audit(after=after, limit=1)
        pages.extend(page.entries)
        if page.next_after is None:
            break
        assert len(page) == 1
        after = page.next_after
    assert [e.seq for e in pages] == [e.seq for e in everything.entries]


# The client itself --------------------------------------------------------------------


def test_repr_never_shows_the_credential(manager):
    m = manager.client()
    assert manager.platform_credential not in repr(m)
    assert repr(m) == f"Manager({manager.url!r}, credential=<platform>)"
    w = manager.client(m.mint_workspace_credential("acme"))
    assert "<workspace>" in repr(w)


def test_an_unreachable_manager_raises(manager_binary, tmp_path):
    from conftest import RunningManager

    stopped = RunningManager(manager_binary, tmp_path)
    client = stopped.client()
    stopped.stop()
    with pytest.raises(nanami.ManagerUnreachableError):
        client.workspaces()
    with pytest.raises(ValueError):
        nanami.Manager("ftp://example", None, "x")


def test_calls_release_the_gil():
    """A call waiting on a manager that never answers lets other Python threads run."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        m = nanami.Manager(f"http://127.0.0.1:{port}", None, "nmc_x", timeout=1.0)
        done = threading.Event()
        ticks = 0

        def count():
            nonlocal ticks
            while not done.is_set():
                ticks += 1

        counter = threading.Thread(target=count)
        counter.start()
        try:
            before = ticks
            with pytest.raises(nanami.ManagerUnreachableError, match="did not answer"):
                m.workspaces()
            during = ticks - before
        finally:
            done.set()
            counter.join()
        # Had the call held the GIL for its whole second, the counter could not
        # have run during it (at most one 5 ms switch interval at its edges, a
        # few ten thousand ticks); released, it counts for the whole second.
        assert during > 200_000, during
