"""One gateway conformance suite, two upstreams: llama.cpp's llama-server and streamapi's simulator.

Every test runs twice, once per upstream, with the same checks: the gateway (a real
``streamapi serve``) in front of the upstream, driven by the official ``openai`` and
``anthropic`` SDKs, and compared with the same request sent to the upstream directly.
What the upstream says is the upstream's; what the gateway must add is its framing,
its translation of each protocol, its statuses and errors, and cancellation.

llama-server serves the tiny random-weight model of ``deploy/real-engine/make_model.py``
(its text is gibberish, its protocol, tokenizer, batching, slots, errors and sampling
are llama.cpp's own). Without the built engine the llama-server half is skipped, unless
``STREAMAPI_REQUIRE_REAL_ENGINE`` is set (CI), where it fails. The differences between
the two upstreams the suite has to allow for are named where they occur and listed in
docs/gateway.md ("Engines tested in CI").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamapi.cassettes import read_cassette
from tests.e2e.conftest import FAST_PACING, HOST, ServerFactory, ServerProcess, free_port
from tests.e2e.real_engine import (
    MODEL as LLAMA_MODEL,
    WEATHER,
    LlamaServer,
    calling_seed,
    start_llama_server,
)

pytestmark = pytest.mark.e2e

KEY = "sk-conformance"
SIM_MODEL = "up-sim"
CONTEXT = 4096
QUESTION: Any = [{"role": "user", "content": "Explain DNS caching in two sentences."}]
VERDICT: Any = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["yes", "no"]},
        "sure": {"type": "boolean"},
    },
    "required": ["verdict", "sure"],
    "additionalProperties": False,
}
STREAM: Any = {"stream": True, "stream_options": {"include_usage": True}}
# vLLM's and llama.cpp's ignore_eos: the answer runs to max_tokens.
LONG: Any = {"ignore_eos": True}


@dataclass
class Upstream:
    """An upstream as the suite needs it, whichever engine it is."""

    kind: str
    base_url: str
    """Its OpenAI API (``.../v1``)."""
    model: str
    in_flight: Callable[[], int]
    """Requests it is generating for now (llama.cpp's busy slots; the simulator's running
    sequences)."""
    stop: Callable[[], None]
    kill: Callable[[], None]

    def direct(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0)


def _llama(server: LlamaServer) -> Upstream:
    return Upstream(
        "llama-server",
        server.base_url,
        LLAMA_MODEL,
        server.processing,
        server.stop,
        server.kill,
    )


def _running(server: ServerProcess) -> int:
    text = httpx.get(server.base_url + "/metrics", timeout=5).text
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "vllm:num_requests_running"
            for sample in family.samples
        )
    )


def _simulator(server: ServerProcess) -> Upstream:
    def stop() -> None:
        server.stop()

    def kill() -> None:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)

    return Upstream(
        "simulator", server.base_url + "/v1", SIM_MODEL, lambda: _running(server), stop, kill
    )


SIMULATOR_OPTIONS = (
    *FAST_PACING,
    "--served-model-names",
    SIM_MODEL,
    "--max-model-len",
    str(CONTEXT),
)


def _start_upstream(
    kind: str, factory: ServerFactory, log_dir: Path, *, endless: bool = False
) -> Upstream:
    """An upstream; ``endless``: its answers run to max_tokens whatever the protocol (the
    Messages API has no ``ignore_eos``): llama.cpp's ``--ignore-eos``, and for the simulator
    a prompt that asks for a long answer (LONG_ANSWER)."""
    if kind == "llama-server":
        return _llama(start_llama_server(log_dir, *(("--ignore-eos",) if endless else ())))
    return _simulator(factory(*SIMULATOR_OPTIONS))


@pytest.fixture(scope="module", params=["llama-server", "simulator"])
def upstream(
    request: pytest.FixtureRequest,
    module_server_factory: ServerFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Upstream]:
    started = _start_upstream(request.param, module_server_factory, tmp_path_factory.mktemp("up"))
    yield started
    started.stop()


def _routes(path: Path, upstream: Upstream) -> Path:
    routes = {
        "upstreams": {
            "up": {"base_url": upstream.base_url, "max_retries": 0},
            "nowhere": {"base_url": f"http://{HOST}:{free_port()}/v1", "max_retries": 0},
        },
        "models": {
            "gw": {"upstream": "up", "upstream_model": upstream.model},
            "gw-nowhere": {"upstream": "nowhere"},
        },
    }
    path.write_text(json.dumps(routes))
    return path


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream,
    module_server_factory: ServerFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerProcess:
    routes = _routes(tmp_path_factory.mktemp("gw") / "routes.json", upstream)
    return module_server_factory("--routes-file", str(routes), "--api-keys", KEY)


def gpt(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY, max_retries=0)


def claude(gateway: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=KEY, max_retries=0)


def streamed(chunks: list[Any]) -> tuple[str, str | None, Any]:
    """A chat stream's text, last finish reason and usage."""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return text, (finishes[-1] if finishes else None), chunks[-1].usage


