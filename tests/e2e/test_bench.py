"""``streamapi bench`` against a real ``streamapi serve``: every request and token counted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e

REQUESTS = 24
MAX_TOKENS = 16


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
