"""Seeded answers are the same, byte for byte, as the planner made them when it planned whole.

``tests/data/seeded_answers.json`` was recorded with the code of ``6f86747`` (the planner
that built a request's every delta at admission), by running this module:
``python -m tests.test_seeded_answers``. Streams are compared on the wire (the SSE body,
with only the per-request ids and timestamps normalised) and, for scripted answers that
no route can ask for without test control, delta by delta from the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.engines.protocol import (
    GenerationRequest,
    OutputFormat,
    PromptMessage,
    Script,
    ScriptedToolCall,
    ToolSpec,
)
from streamapi.engines.simulator import SimulatorEngine
from streamapi.settings import Settings

FIXTURE = Path(__file__).parent / "data" / "seeded_answers.json"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def _chat(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": text}], **fields}


# (name, path, body): each streamed and not, with seeds, so the answers are reproducible.
WIRE_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "/v1/chat/completions", _chat("Explain vector databases", seed=7)),
    ("chat_cut", "/v1/chat/completions", _chat("Explain TCP congestion", seed=3, max_tokens=64)),
    (
        "chat_ignore_eos",
        "/v1/chat/completions",
        _chat("Explain Rust lifetimes", seed=4, max_tokens=300, ignore_eos=True),
    ),
    ("chat_tiny", "/v1/chat/completions", _chat("Hi there, explain DNS", seed=5, max_tokens=1)),
    (
        "chat_n3",
        "/v1/chat/completions",
        _chat("Compare Kafka and RabbitMQ", seed=11, n=3, temperature=1.0, max_tokens=40),
    ),
    (
        "chat_logprobs",
        "/v1/chat/completions",
        _chat("Explain B-trees", seed=2, logprobs=True, top_logprobs=3, max_tokens=24),
    ),
    (
        "chat_stop",
        "/v1/chat/completions",
        _chat("Explain garbage collection", seed=9, stop=[" memory", "\n\n"]),
    ),
    (
        "chat_tools",
        "/v1/chat/completions",
        _chat("What is the weather in Paris?", seed=1, tools=[WEATHER, TIME]),
    ),
    (
        "chat_parallel_tools",
        "/v1/chat/completions",
        _chat("What are the weather and the time in Oslo?", seed=1, tools=[WEATHER, TIME]),
    ),
    (
        "chat_tools_cut",
        "/v1/chat/completions",
        _chat("What is the weather in Rome?", seed=6, tools=[WEATHER], max_tokens=4),
    ),
    (
        "chat_tool_logprobs",
        "/v1/chat/completions",
        _chat("Weather in Lima?", seed=8, tools=[WEATHER], logprobs=True, top_logprobs=2),
    ),
    (
        "chat_json_schema",
        "/v1/chat/completions",
        _chat(
            "Describe a person named Ada",
            seed=12,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
        ),
    ),
    (
        "chat_json_schema_budget",
        "/v1/chat/completions",
        _chat(
            "Describe a person named Ada",
            seed=12,
            max_tokens=6,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON},
            },
        ),
    ),
    (
        "chat_json_object",
        "/v1/chat/completions",
        _chat("List three colours as JSON", seed=13, response_format={"type": "json_object"}),
    ),
    (
        "chat_reasoning",
        "/v1/chat/completions",
        _chat("Why is the sky blue?", seed=14, reasoning_effort="low", max_tokens=80),
    ),
    (
        "completions_logprobs",
        "/v1/completions",
        {
            "model": "sim-small",
            "prompt": "Once upon a time",
            "seed": 15,
            "max_tokens": 20,
            "logprobs": 2,
            "stop": [" the"],
        },
    ),
    (
        "anthropic_tools",
        "/v1/messages",
        {
            "model": "sim-small",
            "max_tokens": 200,
            "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": "What is the weather in Berlin?"}],
            "tools": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
                }
            ],
        },
    ),
    (
        "anthropic_text",
        "/v1/messages",
        {
            "model": "sim-small",
            "max_tokens": 50,
            "stop_sequences": [" data"],
            "messages": [{"role": "user", "content": "Explain data lakes"}],
        },
    ),
    (
        "responses",
        "/v1/responses",
        {"model": "sim-small", "input": "Explain event sourcing", "max_output_tokens": 60},
    ),
]

# Scripted answers (test control's rules) and other requests no route makes without it.
ENGINE_CASES: list[tuple[str, GenerationRequest]] = [
    (
        "script_tools",
        GenerationRequest(
            model="m",
            messages=(PromptMessage("user", "go"),),
            script=Script(
                text="Calling now. END here",
                tool_calls=(
                    ScriptedToolCall("lookup", '{"q": "tokens and more tokens"}'),
                    ScriptedToolCall("fetch", '{"url": "https://example.com/a"}', id="call_x"),
                ),
                reasoning="Let me think about it.",
            ),
            seed=1,
            max_tokens=30,
            logprobs=1,
        ),
    ),
    (
        "script_stop",
        GenerationRequest(
            model="m",
            messages=(PromptMessage("user", "go"),),
            script=Script(text="One two three END four", tool_calls=(ScriptedToolCall("x"),)),
            stop=("END",),
            seed=1,
        ),
    ),
    (
        "output_tokens",
        GenerationRequest(
            model="m",
            messages=(PromptMessage("user", "Explain caching"),),
            seed=2,
            output_tokens=17,
            max_tokens=100,
        ),
    ),
    (
        "empty",
        GenerationRequest(
            model="m",
            messages=(PromptMessage("user", "Explain caching"),),
            seed=2,
            max_tokens=0,
        ),
    ),
    (
        "json_schema_ignore_eos",
        GenerationRequest(
            model="m",
            messages=(PromptMessage("user", "A person"),),
            seed=3,
            max_tokens=50,
            ignore_eos=True,
            output_format=OutputFormat("json_schema", PERSON),
        ),
    ),
    (
        "custom_tool_reasoning",
        GenerationRequest(
            model="m",
            messages=(PromptMessage("user", "Run the shell command to list files"),),
            seed=4,
            reasoning=True,
            tools=(ToolSpec("shell", "Run a shell command", format={"type": "text"}),),
            tool_choice="required",
        ),
    ),
]

_IDS = re.compile(rb"\b(chatcmpl|cmpl|msg|resp|rs|fc|item|req)_?-?[A-Za-z0-9]{8,}")
_TIMES = re.compile(rb'"(created|created_at|completed_at)":\s?\d+(\.\d+)?')


def _normalised(body: bytes) -> str:
    """The body with what differs between two runs of one request (ids, clocks) blanked."""
    body = _IDS.sub(rb"\1-ID", body)
    return _TIMES.sub(rb'"\1":0', body).decode()


async def _wire_answers() -> dict[str, str]:
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, seed=42))
    answers: dict[str, str] = {}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as client,
    ):
        for name, path, body in WIRE_CASES:
            for stream in (False, True):
                sent = {**body, "stream": stream}
                if stream and path == "/v1/chat/completions":
                    sent["stream_options"] = {"include_usage": True}
                response = await client.post(path, json=sent)
                assert response.status_code == 200, (name, response.text)
                answers[f"{name}{'_stream' if stream else ''}"] = _normalised(response.content)
    return answers


async def _engine_answers() -> dict[str, list[dict[str, Any]]]:
    engine = SimulatorEngine(seed=42)
    answers: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, request in ENGINE_CASES:
            sequence = engine.stream(request)
            try:
                answers[name] = [dataclasses.asdict(delta) async for delta in sequence]
            finally:
                await sequence.aclose()
    finally:
        await engine.aclose()
    # JSON's view of them: tuples become lists, as in the fixture.
    loaded: dict[str, list[dict[str, Any]]] = json.loads(json.dumps(answers))
    return loaded


def _recorded() -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return recorded


async def test_seeded_answers_on_the_wire_are_as_recorded() -> None:
    recorded = _recorded()["wire"]
    answers = await _wire_answers()
    assert answers.keys() == recorded.keys()
    for name, body in answers.items():
        assert body == recorded[name], name


async def test_seeded_answers_from_the_engine_are_as_recorded() -> None:
    recorded = _recorded()["engine"]
    answers = await _engine_answers()
    assert answers.keys() == recorded.keys()
    for name, deltas in answers.items():
        assert deltas == recorded[name], name


@pytest.mark.parametrize("name", [name for name, _, _ in WIRE_CASES])
def test_every_recorded_case_is_an_answer(name: str) -> None:
    # The fixture holds real answers, not errors or empty bodies.
    body = _recorded()["wire"][f"{name}_stream"]
    assert body.count("data: ") >= 2 or "event: " in body


async def _record() -> None:
    data = {"wire": await _wire_answers(), "engine": await _engine_answers()}
    FIXTURE.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


if __name__ == "__main__":
    asyncio.run(_record())
    sys.stderr.write(f"recorded {FIXTURE}\n")
