"""Drives nanami-mobile's uniffi surface from its generated Python bindings, as an
Android or iOS app would drive the Kotlin/Swift ones: a TUN fd handed to
`Tunnel.start`, a wireguard-go gateway to reach, a failover `update` to a second
gateway, `stats`, listener events, `stop`. (A tunnel that follows a real manager,
with failover driven by a cut gateway, is `follow_manager.py`.)

Run by scripts/test-mobile inside a fresh client network namespace
(`ip netns exec $NANAMI_MOBILE_NETNS pytest`), with the generated `nanami_mobile`
module and libnanami_mobile.so on PYTHONPATH. Needs root, `ip`, `wg`,
`wireguard-go`, `ping`: without them the tests fail, never skip.

Addresses exist only inside the namespaces the test creates: underlay 198.18.1.0/24
(client <-> gateway A) and 198.18.2.0/24 (client <-> gateway B), overlay
100.64.0.0/24 (client .2, A .1, B .3).
"""

import json
import os
import shutil
import subprocess
import tempfile

import pytest

import nanami_mobile as nm
from kit import IFF_NO_PI, Events, nanami_threads, open_tun, pings, run, wait_until

TOOLS = ["ip", "wg", "wireguard-go", "ping"]
SUFFIX = str(os.getpid() % 100000)
NS_A, NS_B = f"nmm-a-{SUFFIX}", f"nmm-b-{SUFFIX}"
WG_A, WG_B = f"nmmA{SUFFIX}", f"nmmB{SUFFIX}"
TUN = f"nmmtun{SUFFIX}"


def wg_keypair():
    private = run("wg", "genkey").stdout.strip()
    public = run("wg", "pubkey", input=private).stdout.strip()
    return private, public


def test_prerequisites():
    assert os.geteuid() == 0, "needs root (network namespaces, TUN)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing tools: {missing}"
    ns = os.environ.get("NANAMI_MOBILE_NETNS")
    assert ns, "run inside the client namespace: NANAMI_MOBILE_NETNS unset"
    assert run("ip", "netns", "identify", str(os.getpid())).stdout.strip() == ns, (
        "not running inside the client namespace"
    )


