"""The engine model over real sockets: queueing past max_num_seqs, 429s, freed slots, /metrics.

Wall-clock timing on a shared machine is only ever late, never early, so these
tests assert the model's lower bounds exactly and its upper bounds loosely; the
exact checks are in-process, in virtual time (tests/test_engine_model.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
TIMEOUT_S = 30.0
# Late wake-ups make every figure larger, never smaller; this covers clock rounding.
EARLY_S = 0.002
ARRIVAL_SPREAD_S = 0.010


@dataclass
class Timed:
    sent_at: float = 0.0
    status: int = 0
    content_at: list[float] = field(default_factory=list)

    def ttft(self) -> float:
        return self.content_at[0] - self.sent_at

    def itl(self) -> float:
        return (self.content_at[-1] - self.content_at[0]) / (len(self.content_at) - 1)


def _body(**extra: Any) -> dict[str, Any]:
    question = "Explain how an inference server batches requests"
    return {"messages": [{"role": "user", "content": question}], "stream": True} | extra


async def _frames(response: httpx.Response) -> AsyncGenerator[bytes]:
    pending = b""
    async for piece in response.aiter_raw():
        *frames, pending = (pending + piece).split(b"\n\n")
        for frame in frames:
            yield frame.removeprefix(b"data: ")


async def _timed(client: httpx.AsyncClient, body: dict[str, Any]) -> Timed:
    timed = Timed(sent_at=time.monotonic())
    async with client.stream("POST", CHAT, json=body) as response:
        timed.status = response.status_code
        async for frame in _frames(response):
            if frame != b"[DONE]" and any(
                c["delta"].get("content") for c in json.loads(frame).get("choices", [])
            ):
                timed.content_at.append(time.monotonic())
    return timed


async def _metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """Samples by name, summed over labels."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def _client(base_url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    return httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, limits=limits)


async def test_more_requests_than_max_num_seqs_queue_as_the_model_predicts(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--max-num-seqs", "2",
        "--time-to-first-token-ms", "50",
        "--prefill-ms-per-token", "0",
        "--inter-token-latency-ms", "20",
        "--load-factor", "0",
        "--no-enable-prefix-caching",
    )  # fmt: skip
    requests, tokens = 6, 10
    async with _client(server.base_url) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(requests)))
        await _timed(client, _body(max_tokens=1))  # warm the server's code paths
        before = await _metrics(client)
        body = _body(max_tokens=tokens, ignore_eos=True)
        results = await asyncio.wait_for(
            asyncio.gather(*(_timed(client, body) for _ in range(requests))), TIMEOUT_S
        )
        after = await _metrics(client)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    # A slot holds a sequence for its 50 ms to first token and 9 decode steps
    # (>= 20 ms each): the k-th fastest request waits for k // 2 of them.
    occupancy_s = 0.050 + (tokens - 1) * 0.020
    ttfts = sorted(r.ttft() for r in results)
    for k, ttft in enumerate(ttfts):
        assert ttft >= (k // 2) * occupancy_s + 0.050 - EARLY_S, (k, ttfts)
    assert ttfts[-1] < 5.0, ttfts  # the model says about 0.75 s
    assert all(r.itl() >= 0.020 - EARLY_S for r in results)

    # /metrics counted exactly what was sent, and its latencies agree with the clients'.
    assert [r.status for r in results] == [200] * requests
    assert [len(r.content_at) for r in results] == [tokens] * requests
    assert grew("vllm:request_success_total") == requests
    assert grew("vllm:generation_tokens_total") == requests * tokens
    assert grew("vllm:time_to_first_token_seconds_count") == requests
    # The requests reach the engine a few ms apart (each is parsed and planned in
    # turn, slower on a busy CI machine), which shortens the later ones' waits.
    assert grew("vllm:request_queue_time_seconds_sum") >= sum(
        (k // 2) * occupancy_s - ARRIVAL_SPREAD_S for k in range(requests)
    )
    server_ttft = grew("vllm:time_to_first_token_seconds_sum")
    client_ttft = sum(ttfts)
    # The server's clock starts after the client's and stops before it: never more.
    assert server_ttft <= client_ttft
    assert client_ttft - server_ttft < requests * 0.25, (client_ttft, server_ttft)
    server_itl = grew("vllm:inter_token_latency_seconds_sum") / grew(
        "vllm:inter_token_latency_seconds_count"
    )
    client_itl = sum(r.itl() for r in results) / requests
    assert abs(server_itl - client_itl) < 0.005, (server_itl, client_itl)
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0


async def test_a_full_queue_is_a_429_with_retry_after_that_the_sdk_sees(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--max-num-seqs", "1", "--max-waiting-requests", "0",
        "--time-to-first-token-ms", "10", "--inter-token-latency-ms", "20",
    )  # fmt: skip
    async with _client(server.base_url) as client, contextlib.AsyncExitStack() as stack:
        holder = await stack.enter_async_context(
            client.stream("POST", CHAT, json=_body(max_tokens=1000, ignore_eos=True))
        )
        # Keep the reader: a dropped generator would close the stream, and free the slot.
        held = await stack.enter_async_context(contextlib.aclosing(_frames(holder)))
        await anext(held)
        curl = await client.post(CHAT, json=_body(), headers={"Accept": "*/*"})
        sdk = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        await sdk.close()
    assert holder.status_code == 200
    assert curl.status_code == 429
    assert curl.headers["content-type"].startswith("text/event-stream")
    assert json.loads(curl.text.removeprefix("data: "))["error"]["type"] == "rate_limit_error"
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limit_exceeded"
    # ~1000 tokens to go at 20 ms: about 20 s.
    assert 15 <= int(refused.value.response.headers["retry-after"]) <= 21


async def test_a_client_that_disconnects_frees_its_slot_for_the_waiting_one(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        "--max-num-seqs", "1", "--time-to-first-token-ms", "10", "--inter-token-latency-ms", "20"
    )
    async with _client(server.base_url) as client:
        async with (
            contextlib.AsyncExitStack() as stack,
            client.stream("POST", CHAT, json=_body(max_tokens=1000, ignore_eos=True)) as leaver,
        ):
            frames = await stack.enter_async_context(contextlib.aclosing(_frames(leaver)))
            await anext(frames)
            await anext(frames)
            waiter = asyncio.ensure_future(_timed(client, _body(max_tokens=3)))
            await asyncio.sleep(0.2)
            during = await _metrics(client)
            left_at = time.monotonic()
        # The leaver had ~20 s of tokens to go; its slot is the waiter's at once.
        result = await asyncio.wait_for(waiter, TIMEOUT_S)
        after = await _metrics(client)
    assert (during["vllm:num_requests_running"], during["vllm:num_requests_waiting"]) == (1, 1)
    assert result.status == 200
    assert result.content_at[0] - left_at < 1.0
    assert after["streamapi_client_disconnects_total"] == 1
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
