"""The gateway in-process: a streamapi simulator app is the upstream, over ``httpx.ASGITransport``.

Every test compares what a client gets through the gateway with what the same
request gets from the upstream directly: the content must be the upstream's,
the framing the gateway's own, and the usage the upstream's (the upstream
sends several tokens per event, so counting events would be wrong).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.types import TextBlock
from asgi_lifespan import LifespanManager
from openai.types.chat import ChatCompletionMessageFunctionToolCall
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from streamapi.app import create_app
from streamapi.settings import Settings
from tests.asgi_driver import samples
from tests.sse_helpers import chunks, content

UPSTREAM_URL = "http://upstream.test/v1"
ROUTES = f"""
upstreams:
  sim:
    base_url: {UPSTREAM_URL}
    api_key: up-secret
    max_retries: 0
models:
  gw-small: {{upstream: sim, upstream_model: up-small}}
  gw-reasoner: {{upstream: sim, upstream_model: up-reasoner}}
  gw-missing: {{upstream: sim, upstream_model: not-served-upstream}}
  gw-sim: {{engine: simulator}}
"""
QUESTION: Any = [{"role": "user", "content": "Explain DNS caching"}]


@dataclass
class Recorder:
    """Wraps the upstream app to keep the headers and JSON body of every request it got."""

    app: ASGIApp
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = bytearray()

        async def receive_and_keep() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(json.loads(body or b"{}"))
            return message

        await self.app(scope, receive_and_keep, send)


@dataclass
class Rig:
    gateway: httpx.AsyncClient
    upstream: httpx.AsyncClient
    recorder: Recorder
    gateway_app: ASGIApp


def upstream_settings() -> Settings:
    return Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        served_model_names=["up-small", "up-reasoner"],
        accept_unknown_models=False,
        max_model_len=2048,
        # Several tokens per event: the gateway must take the upstream's usage,
        # not count events.
        tokens_per_event=3,
        api_keys=["up-secret"],
    )


@asynccontextmanager
async def rig(tmp_path: Path, routes: str = ROUTES, **gateway: Any) -> AsyncIterator[Rig]:
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(routes)
    settings = Settings(
        time_to_first_token_ms=0, inter_token_latency_ms=0, routes_file=routes_file, **gateway
    )
    async with LifespanManager(create_app(upstream_settings())) as up:
        recorder = Recorder(up.app)
        app = create_app(settings, upstream_transports={"sim": httpx.ASGITransport(app=recorder)})
        async with (
            LifespanManager(app) as gw,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gw.app), base_url="http://gw.test"
            ) as gateway_client,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=up.app),
                base_url="http://upstream.test",
                headers={"Authorization": "Bearer up-secret"},
            ) as upstream_client,
        ):
            yield Rig(gateway_client, upstream_client, recorder, gw.app)


def claude(r: Rig) -> anthropic.AsyncAnthropic:
    """The Anthropic SDK on the gateway app (it brings its own httpx fork, httpx2)."""
    transport = httpx2.ASGITransport(app=r.gateway_app)
    return anthropic.AsyncAnthropic(
        base_url="http://gw.test",
        api_key="unused",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://gw.test"),
    )


def gpt(r: Rig) -> openai.AsyncOpenAI:
    """The OpenAI SDK on the gateway app."""
    transport = httpx2.ASGITransport(app=r.gateway_app)
    return openai.AsyncOpenAI(
        base_url="http://gw.test/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://gw.test"),
    )


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": QUESTION, "seed": 11, "max_tokens": 60, **extra}


STREAM = {"stream": True, "stream_options": {"include_usage": True}}


async def test_streamed_chat_is_the_upstreams_answer_with_its_usage_in_the_gateways_framing(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        direct = await r.upstream.post("/v1/chat/completions", json=chat("up-small", **STREAM))
        through = await r.gateway.post("/v1/chat/completions", json=chat("gw-small", **STREAM))
    assert through.status_code == 200
    assert through.headers["content-type"].startswith("text/event-stream")
    assert content(through.text) == content(direct.text) != ""
    got = chunks(through.text)
    assert {c["id"] for c in got} == {got[0]["id"]}
    assert {c["model"] for c in got} == {"gw-small"}
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in got[:-1]].count("length") == 1
    assert got[-1]["choices"] == []
    usage = got[-1]["usage"]
    assert usage == chunks(direct.text)[-1]["usage"]
    # The upstream sent three tokens per event: its count, not the gateway's events.
    assert usage["completion_tokens"] == 60
    assert len([c for c in got if c["choices"] and c["choices"][0]["delta"].get("content")]) < 60
    assert through.text.endswith("data: [DONE]\n\n")


async def test_whole_chat_completion_through_the_gateway(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        direct = (await r.upstream.post("/v1/chat/completions", json=chat("up-small"))).json()
        through = (await r.gateway.post("/v1/chat/completions", json=chat("gw-small"))).json()
    assert through["model"] == "gw-small"
    assert through["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert through["choices"][0]["finish_reason"] == "length"
    assert through["usage"] == direct["usage"]


async def test_the_upstream_gets_its_key_its_model_name_and_the_clients_request_id(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        response = await r.gateway.post(
            "/v1/chat/completions",
            json=chat("gw-small", **STREAM),
            headers={"x-request-id": "req-abc-123", "Authorization": "Bearer client-key"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-abc-123"
    sent = r.recorder.headers[-1]
    assert sent["x-request-id"] == "req-abc-123"
    # The upstream's key replaces whatever the client sent.
    assert sent["authorization"] == "Bearer up-secret"


async def test_models_lists_simulator_and_routed_models(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        listed = (await r.gateway.get("/v1/models")).json()["data"]
        one = await r.gateway.get("/v1/models/gw-reasoner")
    assert [m["id"] for m in listed] == [
        "sim-small",
        "gw-small",
        "gw-reasoner",
        "gw-missing",
        "gw-sim",
    ]
    assert {m["id"]: m["owned_by"] for m in listed}["gw-small"] == "sim"
    assert one.status_code == 200
    assert one.json()["owned_by"] == "sim"


async def test_a_simulator_route_and_unrouted_models_stay_on_the_simulator(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        for model in ("gw-sim", "sim-small"):
            response = await r.gateway.post("/v1/chat/completions", json=chat(model))
            assert response.status_code == 200
            assert response.json()["model"] == model
    assert r.recorder.headers == []


async def test_anthropic_sdk_over_an_openai_upstream(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        direct = (await r.upstream.post("/v1/chat/completions", json=chat("up-small"))).json()
        client = claude(r)
        async with client.messages.stream(
            model="gw-small",
            max_tokens=60,
            messages=QUESTION,
            extra_body={"seed": 11},
        ) as stream:
            message = await stream.get_final_message()
    assert message.model == "gw-small"
    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["text"]
    block = message.content[0]
    assert isinstance(block, TextBlock)
    assert block.text == direct["choices"][0]["message"]["content"]
    assert message.usage.output_tokens == direct["usage"]["completion_tokens"] == 60


async def test_responses_api_over_an_openai_upstream(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        direct = (await r.upstream.post("/v1/chat/completions", json=chat("up-small"))).json()
        client = gpt(r)
        async with client.responses.stream(
            model="gw-small",
            input="Explain DNS caching",
            max_output_tokens=500,
            extra_body={"seed": 11},
        ) as stream:
            response = await stream.get_final_response()
        whole = await client.chat.completions.create(
            model="gw-small",
            messages=QUESTION,
            seed=11,
            max_tokens=500,
        )
    assert response.model == "gw-small"
    assert response.output_text == whole.choices[0].message.content
    assert direct["choices"][0]["message"]["content"] in response.output_text
    assert response.usage is not None
    assert whole.usage is not None
    assert response.usage.output_tokens == whole.usage.completion_tokens


async def test_legacy_completions_over_a_chat_upstream(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        direct = (await r.upstream.post("/v1/chat/completions", json=chat("up-small"))).json()
        body = {"model": "gw-small", "prompt": "Explain DNS caching", "max_tokens": 60, "seed": 11}
        through = (await r.gateway.post("/v1/completions", json=body)).json()
    assert through["choices"][0]["text"] == direct["choices"][0]["message"]["content"]
    assert through["usage"]["completion_tokens"] == 60


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
WEATHER_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_tool_calls_pass_through_and_a_follow_up_turn_reaches_the_upstream_structured(
    tmp_path: Path,
) -> None:
    body = {"messages": WEATHER_QUESTION, "tools": [WEATHER], "seed": 3}
    async with rig(tmp_path) as r:
        direct = await r.upstream.post(
            "/v1/chat/completions", json={"model": "up-small", **body, **STREAM}
        )
        through = await r.gateway.post(
            "/v1/chat/completions", json={"model": "gw-small", **body, **STREAM}
        )
        client = gpt(r)
        first = await client.chat.completions.create(
            model="gw-small",
            messages=WEATHER_QUESTION,
            tools=[WEATHER],
            seed=3,
        )
        calls_made = first.choices[0].message.tool_calls or []
        call = calls_made[0]
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        follow_up: Any = [
            *WEATHER_QUESTION,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
        ]
        second = await client.chat.completions.create(
            model="gw-small",
            messages=follow_up,
            tools=[WEATHER],
            seed=3,
        )
    through_chunks = chunks(through.text)
    calls = [
        tc
        for c in through_chunks
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls") or ()
    ]
    direct_calls = [
        tc
        for c in chunks(direct.text)
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls") or ()
    ]
    assert calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["id"] == direct_calls[0]["id"]
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert arguments == "".join(tc["function"]["arguments"] for tc in direct_calls)
    assert json.loads(arguments) == {"location": "Paris"}
    finishes = [c["choices"][0]["finish_reason"] for c in through_chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    # The follow-up answers from the tool's result: the upstream got it as a tool message.
    assert second.choices[0].finish_reason == "stop"
    assert "18 C and sunny" in (second.choices[0].message.content or "")


async def test_anthropic_tool_use_over_an_openai_upstream(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        client = claude(r)
        message = await client.messages.create(
            model="gw-small",
            max_tokens=200,
            messages=WEATHER_QUESTION,
            tools=[
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "input_schema": WEATHER["function"]["parameters"],
                }
            ],
        )
    assert message.stop_reason == "tool_use"
    block = message.content[-1]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == {"location": "Paris"}


async def test_reasoning_passes_through_to_every_protocol(tmp_path: Path) -> None:
    body = {"model": "gw-reasoner", "messages": QUESTION, "seed": 5, "max_tokens": 400}
    async with rig(tmp_path) as r:
        direct = (
            await r.upstream.post("/v1/chat/completions", json={**body, "model": "up-reasoner"})
        ).json()
        through = (await r.gateway.post("/v1/chat/completions", json=body)).json()
        client = claude(r)
        message = await client.messages.create(
            model="gw-reasoner",
            max_tokens=400,
            messages=QUESTION,
            extra_body={"seed": 5},
        )
    reasoning = direct["choices"][0]["message"]["reasoning_content"]
    assert through["choices"][0]["message"]["reasoning_content"] == reasoning != ""
    assert (
        through["usage"]["completion_tokens_details"]["reasoning_tokens"]
        == (direct["usage"]["completion_tokens_details"]["reasoning_tokens"])
    )
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == reasoning


async def test_logprobs_stay_aligned_with_tokens(tmp_path: Path) -> None:
    extra = {"logprobs": True, "top_logprobs": 2, "max_tokens": 12}
    async with rig(tmp_path) as r:
        direct = (
            await r.upstream.post("/v1/chat/completions", json=chat("up-small", **extra))
        ).json()
        through = (
            await r.gateway.post("/v1/chat/completions", json=chat("gw-small", **extra))
        ).json()
    assert through["choices"][0]["logprobs"] == direct["choices"][0]["logprobs"]
    assert len(through["choices"][0]["logprobs"]["content"]) == 12


SAMPLING = ("temperature", "top_p", "top_k")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        # 1.0 is OpenAI's default, not the upstream's (llama.cpp samples at 0.8 when
        # told nothing): an explicit 1.0 must reach it as the client set it.
        ({"temperature": 1.0, "top_p": 1.0}, {"temperature": 1.0, "top_p": 1.0}),
        ({"temperature": 0.0, "top_k": 0}, {"temperature": 0.0, "top_k": 0}),
        # Unset stays unset, so the upstream's own defaults apply.
        ({}, {}),
    ],
)
async def test_the_sampling_parameters_the_client_set_and_only_those_reach_the_upstream(
    tmp_path: Path, given: dict[str, Any], sent: dict[str, Any]
) -> None:
    # The Responses API has no top_k.
    no_top_k = {k: v for k, v in given.items() if k != "top_k"}
    async with rig(tmp_path) as r:
        client = gpt(r)
        await client.chat.completions.create(
            model="gw-small", messages=QUESTION, max_tokens=5, extra_body=given
        )
        await client.completions.create(
            model="gw-small", prompt="Explain DNS caching", max_tokens=5, extra_body=given
        )
        await claude(r).messages.create(
            model="gw-small", messages=QUESTION, max_tokens=5, extra_body=given
        )
        await client.responses.create(
            model="gw-small", input="Explain DNS caching", max_output_tokens=16, **no_top_k
        )
    got = [{k: body[k] for k in SAMPLING if k in body} for body in r.recorder.bodies]
    responses_sent = {k: v for k, v in sent.items() if k != "top_k"}
    assert got == [sent, sent, sent, responses_sent]


async def test_n_choices_are_separate_upstream_requests_and_usage_sums_them(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        through = (
            await r.gateway.post(
                "/v1/chat/completions", json=chat("gw-small", n=2, max_tokens=None)
            )
        ).json()
    texts = [c["message"]["content"] for c in through["choices"]]
    assert texts[0] != texts[1]
    assert len(r.recorder.headers) == 2
    usage = through["usage"]
    assert usage["completion_tokens"] > 60
    # The prompt is counted once, as OpenAI counts it for n choices.
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] < 20


async def test_an_upstream_4xx_keeps_its_status_and_message_in_each_dialect(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        missing = await r.gateway.post(
            "/v1/chat/completions",
            json=chat("gw-missing"),
            headers={"Accept": "application/json"},
        )
        too_long = await r.gateway.post(
            "/v1/messages",
            json={"model": "gw-small", "max_tokens": 5000, "messages": QUESTION, "stream": True},
        )
        metrics = (await r.gateway.get("/metrics")).text
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["code"] == "model_not_found"
    assert "not-served-upstream" in error["message"]
    assert too_long.status_code == 400
    body = too_long.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("This model's maximum context length is 2048")
    values = samples(metrics)
    assert (
        values[
            (
                "streamapi_upstream_errors_total",
                frozenset({("upstream", "sim"), ("reason", "status_4xx")}),
            )
        ]
        == 2
    )
    assert (
        values[
            (
                "streamapi_upstream_requests_total",
                frozenset({("upstream", "sim"), ("status", "404")}),
            )
        ]
        == 1
    )


async def test_upstream_routes_feed_the_same_metrics_as_the_simulator(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.gateway.post("/v1/chat/completions", json=chat("gw-small", **STREAM))
        metrics = samples((await r.gateway.get("/metrics")).text)
    model = ("model_name", "sim-small")
    assert metrics[("vllm:time_to_first_token_seconds_count", frozenset({model}))] == 1
    assert metrics[("vllm:e2e_request_latency_seconds_count", frozenset({model}))] == 1
    assert metrics[("vllm:inter_token_latency_seconds_count", frozenset({model}))] > 0
    assert metrics[("vllm:generation_tokens_total", frozenset({model}))] == 60
    assert metrics[("vllm:request_generation_tokens_sum", frozenset({model}))] == 60
    success = frozenset({model, ("finished_reason", "length")})
    assert metrics[("vllm:request_success_total", success)] == 1
    status = frozenset({("upstream", "sim"), ("status", "200")})
    assert metrics[("streamapi_upstream_requests_total", status)] == 1


async def test_a_routed_model_may_declare_its_context_length(tmp_path: Path) -> None:
    routes = ROUTES.replace(
        "gw-small: {upstream: sim, upstream_model: up-small}",
        "gw-small: {upstream: sim, upstream_model: up-small, max_model_len: 100}",
    )
    async with rig(tmp_path, routes) as r:
        response = await r.gateway.post(
            "/v1/chat/completions",
            json=chat("gw-small", max_tokens=200),
            headers={"Accept": "application/json"},
        )
        card = (await r.gateway.get("/v1/models/gw-small")).json()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert r.recorder.headers == []  # refused before anything was sent upstream
    assert card["max_model_len"] == 100


# --- the routes file ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "upstreams: {}\nmodels:\n  m1: {upstream: vllm}\n",
            "models.m1.upstream: unknown upstream 'vllm' (defined: none)",
        ),
        (
            "upstreams:\n  u: {base_url: 'http://x/v1', timeout_s: 3}\n",
            "upstreams.u.timeout_s: Extra inputs are not permitted",
        ),
        ("upstreams:\n  u: {}\n", "upstreams.u.base_url: Field required"),
        (
            "upstreams:\n  u: {base_url: 'x.example/v1'}\n",
            "upstreams.u.base_url: must start with http:// or https://",
        ),
        (
            "upstreams:\n  u: {base_url: 'http://x/v1', api_key_env: STREAMAPI_TEST_UNSET_KEY}\n",
            "upstreams.u.api_key_env: environment variable STREAMAPI_TEST_UNSET_KEY is not set",
        ),
        (
            "upstreams:\n  u: {base_url: 'http://x/v1', max_retries: -1}\n",
            "upstreams.u.max_retries: Input should be greater than or equal to 0",
        ),
        ("models:\n  m1: {engine: simulator, upstream_model: y}\n", "models.m1: "),
        ("models: [1, 2", "is not valid"),
    ],
)
def test_a_bad_routes_file_stops_start_up_naming_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError) as caught:
        Settings(routes_file=path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_json_routes_file_and_a_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMAPI_TEST_UPSTREAM_KEY", "from-env")
    path = tmp_path / "routes.json"
    path.write_text(
        json.dumps(
            {
                "upstreams": {
                    "u": {"base_url": "http://x/v1", "api_key_env": "STREAMAPI_TEST_UPSTREAM_KEY"}
                },
                "models": {"m": {"upstream": "u"}},
            }
        )
    )
    settings = Settings(routes_file=path)
    route = settings.routes.upstream_of("m")
    assert route is not None
    name, config, model = route
    assert (name, model) == ("u", "m")
    key = config.key({"STREAMAPI_TEST_UPSTREAM_KEY": "from-env"})
    assert key is not None
    assert key.get_secret_value() == "from-env"
    assert "from-env" not in repr(config)
    assert settings.model_names == ["sim-small", "m"]


async def test_the_admin_api_changes_and_resets_the_simulators_latency_behind_routes(
    tmp_path: Path,
) -> None:
    # With a routes file the app's engine dispatches by model; its simulator's
    # latency is still the one /admin/config reads, changes and resets.
    admin = {"Authorization": "Bearer admin-secret"}
    async with rig(tmp_path, admin_key="admin-secret", load_factor=1.5) as r:
        shown = (await r.gateway.get("/admin/config", headers=admin)).json()["latency"]
        assert shown is not None
        assert shown["inter_token_latency_ms"] == 0
        assert shown["load_factor"] == 1.5

        patch = {"latency": {"inter_token_latency_ms": 3}}
        patched = await r.gateway.patch("/admin/config", headers=admin, json=patch)
        assert patched.status_code == 200, patched.text
        assert patched.json()["latency"]["inter_token_latency_ms"] == 3

        assert (await r.gateway.post("/admin/reset", headers=admin)).status_code in (200, 204)
        after = (await r.gateway.get("/admin/config", headers=admin)).json()["latency"]
        assert after["inter_token_latency_ms"] == 0


class _TimesOutFirst(httpx.AsyncBaseTransport):
    """The network between gateway and upstream: its first request times out unsent."""

    def __init__(self, app: ASGIApp, timeout: type[httpx.TimeoutException]) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._timeout = timeout
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            raise self._timeout("timed out", request=request)
        return await self._inner.handle_async_request(request)


@pytest.mark.parametrize(
    ("failure", "doing"),
    [
        (httpx.PoolTimeout, "waiting for a free connection"),
        (httpx.WriteTimeout, "sending the request"),
    ],
)
@pytest.mark.parametrize("retries", [0, 1])
async def test_a_timeout_before_the_request_was_sent_says_so_and_is_retried(
    tmp_path: Path, failure: type[httpx.TimeoutException], doing: str, retries: int
) -> None:
    routes_file = tmp_path / "routes.yaml"
    routes = ROUTES.replace("max_retries: 0", f"max_retries: {retries}\n    retry_backoff_s: 0")
    routes_file.write_text(routes)
    settings = Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, routes_file=routes_file)
    async with LifespanManager(create_app(upstream_settings())) as up:
        network = _TimesOutFirst(up.app, failure)
        app = create_app(settings, upstream_transports={"sim": network})
        async with (
            LifespanManager(app) as gw,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw") as c,
        ):
            answer = await c.post(
                "/v1/chat/completions",
                json=chat("gw-small"),
                headers={"Accept": "application/json"},
            )
    if retries:
        assert answer.status_code == 200, answer.text
        assert network.calls == 2
    else:
        assert answer.status_code == 504, answer.text
        assert f"The upstream 'sim' timed out {doing}." in answer.text


async def test_a_faked_context_length_error_names_the_models_own_context_length(
    tmp_path: Path,
) -> None:
    routes = ROUTES.replace(
        "gw-sim: {engine: simulator}", "gw-sim: {engine: simulator, max_model_len: 3000}"
    )
    async with rig(tmp_path, routes, enable_fault_headers=True) as r:
        answer = await r.gateway.post(
            "/v1/chat/completions",
            json=chat("gw-sim"),
            headers={"X-Streamapi-Fault": "status=400", "Accept": "application/json"},
        )
    assert answer.status_code == 400
    assert "maximum context length is 3000 tokens" in answer.json()["error"]["message"]
