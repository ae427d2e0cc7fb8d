"""``serve --tracemalloc-frames N``: SIGUSR1 writes a tracemalloc snapshot of the live heap.

What ``bench/stream_memory.py`` reads (docs/performance.md, "Memory per stream"): the
file appears in the server's temporary directory, loads with ``tracemalloc``, holds
what the server allocated with the frames asked for, and the server serves on.
"""

from __future__ import annotations

import signal
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e

BODY = {
    "model": "sim-small",
    "messages": [{"role": "user", "content": "Explain queues"}],
    "max_tokens": 8,
    "stream": True,
}


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name} within {timeout_s} s"
        time.sleep(0.05)


def _stream(base_url: str) -> str:
    with (
        httpx.Client(base_url=base_url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=BODY) as response,
    ):
        assert response.status_code == 200
        return response.read().decode()


def test_sigusr1_writes_a_snapshot_that_tracemalloc_loads(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(
        "--tracemalloc-frames", "10", "--time-to-first-token-ms", "0",
        "--inter-token-latency-ms", "1",
    )  # fmt: skip
    assert _stream(server.base_url).endswith("data: [DONE]\n\n")
    pid = server.process.pid
    for count in (1, 2):
        server.process.send_signal(signal.SIGUSR1)
        path = tmp_path / f"streamapi-{pid}-{count}.tracemalloc"
        _wait_for(path, 30)
        snapshot = tracemalloc.Snapshot.load(str(path))
        assert snapshot.traceback_limit == 10
        files = {frame.filename for trace in snapshot.traces for frame in trace.traceback}
        assert any("/streamapi/" in name for name in files)
    assert "tracemalloc snapshot written to" in server.log()
    # Serving goes on as before.
    assert _stream(server.base_url).endswith("data: [DONE]\n\n")
    assert server.stop() == 0
