"""Record a session from a real engine (llama.cpp's llama-server), stop it, replay it.

The first gateway records (``--record-dir``) a streamed chat, a tool loop (a required
call, its result, the answer) and a stream broken by the engine's death; then the
engine is gone and a second gateway answers from the cassette (``--replay-dir``). The
official SDKs must see the same content, tool calls, usage and finish reasons, and the
same timing within 10 %.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from streamapi.cassettes import read_cassette
from tests.e2e.conftest import ServerFactory, ServerProcess
from tests.e2e.real_engine import (
    MODEL,
    WEATHER,
    LlamaServer,
    calling_seed,
    start_llama_server,
)

pytestmark = pytest.mark.e2e

KEY = "sk-replay-real"
QUESTION: Any = [{"role": "user", "content": "Explain DNS caching"}]


@dataclass
class Seen:
    """What the clients saw, in a form two runs can be compared by."""

    stream: tuple[str, str | None, Any]
    first_content_s: float
    stream_s: float
    message: tuple[str, str | None, Any]
    tool_loop: list[Any]
    broken: tuple[str, str]


def _stream(client: openai.OpenAI) -> tuple[tuple[str, str | None, Any], float, float]:
    started = time.monotonic()
    first: float | None = None
    chunks = []
    for chunk in client.chat.completions.create(
        model=MODEL, messages=QUESTION, seed=3, max_tokens=300, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ):  # fmt: skip
        chunks.append(chunk)
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic() - started
    took = time.monotonic() - started
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return (text, finish, chunks[-1].usage), first or 0.0, took


TOOL_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def _tool_loop(client: openai.OpenAI, seed: int) -> list[Any]:
    messages: list[Any] = list(TOOL_QUESTION)
    seen: list[Any] = []
    choices: list[Any] = ["required", "none"]
    for turn, choice in enumerate(choices):
        answer = client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER], tool_choice=choice, seed=seed,
            max_tokens=400,
        )  # fmt: skip
        message = answer.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments)
                 for c in message.tool_calls or () if c.type == "function"]  # fmt: skip
        seen.append((answer.choices[0].finish_reason, message.content, calls, answer.usage))
        messages.append(message.model_dump(exclude_none=True))
        for call_id, _, _ in calls:
            messages.append({"role": "tool", "tool_call_id": call_id, "content": f"sunny {turn}"})
    return seen


def _broken(client: openai.OpenAI, engine: LlamaServer | None) -> tuple[str, str]:
    """A long stream; when recording, the engine is killed after its first tokens."""
    text = ""
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Talk for a long time"}],
        seed=5, max_tokens=3000, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if engine is not None and len(text) > 20:
                engine.kill()
                engine = None
    return text, caught.value.message


def _see(gateway: ServerProcess, engine: LlamaServer | None, seed: int) -> Seen:
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY, max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    with client, claude:
        stream, first, took = _stream(client)
        message = claude.messages.create(
            model=MODEL, max_tokens=20, messages=QUESTION, extra_body={"seed": 6}
        )
        block = message.content[0]
        assert isinstance(block, anthropic.types.TextBlock)
        tool_loop = _tool_loop(client, seed)
        broken = _broken(client, engine)
    return Seen(
        stream=stream,
        first_content_s=first,
        stream_s=took,
        message=(block.text, message.stop_reason, message.usage),
        tool_loop=tool_loop,
        broken=broken,
    )


def test_record_a_real_engine_stop_it_replay_and_the_sdks_see_the_same(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    engine = start_llama_server(tmp_path)
    try:
        routes = tmp_path / "routes.json"
        routes.write_text(
            json.dumps(
                {
                    "upstreams": {"llama": {"base_url": engine.base_url, "max_retries": 0}},
                    "models": {MODEL: {"upstream": "llama"}},
                }
            )
        )
        tapes = tmp_path / "tapes"
        common = ("--routes-file", str(routes), "--api-keys", KEY)
        recording = server_factory(*common, "--record-dir", str(tapes))
        with openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0) as direct:
            seed = calling_seed(direct, MODEL, TOOL_QUESTION, [WEATHER], 400)
        recorded = _see(recording, engine, seed)
        recording.stop()
    finally:
        engine.stop()

    exchanges = read_cassette(tapes / "llama.jsonl")
    assert [e.end for e in exchanges] == ["eof"] * 4 + ["dropped"]
    replaying = server_factory(
        *common, "--replay-dir", str(tapes), "--replay-ordered",
        "--replay-match", "endpoint,model,last_user_message,tool_names,params",
    )  # fmt: skip
    replayed = _see(replaying, None, seed)

    assert replayed.stream == recorded.stream
    assert recorded.stream[1] == "length" and recorded.stream[2].completion_tokens == 300
    assert replayed.message == recorded.message
    assert replayed.tool_loop == recorded.tool_loop
    assert recorded.tool_loop[0][0] == "tool_calls"
    assert recorded.tool_loop[0][2][0][1] == "get_weather"
    assert replayed.broken == recorded.broken
    assert "was lost" in recorded.broken[1]
    # The engine's own timing as the gateway received it (the cassette's offsets), replayed
    # at speed 1: never sooner than 10 % under it, and within 10 % over it plus what the
    # gateway itself adds to 300 events. (This tiny model streams 300 tokens in ~0.1 s,
    # faster than the gateway frames them: the client's own timing of the recording is
    # the gateway's, not the engine's, so it is not the reference.)
    stream = exchanges[0]
    first_event_s = stream.events[0].offset_ms / 1000
    end_s = stream.end_offset_ms / 1000
    assert replayed.first_content_s >= 0.9 * first_event_s
    assert replayed.stream_s >= 0.9 * end_s
    assert replayed.stream_s <= 1.1 * end_s + 0.25
