"""Record and replay in-process: a streamapi simulator app is the upstream, over ASGI.

Each test records through a gateway (``record_dir``), then replays from the
cassette with a gateway whose upstream transport fails the test if anything
is sent (replay must never reach the network), and compares what clients get.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.types import TextBlock
from asgi_lifespan import LifespanManager
from pydantic import ValidationError
from starlette.types import ASGIApp

from streamapi.app import create_app
from streamapi.cassettes import (
    dumps_exchanges,
    match_view,
    read_cassette,
    write_atomic,
)
from streamapi.cli import main
from streamapi.replay_keys import parse_match_keys
from streamapi.settings import Settings
from tests.asgi_driver import Exchange
from tests.sse_helpers import chunks, content
from tests.virtual_time import virtual_time

UP_KEY = "sk-upstream-secret-0001"
ROUTES = f"""
upstreams:
  sim:
    base_url: http://upstream.test/v1
    api_key: {UP_KEY}
    max_retries: 0
models:
  gw-small: {{upstream: sim, upstream_model: up-small}}
"""
QUESTION: Any = [{"role": "user", "content": "Explain DNS caching"}]
STREAM = {"stream": True, "stream_options": {"include_usage": True}}
UPSTREAM_RULES: Any = [
    {"match": {"user": "please drop"}, "respond": {"text": "one two three four five six",
                                                   "fault": "drop,after=3"}},
    {"match": {"user": "please fail"}, "respond": {"text": "one two three four five six",
                                                   "fault": "mid_stream_error,after=3"}},
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


@dataclass
class Gateway:
    client: httpx.AsyncClient
    app: ASGIApp

    def openai(self) -> openai.AsyncOpenAI:
        transport = httpx2.ASGITransport(app=self.app)
        return openai.AsyncOpenAI(
            base_url="http://gw.test/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport, base_url="http://gw.test"),
        )

    def anthropic(self) -> anthropic.AsyncAnthropic:
        transport = httpx2.ASGITransport(app=self.app)
        return anthropic.AsyncAnthropic(
            base_url="http://gw.test",
            api_key="unused",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport, base_url="http://gw.test"),
        )


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"replay sent a request upstream: {request.method} {request.url}")


@asynccontextmanager
async def gateway(
    tmp_path: Path,
    *,
    upstream: dict[str, Any] | None = None,
    routes: str = ROUTES,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """A gateway on ``routes``; with ``upstream`` (its settings) a simulator app behind it,
    without one a transport that fails the test if anything is sent."""
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(routes)
    rules = tmp_path / "upstream-rules.json"
    rules.write_text(json.dumps(UPSTREAM_RULES))
    up_settings = Settings(
        **{
            "time_to_first_token_ms": 0,
            "inter_token_latency_ms": 0,
            "served_model_names": ["up-small"],
            "tokens_per_event": 3,
            "api_keys": [UP_KEY],
            "rules_file": rules,
            **(upstream or {}),
        }
    )
    gw_settings = Settings(
        time_to_first_token_ms=0, inter_token_latency_ms=0, routes_file=routes_file, **settings
    )
    async with LifespanManager(create_app(up_settings)) as up:
        transport: httpx.AsyncBaseTransport = (
            httpx.ASGITransport(app=up.app)
            if upstream is not None
            else httpx.MockTransport(_no_network)
        )
        app = create_app(gw_settings, upstream_transports={"sim": transport})
        async with (
            LifespanManager(app) as gw,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gw.app), base_url="http://gw.test"
            ) as client,
        ):
            yield Gateway(client, gw.app)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gw-small", "messages": QUESTION, "max_tokens": 40, **extra}


def cassette(tmp_path: Path) -> Path:
    return tmp_path / "tapes" / "sim.jsonl"


# --- the format ------------------------------------------------------------------


async def test_a_recorded_stream_is_one_line_per_event_with_offsets_and_its_end(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        answer = await gw.client.post("/v1/chat/completions", json=chat(seed=5, **STREAM))
    assert answer.status_code == 200
    lines = [json.loads(line) for line in cassette(tmp_path).read_text().splitlines()]
    assert lines[0] == {"format": "streamapi-cassette", "version": 1}
    assert [line["kind"] for line in lines[1:3]] == ["request", "response"]
    assert {line["kind"] for line in lines[3:-1]} == {"event"}
    assert lines[-1]["kind"] == "end" and lines[-1]["how"] == "eof"
    request = lines[1]
    assert request["upstream"] == "sim" and request["endpoint"] == "/chat/completions"
    assert request["model"] == "up-small" and request["body"]["seed"] == 5
    assert isinstance(request["started_at"], float)  # Unix time, for bench --replay
    assert request["headers"]["authorization"] == "[redacted]"
    assert lines[2]["status"] == 200
    assert lines[2]["headers"]["content-type"].startswith("text/event-stream")
    assert lines[-2]["data"] == "[DONE]"
    offsets = [line["offset_ms"] for line in lines[2:]]
    assert offsets == sorted(offsets)
    # Written atomically: no temporary file is left next to it.
    assert [p.name for p in cassette(tmp_path).parent.iterdir()] == ["sim.jsonl"]


async def test_a_single_jsonl_file_holds_every_upstream_and_keeps_earlier_exchanges(
    tmp_path: Path,
) -> None:
    tape = tmp_path / "all.jsonl"
    for seed in (1, 2):
        async with gateway(tmp_path, upstream={}, record_dir=tape) as gw:
            await gw.client.post("/v1/chat/completions", json=chat(seed=seed))
    exchanges = read_cassette(tape)
    assert [e.body["seed"] for e in exchanges] == [1, 2]
    assert exchanges[1].source == f"{tape}:{len(exchanges[0].lines(1)) + 2}"


# --- replay -----------------------------------------------------------------------


async def test_replay_streams_the_recorded_answer_and_usage_without_the_upstream(
    tmp_path: Path,
) -> None:
    body = chat(seed=5, **STREAM)
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        recorded = await gw.client.post("/v1/chat/completions", json=body)
    async with gateway(tmp_path, replay_dir=tmp_path / "tapes", replay_speed=0) as gw:
        replayed = await gw.client.post("/v1/chat/completions", json=body)
        whole = (await gw.client.post("/v1/chat/completions", json=chat(seed=5))).json()
    assert replayed.status_code == 200
    assert content(replayed.text) == content(recorded.text) != ""
    assert chunks(replayed.text)[-1]["usage"] == chunks(recorded.text)[-1]["usage"]
    assert chunks(replayed.text)[-1]["usage"]["completion_tokens"] == 40
    # The non-streamed request sends the same upstream payload: the same recording.
    assert whole["choices"][0]["message"]["content"] == content(recorded.text)
    assert whole["choices"][0]["finish_reason"] == "length"


async def test_a_chat_recording_replays_through_messages_responses_and_completions(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        recorded = (await gw.client.post("/v1/chat/completions", json=chat())).json()
    text = recorded["choices"][0]["message"]["content"]
    usage = recorded["usage"]
    async with gateway(tmp_path, replay_dir=tmp_path / "tapes", replay_speed=0) as gw:
        message = await gw.anthropic().messages.create(
            model="gw-small", max_tokens=40, messages=QUESTION
        )
        response = await gw.openai().responses.create(
            model="gw-small", input="Explain DNS caching", max_output_tokens=40
        )
        legacy = await gw.openai().completions.create(
            model="gw-small", prompt="Explain DNS caching", max_tokens=40
        )
    block = message.content[0]
    assert isinstance(block, TextBlock) and block.text == text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == usage["completion_tokens"]
    assert message.usage.input_tokens == usage["prompt_tokens"]
    assert response.output_text == text
    assert response.usage is not None
    assert response.usage.output_tokens == usage["completion_tokens"]
    assert legacy.choices[0].text == text
    assert legacy.choices[0].finish_reason == "length"


async def test_a_recorded_tool_call_replays_with_its_id_arguments_and_finish_reason(
    tmp_path: Path,
) -> None:
    kwargs: Any = {
        "model": "gw-small",
        "messages": [{"role": "user", "content": "agent: weather?"}],
        "tools": TOOLS,
    }
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        recorded = await gw.openai().chat.completions.create(**kwargs)
    async with gateway(tmp_path, replay_dir=tmp_path / "tapes", replay_speed=0) as gw:
        replayed = await gw.openai().chat.completions.create(**kwargs)
    assert replayed.choices[0].finish_reason == "tool_calls"
    assert replayed.choices[0].message.tool_calls == recorded.choices[0].message.tool_calls
    assert replayed.usage == recorded.usage


async def test_a_stream_that_broke_replays_the_same_failure(tmp_path: Path) -> None:
    # A dropped connection needs real sockets: tests/e2e/test_record_replay.py.
    body = {**chat(**STREAM), "messages": [{"role": "user", "content": "please fail"}]}
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        recorded = await gw.client.post("/v1/chat/completions", json=body)
    exchange = read_cassette(cassette(tmp_path))[0]
    # The gateway closed the upstream at the error event.
    assert exchange.end == "cancelled"
    assert any('"error"' in event.data for event in exchange.events)
    async with gateway(tmp_path, replay_dir=tmp_path / "tapes", replay_speed=0) as gw:
        replayed = await gw.client.post("/v1/chat/completions", json=body)
    assert recorded.status_code == replayed.status_code == 200
    error = json.loads(recorded.text.split("data: ")[-2])["error"]
    assert error["code"] == "upstream_error"
    # The same words, then the same in-stream error, message and all.
    assert replayed.text == recorded.text.replace(
        chunks(recorded.text)[0]["id"], chunks(replayed.text)[0]["id"]
    ).replace(str(chunks(recorded.text)[0]["created"]), str(chunks(replayed.text)[0]["created"]))


async def test_an_upstream_error_status_replays_as_the_same_status(tmp_path: Path) -> None:
    body = {**chat(), "max_tokens": 4000}
    small: Any = {"max_model_len": 2048}
    async with gateway(tmp_path, upstream=small, record_dir=tmp_path / "tapes") as gw:
        recorded = await gw.client.post("/v1/chat/completions", json=body)
    async with gateway(tmp_path, replay_dir=tmp_path / "tapes", replay_speed=0) as gw:
        replayed = await gw.client.post("/v1/chat/completions", json=body)
    assert recorded.status_code == replayed.status_code == 400
    assert replayed.json()["error"]["message"] == recorded.json()["error"]["message"]
    assert read_cassette(cassette(tmp_path))[0].events[0].kind == "body"


# --- misses -----------------------------------------------------------------------


async def test_a_miss_is_a_404_naming_the_nearest_recording_and_what_differed(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        await gw.client.post("/v1/chat/completions", json=chat(temperature=0.5))
    async with gateway(tmp_path, replay_dir=tmp_path / "tapes") as gw:
        missed = await gw.client.post("/v1/chat/completions", json=chat(temperature=0.7))
    assert missed.status_code == 404
    error = missed.json()["error"]
    assert error["code"] == "replay_miss"
    assert f"{cassette(tmp_path)}:2" in error["message"]
    assert "temperature: recorded 0.5, sent 0.7" in error["message"]


async def test_a_miss_goes_to_the_simulator_when_asked(tmp_path: Path) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        await gw.client.post("/v1/chat/completions", json=chat(seed=1))
    async with gateway(
        tmp_path, replay_dir=tmp_path / "tapes", replay_miss="simulator", replay_speed=0
    ) as gw:
        missed = await gw.client.post("/v1/chat/completions", json=chat(seed=2))
    assert missed.status_code == 200
    assert missed.json()["choices"][0]["message"]["content"]


async def test_new_episodes_go_upstream_and_are_added_to_the_cassette(tmp_path: Path) -> None:
    tape = tmp_path / "tapes"
    async with gateway(tmp_path, upstream={}, record_dir=tape) as gw:
        first = (await gw.client.post("/v1/chat/completions", json=chat(seed=1))).json()
    new_episodes: Any = {"record_dir": tape, "replay_dir": tape, "replay_miss": "upstream"}
    async with gateway(tmp_path, upstream={}, **new_episodes) as gw:
        again = (await gw.client.post("/v1/chat/completions", json=chat(seed=1))).json()
        await gw.client.post("/v1/chat/completions", json=chat(seed=2))
    assert again["choices"][0]["message"] == first["choices"][0]["message"]
    # The replayed one is not recorded again; the new one is.
    assert [e.body["seed"] for e in read_cassette(cassette(tmp_path))] == [1, 2]


# --- matching -----------------------------------------------------------------


async def _agent_loop(client: openai.AsyncOpenAI) -> list[Any]:
    """Three turns: two tool calls answered with results, then the answer."""
    messages: list[Any] = [{"role": "user", "content": "agent: plan my day"}]
    answers: list[Any] = []
    for turn in range(3):
        answer = await client.chat.completions.create(
            model="gw-small", messages=messages, tools=TOOLS
        )
        message = answer.choices[0].message
        answers.append((answer.choices[0].finish_reason, message.content, message.tool_calls))
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or ():
            # Results that differ run to run: replay must not depend on them.
            result = f"result {turn} of {call.id} at {asyncio.get_running_loop().time()}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return answers


async def test_ordered_replay_plays_a_three_turn_tool_conversation(tmp_path: Path) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        recorded = await _agent_loop(gw.openai())
    assert [finish for finish, _, _ in recorded] == ["tool_calls", "tool_calls", "stop"]
    loose: Any = {"replay_dir": tmp_path / "tapes", "replay_match": "model,last_user_message"}
    async with gateway(tmp_path, replay_ordered=True, replay_speed=0, **loose) as gw:
        replayed = await _agent_loop(gw.openai())
        # A fourth turn has no recording left: a clear miss.
        with pytest.raises(openai.NotFoundError, match="already replayed"):
            await gw.openai().chat.completions.create(
                model="gw-small", messages=[{"role": "user", "content": "agent: plan my day"}]
            )
    assert replayed == recorded
    # Unordered, the same loose keys give the first recording every time.
    async with gateway(tmp_path, replay_speed=0, **loose) as gw:
        unordered = await _agent_loop(gw.openai())
    assert [finish for finish, _, _ in unordered] == ["tool_calls"] * 3


ANTHROPIC_TOOLS: Any = [
    {"name": name, "input_schema": {"type": "object"}} for name in ("get_weather", "get_time")
]


async def _harness_loop(client: anthropic.AsyncAnthropic, run: int) -> list[Any]:
    """A coding agent's session as Claude Code sends it: what changes per run (the
    system prompt's path and date, reminders, tool results, cache_control, metadata)
    differs with ``run``; the user's words do not."""
    reminder = f"<system-reminder>\nToday is 2026-0{run}-01; cwd /tmp/run-{run}\n</system-reminder>"
    messages: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": reminder},
                                     {"type": "text", "text": "agent: plan my day"}]},
    ]  # fmt: skip
    answers: list[Any] = []
    for turn in range(3):
        answer = await client.messages.create(
            model="gw-small",
            max_tokens=64,
            system=[{"type": "text", "text": f"You work in /tmp/run-{run}.",
                     "cache_control": {"type": "ephemeral"}}],
            messages=messages,
            tools=ANTHROPIC_TOOLS,
            metadata={"user_id": f"session-{run}"},
        )  # fmt: skip
        blocks = [block.model_dump(exclude_none=True) for block in answer.content]
        answers.append((answer.stop_reason, blocks))
        messages.append({"role": "assistant", "content": blocks})
        results: list[Any] = [
            {"type": "tool_result", "tool_use_id": block["id"],
             "content": f"result {turn} in /tmp/run-{run}"}
            for block in blocks if block["type"] == "tool_use"
        ]  # fmt: skip
        if results:
            messages.append({"role": "user", "content": results})
    return answers


