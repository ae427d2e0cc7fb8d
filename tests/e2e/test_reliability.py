"""Reliability at scale through a real server: random disconnects, SIGTERM with 1,000 streams."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

BODY = {
    "model": "sim-small",
    "messages": [{"role": "user", "content": "Explain streaming"}],
    "stream": True,
}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _drop_after(client: httpx.AsyncClient, events: int) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
        seen = 0
        async for _ in response.aiter_lines():
            seen += 1
            if seen > events:
                return


async def _disconnect_storm(server: ServerProcess, count: int, seed: int) -> None:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:
        for start in range(0, count, 200):
            await asyncio.gather(
                *(_drop_after(client, rng.randrange(0, 40)) for _ in range(start, start + 200))
            )


async def _settled(server: ServerProcess) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        deadline = time.monotonic() + 5
        while True:
            load: dict[str, int] = (await client.get("/load")).json()
            if load["server_load"] == 0 or time.monotonic() > deadline:
                return load
            await asyncio.sleep(0.05)


async def test_a_thousand_random_disconnects_leave_nothing_behind(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "2")
    await _disconnect_storm(server, 200, seed=1)  # warm up allocators and caches
    before = await _settled(server)
    rss_before = _rss_kib(server.process.pid)
    await _disconnect_storm(server, 1000, seed=2)
    after = await _settled(server)
    rss_after = _rss_kib(server.process.pid)
    assert after["server_load"] == 0
    assert after["tasks"] <= before["tasks"]
    assert rss_after <= rss_before * 1.05, (rss_before, rss_after)
    assert "Traceback" not in server.log()


async def test_sigterm_with_a_thousand_open_streams_finishes_them_all(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--time-to-first-token-ms",
        "20",
        "--inter-token-latency-ms",
        "20",
        "--shutdown-grace-period-s",
        "20",
    )
    body = {**BODY, "max_tokens": 64, "ignore_eos": True}
    opened = asyncio.Event()
    started = 0

    async def one(client: httpx.AsyncClient) -> str:
        nonlocal started
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            started += 1
            if started == 1000:
                opened.set()
            return "".join([line async for line in response.aiter_lines()])

    limits = httpx.Limits(max_connections=1000)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
        streams = [asyncio.create_task(one(client)) for _ in range(1000)]
        await asyncio.wait_for(opened.wait(), 30)
        server.process.send_signal(signal.SIGTERM)
        bodies = await asyncio.wait_for(asyncio.gather(*streams), 60)
    assert all(b.endswith("data: [DONE]") for b in bodies)
    assert all('"finish_reason":"length"' in b for b in bodies)
    assert not any('"error"' in b for b in bodies)
    assert server.wait(30) == 0
