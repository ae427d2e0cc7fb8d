"""Record through a real gateway, stop the upstreams, replay: the SDKs see the same thing.

Upstreams are real processes on 127.0.0.1: a streamapi simulator (paced, with
rules that call tools and break a stream) and mockllm, a third-party
OpenAI-compatible server from PyPI. The first gateway records both
(``--record-dir``); then every upstream is stopped and a second gateway answers
from the cassettes (``--replay-dir``), where nothing listens any more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from streamapi.cassettes import read_cassette
from tests.e2e.conftest import HOST, ServerFactory, ServerProcess, free_port

pytestmark = pytest.mark.e2e

KEY = "sk-gateway-replay"
UP_KEY = "sk-upstream-replay-secret"
MOCK_ANSWER = "Replayed from a third-party server."
RULES: Any = [
    {"match": {"user": "please drop"},
     "respond": {"text": "one two three four five six seven", "fault": "drop,after=3"}},
    {"match": {"user": "agent", "turn": 0},
     "respond": {"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]}},
    {"match": {"user": "agent", "turn": 1},
     "respond": {"tool_calls": [{"name": "get_time", "arguments": {"city": "Paris"}}]}},
    {"match": {"user": "agent", "turn": 2},
     "respond": {"text": "Sunny, 18 C, and it is noon in Paris."}},
]  # fmt: skip
TOOLS: Any = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]
QUESTION: Any = [{"role": "user", "content": "Explain DNS caching"}]


@dataclass
class Mockllm:
    base_url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def mockllm(tmp_path: Path) -> Iterator[Mockllm]:
    responses = tmp_path / "responses.yml"
    responses.write_text(
        json.dumps(
            {
                "responses": {},
                "defaults": {"unknown_response": MOCK_ANSWER},
                "settings": {"lag_enabled": False},
            }
        )
    )
    port = free_port()
    # Loopback only (tiktoken would fetch its encodings).
    env = {**os.environ, "MOCKLLM_RESPONSES_FILE": str(responses),
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # fmt: skip
    log = tmp_path / "mockllm.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "mockllm.server:app", "--host", HOST,
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    server = Mockllm(f"http://{HOST}:{port}", process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mockllm exited:\n{log.read_text()}")
        try:
            if httpx.get(server.base_url + "/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        server.stop()
        pytest.fail(f"mockllm not ready:\n{log.read_text()}")
    yield server
    server.stop()


def openai_client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY, max_retries=0)


def anthropic_client(gateway: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=KEY, max_retries=0)


@dataclass
class Seen:
    """What the clients saw, in a form two runs can be compared by."""

    stream: tuple[str, Any, str | None]
    first_content_s: float
    stream_s: float
    messages: tuple[str, str | None, Any]
    mock: tuple[str, Any]
    mock_messages: str
    agent: list[Any]
    broken_openai: tuple[str, str]
    broken_anthropic: tuple[str, str]


def _agent_loop(client: openai.OpenAI) -> list[Any]:
    messages: list[Any] = [{"role": "user", "content": "agent: plan my day"}]
    answers: list[Any] = []
    for turn in range(3):
        answer = client.chat.completions.create(model="up-small", messages=messages, tools=TOOLS)
        message = answer.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments)
                 for c in message.tool_calls or () if c.type == "function"]  # fmt: skip
        answers.append((answer.choices[0].finish_reason, message.content, calls, answer.usage))
        messages.append(message.model_dump(exclude_none=True))
        for call_id, _, _ in calls:
            result = f"result of turn {turn} at {time.time()}"  # differs run to run
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return answers


def _broken_openai(client: openai.OpenAI) -> tuple[str, str]:
    text = ""
    stream = client.chat.completions.create(
        model="up-small",
        messages=[{"role": "user", "content": "please drop"}],
        stream=True,
    )
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    return text, _server_message(caught.value)


def _server_message(error: openai.APIError | anthropic.APIStatusError) -> str:
    """The error's text as the server wrote it: an SDK may add a request id or other
    per-request details to its own message (anthropic 2.17 does), so that is not compared."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str):
            return message
    return error.message


def _broken_anthropic(client: anthropic.Anthropic) -> tuple[str, str]:
    text = ""
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model="up-small",
            max_tokens=50,
            messages=[{"role": "user", "content": "please drop, Claude"}],
        ) as stream,
    ):
        for piece in stream.text_stream:
            text += piece
    return text, _server_message(caught.value)


