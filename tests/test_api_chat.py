"""POST /v1/chat/completions over ASGI: framing, the protocol's invariants, usage."""

from __future__ import annotations

import gc
import uuid
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from streamapi import scope_keys
from streamapi.app import create_app
from streamapi.settings import Settings
from streamapi.text.tokenizer import count_chat_tokens
from tests.asgi_driver import Exchange, OpenStream, post_scope
from tests.sse_helpers import chunks, content, events

URL = "/v1/chat/completions"
JSON = {"Accept": "application/json"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": "Explain SSE"}]} | fields


async def test_stream_headers_match_the_original_spec(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json={"prompt": "Test prompt", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["connection"] == "keep-alive"
    assert response.headers["x-request-id"]


async def test_prompt_form_streams_a_long_answer_in_many_chunks(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json={"prompt": "Explain streaming APIs", "stream": True})
    text = content(response.text)
    assert len(text) >= 1378
    assert "streaming APIs" in text
    assert len(chunks(response.text)) >= 6


async def test_stream_chunks_validate_as_the_sdk_types(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(stream=True))
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks(response.text)]
    assert {c.id for c in parsed} == {parsed[0].id}
    assert {c.created for c in parsed} == {parsed[0].created}
    assert parsed[0].id.startswith("chatcmpl-")
    assert all(c.model == "sim-small" for c in parsed)


async def test_stream_role_only_in_first_chunk_and_one_finish(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(stream=True))
    deltas = [c["choices"][0] for c in chunks(response.text)]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in d["delta"] for d in deltas[1:])
    assert [d["finish_reason"] for d in deltas].count("stop") == 1
    assert deltas[-1]["finish_reason"] == "stop"
    assert deltas[-1]["delta"] == {}


async def test_stream_without_include_usage_has_no_usage(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(stream=True))
    assert all("usage" not in c for c in chunks(response.text))


async def test_include_usage_adds_one_final_usage_chunk(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=chat(stream=True, stream_options={"include_usage": True})
    )
    parsed = chunks(response.text)
    last = parsed[-1]
    assert last["choices"] == []
    content_chunks = [c for c in parsed[:-1] if c["choices"][0]["delta"].get("content")]
    assert last["usage"]["completion_tokens"] == len(content_chunks)
    assert last["usage"]["prompt_tokens"] == count_chat_tokens(["Explain SSE"])
    assert last["usage"]["total_tokens"] == (
        last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert all(c["usage"] is None for c in parsed[:-1])


async def test_continuous_usage_stats_counts_tokens_so_far(client: httpx.AsyncClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    response = await client.post(URL, json=chat(stream=True, stream_options=options, max_tokens=5))
    running = [c["usage"]["completion_tokens"] for c in chunks(response.text)]
    # role chunk, 5 tokens, finish chunk, final usage chunk
    assert running == [0, 1, 2, 3, 4, 5, 5, 5]


async def test_max_tokens_truncates_with_finish_reason_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=chat(stream=True, max_tokens=7, stream_options={"include_usage": True})
    )
    parsed = chunks(response.text)
    assert parsed[-2]["choices"][0]["finish_reason"] == "length"
    assert parsed[-1]["usage"]["completion_tokens"] == 7


async def test_max_completion_tokens_wins_over_max_tokens(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(max_tokens=50, max_completion_tokens=3))
    assert response.json()["usage"]["completion_tokens"] == 3


async def test_stop_sequence_ends_text_before_it(client: httpx.AsyncClient) -> None:
    full = (await client.post(URL, json=chat(seed=7))).json()["choices"][0]["message"]["content"]
    stop = full[200:206]
    cut = await client.post(URL, json=chat(seed=7, stop=[stop, "never-there"], stream=True))
    text = content(cut.text)
    assert text == full[: full.index(stop)]
    assert chunks(cut.text)[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stop_as_a_string_is_accepted(client: httpx.AsyncClient) -> None:
    full = (await client.post(URL, json=chat(seed=3))).json()["choices"][0]["message"]["content"]
    response = await client.post(URL, json=chat(seed=3, stop="\n"))
    assert response.json()["choices"][0]["message"]["content"] == full.split("\n")[0]


async def test_n_streams_every_choice_with_its_own_role_and_finish(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        URL, json=chat(stream=True, n=3, seed=1, stream_options={"include_usage": True})
    )
    parsed = chunks(response.text)
    per_choice: dict[int, list[dict[str, Any]]] = {0: [], 1: [], 2: []}
    for c in parsed[:-1]:
        assert len(c["choices"]) == 1
        per_choice[c["choices"][0]["index"]].append(c["choices"][0])
    texts = []
    for choices in per_choice.values():
        assert choices[0]["delta"]["role"] == "assistant"
        assert sum("role" in c["delta"] for c in choices) == 1
        assert [c["finish_reason"] for c in choices].count("stop") == 1
        texts.append("".join(c["delta"].get("content") or "" for c in choices))
    assert len(set(texts)) == 3, "choices differ unless asked to match"
    tokens = sum(1 for c in parsed[:-1] if c["choices"][0]["delta"].get("content"))
    assert parsed[-1]["usage"]["completion_tokens"] == tokens


async def test_n_choices_match_at_temperature_zero(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(n=2, temperature=0))
    first, second = response.json()["choices"]
    assert first["message"]["content"] == second["message"]["content"]


async def test_same_seed_same_answer_different_seed_different(client: httpx.AsyncClient) -> None:
    a = (await client.post(URL, json=chat(seed=42))).json()["choices"][0]["message"]["content"]
    b = (await client.post(URL, json=chat(seed=42))).json()["choices"][0]["message"]["content"]
    c = (await client.post(URL, json=chat(seed=43))).json()["choices"][0]["message"]["content"]
    assert a == b
    assert a != c


async def test_stream_and_non_stream_give_the_same_seeded_answer(
    client: httpx.AsyncClient,
) -> None:
    whole = (await client.post(URL, json=chat(seed=5))).json()
    streamed = await client.post(URL, json=chat(seed=5, stream=True))
    assert content(streamed.text) == whole["choices"][0]["message"]["content"]


async def test_non_stream_returns_a_chat_completion(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(), headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    completion = ChatCompletion.model_validate(response.json())
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 300


async def test_content_as_text_parts_and_every_role_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use lists."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Explain"}, {"type": "text", "text": "caching"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "user", "content": "Now explain HTTP caching", "name": "ann"},
    ]
    response = await client.post(URL, json={"model": "m", "messages": messages})
    assert response.status_code == 200
    assert "HTTP caching" in response.json()["choices"][0]["message"]["content"]


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL,
        json=chat(
            stream=True,
            foo=1,
            ignore_eos=False,
            stream_options={"include_usage": True, "continuous_usage_stats": False, "bar": 2},
            user="u",
            logit_bias={"50256": -100},
        ),
    )
    assert response.status_code == 200
    assert events(response.text)[-1] == "[DONE]"


async def test_ignore_eos_generates_exactly_max_tokens(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(ignore_eos=True, max_tokens=900, stop=["the"]))
    body = response.json()
    assert body["usage"]["completion_tokens"] == 900
    assert body["choices"][0]["finish_reason"] == "length"


async def test_model_is_echoed_and_defaults_to_the_first_served_name(
    client: httpx.AsyncClient,
) -> None:
    named = await client.post(URL, json=chat(model="gpt-4o-mini"))
    unnamed = await client.post(URL, json={"messages": [{"role": "user", "content": "hi"}]})
    assert named.json()["model"] == "gpt-4o-mini"
    assert unnamed.json()["model"] == "sim-small"


@pytest.mark.parametrize(
    "settings", [Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, tokens_per_event=4)]
)
async def test_tokens_per_event_groups_tokens(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=chat(stream=True, max_tokens=10, stream_options={"include_usage": True})
    )
    parsed = chunks(response.text)
    sizes = [c["usage"] for c in parsed if not c["choices"]]
    texts = [c["choices"][0]["delta"].get("content") for c in parsed if c["choices"]]
    # role, 4 + 4 + 2 tokens, finish
    assert len(texts) == 5
    assert sizes[0]["completion_tokens"] == 10


