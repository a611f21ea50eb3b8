"""A following mobile tunnel against a real manager and two real gateways.

Run by bins/nanami/tests/failover.rs
(`a_mobile_tunnel_follows_the_manager_and_fails_over_when_its_gateway_is_cut`),
which builds the rig (manager, edge-a and edge-b running nanami-gateway-daemon,
the resource behind them) and runs this script inside the client's namespace
with the generated `nanami_mobile` module on PYTHONPATH. It drives the uniffi
surface as an app does: `Tunnel.follow` with a `TunProvider` that makes the TUN
(the part `VpnService.Builder` plays on Android), a listener, and then:

1. enrolment with the one-time token, the first configuration, a TUN asked for
   with its addresses, MTU and routes, the resource reached through edge-a;
2. edge-a's link is cut (NANAMI_CUT); the tunnel's own probes find it down and
   route `corp` to edge-b, on the same TUN; the resource answers again;
3. stop, then a restart without a token: the saved credential and configuration
   carry it; stop again, and nothing of the tunnel is left.

Prints "mobile follow: ok" last; any failure raises (non-zero exit).
"""

import os
import sys
import threading
import time

import nanami_mobile as nm
from kit import Events, nanami_threads, open_tun, pings, run, wait_until


def env(name):
    value = os.environ.get(name)
    assert value, f"{name} is not set: this script is run by bins/nanami/tests/failover.rs"
    return value


class Provider:
    """The app's TunProvider: a TUN per request, named nmm0, nmm1, ..."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.names = []

    def open_tun(self, request):
        try:
            name = f"nmm{len(self.names)}"
            fd = open_tun(name)
            for address in request.addresses:
                run("ip", "addr", "add", address, "dev", name)
            run("ip", "link", "set", name, "mtu", str(request.mtu), "up")
            for route in request.routes:
                run("ip", "route", "add", route, "dev", name)
            with self.lock:
                self.requests.append(request)
                self.names.append(name)
            return fd
        except Exception as e:  # the tunnel hears -1; the test sees why
            print(f"open_tun failed: {e!r}", file=sys.stderr)
            return -1


def active(tunnel, network="corp"):
    for a in tunnel.active_gateways():
        if a.network == network:
            return a.gateway
    return None


def settings(token):
    return nm.FollowSettings(
        managers=[env("NANAMI_MANAGER")],
        ca_file=env("NANAMI_CA"),
        node="client",
        state_dir=env("NANAMI_STATE_DIR"),
        enrolment_token=token,
        probe_interval_ms=200,
        dead_after_ms=800,
        hold_down_ms=5000,
    )


def main():
    resource = env("NANAMI_RESOURCE")
    state_dir = env("NANAMI_STATE_DIR")
    with open(env("NANAMI_TOKEN_FILE")) as f:
        token = f.read().strip()
    # The key the rig put in the topology is the one in the state directory.
    assert nm.state_dir_public_key(state_dir) == env("NANAMI_CLIENT_KEY")
    options = nm.TunnelOptions(poll_interval_ms=100, stale_after_secs=3)

    # 1. Enrol, follow, reach the resource through edge-a.
    events, provider = Events(), Provider()
    tunnel = nm.Tunnel.follow(settings(token), provider, events, options)
    try:
        wait_until("the first configuration", lambda: events.applied(), timeout=30)
        first = events.applied()[0]
        assert first.new_tun, first
        assert provider.requests[0].addresses == first.addresses
        assert "10.20.0.0/24" in first.routes, first.routes
        assert os.stat(os.path.join(state_dir, "credential")).st_mode & 0o777 == 0o600
        wait_until("corp on edge-a", lambda: active(tunnel) == "edge-a")
        wait_until("the resource through edge-a", lambda: pings(resource), timeout=30)
        assert not events.errors(), events.errors()
        with_tun = len(provider.names)
        # A following tunnel takes its configuration from the manager only.
        static = nm.TunnelConfig.from_wg_quick(
            "[Interface]\nPrivateKey = <PRIVATE_KEY>\n", nm.PrivateKey.generate())
        try:
            tunnel.update(static)
            raise AssertionError("update() of a following tunnel was accepted")
        except nm.NanamiError.InvalidConfig as e:
            assert "follows its manager" in str(e), e

        # 2. Cut edge-a: the tunnel's probes move corp to edge-b.
        run("sh", "-c", env("NANAMI_CUT"))
        cut = time.monotonic()
        wait_until("edge-a reported down", lambda: any(
            "edge-a" in e.gateways for e in events.down()), timeout=10)
        wait_until("corp on edge-b", lambda: active(tunnel) == "edge-b", timeout=10)
        wait_until("the resource through edge-b", lambda: pings(resource), timeout=15)
        print(f"mobile failover outage (cut -> first reply via edge-b): "
              f"{time.monotonic() - cut:.2f}s")
        assert len(provider.names) == with_tun, "a failover asked for a new TUN"
        assert not events.errors(), events.errors()
    finally:
        tunnel.stop()
    last = events.snapshot()[-1]
    assert last.is_stopped() and last.reason == nm.StopReason.REQUESTED, last
    wait_until("the first tunnel's threads to end", lambda: nanami_threads() == [], timeout=5)
    for name in provider.names:
        assert run("ip", "link", "show", name, check=False).returncode != 0, f"{name} still exists"

    # 3. Restart without a token: the saved credential and configuration.
    events, provider = Events(), Provider()
    tunnel = nm.Tunnel.follow(settings(None), provider, events, options)
    try:
        wait_until("the saved configuration", lambda: events.applied(), timeout=10)
        wait_until("the resource again", lambda: pings(resource), timeout=30)
        assert not events.errors(), events.errors()
    finally:
        tunnel.stop()
    assert events.snapshot()[-1].is_stopped()
    wait_until("the second tunnel's threads to end", lambda: nanami_threads() == [], timeout=5)
    print("mobile follow: ok")


if __name__ == "__main__":
    main()