class Gateway:
    """wireguard-go in its own namespace, joined to the client's by a veth."""

    def __init__(self, ns, ifname, subnet, overlay, client_public, psk=None):
        self.ns, self.ifname = ns, ifname
        self.private, self.public = wg_keypair()
        self.endpoint = f"198.18.{subnet}.2:51820"
        self.overlay = overlay
        run("ip", "netns", "add", ns)
        self.proc = None
        run("ip", "-n", ns, "link", "set", "lo", "up")
        # Created from the client's namespace (where this process runs).
        veth_c, veth_g = f"nmmv{subnet}c{SUFFIX}", f"nmmv{subnet}g"
        run("ip", "link", "add", veth_c, "type", "veth", "peer", "name", veth_g, "netns", ns)
        run("ip", "addr", "add", f"198.18.{subnet}.1/24", "dev", veth_c)
        run("ip", "link", "set", veth_c, "up")
        run("ip", "-n", ns, "addr", "add", f"198.18.{subnet}.2/24", "dev", veth_g)
        run("ip", "-n", ns, "link", "set", veth_g, "up")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
            env={**os.environ, "LOG_LEVEL": "error"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.sock = f"/var/run/wireguard/{ifname}.sock"
        wait_until(f"{self.sock}", lambda: os.path.exists(self.sock), timeout=10)
        with tempfile.TemporaryDirectory() as d:
            key = os.path.join(d, "key")
            with open(key, "w") as f:
                f.write(self.private)
            args = ["wg", "set", ifname, "private-key", key, "listen-port", "51820",
                    "peer", client_public, "allowed-ips", "100.64.0.2/32"]
            if psk:
                with open(os.path.join(d, "psk"), "w") as f:
                    f.write(psk)
                args += ["preshared-key", os.path.join(d, "psk")]
            run(*args, ns=ns)
        run("ip", "-n", ns, "addr", "add", f"{overlay}/24", "dev", ifname)
        run("ip", "-n", ns, "link", "set", ifname, "up")

    def latest_handshake(self):
        out = run("wg", "show", self.ifname, "latest-handshakes", ns=self.ns).stdout.split()
        return int(out[1]) if len(out) == 2 else 0

    def close(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def node_config_json(client_public, gw_a, dead_public):
    """The manager's NodeConfig for the client: gw-a active, gw-z a standby that
    never answers (its endpoint has no host)."""
    return json.dumps({
        "node": "phone-1",
        "workspace": "acme",
        "public_key": client_public,
        "addresses": ["100.64.0.2/32"],
        "mtu": 1380,
        "peers": [
            {"gateway": "gw-a", "public_key": gw_a.public, "endpoint": gw_a.endpoint,
             "allowed_ips": ["100.64.0.0/24"], "persistent_keepalive": 25,
             "networks": ["corp"], "exit": False},
            {"gateway": "gw-z", "public_key": dead_public, "endpoint": "198.18.1.99:51820",
             "allowed_ips": [], "persistent_keepalive": 25,
             "networks": [], "exit": False, "standby_for": ["corp"]},
        ],
        "unassigned": [],
    })


def test_tunnel_on_a_tun_fd_pings_fails_over_and_stops_clean():
    test_prerequisites()
    key = nm.PrivateKey.generate()
    client_public = key.public_key()
    assert len(client_public) == 44 and client_public.endswith("=")
    psk = run("wg", "genpsk").stdout.strip()
    _, dead_public = wg_keypair()
    gateways = []
    tunnel = None
    try:
        gw_a = Gateway(NS_A, WG_A, 1, "100.64.0.1", client_public)
        gateways.append(gw_a)
        gw_b = Gateway(NS_B, WG_B, 2, "100.64.0.3", client_public, psk=psk)
        gateways.append(gw_b)

        config = nm.TunnelConfig.from_node_config_json(
            node_config_json(client_public, gw_a, dead_public), key)
        assert config.addresses() == ["100.64.0.2/32"]
        assert config.mtu() == 1380
        assert config.routes() == ["100.64.0.0/24"]
        assert [p.public_key for p in config.peers()] == [gw_a.public, dead_public]

        # The platform's part (VpnService.Builder on Android): the TUN, its
        # address, MTU and routes.
        fd = open_tun(TUN)
        run("ip", "addr", "add", "100.64.0.2/24", "dev", TUN)
        run("ip", "link", "set", TUN, "mtu", str(config.mtu()), "up")
        ifindex = run("cat", f"/sys/class/net/{TUN}/ifindex").stdout.strip()

        events = Events()
        options = nm.TunnelOptions(poll_interval_ms=100, stale_after_secs=3)
        tunnel = nm.Tunnel.start(config, fd, events, options)
        assert tunnel.is_running()
        port = tunnel.listen_port()
        assert port > 0

        # 1. Through gateway A.
        wait_until("a ping through gateway A", lambda: pings("100.64.0.1"))
        assert run("ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.0.1", check=False).returncode == 0
        assert gw_a.latest_handshake() > 0, "wireguard-go A saw no handshake"
        wait_until("HandshakeCompleted for A", lambda: events.handshakes(gw_a.public), timeout=5)
        wait_until("PeerStale for the silent standby", lambda: events.stale(dead_public), timeout=10)
        stats = {s.public_key: s for s in tunnel.stats()}
        assert set(stats) == {gw_a.public, dead_public}
        a = stats[gw_a.public]
        assert a.rx_bytes > 0 and a.tx_bytes > 0 and a.last_handshake is not None
        assert a.endpoint == gw_a.endpoint
        assert stats[dead_public].last_handshake is None

        # The same config again changes nothing.
        same = tunnel.update(config)
        assert (same.added, same.changed, same.removed) == (0, 0, 0)
        assert not same.interface_changed and not same.platform_reconfigure_needed

        # 2. Failover to gateway B, given as wg-quick text with the key placeholder
        # (what `nanami client-config` renders) and a preshared key.
        text = (
            "# Nanami configuration for node phone-1 (workspace acme)\n"
            "[Interface]\nPrivateKey = <PRIVATE_KEY>\nAddress = 100.64.0.2/32\nMTU = 1380\n\n"
            "# gateway gw-b (networks: corp)\n"
            f"[Peer]\nPublicKey = {gw_b.public}\nPresharedKey = {psk}\n"
            f"Endpoint = {gw_b.endpoint}\nAllowedIPs = 100.64.0.0/24\nPersistentKeepalive = 25\n"
        )
        failover = nm.TunnelConfig.from_wg_quick(text, key)
        assert failover.peers()[0].has_preshared_key
        summary = tunnel.update(failover)
        assert (summary.added, summary.changed, summary.removed) == (1, 0, 2), summary
        assert not summary.interface_changed and not summary.platform_reconfigure_needed

        wait_until("a ping through gateway B", lambda: pings("100.64.0.3"))
        assert run("ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.0.3", check=False).returncode == 0
        assert gw_b.latest_handshake() > 0, "wireguard-go B saw no handshake"
        wait_until("HandshakeCompleted for B", lambda: events.handshakes(gw_b.public), timeout=5)
        # A is no peer any more: nothing routes to it.
        assert not pings("100.64.0.1"), "gateway A still reachable after the update"
        stats = tunnel.stats()
        assert [s.public_key for s in stats] == [gw_b.public]
        assert stats[0].rx_bytes > 0 and stats[0].last_handshake is not None
        # Not a new device: same UDP port, same TUN.
        assert tunnel.listen_port() == port
        assert run("cat", f"/sys/class/net/{TUN}/ifindex").stdout.strip() == ifindex

        # 3. Stop: Stopped is the last event; the device's threads are gone and the
        # TUN fd was closed (a non-persistent TUN disappears with its last fd).
        tunnel.stop()
        tunnel.stop()  # idempotent
        assert not tunnel.is_running()
        last = events.snapshot()[-1]
        assert last.is_stopped() and last.reason == nm.StopReason.REQUESTED, last
        assert sum(1 for e in events.snapshot() if e.is_stopped()) == 1
        with pytest.raises(nm.NanamiError.Stopped):
            tunnel.stats()
        with pytest.raises(nm.NanamiError.Stopped):
            tunnel.update(failover)
        assert nanami_threads() == [], nanami_threads()
        assert run("ip", "link", "show", TUN, check=False).returncode != 0, "TUN still exists"
    finally:
        if tunnel is not None:
            tunnel.stop()
        for gw in gateways:
            gw.close()

    for gw in gateways:
        assert gw.proc.poll() is not None, "wireguard-go still running"
        assert not os.path.exists(gw.sock), f"{gw.sock} left behind"
    listed = run("ip", "netns", "list").stdout
    assert NS_A not in listed and NS_B not in listed, listed


def test_wg_quick_refuses_hooks_with_a_clear_error():
    key = nm.PrivateKey.generate()
    text = "[Interface]\nPrivateKey = <PRIVATE_KEY>\nPostUp = iptables -A FORWARD -j ACCEPT\n"
    with pytest.raises(nm.NanamiError.ConfigSyntax) as e:
        nm.TunnelConfig.from_wg_quick(text, key)
    assert e.value.line == 3
    assert "PostUp" in e.value.reason and "runs no scripts" in e.value.reason


def test_config_errors_are_typed():
    key = nm.PrivateKey.generate()
    with pytest.raises(nm.NanamiError.InvalidConfig):
        nm.TunnelConfig.from_wg_quick("[Interface]\nPrivateKey = <PRIVATE_KEY>\n", None)
    with pytest.raises(nm.NanamiError.InvalidConfig) as e:
        nm.TunnelConfig.from_node_config_json("{}", key)
    assert "not a Nanami client config" in e.value.reason
    other = nm.PrivateKey.generate()
    doc = json.dumps({"node": "phone-1", "workspace": "acme", "public_key": other.public_key(),
                      "addresses": [], "mtu": 1380, "peers": [], "unassigned": []})
    with pytest.raises(nm.NanamiError.InvalidConfig) as e:
        nm.TunnelConfig.from_node_config_json(doc, key)
    assert "is for key" in e.value.reason
    with pytest.raises(nm.NanamiError.InvalidKey):
        nm.PrivateKey.from_base64("not a key")


def test_private_key_round_trips_through_the_keystore_form():
    key = nm.PrivateKey.generate()
    again = nm.PrivateKey.from_base64(key.expose_secret_base64())
    assert again.public_key() == key.public_key()
    assert key.expose_secret_base64() not in repr(key)


def test_a_bad_fd_is_refused_and_taken():
    config = nm.TunnelConfig.from_wg_quick(
        "[Interface]\nPrivateKey = <PRIVATE_KEY>\n", nm.PrivateKey.generate())
    with pytest.raises(nm.NanamiError.InvalidTunFd) as e:
        nm.Tunnel.start(config, -1, None, None)
    assert e.value.fd == -1
    # An open fd that is no TUN: refused, and (ownership passed) closed.
    fd = os.open("/dev/null", os.O_RDWR)
    with pytest.raises(nm.NanamiError.InvalidTunFd):
        nm.Tunnel.start(config, fd, None, None)
    with pytest.raises(OSError):
        os.fstat(fd)
    # A TAP is no TUN.
    IFF_TAP = 0x0002
    fd = open_tun(f"nmmtap{SUFFIX}", IFF_TAP | IFF_NO_PI)
    with pytest.raises(nm.NanamiError.InvalidTunFd) as e:
        nm.Tunnel.start(config, fd, None, None)
    assert "TAP" in e.value.reason


class NoTun:
    """A TunProvider that must not be asked."""

    def __init__(self):
        self.asked = []

    def open_tun(self, request):
        self.asked.append(request)
        return -1


def test_follow_without_a_credential_or_token_says_so_and_stops():
    with tempfile.TemporaryDirectory() as state_dir:
        public = nm.state_dir_public_key(state_dir)
        assert len(public) == 44
        # The key is made once and kept (0600).
        assert nm.state_dir_public_key(state_dir) == public
        assert os.stat(os.path.join(state_dir, "private.key")).st_mode & 0o777 == 0o600
        settings = nm.FollowSettings(
            managers=["http://127.0.0.1:9"], ca_file=None, node="phone-1",
            state_dir=state_dir, enrolment_token=None)
        assert (settings.probe_interval_ms, settings.dead_after_ms, settings.hold_down_ms) == (
            500, 1500, 30000)
        events, provider = Events(), NoTun()
        tunnel = nm.Tunnel.follow(settings, provider, events, None)
        try:
            wait_until("Stopped", lambda: any(e.is_stopped() for e in events.snapshot()), timeout=10)
            snapshot = events.snapshot()
            assert snapshot[-1].is_stopped() and snapshot[-1].reason == nm.StopReason.AGENT_FAILED
            assert any("not enrolled yet" in m for m in events.errors()), snapshot
            assert provider.asked == []
            with pytest.raises(nm.NanamiError.Stopped):
                tunnel.stats()
        finally:
            tunnel.stop()
    with pytest.raises(nm.NanamiError.InvalidConfig):
        nm.Tunnel.follow(nm.FollowSettings(managers=[], ca_file=None, node="phone-1",
                                           state_dir="/nonexistent", enrolment_token=None),
                         NoTun(), None, None)