async def test_an_agent_session_replays_by_the_agent_keys_whatever_changed_per_run(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        recorded = await _harness_loop(gw.anthropic(), run=1)
    assert [stop for stop, _ in recorded] == ["tool_use", "tool_use", "end_turn"]
    tapes = tmp_path / "tapes"
    # By the default keys, the next run's system prompt and reminders are a miss.
    async with gateway(tmp_path, replay_dir=tapes, replay_speed=0) as gw:
        with pytest.raises(anthropic.NotFoundError, match="differs in messages"):
            await _harness_loop(gw.anthropic(), run=2)
    async with gateway(tmp_path, replay_dir=tapes, replay_speed=0, replay_match="agent") as gw:
        replayed = await _harness_loop(gw.anthropic(), run=2)
        # Other words from the user are a miss that names what differed.
        with pytest.raises(anthropic.NotFoundError, match="user_text"):
            await gw.anthropic().messages.create(
                model="gw-small", max_tokens=64, tools=ANTHROPIC_TOOLS,
                messages=[{"role": "user", "content": "agent: plan my week"}],
            )  # fmt: skip
    assert replayed == recorded


def test_the_agent_keys_leave_out_tagged_context_and_call_ids() -> None:
    reminder = "<system-reminder>x</system-reminder>"
    body: Any = {"messages": [
        {"role": "system", "content": "cwd /tmp/a"},
        {"role": "user", "content": "<environment_context>\n  <cwd>/tmp/a</cwd>\n"
                                    "</environment_context>"},
        {"role": "user", "content": [{"type": "text", "text": reminder},
                                     {"type": "text", "text": "Fix  the\ntest"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "Bash", "arguments": '{"command": "ls", "timeout": 5}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
    ]}  # fmt: skip
    view = match_view("/chat/completions", body, parse_match_keys("agent"))
    assert view["user_text"] == ["Fix the test"]
    assert view["assistant_turns"] == [
        {"text": "", "tool_calls": [["Bash", {"command": "ls", "timeout": 5}]]}
    ]
    # A tag never closed is the user's text; elements inside others go with them.
    body["messages"].append({"role": "user", "content": "Use <file> and <a><b>x</b></a>now"})
    view = match_view("/chat/completions", body, parse_match_keys("agent"))
    assert view["user_text"] == ["Fix the test", "Use <file> and now"]
    assert list(view) == ["endpoint", "model", "tool_names", "params", "user_text",
                          "assistant_turns"]  # fmt: skip


async def test_match_keys_are_checked_at_start_up() -> None:
    with pytest.raises(ValidationError, match="unknown key 'prompt'"):
        Settings(replay_match="model,prompt")


# --- timing -----------------------------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 2.0])
async def test_replay_keeps_the_recorded_timing_scaled_by_the_speed(
    tmp_path: Path, speed: float
) -> None:
    # httpx's ASGI transport buffers whole bodies, so in-process recordings have no
    # gaps: pace a recording by hand (200 ms to the first event, then 30 ms apart),
    # replay it on a virtual clock and compare. tests/e2e checks real recordings.
    body = chat(seed=3, max_tokens=8, **STREAM)
    async with gateway(tmp_path, upstream={"tokens_per_event": 1}, record_dir=tmp_path / "t") as gw:
        await gw.client.post("/v1/chat/completions", json=body)
    tape = tmp_path / "t" / "sim.jsonl"
    (exchange,) = read_cassette(tape)
    exchange.response_offset_ms = 150.0
    exchange.events = [
        replace(event, offset_ms=200.0 + 30.0 * index)
        for index, event in enumerate(exchange.events)
    ]
    exchange.end_offset_ms = exchange.events[-1].offset_ms
    write_atomic(tape, dumps_exchanges([exchange]))
    async with gateway(tmp_path, replay_dir=tape, replay_speed=speed) as gw:
        with virtual_time():
            replayed = await Exchange(gw.app, body, path="/v1/chat/completions").run()
    # Each content event of the recording is one content chunk of the replay, at its
    # offset over the speed (the role chunk rides with the first, the finish with [DONE]).
    recorded = [
        e.offset_ms
        for e in exchange.events
        if e.data != "[DONE]"
        and any(c["delta"].get("content") for c in json.loads(e.data)["choices"])
    ]
    got = [frame.at * 1000 for frame in replayed.frames if frame.content()]
    assert len(got) == len(recorded) >= 5
    for at, offset in zip(got, recorded, strict=True):
        assert at == pytest.approx(offset / speed, rel=0.1)
    gaps = [b - a for a, b in itertools.pairwise(got)]
    assert all(gap == pytest.approx(30.0 / speed, rel=0.1) for gap in gaps)


# --- safety -----------------------------------------------------------------------


async def test_a_cassette_holds_no_key_wherever_the_key_was(tmp_path: Path) -> None:
    client_key, anthropic_key, body_key = "sk-client-0002", "sk-ant-0003", "sk-body-0004"
    settings: Any = {
        "record_dir": tmp_path / "tapes",
        "api_keys": [client_key, anthropic_key],
        "record_redact_headers": ["x-request-id"],
        "record_redact_paths": ["messages.*.name"],
        "admin_key": "admin-0005",
    }
    async with gateway(tmp_path, upstream={}, **settings) as gw:
        # The server's own keys pasted into a prompt too (sent upstream as they are).
        keys = f"{UP_KEY} {client_key} {anthropic_key} admin-0005"
        pasted = [{"role": "user", "content": f"my keys: {keys}", "name": body_key}]
        sent = await gw.client.post(
            "/v1/chat/completions",
            json={**chat(), "messages": pasted, "api_key": body_key, "user": "u1"},
            headers={"Authorization": f"Bearer {client_key}", "x-request-id": "req-1"},
        )
        assert sent.status_code == 200, sent.text
        via_anthropic = await gw.client.post(
            "/v1/messages",
            json={"model": "gw-small", "max_tokens": 10, "messages": QUESTION},
            headers={"x-api-key": anthropic_key, "anthropic-version": "2023-06-01"},
        )
        assert via_anthropic.status_code == 200, via_anthropic.text
    text = cassette(tmp_path).read_text()
    assert len(read_cassette(cassette(tmp_path))) == 2
    for secret in (UP_KEY, client_key, anthropic_key, body_key, "req-1", "admin-0005"):
        assert secret not in text
    assert "Bearer" not in text
    assert "[redacted]" in text


@pytest.mark.parametrize(
    ("cut", "problem"),
    [
        (lambda t: t[: len(t) - 20], r"line \d+: not JSON"),
        (lambda t: "\n".join(t.splitlines()[:-1]), "has no 'end' line"),
        (lambda t: t.replace('"version": 1', '"version": 9'), "format version 9"),
        (lambda t: t.replace('"how": "eof"', '"how": "fine"'), "'how' must be one of"),
    ],
)
async def test_a_corrupt_cassette_stops_start_up_naming_file_and_line(
    tmp_path: Path, cut: Any, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with gateway(tmp_path, upstream={}, record_dir=tmp_path / "tapes") as gw:
        await gw.client.post("/v1/chat/completions", json=chat(max_tokens=3))
    tape = cassette(tmp_path)
    tape.write_text(cut(tape.read_text()))
    with pytest.raises(ValidationError, match=problem) as caught:
        Settings(replay_dir=tape)
    assert str(tape) in str(caught.value)
    assert main(["serve", "--replay-dir", str(tmp_path / "tapes")]) == 2
    assert re.search(problem, capsys.readouterr().err)
