"""End-to-end fixtures: a real ``python -m streamapi serve`` process on a loopback port.

Each server gets a free port on 127.0.0.1, its output goes to a log file (never a
pipe, which could fill and block the server), and it is ready once ``GET /health``
answers 200. Teardown sends SIGTERM, waits, and kills only if it has to.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import Cluster, start_cluster
from tests.e2e.node_project import install_node_project

HOST = "127.0.0.1"
# A loaded machine (CI, or a shared one running a build) can take 20 s to import and start.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# Fast pacing for tests that are not about timing: a full default answer in ~0.4 s.
FAST_PACING = ("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "1")


@dataclass
class ServerProcess:
    """A running ``streamapi serve`` and where to reach it."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout_s: float) -> int:
        """The exit code, waiting at most ``timeout_s`` (``TimeoutExpired`` after that)."""
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> int:
        """SIGTERM, wait up to ``STOP_TIMEOUT_S``, then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=STOP_TIMEOUT_S)


ServerFactory = Callable[..., ServerProcess]


def free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _clean_env() -> dict[str, str]:
    # Settings come only from the options a test passes, never from the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPI_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(options: tuple[str, ...], log_dir: Path) -> ServerProcess:
    """Start a server with ``options`` and return once it is healthy."""
    port = free_port()
    log_path = log_dir / f"streamapi-{port}.log"
    command = [sys.executable, "-m", "streamapi", "serve", "--host", HOST, "--port", str(port)]
    env = _clean_env()
    # What the server leaves behind if a test kills it (serve --workers' metrics
    # directory) goes with the test's files.
    env["TMPDIR"] = str(log_dir)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, *options], stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    server = ServerProcess(f"http://{HOST}:{port}", process, log_path)
    try:
        _wait_until_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(
                    f"streamapi exited with {server.process.returncode} at start-up:\n"
                    + server.log()
                )
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"streamapi was not healthy within {STARTUP_TIMEOUT_S} s:\n" + server.log())


def _factory(log_dir: Path) -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    def start(*options: str) -> ServerProcess:
        server = start_server(options, log_dir)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers that live for one test: ``server_factory("--seed", "1")``."""
    yield from _factory(tmp_path)


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start servers shared by the tests of one module (for read-only tests)."""
    yield from _factory(tmp_path_factory.mktemp("streamapi"))


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start clusters that live for one test: three replicas behind HAProxy.

    ``cluster_factory("--seed", "1")`` passes its options to every replica
    (``--state-url`` for shared state) and returns a ``Cluster``: ``url`` is the
    load balancer's, ``replicas`` each have ``pid``, ``url``, ``stop()``, ``kill()``.
    """
    started: list[Cluster] = []

    def start(*options: str) -> Cluster:
        cluster = start_cluster(lambda: start_server(options, tmp_path), tmp_path)
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in reversed(started):
            cluster.stop()


@pytest.fixture(scope="session")
def node_project() -> Path:
    """``tests/e2e/node`` after ``npm ci`` (once per session; skips without npm off CI)."""
    return install_node_project()
