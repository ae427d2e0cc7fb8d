"""``streamapi bench`` against a real ``streamapi serve``: every request and token counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from streamapi.cassettes import Exchange, dumps_exchanges, write_atomic
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e

REQUESTS = 24
MAX_TOKENS = 16
ADMIN_KEY = "e2e-admin"


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_bench_json_report_counts_every_request_and_token(
    server_factory: ServerFactory, route: str
) -> None:
    server = server_factory("--time-to-first-token-ms", "10", "--inter-token-latency-ms", "5")
    command = [sys.executable, "-m", "streamapi", "bench", "--url", server.base_url]
    command += ["--route", route, "--concurrency", "6", "--requests", str(REQUESTS)]
    command += ["--max-tokens", str(MAX_TOKENS), "--ignore-eos", "--json", "--no-progress"]
    finished = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")
    report = json.loads(finished.stdout)
    assert report["requests"]["issued"] == REQUESTS
    assert report["requests"]["ok"] == REQUESTS
    assert report["requests"]["failed"] == 0
    assert report["requests"]["errors"] == {}
    assert report["output_tokens"] == MAX_TOKENS * REQUESTS
    assert report["events"] == MAX_TOKENS * REQUESTS
    assert report["ttft_ms"]["count"] == REQUESTS
    assert report["itl_ms"]["count"] == (MAX_TOKENS - 1) * REQUESTS
    assert report["model"] == "sim-small"


def test_bench_replays_a_cassette_at_its_recorded_arrival_times(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory("--time-to-first-token-ms", "10", "--admin-key", ADMIN_KEY)
    # Recorded 0.8 s apart; replayed twice as fast: 0.4 s apart.
    tape = tmp_path / "session.jsonl"
    exchanges = [
        Exchange(
            "vllm",
            "/chat/completions",
            {"model": "sim-small", "messages": [{"role": "user", "content": f"turn {i}"}],
             "max_tokens": 4},
            status=200,
            started_at=1_700_000_000 + 0.8 * i,
        )
        for i in range(4)
    ]  # fmt: skip
    write_atomic(tape, dumps_exchanges(exchanges))
    command = [sys.executable, "-m", "streamapi", "bench", "--url", server.base_url]
    command += ["--replay", str(tape), "--replay-speed", "2", "--json", "--no-progress"]
    finished = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")
    report = json.loads(finished.stdout)
    assert report["requests"]["issued"] == report["requests"]["ok"] == 4
    assert report["load"]["replay"] == str(tape)
    entries = httpx.get(
        f"{server.base_url}/admin/journal",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ).json()["entries"]
    chats = sorted((e for e in entries if e["endpoint"] == "chat"), key=lambda e: e["time"])
    assert len(chats) == 4
    offsets = [entry["time"] - chats[0]["time"] for entry in chats]
    # Each at the recorded offset, scaled (0.4 s apart), within generous bounds for a loaded
    # machine; the last (1.2 s) tells it from all at once (0 s) and from the recorded speed
    # (2.4 s).
    assert all(0.4 * i - 0.3 < offset < 0.4 * i + 0.6 for i, offset in enumerate(offsets)), offsets