def counts(usage: Any) -> tuple[int, int]:
    return usage.prompt_tokens, usage.completion_tokens


# --- chat, streamed and whole -------------------------------------------------


def test_streamed_chat_is_the_upstreams_answer_and_usage_in_the_gateways_framing(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    body: Any = {"messages": QUESTION, "seed": 5, "max_tokens": 40, **STREAM}
    with upstream.direct() as direct, gpt(gateway) as client:
        reference = list(direct.chat.completions.create(model=upstream.model, **body))
        through = list(client.chat.completions.create(model="gw", **body))
    text, finish, usage = streamed(through)
    assert (text, finish) == streamed(reference)[:2]
    assert text
    # The engine's own count, not the gateway's: llama.cpp streams a token or less per
    # chunk, the simulator several.
    assert counts(usage) == counts(streamed(reference)[2])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert {c.id for c in through} == {through[0].id}
    assert {c.model for c in through} == {"gw"}


def test_a_whole_chat_completion_is_the_upstreams(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    with upstream.direct() as direct, gpt(gateway) as client:
        reference = direct.chat.completions.create(
            model=upstream.model, messages=QUESTION, seed=6, max_tokens=30
        )
        through = client.chat.completions.create(
            model="gw", messages=QUESTION, seed=6, max_tokens=30
        )
    assert through.choices[0].message.content == reference.choices[0].message.content
    assert through.choices[0].finish_reason == reference.choices[0].finish_reason
    assert through.usage is not None and reference.usage is not None
    assert counts(through.usage) == counts(reference.usage)
    assert through.model == "gw"


def test_max_tokens_ends_the_answer_with_length(upstream: Upstream, gateway: ServerProcess) -> None:
    # ignore_eos (vLLM's and llama.cpp's) keeps a model from ending first on its own.
    with gpt(gateway) as client:
        answer = client.chat.completions.create(
            model="gw", messages=QUESTION, seed=7, max_tokens=4, extra_body={"ignore_eos": True}
        )
        message = claude(gateway).messages.create(
            model="gw", messages=QUESTION, max_tokens=4, extra_body={"seed": 7, "ignore_eos": True}
        )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4


def test_a_stop_sequence_ends_the_answer_where_the_upstream_found_it(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    # The tiny model's answers may end after a few tokens: ignore_eos makes them long
    # enough. Not on the simulator, which then ignores stop too, by design (docs/api/
    # chat-completions.md), where vLLM and llama.cpp still stop.
    long = LONG if upstream.kind == "llama-server" else {}
    with upstream.direct() as direct, gpt(gateway) as client:
        free = direct.chat.completions.create(
            model=upstream.model, messages=QUESTION, seed=8, max_tokens=40, extra_body=long
        )
        text = free.choices[0].message.content or ""
        # A piece of the answer's middle that it holds nowhere earlier.
        start = next(
            i for i in range(len(text) // 3, len(text) - 3)
            if text[i : i + 3].isalnum() and text.find(text[i : i + 3]) == i
        )  # fmt: skip
        stop = text[start : start + 3]
        reference = direct.chat.completions.create(
            model=upstream.model,
            messages=QUESTION,
            seed=8,
            max_tokens=40,
            extra_body=long,
            stop=[stop],
        )
        through = client.chat.completions.create(
            model="gw", messages=QUESTION, seed=8, max_tokens=40, extra_body=long, stop=[stop]
        )
    assert reference.choices[0].message.content == text[:start]
    assert through.choices[0].message.content == text[:start]
    assert through.choices[0].finish_reason == "stop"


def test_the_same_seed_gives_the_same_answer_and_another_seed_another(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    with gpt(gateway) as client:

        def answer(seed: int) -> str:
            result = client.chat.completions.create(
                model="gw", messages=QUESTION, seed=seed, max_tokens=20, temperature=1.0
            )
            return result.choices[0].message.content or ""

        first, again, other = answer(21), answer(21), answer(22)
    assert first == again != other


def test_logprobs_are_the_upstreams_one_per_token(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    body: Any = {"messages": QUESTION, "seed": 9, "max_tokens": 12, "logprobs": True,
                 "top_logprobs": 2}  # fmt: skip
    with upstream.direct() as direct, gpt(gateway) as client:
        reference = direct.chat.completions.create(model=upstream.model, **body)
        through = client.chat.completions.create(model="gw", **body)
        chunks = list(client.chat.completions.create(model="gw", **body, stream=True))
    logprobs, expected = through.choices[0].logprobs, reference.choices[0].logprobs
    assert logprobs is not None and logprobs.content and expected and expected.content
    assert [(t.token, t.logprob) for t in logprobs.content] == [
        (t.token, t.logprob) for t in expected.content
    ]
    assert [[a.token for a in t.top_logprobs] for t in logprobs.content] == [
        [a.token for a in t.top_logprobs] for t in expected.content
    ]
    assert "".join(t.token for t in logprobs.content) == through.choices[0].message.content
    # Streamed, each token's chunk carries its own log probability.
    scored = [
        (t.token, t.logprob)
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or ()
    ]
    assert scored == [(t.token, t.logprob) for t in logprobs.content]


# --- tools and structured output ------------------------------------------------


def test_a_required_tool_call_and_the_tool_result_turn(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    question: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    # llama.cpp lets text come before a required call (its grammar: any text up to
    # "<tool_call>\n", then calls): a seed whose call comes within max_tokens.
    with upstream.direct() as direct, gpt(gateway) as client:
        seed = calling_seed(direct, upstream.model, question, [WEATHER], 400)
        body: Any = {"tools": [WEATHER], "tool_choice": "required", "seed": seed,
                     "max_tokens": 400}  # fmt: skip
        reference = direct.chat.completions.create(model=upstream.model, messages=question, **body)
        first = client.chat.completions.create(model="gw", messages=question, **body)
        streamed_calls = [
            call
            for c in client.chat.completions.create(
                model="gw", messages=question, **body, stream=True
            )
            if c.choices
            for call in c.choices[0].delta.tool_calls or ()
        ]
        assert first.choices[0].finish_reason == "tool_calls"
        calls = first.choices[0].message.tool_calls or []
        expected = reference.choices[0].message.tool_calls or []
        assert len(calls) == len(expected) >= 1
        call, want = calls[0], expected[0]
        assert call.type == want.type == "function"
        assert (call.function.name, call.function.arguments) == (
            want.function.name,
            want.function.arguments,
        )
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo", "Lima")
        assert "".join(c.function.arguments or "" for c in streamed_calls if c.function) == (
            call.function.arguments
        )
        # The tool-result turn: the upstream gets the call and its result structured, so
        # its prompt is the same as when the client sends the turn to it directly.
        turn: Any = [
            *question,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
        ]
        after: Any = {"tools": [WEATHER], "seed": 10, "max_tokens": 20, "tool_choice": "none"}
        second = client.chat.completions.create(model="gw", messages=turn, **after)
        second_direct = direct.chat.completions.create(model=upstream.model, messages=turn, **after)
    assert second.usage is not None and second_direct.usage is not None
    assert second.usage.prompt_tokens == second_direct.usage.prompt_tokens
    assert second.usage.prompt_tokens > (first.usage.prompt_tokens if first.usage else 0)
    assert second.choices[0].message.content == second_direct.choices[0].message.content


def test_auto_tool_choice_is_the_upstreams_decision(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    question: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]
    body: Any = {"tools": [WEATHER], "tool_choice": "auto", "seed": 11, "max_tokens": 30}
    with upstream.direct() as direct, gpt(gateway) as client:
        reference = direct.chat.completions.create(model=upstream.model, messages=question, **body)
        through = client.chat.completions.create(model="gw", messages=question, **body)

    def said(choice: Any) -> tuple[Any, ...]:
        calls = choice.message.tool_calls or []
        return (
            choice.finish_reason,
            choice.message.content or None,
            [(c.function.name, c.function.arguments) for c in calls],
        )

    assert said(through.choices[0]) == said(reference.choices[0])


def test_a_json_schema_answer_is_valid_and_the_upstreams(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    body: Any = {"messages": QUESTION, "seed": 12, "max_tokens": 60, "response_format": fmt}
    with upstream.direct() as direct, gpt(gateway) as client:
        reference = direct.chat.completions.create(model=upstream.model, **body)
        through = client.chat.completions.create(model="gw", **body)
    content = through.choices[0].message.content or ""
    assert content == reference.choices[0].message.content
    value = json.loads(content)
    assert value["verdict"] in ("yes", "no") and isinstance(value["sure"], bool)
    assert set(value) == {"verdict", "sure"}


# --- Responses and Messages, translated onto the upstream's chat --------------------


def test_responses_and_messages_are_the_upstreams_chat_translated(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    prompt = QUESTION[0]["content"]
    with upstream.direct() as direct, gpt(gateway) as client, claude(gateway) as messages:
        reference = direct.chat.completions.create(
            model=upstream.model, messages=QUESTION, seed=13, max_tokens=25
        )
        # Not streamed: the SDK's stream helper wants response.completed, and an answer
        # cut by max_output_tokens ends response.incomplete.
        response = client.responses.create(
            model="gw", input=prompt, max_output_tokens=25, extra_body={"seed": 13}
        )
        with messages.messages.stream(
            model="gw", messages=QUESTION, max_tokens=25, extra_body={"seed": 13}
        ) as stream:
            message = stream.get_final_message()
    text = reference.choices[0].message.content
    usage = reference.usage
    assert usage is not None
    assert response.output_text == text
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == counts(usage)
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == text
    # Anthropic's input_tokens leave out what the cache read (llama.cpp reuses the
    # prompt it just processed for the chat request).
    read = message.usage.cache_read_input_tokens or 0
    assert (message.usage.input_tokens + read, message.usage.output_tokens) == counts(usage)
    stop_reason = {"length": "max_tokens", "stop": "end_turn"}[reference.choices[0].finish_reason]
    assert message.stop_reason == stop_reason
    status = {"length": "incomplete", "stop": "completed"}[reference.choices[0].finish_reason]
    assert response.status == status


# --- parameters ------------------------------------------------------------------


def test_explicit_sampling_parameters_reach_the_upstream_and_unset_ones_do_not(
    upstream: Upstream, server_factory: ServerFactory, tmp_path: Path
) -> None:
    # A gateway that records what it sends (its cassette holds each upstream request).
    tapes = tmp_path / "tapes"
    routes = _routes(tmp_path / "routes.json", upstream)
    gateway = server_factory(
        "--routes-file", str(routes), "--api-keys", KEY, "--record-dir", str(tapes)
    )
    with gpt(gateway) as client, upstream.direct() as direct:
        explicit = client.chat.completions.create(
            model="gw", messages=QUESTION, seed=14, max_tokens=15, temperature=1.0, top_p=1.0
        )
        explicit_slots = _last_sampling(upstream)
        unset = client.chat.completions.create(
            model="gw", messages=QUESTION, seed=14, max_tokens=15
        )
        unset_slots = _last_sampling(upstream)
        at_one = direct.chat.completions.create(
            model=upstream.model,
            messages=QUESTION,
            seed=14,
            max_tokens=15,
            temperature=1.0,
            top_p=1.0,
        )
    gateway.stop()
    sent = [exchange.body for exchange in read_cassette(tapes / "up.jsonl")]
    assert [(b.get("temperature"), b.get("top_p")) for b in sent] == [(1.0, 1.0), (None, None)]
    assert explicit.choices[0].message.content == at_one.choices[0].message.content
    if upstream.kind == "llama-server":
        # llama.cpp's own record of how it sampled, and its default when told nothing.
        assert explicit_slots == (1.0, 1.0)
        assert unset_slots is not None and unset_slots[0] == pytest.approx(0.8)
        assert unset.choices[0].message.content != explicit.choices[0].message.content


def _last_sampling(upstream: Upstream) -> tuple[float, float] | None:
    """llama.cpp's temperature and top_p for the task its slots ran last (None: not llama)."""
    if upstream.kind != "llama-server":
        return None
    slots = httpx.get(upstream.base_url.removesuffix("/v1") + "/slots", timeout=5).json()
    last = max(slots, key=lambda slot: slot.get("id_task", -1))
    params = last["params"]
    return float(params["temperature"]), float(params["top_p"])


def test_n_choices_are_one_upstream_request_each_with_their_own_seed(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    with upstream.direct() as direct, gpt(gateway) as client:
        through = client.chat.completions.create(
            model="gw", messages=QUESTION, seed=30, max_tokens=12, n=2
        )
        each = [
            direct.chat.completions.create(
                model=upstream.model, messages=QUESTION, seed=30 + i, max_tokens=12
            )
            for i in range(2)
        ]
    assert [c.message.content for c in through.choices] == [
        e.choices[0].message.content for e in each
    ]
    assert through.usage is not None
    assert through.usage.completion_tokens == sum(
        e.usage.completion_tokens for e in each if e.usage
    )
    # The prompt is counted once, as OpenAI counts it for n choices.
    assert each[0].usage is not None
    assert through.usage.prompt_tokens == each[0].usage.prompt_tokens


# --- errors ------------------------------------------------------------------------

LONG_PROMPT = " ".join(f"w{i}" for i in range(6000))


def test_the_upstreams_context_error_in_each_protocols_shape(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    too_long: Any = [{"role": "user", "content": LONG_PROMPT}]
    with upstream.direct() as direct, pytest.raises(openai.BadRequestError) as at_upstream:
        direct.chat.completions.create(model=upstream.model, messages=too_long, max_tokens=16)
    with gpt(gateway) as client, claude(gateway) as messages:
        with pytest.raises(openai.BadRequestError) as chat:
            client.chat.completions.create(
                model="gw", messages=too_long, max_tokens=16, stream=True
            )
        with pytest.raises(openai.BadRequestError) as responses:
            client.responses.create(model="gw", input=LONG_PROMPT, max_output_tokens=16)
        with pytest.raises(openai.BadRequestError) as completions:
            client.completions.create(model="gw", prompt=LONG_PROMPT, max_tokens=16)
        with pytest.raises(anthropic.BadRequestError) as anthropic_error:
            messages.messages.create(model="gw", messages=too_long, max_tokens=16)
    upstream_message = _message(at_upstream.value.body)
    for caught in (chat, responses, completions):
        body: Any = caught.value.body
        assert set(body) >= {"message", "type", "param", "code"}
        assert upstream_message in body["message"]
    assert anthropic_error.value.body["type"] == "error"  # type: ignore[index]
    error = anthropic_error.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert upstream_message in error["message"]


def _message(body: Any) -> str:
    return str(body.get("message") if isinstance(body, dict) else body)


def test_an_unreachable_upstream_is_a_502_at_once(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    with gpt(gateway) as client, pytest.raises(openai.InternalServerError) as caught:
        started = time.monotonic()
        client.chat.completions.create(model="gw-nowhere", messages=QUESTION, stream=True)
    # Refused, not timed out: well inside the 5 s connect timeout.
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 502
    assert "unreachable" in caught.value.message


# --- the upstream dies, the client leaves ------------------------------------------


LONG_ANSWER = "Explain DNS caching in 1500 words."


def _long_stream(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": LONG_ANSWER}],
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
    }


@pytest.mark.parametrize("protocol", ["chat", "messages"])
def test_an_upstream_killed_mid_stream_is_an_in_stream_error_then_the_end(
    upstream: Upstream, server_factory: ServerFactory, tmp_path: Path, protocol: str
) -> None:
    doomed = _start_upstream(upstream.kind, server_factory, tmp_path, endless=True)
    routes = _routes(tmp_path / "routes.json", doomed)
    gateway = server_factory("--routes-file", str(routes), "--api-keys", KEY)
    path = "/v1/chat/completions" if protocol == "chat" else "/v1/messages"
    events: list[str] = []
    try:
        with (
            httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client,
            client.stream("POST", gateway.base_url + path, json=_long_stream("gw")) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    events.append(line)
                if len(events) == 8:
                    doomed.kill()
    finally:
        doomed.stop()
    if protocol == "chat":
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["code"] == "upstream_error"
    else:
        assert events[-2:-1] == ["event: error"]
        error = json.loads(events[-1].removeprefix("data: "))
        assert error["type"] == "error"
        assert "upstream" in error["error"]["message"]


def test_a_client_disconnect_frees_the_upstreams_slot(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    assert upstream.in_flight() == 0
    busy = 0
    with (
        httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client,
        client.stream(
            "POST", gateway.base_url + "/v1/chat/completions", json=_long_stream("gw")
        ) as response,
    ):
        contents = 0
        for line in response.iter_lines():
            contents += '"content"' in line
            if contents == 5:
                # Before leaving (closing the line iterator already closes the connection).
                busy = upstream.in_flight()
                break
    left = time.monotonic()
    while upstream.in_flight() and time.monotonic() - left < 1.0:
        time.sleep(0.02)
    assert busy == 1
    assert upstream.in_flight() == 0


def test_fifty_concurrent_streams_complete_with_exact_usage(
    upstream: Upstream, gateway: ServerProcess
) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str | None, tuple[int, int]]:
        stream = await client.chat.completions.create(
            model="gw",
            messages=QUESTION,
            seed=i,
            max_tokens=16,
            extra_body={"ignore_eos": True},
            **STREAM,
        )
        chunks = [chunk async for chunk in stream]
        _, finish, usage = streamed(chunks)
        return finish, counts(usage)

    async def all_of_them() -> list[tuple[str | None, tuple[int, int]]]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120
        ) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    with upstream.direct() as direct:
        alone = direct.chat.completions.create(
            model=upstream.model, messages=QUESTION, max_tokens=1
        )
    assert alone.usage is not None
    results = asyncio.run(all_of_them())
    assert results == [("length", (alone.usage.prompt_tokens, 16))] * 50
    assert upstream.in_flight() == 0
