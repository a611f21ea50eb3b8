"""What both mobile scenarios share: commands, waits, the TUN, the listener.

`test_tunnel.py` (pytest, by scripts/test-mobile) and `follow_manager.py` (run by
bins/nanami/tests/failover.rs) import it from this directory.
"""

import fcntl
import os
import struct
import subprocess
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def run(*args, ns=None, check=True, **kw):
    """Runs a command (inside namespace `ns` when given); its completed process."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def wait_until(what, predicate, timeout=15.0, step=0.05):
    """Polls `predicate` until it holds; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pings(addr):
    """Whether one echo to `addr` is answered within a second."""
    return run("ping", "-c", "1", "-W", "1", addr, check=False).returncode == 0


def nanami_threads():
    """The names of this process's threads that Nanami started."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    return [n for n in names if n.startswith("nanami")]


def open_tun(name, flags=IFF_TUN | IFF_NO_PI):
    """A new TUN (or, with IFF_TAP, a TAP) named `name`: its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    return fd


class Events:
    """The app's TunnelListener: records every event."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []

    def on_event(self, event):
        with self.lock:
            self.events.append(event)

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def handshakes(self, key):
        return [e for e in self.snapshot() if e.is_handshake_completed() and e.public_key == key]

    def stale(self, key):
        return [e for e in self.snapshot() if e.is_peer_stale() and e.public_key == key]

    def applied(self):
        return [e for e in self.snapshot() if e.is_config_applied()]

    def down(self):
        return [e for e in self.snapshot() if e.is_gateways_down()]

    def errors(self):
        return [e.message for e in self.snapshot() if e.is_error()]
