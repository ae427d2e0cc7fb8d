"""Concurrency, client disconnects and the SIGTERM drain, against real server processes.

``GET /load`` reports the generation requests in flight; it is how these tests
see that nothing leaked. Every wait is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.sse_helpers import live_payloads

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
DONE = "[DONE]"
STREAM_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Streamed:
    """What one streamed request received, and when it ended."""

    status_code: int
    payloads: list[str]
    ended_at: float

    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads if p != DONE]

    def finish_reasons(self) -> list[str]:
        return [
            choice["finish_reason"]
            for chunk in self.chunks()
            for choice in chunk.get("choices", [])
            if choice["finish_reason"] is not None
        ]

    def errors(self) -> list[dict[str, Any]]:
        return [chunk["error"] for chunk in self.chunks() if "error" in chunk]

    def content_chunks(self) -> int:
        return sum(
            1
            for chunk in self.chunks()
            for choice in chunk.get("choices", [])
            if choice["delta"].get("content")
        )


def _client(server: ServerProcess) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    return httpx.AsyncClient(base_url=server.base_url, timeout=STREAM_TIMEOUT_S, limits=limits)


def _body(**extra: Any) -> dict[str, Any]:
    return {"prompt": "Explain streaming APIs", "stream": True, **extra}


async def _stream(
    client: httpx.AsyncClient, body: dict[str, Any], first: asyncio.Event | None = None
) -> Streamed:
    """Read one stream to its end; set ``first`` when its first event arrives."""
    payloads: list[str] = []
    async with client.stream("POST", CHAT, json=body) as response:
        async with contextlib.aclosing(live_payloads(response)) as events:
            async for payload in events:
                payloads.append(payload)
                if first is not None:
                    first.set()
        return Streamed(response.status_code, payloads, time.monotonic())


async def _open_and_read_first(
    stack: contextlib.AsyncExitStack, client: httpx.AsyncClient
) -> tuple[int, str]:
    """Open a stream that stays open until ``stack`` closes; its status and first payload."""
    response = await stack.enter_async_context(client.stream("POST", CHAT, json=_body()))
    events = await stack.enter_async_context(contextlib.aclosing(live_payloads(response)))
    return response.status_code, await anext(events)


async def _load(client: httpx.AsyncClient) -> int:
    response = await client.get("/load")
    assert response.status_code == 200
    load: int = response.json()["server_load"]
    return load


async def _wait_for_load(client: httpx.AsyncClient, expected: int, timeout_s: float) -> int:
    """Poll ``/load`` until it reports ``expected`` or ``timeout_s`` passes; the last value."""
    deadline = time.monotonic() + timeout_s
    load = await _load(client)
    while load != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        load = await _load(client)
    return load


async def _wait_for_exit(server: ServerProcess, timeout_s: float) -> int:
    return await asyncio.to_thread(server.wait, timeout_s)


@pytest.fixture(scope="module")
def paced_server(module_server_factory: ServerFactory) -> ServerProcess:
    # 20 ms per token: a whole default answer (~350 tokens) takes ~7 s.
    return module_server_factory("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "20")


# --- (c) concurrency ----------------------------------------------------------------


async def test_200_concurrent_streams_all_end_with_done(paced_server: ServerProcess) -> None:
    async with _client(paced_server) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(_stream(client, _body(max_tokens=25)) for _ in range(200))),
            timeout=STREAM_TIMEOUT_S,
        )
        load_after = await _wait_for_load(client, 0, timeout_s=2.0)
    assert [r.status_code for r in results] == [200] * 200
    assert [r.payloads[-1] for r in results] == [DONE] * 200
    assert [r.finish_reasons() for r in results] == [["length"]] * 200
    assert [r.content_chunks() for r in results] == [25] * 200
    assert [r.errors() for r in results] == [[]] * 200
    assert len({r.chunks()[0]["id"] for r in results}) == 200
    assert load_after == 0


# --- (d) disconnects ----------------------------------------------------------------


async def test_100_clients_disconnecting_after_first_event_free_their_slots(
    paced_server: ServerProcess,
) -> None:
    async with _client(paced_server) as client:
        async with contextlib.AsyncExitStack() as stack:
            opened = await asyncio.wait_for(
                asyncio.gather(*(_open_and_read_first(stack, client) for _ in range(100))),
                timeout=10.0,
            )
            load_while_open = await _load(client)
        # Leaving the stack closed all 100 connections mid-stream.
        closed_at = time.monotonic()
        load_after = await _wait_for_load(client, 0, timeout_s=3.0)
        freed_after_s = time.monotonic() - closed_at
        health = await client.get("/health")
    assert [status for status, _ in opened] == [200] * 100
    assert [json.loads(first)["choices"][0]["delta"]["role"] for _, first in opened] == [
        "assistant"
    ] * 100
    assert load_while_open == 100
    assert load_after == 0
    # Each answer would take ~7 s more: the slots were freed by the disconnects.
    assert freed_after_s < 3.0
    assert health.status_code == 200
    assert "Traceback" not in paced_server.log()


async def test_disconnect_during_time_to_first_token_frees_the_slot(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--time-to-first-token-ms", "5000", "--inter-token-latency-ms", "1")
    async with _client(server) as client:
        async with contextlib.AsyncExitStack() as stack:
            responses = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        stack.enter_async_context(client.stream("POST", CHAT, json=_body()))
                        for _ in range(20)
                    )
                ),
                timeout=10.0,
            )
            load_while_open = await _wait_for_load(client, 20, timeout_s=2.0)
        closed_at = time.monotonic()
        load_after = await _wait_for_load(client, 0, timeout_s=3.0)
        freed_after_s = time.monotonic() - closed_at
        health = await client.get("/health")
    assert [r.status_code for r in responses] == [200] * 20
    assert load_while_open == 20
    assert load_after == 0
    # The first token was still ~4.9 s away: the disconnect, not the stream, freed the slot.
    assert freed_after_s < 3.0
    assert health.status_code == 200
    assert "Traceback" not in server.log()


# --- (e) SIGTERM drain -----------------------------------------------------------------


async def _streams_through_sigterm(
    server: ServerProcess, count: int, body: dict[str, Any]
) -> tuple[list[Streamed], float, int]:
    """Open ``count`` streams, SIGTERM once each has an event; results, SIGTERM time, load."""
    async with _client(server) as client:
        firsts = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.ensure_future(_stream(client, body, first)) for first in firsts]
        try:
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), timeout=10.0)
            load_at_sigterm = await _load(client)
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=STREAM_TIMEOUT_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return results, sigterm_at, load_at_sigterm


async def test_sigterm_lets_open_streams_finish_within_grace_period(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--time-to-first-token-ms", "20",
        "--inter-token-latency-ms", "10",
        "--shutdown-grace-period-s", "10",
    )  # fmt: skip
    # 200 tokens at 10 ms: each stream lasts ~2 s, well inside the 10 s grace period.
    results, sigterm_at, load_at_sigterm = await _streams_through_sigterm(
        server, 20, _body(max_tokens=200)
    )
    await _wait_for_exit(server, timeout_s=15.0)
    assert load_at_sigterm == 20
    assert [r.status_code for r in results] == [200] * 20
    assert [r.payloads[-1] for r in results] == [DONE] * 20
    assert [r.finish_reasons() for r in results] == [["length"]] * 20
    assert [r.content_chunks() for r in results] == [200] * 20
    assert [r.errors() for r in results] == [[]] * 20
    assert min(r.ended_at for r in results) - sigterm_at > 0.5
    assert "Draining: 20 request(s) in flight" in server.log()
    assert "timeout graceful shutdown exceeded" not in server.log()


async def test_sigterm_grace_period_over_ends_open_streams_with_error_then_done(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--time-to-first-token-ms", "20",
        "--inter-token-latency-ms", "15",
        "--shutdown-grace-period-s", "1",
    )  # fmt: skip
    # ~350 tokens at 15 ms: each stream would last ~5 s, longer than the 1 s grace period.
    results, sigterm_at, load_at_sigterm = await _streams_through_sigterm(server, 20, _body())
    await _wait_for_exit(server, timeout_s=15.0)
    ended_after_s = [r.ended_at - sigterm_at for r in results]
    assert load_at_sigterm == 20
    assert [r.status_code for r in results] == [200] * 20
    assert [r.payloads[-1] for r in results] == [DONE] * 20
    assert [json.loads(r.payloads[-2])["error"]["code"] for r in results] == [
        "server_shutting_down"
    ] * 20
    assert [len(r.errors()) for r in results] == [1] * 20
    assert [r.finish_reasons() for r in results] == [[]] * 20
    assert min(ended_after_s) > 0.8
    assert max(ended_after_s) < 3.5
    assert "timeout graceful shutdown exceeded" not in server.log()


async def test_sigterm_grace_period_over_ends_stream_still_waiting_for_first_token(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--time-to-first-token-ms", "8000",
        "--inter-token-latency-ms", "1",
        "--shutdown-grace-period-s", "1",
    )  # fmt: skip
    async with (
        _client(server) as client,
        client.stream("POST", CHAT, json=_body()) as response,
        contextlib.aclosing(live_payloads(response)) as events,
    ):
        load_at_sigterm = await _wait_for_load(client, 1, timeout_s=2.0)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        payloads = [payload async for payload in events]
        ended_after_s = time.monotonic() - sigterm_at
    await _wait_for_exit(server, timeout_s=15.0)
    assert load_at_sigterm == 1
    assert response.status_code == 200
    assert payloads[-1] == DONE
    assert json.loads(payloads[0])["error"]["code"] == "server_shutting_down"
    assert ended_after_s < 3.0


async def test_sigterm_drain_exits_with_code_zero(server_factory: ServerFactory) -> None:
    server = server_factory(
        "--time-to-first-token-ms", "20",
        "--inter-token-latency-ms", "5",
        "--shutdown-grace-period-s", "10",
    )  # fmt: skip
    results, _, _ = await _streams_through_sigterm(server, 3, _body(max_tokens=100))
    exit_code = await _wait_for_exit(server, timeout_s=15.0)
    assert [r.payloads[-1] for r in results] == [DONE] * 3
    assert exit_code == 0