@pytest.mark.parametrize(("turns", "small"), [(1, True), (80, False)])
async def test_a_long_prompt_is_read_once_and_noted_for_preparing_off_the_loop(
    turns: int, small: bool
) -> None:
    # The body is read without Starlette keeping it on the request (a stream keeps the
    # request to its end); whether to prepare it on the event loop (a body of at most
    # 64 JSON objects and 256 KiB) is noted in the scope.
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=0))
    history = [{"role": "user", "content": f"Note {i}."} for i in range(turns - 1)]
    messages = [*history, {"role": "user", "content": "Explain SSE"}]
    body = chat(stream=True, max_tokens=3, messages=messages)
    scopes: list[dict[str, Any]] = []
    async with LifespanManager(app) as manager:
        inner = manager.app

        async def recording(scope: Any, receive: Any, send: Any) -> None:
            scopes.append(scope)
            await inner(scope, receive, send)

        exchange = await Exchange(recording, body).run()
    assert exchange.status == 200
    assert exchange.frames[-1].payload == "[DONE]"
    assert "".join(f.content() for f in exchange.frames)
    assert scopes[0]["state"][scope_keys.SMALL_BODY] is small


def _strings_holding(marker: str) -> int:
    """How many strings that the collector's objects refer to hold ``marker`` (besides it)."""
    gc.collect()
    found = 0
    for holder in gc.get_objects():
        for held in gc.get_referents(holder):
            if isinstance(held, str) and held is not marker and marker in held:
                found += 1
    return found


async def test_an_open_stream_keeps_no_copy_of_its_prompt() -> None:
    # An agent's context is tens of kilobytes: once the engine has the request, an open
    # stream (its job, its chunk writer, its engine sequence) keeps no string of it.
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=60_000))
    marker = uuid.uuid4().hex
    prompt = {"role": "user", "content": f"{marker} " * 500 + "Explain queues"}
    body = chat(messages=[prompt], stream=True)
    del prompt
    async with LifespanManager(app) as manager:
        stream = OpenStream(manager.app, post_scope(URL), body)
        del body
        async with stream:
            held = _strings_holding(marker)
    assert held == 0
