"""The engine model through the whole app, in virtual time: clients and /metrics agree with it.

Each test drives the real app over ASGI (``tests.asgi_driver``) and times
frames on the event loop's clock, which ``virtual_time`` makes exact: what a
client sees, what ``/metrics`` reports and what docs/engine-model.md's formulas predict
must be the same numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from pydantic import ValidationError

from streamapi.app import create_app
from streamapi.engines.prefix_cache import BLOCK_TOKENS
from streamapi.metrics import _ITL_BUCKETS, LoopHistogram
from streamapi.settings import Settings
from streamapi.text.tokenizer import count_chat_tokens
from tests.asgi_driver import URL, Exchange, samples, value
from tests.virtual_time import virtual_time

MS = 1 / 1000
LIMIT_S = 3600.0
JSON = {"accept": "application/json"}
QUESTION = "Explain how continuous batching schedules requests"


def chat(question: str = QUESTION, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "stream": True} | fields


class Server:
    """An app in virtual time, with a JSON client and a scrape of its metrics."""

    def __init__(self, asgi: Any, client: httpx.AsyncClient) -> None:
        self.asgi = asgi
        self.client = client

    def exchange(self, body: dict[str, Any], **options: Any) -> Exchange:
        return Exchange(self.asgi, body, **options)

    async def all(self, *exchanges: Exchange) -> list[Exchange]:
        runs = asyncio.gather(*(e.run() for e in exchanges))
        return list(await asyncio.wait_for(runs, LIMIT_S))

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        return samples(response.text)


Serve = Callable[[Settings], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start apps in virtual time; all of them stop at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(virtual_time())

        async def start(settings: Settings) -> Server:
            manager = await stack.enter_async_context(LifespanManager(create_app(settings)))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
                )
            )
            return Server(manager.app, client)

        yield start


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def model_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "time_to_first_token_ms": 10,
        "prefill_ms_per_token": 0.1,
        "inter_token_latency_ms": 4,
        "load_factor": 1,
        "max_num_seqs": 2,
        "enable_prefix_caching": False,
    }
    return Settings(**(values | overrides))


async def test_queueing_shows_in_clients_and_metrics_as_the_model_predicts(serve: Serve) -> None:
    server = await serve(model_settings())
    tokens, requests = 5, 6
    body = chat(max_tokens=tokens, ignore_eos=True, stream_options={"include_usage": True})
    results = await server.all(*(server.exchange(body) for _ in range(requests)))
    metrics = await server.metrics()

    prompt = count_chat_tokens([QUESTION])
    prefill_ms = 10 + 0.1 * (2 * prompt)  # each wave's two sequences prefill in one step
    decode_ms = 4 * (1 + 1 * (2 - 1) / (2 - 1))
    wave_ms = prefill_ms + (tokens - 1) * decode_ms
    waves = [position // 2 for position in range(requests)]
    ttfts = sorted(r.ttft() for r in results)
    assert ttfts == pytest.approx([(w * wave_ms + prefill_ms) * MS for w in waves])
    for result in results:
        assert gaps(result.content_times()) == (pytest.approx([decode_ms * MS] * (tokens - 1)))

    # /metrics saw what the clients saw, to the float.
    assert value(metrics, "vllm:time_to_first_token_seconds_count") == requests
    assert value(metrics, "vllm:time_to_first_token_seconds_sum") == pytest.approx(sum(ttfts))
    assert value(metrics, "vllm:request_queue_time_seconds_sum") == pytest.approx(
        sum(w * wave_ms * MS for w in waves)
    )
    assert value(metrics, "vllm:request_prefill_time_seconds_sum") == pytest.approx(
        requests * prefill_ms * MS
    )
    assert value(metrics, "vllm:request_decode_time_seconds_sum") == pytest.approx(
        requests * (tokens - 1) * decode_ms * MS
    )
    assert value(metrics, "vllm:inter_token_latency_seconds_count") == requests * (tokens - 1)
    assert value(metrics, "vllm:inter_token_latency_seconds_sum") == pytest.approx(
        requests * (tokens - 1) * decode_ms * MS
    )
    ends = [r.content_times()[-1] for r in results]
    assert value(metrics, "vllm:e2e_request_latency_seconds_sum") == pytest.approx(sum(ends))

    # Counts equal the requests and tokens sent.
    usages = [r.chunks()[-1]["usage"] for r in results]
    assert value(metrics, "vllm:request_success_total", finished_reason="length") == requests
    assert value(metrics, "vllm:generation_tokens_total") == sum(
        u["completion_tokens"] for u in usages
    )
    assert value(metrics, "vllm:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert value(metrics, "vllm:num_requests_running") == 0
    assert value(metrics, "vllm:num_requests_waiting") == 0
    assert value(metrics, "vllm:kv_cache_usage_perc") == 0
    assert value(metrics, "streamapi_streams_in_flight") == 0
    assert value(metrics, "streamapi_client_disconnects_total") == 0
    assert (
        value(
            metrics,
            "streamapi_requests_total",
            route="/v1/chat/completions",
            method="POST",
            status="200",
        )
        == requests
    )


async def test_default_settings_keep_a_lone_request_at_100_ms_then_5_ms(serve: Serve) -> None:
    server = await serve(Settings())
    (result,) = await server.all(server.exchange(chat(max_tokens=20)))
    times = result.content_times()
    assert times[0] == pytest.approx(0.100)
    assert gaps(times) == pytest.approx([0.005] * 19)


async def test_running_and_waiting_gauges_follow_the_batch(serve: Serve) -> None:
    server = await serve(model_settings(inter_token_latency_ms=10, max_num_seqs=3))
    runs = [
        asyncio.ensure_future(server.exchange(chat(max_tokens=50, ignore_eos=True)).run())
        for _ in range(5)
    ]
    await asyncio.sleep(0.1)
    during = await server.metrics()
    await asyncio.wait_for(asyncio.gather(*runs), LIMIT_S)
    assert value(during, "vllm:num_requests_running") == 3
    assert value(during, "vllm:num_requests_waiting") == 2
    assert value(during, "streamapi_streams_in_flight") == 5
    assert 0 < value(during, "vllm:kv_cache_usage_perc") < 1


async def test_a_full_queue_is_a_429_before_the_first_byte(serve: Serve) -> None:
    server = await serve(model_settings(max_num_seqs=1, max_waiting_requests=1))
    holders = [server.exchange(chat(max_tokens=500, ignore_eos=True)) for _ in range(2)]
    runs = [asyncio.ensure_future(h.run()) for h in holders]
    await asyncio.sleep(0.05)

    as_json = await server.client.post(URL, json=chat(), headers=JSON)
    as_sse = await server.client.post(URL, json=chat(), headers={"accept": "*/*"})
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    metrics = await server.metrics()

    # Retry-After: when the running sequence should end, from its tokens to go.
    prefill_ms = 10 + 0.1 * count_chat_tokens([QUESTION])
    to_go = 500 - (int((50 - prefill_ms) // 4) + 1)
    assert as_json.status_code == 429
    assert as_json.headers["content-type"] == "application/json"
    assert int(as_json.headers["retry-after-ms"]) == pytest.approx(to_go * 4, abs=1)
    assert as_json.headers["retry-after"] == str(math.ceil(to_go * 4 / 1000))
    error = as_json.json()["error"]
    assert error["message"].startswith("The engine is at capacity: 1 sequences running and 1")
    assert (error["type"], error["code"], error["param"]) == (
        "rate_limit_error",
        "rate_limit_exceeded",
        None,
    )
    assert as_sse.status_code == 429
    assert as_sse.headers["content-type"].startswith("text/event-stream")
    assert as_sse.text.startswith('data: {"error":{') and as_sse.text.count("data: ") == 1
    assert value(
        metrics, "streamapi_errors_total",
        type="rate_limit_error", code="rate_limit_exceeded", where="before_stream",
    ) == 2  # fmt: skip


async def test_a_client_that_leaves_frees_its_slot_for_the_next_request_at_once(
    serve: Serve,
) -> None:
    server = await serve(
        model_settings(time_to_first_token_ms=20, prefill_ms_per_token=0, max_num_seqs=1)
    )
    leaver = server.exchange(chat(max_tokens=1000, ignore_eos=True), leave_after_content=3)
    waiter = server.exchange(chat(max_tokens=2, ignore_eos=True))
    await server.all(leaver, waiter)
    metrics = await server.metrics()
    # The leaver's tokens came at 20, 24, 28 ms (ITL 4); it left at 28 ms, in
    # the step that ends at 32 ms; the waiter is admitted then and prefills 20 ms.
    assert leaver.content_times() == pytest.approx([0.020, 0.024, 0.028])
    assert waiter.ttft() == pytest.approx(0.052)
    assert value(metrics, "streamapi_client_disconnects_total") == 1
    assert value(metrics, "vllm:request_success_total", finished_reason="length") == 1
    assert value(metrics, "vllm:num_requests_running") == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_gone_before_the_stream_starts_releases_its_sequence(
    serve: Serve, stream: bool
) -> None:
    server = await serve(model_settings(max_num_seqs=1))
    body = chat(max_tokens=100, stream=stream, n=2)
    gone = [server.exchange(body, leave_at_once=True) for _ in range(3)]
    await server.all(*gone)
    await asyncio.sleep(1)  # past any step that was under way when they left
    after = await server.all(server.exchange(chat(max_tokens=3)))
    metrics = await server.metrics()
    assert value(metrics, "vllm:num_requests_running") == 0
    assert value(metrics, "vllm:num_requests_waiting") == 0
    assert value(metrics, "streamapi_client_disconnects_total") == 3
    assert value(metrics, "streamapi_streams_in_flight") == 0
    # Nothing was left holding the one slot: the next request started at once.
    assert after[0].ttft() == pytest.approx((10 + 0.1 * count_chat_tokens([QUESTION])) * MS)


async def test_a_repeated_prompt_prefills_only_its_new_tokens(serve: Serve) -> None:
    server = await serve(
        model_settings(time_to_first_token_ms=5, prefill_ms_per_token=1, enable_prefix_caching=True)
    )
    question = "Summarise this document: " + "lorem ipsum dolor sit amet " * 40
    body = chat(question, max_tokens=2, stream_options={"include_usage": True})
    (first,) = await server.all(server.exchange(body))
    (second,) = await server.all(server.exchange(body))
    whole = await server.client.post(
        URL, json=chat(question, max_tokens=2, stream=False), headers=JSON
    )
    metrics = await server.metrics()

    prompt = count_chat_tokens([question])
    cached = min(prompt // BLOCK_TOKENS * BLOCK_TOKENS, prompt - 1)
    assert first.chunks()[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second.chunks()[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    assert whole.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    assert first.ttft() == pytest.approx((5 + prompt) * MS)
    assert second.ttft() == pytest.approx((5 + prompt - cached) * MS)
    assert value(metrics, "vllm:prefix_cache_queries_total") == 3 * prompt
    assert value(metrics, "vllm:prefix_cache_hits_total") == 2 * cached


async def test_latency_headers_set_one_requests_ttft_itl_and_length(serve: Serve) -> None:
    server = await serve(model_settings(enable_latency_headers=True))
    headers = {"x-streamapi-ttft-ms": "250", "x-streamapi-itl-ms": "40"}
    paced = server.exchange(chat(), headers=headers | {"x-streamapi-output-tokens": "5"})
    plain = server.exchange(chat(max_tokens=3))
    await server.all(paced, plain)
    times = paced.content_times()
    assert times == pytest.approx([0.250, 0.290, 0.330, 0.370, 0.410])
    assert paced.chunks()[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(plain.content_times()) == 3

    bad = await server.client.post(URL, json=chat(), headers={"x-streamapi-itl-ms": "-1", **JSON})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-streamapi-itl-ms"


async def test_latency_headers_are_ignored_unless_enabled(serve: Serve) -> None:
    server = await serve(model_settings(max_num_seqs=4))
    headers = {"x-streamapi-ttft-ms": "250", "x-streamapi-output-tokens": "x"}
    (result,) = await server.all(server.exchange(chat(max_tokens=3), headers=headers))
    assert result.status == 200
    assert result.ttft() == pytest.approx((10 + 0.1 * count_chat_tokens([QUESTION])) * MS)


async def test_metrics_route_serves_vllm_and_streamapi_names(serve: Serve) -> None:
    server = await serve(model_settings())
    await server.client.get("/v1/models/a/b")
    await server.client.post(URL, json={"messages": []}, headers=JSON)
    await server.client.get("/nowhere")
    response = await server.client.get("/metrics")
    metrics = samples(response.text)
    assert response.headers["content-type"].startswith("text/plain; version=")
    for name in (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
        "streamapi_streams_in_flight", "streamapi_client_disconnects_total",
    ):  # fmt: skip
        assert f"\n{name}" in response.text, name
    assert value(
        metrics, "streamapi_requests_total", route="/v1/models/{model_id:path}",
        method="GET", status="404",
    ) == 1  # fmt: skip
    assert (
        value(metrics, "streamapi_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    assert value(
        metrics, "streamapi_errors_total",
        type="invalid_request_error", code="", where="before_stream",
    ) == 1  # fmt: skip


async def test_two_apps_in_one_process_keep_separate_metrics(serve: Serve) -> None:
    busy, idle = await serve(model_settings()), await serve(model_settings())
    await busy.all(busy.exchange(chat(max_tokens=2)))
    assert value(await busy.metrics(), "vllm:request_success_total", finished_reason="length") == 1
    assert value(await idle.metrics(), "vllm:request_success_total", finished_reason="length") == 0


async def test_each_finish_reason_and_status_keeps_its_own_count(serve: Serve) -> None:
    # The counters' labelled children are kept by their label values: a second value
    # must get its own series, and a value seen again the series it had.
    server = await serve(model_settings(inter_token_latency_ms=0))
    await server.all(
        server.exchange(chat(max_tokens=2)),
        server.exchange(chat(max_tokens=4096)),
        server.exchange(chat(max_tokens=3)),
    )
    await server.client.get("/v1/models/nope")
    await server.client.get("/v1/models")
    await server.client.get("/v1/models/nope")
    await server.client.post(URL, json={"messages": []}, headers=JSON)  # 400
    metrics = await server.metrics()
    assert value(metrics, "vllm:request_success_total", finished_reason="length") == 2
    assert value(metrics, "vllm:request_success_total", finished_reason="stop") == 1
    models = "/v1/models/{model_id:path}"
    get, post = {"method": "GET"}, {"method": "POST"}
    assert value(metrics, "streamapi_requests_total", route=models, status="404", **get) == 2
    assert value(metrics, "streamapi_requests_total", route="/v1/models", status="200", **get) == 1
    chats = "/v1/chat/completions"
    assert value(metrics, "streamapi_requests_total", route=chats, status="200", **post) == 3
    assert value(metrics, "streamapi_requests_total", route=chats, status="400", **post) == 1


def test_a_profile_presets_the_latency_settings_and_explicit_ones_win() -> None:
    settings = Settings(latency_profile="70b-8gpu", inter_token_latency_ms=12)
    assert settings.time_to_first_token_ms == 10
    assert settings.prefill_overhead_ms == 25
    assert settings.prefill_ms_per_token == 0.1
    assert settings.inter_token_latency_ms == 12
    assert settings.kv_cache_tokens == 1_200_000
    instant = Settings(latency_profile="instant")
    assert (instant.time_to_first_token_ms, instant.inter_token_latency_ms) == (0, 0)
    default = Settings()
    assert (default.time_to_first_token_ms, default.inter_token_latency_ms) == (100, 5)


def test_a_kv_budget_below_the_context_length_is_refused() -> None:
    with pytest.raises(ValidationError, match="kv_cache_tokens"):
        Settings(kv_cache_tokens=1000, max_model_len=2048)


@pytest.mark.parametrize(
    "observations",
    [[], [0.02], [0.0, 0.001, 0.0010001, 0.02, 0.02, 79.9, 80.0, 80.1, 1e9]],
)
def test_the_per_token_histogram_renders_as_prometheus_clients_would(
    observations: list[float],
) -> None:
    # LoopHistogram replaces prometheus_client's Histogram on the per-token path:
    # a scraper must see the same series, buckets and values (bar _created).
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = LoopHistogram(
        "vllm:x_seconds", "Doc.", _ITL_BUCKETS, label=("model_name", "m"), registry=ours_registry
    )
    theirs = Histogram(
        "vllm:x_seconds", "Doc.", ("model_name",), buckets=_ITL_BUCKETS, registry=theirs_registry
    ).labels("m")
    for amount in observations:
        ours.observe(amount)
        theirs.observe(amount)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]

    assert lines(ours_registry) == lines(theirs_registry)


@pytest.mark.parametrize("journal", [False, True])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_tokens_ready_together_share_a_write_and_paced_ones_do_not(
    serve: Serve, route: str, journal: bool
) -> None:
    # An engine with steps of no length has every token ready at once: they go
    # out in a few writes, each holding many events. A paced engine's tokens
    # come one a step, one write each. Either way the events are the same.
    body: dict[str, Any] = {"max_tokens": 300, "ignore_eos": True, "stream": True, "seed": 1}
    if route == "/v1/completions":
        body["prompt"] = QUESTION
    else:
        body["messages"] = [{"role": "user", "content": QUESTION}]
    texts = []
    for itl in (0, 1):
        # The journal (on with an admin key) counts every token, and must not stop
        # ready ones from sharing a write.
        admin_key = "k" if journal else None
        server = await serve(
            Settings(time_to_first_token_ms=0, inter_token_latency_ms=itl, admin_key=admin_key)
        )
        exchange = server.exchange(body)
        exchange.path = route
        (done,) = await server.all(exchange)
        contents = [f for f in done.frames if f.payload != "[DONE]" and _text(f.json())]
        assert len(contents) == 300
        texts.append("".join(_text(f.json()) for f in contents))
        if itl == 0:
            assert done.writes <= 10
        else:
            assert done.writes >= 300
    assert texts[0] == texts[1]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_a_paced_stream_ends_in_the_write_of_its_last_token(serve: Serve, route: str) -> None:
    # The last token's event, the finish chunk, the usage chunk and [DONE] are ready
    # together: one write, not three.
    body: dict[str, Any] = {
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if route == "/v1/completions":
        body["prompt"] = QUESTION
    else:
        body["messages"] = [{"role": "user", "content": QUESTION}]
    server = await serve(Settings(time_to_first_token_ms=0, inter_token_latency_ms=1))
    exchange = server.exchange(body)
    exchange.path = route
    (done,) = await server.all(exchange)
    assert done.writes == 5
    chunks = done.chunks()
    assert [_text(c) != "" for c in chunks].count(True) == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert done.frames[-1].payload == "[DONE]"


def _text(chunk: dict[str, Any]) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or c.get("text") or "" for c in chunk["choices"]
    )