def _see(gateway: ServerProcess) -> Seen:
    with openai_client(gateway) as client, anthropic_client(gateway) as claude:
        started = time.monotonic()
        first: float | None = None
        chunks = []
        for chunk in client.chat.completions.create(
            model="up-small", messages=QUESTION, seed=7, max_tokens=30, stream=True,
            stream_options={"include_usage": True},
        ):  # fmt: skip
            chunks.append(chunk)
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic() - started
        stream_s = time.monotonic() - started
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        message = claude.messages.create(
            model="up-small",
            max_tokens=20,
            messages=[{"role": "user", "content": "Say something, Claude"}],
        )
        block = message.content[0]
        assert isinstance(block, anthropic.types.TextBlock)
        mock = client.chat.completions.create(model="mock-gpt", messages=QUESTION)
        mock_message = claude.messages.create(model="mock-gpt", max_tokens=100, messages=QUESTION)
        mock_block = mock_message.content[0]
        assert isinstance(mock_block, anthropic.types.TextBlock)
        return Seen(
            stream=(text, chunks[-1].usage, finish),
            first_content_s=first or 0.0,
            stream_s=stream_s,
            messages=(block.text, message.stop_reason, message.usage),
            mock=(mock.choices[0].message.content or "", mock.usage),
            mock_messages=mock_block.text,
            agent=_agent_loop(client),
            broken_openai=_broken_openai(client),
            broken_anthropic=_broken_anthropic(claude),
        )


def test_record_stop_the_upstreams_replay_and_the_sdks_see_the_same(
    server_factory: ServerFactory, mockllm: Mockllm, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    upstream = server_factory(
        "--served-model-names", "up-small", "--rules-file", str(rules),
        "--time-to-first-token-ms", "150", "--inter-token-latency-ms", "15",
        "--api-keys", UP_KEY,
    )  # fmt: skip
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "upstreams": {
                    "sim": {
                        "base_url": upstream.base_url + "/v1",
                        "api_key": UP_KEY,
                        "max_retries": 0,
                    },
                    "mock": {"base_url": mockllm.base_url + "/v1", "max_retries": 0},
                },
                "models": {
                    "up-small": {"upstream": "sim"},
                    "mock-gpt": {"upstream": "mock", "upstream_model": "gpt-4o"},
                },
            }
        )
    )
    tapes = tmp_path / "tapes"
    common = ("--routes-file", str(routes), "--api-keys", KEY)
    recording = server_factory(*common, "--record-dir", str(tapes))
    recorded = _see(recording)
    recording.stop()
    upstream.stop()
    mockllm.stop()

    assert sorted(p.name for p in tapes.iterdir()) == ["mock.jsonl", "sim.jsonl"]
    assert UP_KEY not in (tapes / "sim.jsonl").read_text()
    sim = read_cassette(tapes / "sim.jsonl")
    assert {e.end for e in sim} >= {"eof", "dropped"}
    first_event = sim[0].events[0].offset_ms
    assert first_event >= 150  # the upstream's own time to first token, as received

    replaying = server_factory(
        *common, "--replay-dir", str(tapes), "--replay-ordered",
        "--replay-match", "endpoint,model,last_user_message,tool_names,params",
    )  # fmt: skip
    replayed = _see(replaying)

    assert replayed.stream == recorded.stream
    assert recorded.stream[0] and recorded.stream[2] == "length"
    assert replayed.messages == recorded.messages
    assert replayed.mock == recorded.mock
    assert recorded.mock[0] == MOCK_ANSWER == replayed.mock_messages
    assert replayed.agent == recorded.agent
    assert [finish for finish, *_ in recorded.agent] == ["tool_calls", "tool_calls", "stop"]
    assert replayed.broken_openai == recorded.broken_openai
    assert "was lost" in recorded.broken_openai[1]
    assert recorded.broken_openai[0] == "one two three"
    assert replayed.broken_anthropic == recorded.broken_anthropic
    # Timing at speed 1, with generous bounds: never before the recorded offset, and
    # not wildly later (the exact figures: tests/test_record_replay.py, virtual clock).
    assert replayed.first_content_s >= 0.9 * first_event / 1000
    assert replayed.stream_s >= 0.9 * sim[0].end_offset_ms / 1000
    assert replayed.stream_s < recorded.stream_s + 5


def test_a_fast_replay_and_a_miss_with_no_upstream_at_all(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    upstream = server_factory(
        "--served-model-names", "up-small", "--time-to-first-token-ms", "3000",
    )  # fmt: skip
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "upstreams": {"sim": {"base_url": upstream.base_url + "/v1", "max_retries": 0}},
                "models": {"up-small": {"upstream": "sim"}},
            }
        )
    )
    tape = tmp_path / "one.jsonl"
    recording = server_factory("--routes-file", str(routes), "--record-dir", str(tape))
    with openai_client(recording) as client:
        recorded = client.chat.completions.create(model="up-small", messages=QUESTION, seed=1)
    recording.stop()
    upstream.stop()
    replaying = server_factory(
        "--routes-file", str(routes), "--replay-dir", str(tape), "--replay-speed", "0"
    )
    with openai_client(replaying) as client:
        started = time.monotonic()
        replayed = client.chat.completions.create(model="up-small", messages=QUESTION, seed=1)
        instant_s = time.monotonic() - started
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="up-small", messages=QUESTION, seed=2)
    assert replayed.choices[0].message == recorded.choices[0].message
    # Speed 0 does not wait the recorded 3 s (a bound loose enough for a loaded machine).
    assert instant_s < 2.5
    assert f"{tape}:2" in caught.value.message
    assert "seed: recorded 1, sent 2" in caught.value.message
