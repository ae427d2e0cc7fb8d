"""``streamapi serve --workers 2``: two processes on one socket, and their SIGTERM drain.

Which worker answered is read from ``GET /version``'s ``pid``; which workers held
streams at SIGTERM, from each worker's "Draining: n request(s)" log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import FAST_PACING
from tests.sse_helpers import live_payloads

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
DONE = "[DONE]"
DRAINING = re.compile(r"Draining: (\d+) request\(s\) in flight")


def _children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: fields count from its end.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """Poll until none of ``pids`` runs or ``timeout_s`` passes; those still running."""
    deadline = time.monotonic() + timeout_s
    while (left := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def reaper() -> Iterator[set[int]]:
    """Worker pids a test saw; any still running at teardown is killed (a failed test's)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _worker_pids(server: ServerProcess, count: int, timeout_s: float) -> set[int]:
    """Pids answering ``/version`` on new connections, until ``count`` are seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < count and time.monotonic() < deadline:
        # A new connection each time: the kernel hands it to whichever worker accepts first.
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            seen.add((await client.get("/version")).json()["pid"])
    return seen


async def _two_workers(
    factory: ServerFactory, reaper: set[int], *options: str
) -> tuple[ServerProcess, set[int]]:
    """``serve --workers 2`` with ``options``, once both workers answer; their pids."""
    server = factory("--workers", "2", "--time-to-first-token-ms", "20", *options)
    assert len(await _worker_pids(server, 2, timeout_s=10)) == 2
    workers = _children(server.process.pid)
    reaper.update(workers)
    return server, workers


async def _streams_through_sigterm(
    server: ServerProcess, count: int, body: dict[str, Any], timeout_s: float
) -> tuple[list[list[str]], float]:
    """Open ``count`` streams on as many connections, SIGTERM once each has an event.

    Returns every stream's payloads and when SIGTERM was sent.
    """
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    firsts = [asyncio.Event() for _ in range(count)]

    async def one(client: httpx.AsyncClient, first: asyncio.Event) -> list[str]:
        payloads = []
        async with client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            async with contextlib.aclosing(live_payloads(response)) as events:
                async for payload in events:
                    payloads.append(payload)
                    first.set()
        return payloads

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
        tasks = [asyncio.ensure_future(one(client, first)) for first in firsts]
        try:
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), timeout=30)
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return results, sigterm_at


async def test_two_workers_answer_from_two_processes_and_stream_through_the_sdk(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    server = server_factory("--workers", "2", *FAST_PACING)
    children = _children(server.process.pid)
    reaper.update(children)
    pids = await _worker_pids(server, 2, timeout_s=10)
    assert len(pids) == 2
    assert pids <= children
    assert server.process.pid not in pids
    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "Explain vector databases"}],
            stream=True,
            max_tokens=20,
        )
        deltas = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(deltas)
    log = server.log()
    assert "starting 2 workers" in log
    assert "(worker 1 of 2, pid " in log
    assert "(worker 2 of 2, pid " in log


async def test_sigterm_with_two_workers_and_1000_open_streams_finishes_them_all(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    server, workers = await _two_workers(
        server_factory,
        reaper,
        "--inter-token-latency-ms", "20",
        "--max-num-seqs", "1000",
        "--shutdown-grace-period-s", "20",
    )  # fmt: skip
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "Explain streaming"}],
        "stream": True,
        "max_tokens": 100,
        "ignore_eos": True,
    }
    results, sigterm_at = await _streams_through_sigterm(server, 1000, body, timeout_s=40)
    exit_code = await asyncio.to_thread(server.wait, 25)
    exited_after_s = time.monotonic() - sigterm_at
    assert [r[-1] for r in results] == [DONE] * 1000
    finish_reasons = [
        choice["finish_reason"]
        for payloads in results
        for chunk in map(json.loads, payloads[:-1])
        for choice in chunk["choices"]
        if choice["finish_reason"] is not None
    ]
    assert finish_reasons == ["length"] * 1000
    assert not any('"error"' in p for payloads in results for p in payloads)
    assert exit_code == 0
    assert exited_after_s < 20 + 5
    assert _wait_gone(workers, timeout_s=5) == set()
    # Both workers held streams when SIGTERM came: each logged its own drain.
    in_flight = [int(n) for n in DRAINING.findall(server.log())]
    assert len(in_flight) == 2
    assert min(in_flight) > 0
    assert "Traceback" not in server.log()


async def test_sigterm_with_two_workers_ends_streams_open_at_the_grace_deadline(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    server, workers = await _two_workers(
        server_factory,
        reaper,
        "--inter-token-latency-ms", "500",
        "--shutdown-grace-period-s", "1",
    )  # fmt: skip
    # ~350 tokens at 500 ms: each stream would last minutes, far past the 1 s grace period.
    body = {"prompt": "Explain streaming APIs", "stream": True}
    results, sigterm_at = await _streams_through_sigterm(server, 20, body, timeout_s=10)
    ended_after_s = time.monotonic() - sigterm_at
    exit_code = await asyncio.to_thread(server.wait, 10)
    assert [r[-1] for r in results] == [DONE] * 20
    assert [json.loads(r[-2])["error"]["code"] for r in results] == ["server_shutting_down"] * 20
    assert [sum('"error"' in p for p in r) for r in results] == [1] * 20
    assert 0.8 < ended_after_s < 4
    assert exit_code == 0
    assert _wait_gone(workers, timeout_s=5) == set()
    assert "Grace period over" in server.log()
    assert "timeout graceful shutdown exceeded" not in server.log()


async def test_a_worker_that_dies_is_replaced_and_logged(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    server = server_factory("--workers", "2", *FAST_PACING)
    before = await _worker_pids(server, 2, timeout_s=10)
    assert len(before) == 2
    reaper.update(_children(server.process.pid))
    killed = min(before)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 15
    after: set[int] = set()
    while len(after - before) < 1 and time.monotonic() < deadline:
        after = await _worker_pids(server, 2, timeout_s=2)
        reaper.update(_children(server.process.pid))
    assert len(after) == 2
    assert killed not in after
    assert f"pid {killed}] died (exit code -9); starting a new one" in server.log()
    assert server.stop() == 0


async def test_workers_stop_when_their_parent_is_killed(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    # SIGKILL leaves the parent no chance to pass SIGTERM on: the kernel does it
    # (PR_SET_PDEATHSIG), and the workers drain instead of serving on, orphaned.
    server, workers = await _two_workers(server_factory, reaper, "--shutdown-grace-period-s", "2")
    server.process.kill()
    server.process.wait(timeout=10)
    assert _wait_gone(workers, timeout_s=2 + 10) == set()


def _samples(exposition: str, name: str) -> float:
    """The sum of the samples of ``name`` (any labels) in a Prometheus text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _scrape_until(
    server: ServerProcess, expected: Mapping[str, float], timeout_s: float
) -> dict[str, float]:
    """Scrape on new connections until the metrics read ``expected``; the last values read.

    Another worker's in-memory metrics reach the files every second at most,
    so a scrape may be that much behind.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            body = (await client.get("/metrics")).text
        seen = {name: _samples(body, name) for name in expected}
        if seen == expected or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)


async def test_metrics_of_two_workers_are_their_sum_whichever_answers(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    server = server_factory("--workers", "2", *FAST_PACING)
    reaper.update(_children(server.process.pid))
    body = {"model": "sim-small", "prompt": "Say hi", "max_tokens": 4, "stream": True}
    served: dict[int, int] = {}
    count = 0
    # New connections until both workers served some (the kernel spreads them);
    # /version first, on the same connection, says which worker serves the stream.
    while (len(served) < 2 or count < 20) and count < 200:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            pid = (await client.get("/version")).json()["pid"]
            response = await client.post("/v1/completions", json=body)
            assert response.status_code == 200
            assert response.text.endswith("data: [DONE]\n\n")
        served[pid] = served.get(pid, 0) + 1
        count += 1
    assert len(served) == 2, served
    expected = {
        "vllm:request_success_total": count,
        "vllm:e2e_request_latency_seconds_count": count,  # a per-token (lock-free) histogram
        "vllm:time_to_first_token_seconds_count": count,
        "vllm:request_generation_tokens_count": count,  # one of prometheus-client's
        "vllm:request_generation_tokens_sum": 4 * count,
        "vllm:num_requests_running": 0,
        "streamapi_streams_in_flight": 0,
    }
    assert await _scrape_until(server, expected, timeout_s=10) == expected
    # Every scrape, whichever worker answers it, sees the same totals.
    for _ in range(6):
        assert await _scrape_until(server, expected, timeout_s=0) == expected
    assert server.stop() == 0


async def test_a_dead_workers_streams_leave_the_running_gauges(
    server_factory: ServerFactory, reaper: set[int]
) -> None:
    server = server_factory(
        "--workers", "2", "--time-to-first-token-ms", "20", "--inter-token-latency-ms", "200"
    )  # fmt: skip
    reaper.update(_children(server.process.pid))
    # ~20 s a stream: every stream is still open when the worker is killed.
    body = {"model": "sim-small", "prompt": "Go", "max_tokens": 100, "ignore_eos": True}
    body["stream"] = True
    held: dict[int, int] = {}
    stack = contextlib.AsyncExitStack()
    async with stack:
        while (len(held) < 2 or sum(held.values()) < 8) and sum(held.values()) < 100:
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.base_url, timeout=30)
            )
            pid = (await client.get("/version")).json()["pid"]
            response = await stack.enter_async_context(
                client.stream("POST", "/v1/completions", json=body)
            )
            assert response.status_code == 200
            held[pid] = held.get(pid, 0) + 1
        assert len(held) == 2, held
        total = sum(held.values())
        both = {"vllm:num_requests_running": total, "streamapi_streams_in_flight": total}
        assert await _scrape_until(server, both, timeout_s=10) == both
        killed, survivor = sorted(held)
        os.kill(killed, signal.SIGKILL)
        # The parent forgets the dead worker's live gauges (mark_process_dead);
        # its counters, being totals, would still count.
        left = {
            "vllm:num_requests_running": held[survivor],
            "streamapi_streams_in_flight": held[survivor],
        }
        assert await _scrape_until(server, left, timeout_s=10) == left
    assert f"pid {killed}] died (exit code -9)" in server.log()
