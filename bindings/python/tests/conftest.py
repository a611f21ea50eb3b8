"""Shared fixtures: the repository's example topology and small documents built
in the tests themselves."""

import copy
import pathlib

import pytest
import documents

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "topology.yaml"


@pytest.fixture(scope="session")
def example_path() -> pathlib.Path:
    assert EXAMPLE.is_file(), f"example topology missing at {EXAMPLE}"
    return EXAMPLE


@pytest.fixture(scope="session")
def example_text(example_path: pathlib.Path) -> str:
    return example_path.read_text()


@pytest.fixture()
def small_doc() -> dict:
    return copy.deepcopy(documents.SMALL_DOC)


# A real gateway manager ----------------------------------------------------------

import os
import re
import subprocess
import time

import nanami

# Built by scripts/test-python (`cargo build -p nanami-gateway-manager`).
MANAGER_BIN = pathlib.Path(
    os.environ.get("NANAMI_GATEWAY_MANAGER", REPO / "target" / "debug" / "nanami-gateway-manager")
)

# How long the manager may take to start (init writes a CA and a store; serve opens
# the store and binds).
START_TIMEOUT = 20.0


def wait_for(what: str, timeout: float, check):
    """Polls `check` every 20 ms until it returns something truthy; fails the test
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class RunningManager:
    """`nanami-gateway-manager init` + `serve` in a temp dir, on a port the manager
    chose itself (``--listen 127.0.0.1:0``; the address is read from its log), so no
    port is found free and bound later by someone else."""

    def __init__(self, binary: pathlib.Path, tmp: pathlib.Path):
        self.dir = tmp / "manager"
        self.log = tmp / "manager.log"
        init = subprocess.run(
            [str(binary), "init", "--dir", str(self.dir)],
            capture_output=True, text=True, timeout=60,
        )
        assert init.returncode == 0, f"manager init failed:\n{init.stdout}{init.stderr}"
        self.ca = self.dir / "ca.pem"
        self.platform_credential = (self.dir / "control.token").read_text().strip()
        self.operator_credential = (self.dir / "operator.token").read_text().strip()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "serve", "--dir", str(self.dir), "--listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "RUST_LOG": "info"},
            )
        addr = wait_for("the manager's `serving addr=` log line", START_TIMEOUT, self._address)
        self.url = f"https://{addr}"

    def _address(self):
        if self.process.poll() is not None:
            pytest.fail(f"the manager exited with {self.process.returncode}:\n{self.log.read_text()}")
        match = re.search(r"serving addr=(127\.0\.0\.1:\d+)", self.log.read_text())
        return match and match.group(1)

    def client(self, credential=None, **kwargs) -> nanami.Manager:
        """A client presenting `credential` (the platform credential by default)."""
        return nanami.Manager(self.url, self.ca, credential or self.platform_credential, **kwargs)

    def operator(self) -> nanami.Manager:
        return self.client(self.operator_credential)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def manager_binary() -> pathlib.Path:
    """The gateway manager binary; missing is a failure, never a skip."""
    if not (MANAGER_BIN.is_file() and os.access(MANAGER_BIN, os.X_OK)):
        pytest.fail(
            f"the gateway manager binary is missing at {MANAGER_BIN}: run scripts/test-python "
            "(it builds it), or `cargo build -p nanami-gateway-manager`, or set "
            "NANAMI_GATEWAY_MANAGER to its path"
        )
    return MANAGER_BIN


@pytest.fixture()
def manager(manager_binary, tmp_path):
    """A fresh manager holding `documents.two_workspaces()`; stopped afterwards."""
    running = RunningManager(manager_binary, tmp_path)
    try:
        running.client().import_topology(documents.two_workspaces())
        yield running
    finally:
        running.stop()
