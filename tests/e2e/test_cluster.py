"""Three replicas behind HAProxy (``deploy/haproxy/haproxy.cfg``), nothing shared between them.

Which replica answered is read from ``GET /version``'s ``pid``.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from openai import OpenAI

from tests.e2e.cluster import HAPROXY_CONFIG, haproxy_environment
from tests.e2e.conftest import FAST_PACING

if TYPE_CHECKING:
    from tests.e2e.conftest import ClusterFactory

pytestmark = pytest.mark.e2e


async def _pids(url: str, requests: int, *, timeout_s: float = 5) -> list[int]:
    """``/version``'s pid for ``requests`` requests, each on a new connection."""
    pids = []
    for _ in range(requests):
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
            response = await client.get("/version")
            assert response.status_code == 200
            pids.append(response.json()["pid"])
    return pids


async def test_requests_through_haproxy_reach_all_three_replicas(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(*FAST_PACING)
    replicas = {replica.pid for replica in cluster.replicas}
    assert len(replicas) == 3
    # Round robin: 30 requests, 10 to each.
    pids = await _pids(cluster.url, 30)
    assert {pid: pids.count(pid) for pid in replicas} == dict.fromkeys(replicas, 10)
    # Requests on one kept-alive client connection are balanced one by one too.
    async with httpx.AsyncClient(base_url=cluster.url, timeout=5) as client:
        kept = {(await client.get("/version")).json()["pid"] for _ in range(6)}
    assert kept == replicas


def test_a_stream_through_haproxy_arrives_token_by_token(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "50")
    arrivals: list[float] = []
    with OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "Explain load balancers"}],
            stream=True,
            max_tokens=30,
            extra_body={"ignore_eos": True},
        )
        text = []
        for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
    assert "".join(text)
    assert len(arrivals) >= 30
    # 30 tokens 50 ms apart: a buffering proxy would hand them all over at the
    # end; passed through, the first comes about 1.5 s before the last.
    assert arrivals[-1] - arrivals[0] > 0.75
    # And they come spread out, not in bursts (without "option http-no-delay",
    # HAProxy handed them over five at a time, every ~250 ms).
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(gap > 0.02 for gap in gaps) >= 15


def test_a_killed_replica_is_routed_around_without_a_hang(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(*FAST_PACING)
    victim, *survivors = cluster.replicas
    victim.kill()
    started = time.monotonic()
    # Right away (before a health check has marked it down, connections to it
    # are refused and HAProxy redispatches them) and after: every request is
    # answered, within the client's timeout, by a live replica.
    body = {"model": "sim-small", "prompt": "Hi", "max_tokens": 4, "stream": True}
    pids = []
    for _ in range(30):
        with httpx.Client(base_url=cluster.url, timeout=5) as client:
            pids.append(client.get("/version").json()["pid"])
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 200
            assert response.text.endswith("data: [DONE]\n\n")
    assert set(pids) <= {replica.pid for replica in survivors}
    # Marked down by the health checks (2 failures 1 s apart), it is no longer tried.
    deadline = started + 10
    while "replica1 is DOWN" not in cluster.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "replica1 is DOWN" in cluster.log()


def test_haproxy_config_names_every_address_it_is_given() -> None:
    # The compose file and the tests run the same file; only these variables differ.
    config = HAPROXY_CONFIG.read_text(encoding="utf-8")
    variables = haproxy_environment("127.0.0.1:1", ["a:1", "b:2", "c:3"])
    for name in variables:
        assert f'"${{{name}}}"' in config
    settings = [line.split("#", 1)[0].strip() for line in config.splitlines()]
    # A request held until its body is whole, or a response until it is, breaks streaming.
    assert not [line for line in settings if "buffer" in line or "compression" in line]
    assert "option http-no-delay" in settings
