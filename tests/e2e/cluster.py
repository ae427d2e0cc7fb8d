"""Three ``streamapi serve`` replicas behind a real HAProxy, all on 127.0.0.1.

HAProxy runs ``deploy/haproxy/haproxy.cfg``, the file the docker compose
"cluster" profile runs, with the addresses given in its environment. Its
binary comes from the system (``.ci/run`` installs Debian's ``haproxy``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    # Only the type: conftest builds its fixture from this module.
    from tests.e2e.conftest import ServerProcess

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
REPLICAS = 3
STARTUP_TIMEOUT_S = 10.0


@dataclass
class Replica:
    """One replica: where it listens, and a way to stop or kill it."""

    name: str
    server: ServerProcess

    @property
    def pid(self) -> int:
        return self.server.process.pid

    @property
    def url(self) -> str:
        return self.server.base_url

    def stop(self) -> int:
        """SIGTERM (the replica drains), then its exit code."""
        return self.server.stop()

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed process or a lost machine."""
        self.server.process.kill()
        self.server.process.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class Cluster:
    """The load balancer's base URL and the replicas behind it."""

    url: str
    replicas: list[Replica]
    haproxy: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def log(self) -> str:
        """What HAProxy printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Stop HAProxy, then every replica still running."""
        if self._stopped:
            return
        self._stopped = True
        if self.haproxy.poll() is None:
            # SIGUSR1 is HAProxy's soft stop; SIGTERM its immediate one.
            self.haproxy.send_signal(signal.SIGTERM)
            try:
                self.haproxy.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(timeout=STOP_TIMEOUT_S)
        for replica in self.replicas:
            replica.stop()


def haproxy_binary() -> str:
    """The ``haproxy`` on PATH (or in /usr/sbin); skips the test without one.

    Fails instead on CI (``CI``) and wherever the real parts are required
    (``STREAMAPI_REQUIRE_REDIS``, which ``.ci/run`` sets and which makes a
    missing ``redis-server`` fail too): there a skip would hide the proof.
    """
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = "haproxy is not installed (apt-get install haproxy; .ci/run does)"
        if os.environ.get("CI") or os.environ.get("STREAMAPI_REQUIRE_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def haproxy_environment(bind: str, replicas: list[str]) -> dict[str, str]:
    """The variables ``deploy/haproxy/haproxy.cfg`` reads: where to listen, where replicas are."""
    if len(replicas) != REPLICAS:
        raise ValueError(f"the config names {REPLICAS} replicas, got {len(replicas)}")
    env = {"LB_BIND": bind}
    env.update({f"REPLICA_{i}": address for i, address in enumerate(replicas, start=1)})
    return env


def start_cluster(start_replica: Callable[[], ServerProcess], log_dir: Path) -> Cluster:
    """Start three replicas with ``start_replica`` and HAProxy in front; return once it answers.

    ``start_replica`` starts one healthy ``streamapi serve`` (conftest's
    ``start_server`` with the test's options).
    """
    binary = haproxy_binary()
    replicas: list[Replica] = []
    try:
        for i in range(1, REPLICAS + 1):
            replicas.append(Replica(f"replica{i}", start_replica()))
        port = _free_port()
        log_path = log_dir / f"haproxy-{port}.log"
        addresses = [replica.url.removeprefix("http://") for replica in replicas]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update(haproxy_environment(f"{HOST}:{port}", addresses))
        with log_path.open("wb") as log_file:
            # -db: in the foreground, as a child the test owns and stops.
            haproxy = subprocess.Popen(
                [binary, "-db", "-f", str(HAPROXY_CONFIG)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    cluster = Cluster(f"http://{HOST}:{port}", replicas, haproxy, log_path)
    try:
        _wait_until_serving(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _wait_until_serving(cluster: Cluster) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(base_url=cluster.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if cluster.haproxy.poll() is not None:
                pytest.fail(f"haproxy exited with {cluster.haproxy.returncode}:\n{cluster.log()}")
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"haproxy did not answer within {STARTUP_TIMEOUT_S} s:\n{cluster.log()}")
