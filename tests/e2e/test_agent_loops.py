"""Unscripted agent loops through the official SDKs against a real ``streamapi serve``.

No rules: the simulator alone must end each loop with a final text answer within a few
requests, in every protocol, streamed and not, the same way for the same seed; and a
repeated request must read its prompt (tools included) from the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest
from anthropic import Anthropic
from openai import OpenAI
from openai.types.chat import ChatCompletionMessage
from openai.types.responses import Response

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
MAX_REQUESTS = 4
RESULT = "Sunny, 21 C"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city name."}},
    "required": ["city"],
}
TOOLS = [
    ("get_weather", "Get the current weather in a city."),
    ("get_time", "Get the local time in a city."),
]
REMINDER = (
    "<system-reminder>Use the get_weather and get_time tools when they help. "
    "The user is in Berlin.</system-reminder>"
)


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING)


@pytest.fixture
def openai(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused") as client:
        yield client


@pytest.fixture
def anthropic(server: ServerProcess) -> Iterator[Anthropic]:
    with Anthropic(base_url=server.base_url, api_key="unused") as client:
        yield client


def chat_loop(openai: OpenAI, question: str, *, stream: bool) -> tuple[list[str], str]:
    """An agent's loop over chat completions: the tools it called, and its final answer."""
    tools: Any = [
        {"type": "function", "function": {"name": n, "description": d, "parameters": CITY}}
        for n, d in TOOLS
    ]
    messages: list[Any] = [{"role": "user", "content": question}]
    called: list[str] = []
    message: ChatCompletionMessage
    for _ in range(MAX_REQUESTS):
        if stream:
            with openai.chat.completions.stream(
                model="sim-small", messages=messages, tools=tools, seed=4
            ) as events:
                message = events.get_final_completion().choices[0].message
        else:
            completion = openai.chat.completions.create(
                model="sim-small", messages=messages, tools=tools, seed=4
            )
            message = completion.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            assert message.content
            return called, message.content
        for call in message.tool_calls:
            assert call.type == "function"
            arguments = json.loads(call.function.arguments)
            jsonschema.validate(arguments, CITY)
            called.append(f"{call.function.name}({arguments['city']})")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": RESULT})
    raise AssertionError(f"no answer within {MAX_REQUESTS} requests: {called}")


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_agent_loop_ends_with_an_answer(openai: OpenAI, stream: bool) -> None:
    called, answer = chat_loop(openai, "What is the weather in Paris?", stream=stream)
    assert called == ["get_weather(Paris)"]
    assert RESULT in answer
    assert chat_loop(openai, "What is the weather in Paris?", stream=stream) == (called, answer)


@pytest.mark.parametrize("stream", [False, True])
def test_a_responses_agent_loop_ends_with_an_answer(openai: OpenAI, stream: bool) -> None:
    tools: Any = [
        {"type": "function", "name": n, "description": d, "parameters": CITY, "strict": False}
        for n, d in TOOLS
    ]
    items: list[Any] = [{"role": "user", "content": "What time is it in Tokyo?"}]
    called: list[str] = []
    response: Response
    for _ in range(MAX_REQUESTS):
        if stream:
            with openai.responses.stream(
                model="sim-small", input=items, tools=tools, extra_body={"seed": 4}
            ) as events:
                response = events.get_final_response()
        else:
            response = openai.responses.create(
                model="sim-small", input=items, tools=tools, extra_body={"seed": 4}
            )
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            assert RESULT in response.output_text
            break
        for call in calls:
            called.append(f"{call.name}({json.loads(call.arguments)['city']})")
            items.append(call.model_dump(exclude_none=True))
            items.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}
            )
    else:
        raise AssertionError(f"no answer within {MAX_REQUESTS} requests: {called}")
    assert called == ["get_time(Tokyo)"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_messages_agent_loop_with_reminders_ends_with_an_answer(
    anthropic: Anthropic, stream: bool
) -> None:
    """As Claude Code sends it: reminders before the request and after each tool result."""
    tools: Any = [{"name": n, "description": d, "input_schema": CITY} for n, d in TOOLS]
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": REMINDER},
                {"type": "text", "text": "How is the weather in Madrid?"},
            ],
        }
    ]
    called: list[str] = []
    for _ in range(MAX_REQUESTS):
        fields: Any = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "tools": tools}
        if stream:
            with anthropic.messages.stream(messages=messages, **fields) as events:
                message = events.get_final_message()
        else:
            message = anthropic.messages.create(messages=messages, **fields)
        messages.append({"role": "assistant", "content": message.content})
        uses = [block for block in message.content if block.type == "tool_use"]
        if not uses:
            assert message.stop_reason == "end_turn"
            text = "".join(block.text for block in message.content if block.type == "text")
            assert RESULT in text
            break
        results: list[Any] = [
            {"type": "tool_result", "tool_use_id": use.id, "content": RESULT} for use in uses
        ]
        called += [f"{use.name}({use.input['city']})" for use in uses]
        messages.append({"role": "user", "content": [*results, {"type": "text", "text": REMINDER}]})
    else:
        raise AssertionError(f"no answer within {MAX_REQUESTS} requests: {called}")
    assert called == ["get_weather(Madrid)"]


def test_smolagents_style_observations_end_with_final_answer(openai: OpenAI) -> None:
    """smolagents' ToolCallingAgent: ``tool_choice: "required"``, results as user text."""
    tools: Any = [
        {"type": "function", "function": {"name": n, "description": d, "parameters": CITY}}
        for n, d in TOOLS[:1]
    ] + [
        {
            "type": "function",
            "function": {
                "name": "final_answer",
                "description": "Provides a final answer to the given problem.",
                "parameters": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                },
            },
        }
    ]
    messages: list[Any] = [
        {"role": "system", "content": "You are an expert assistant who can solve any task."},
        {"role": "user", "content": "New task:\nWhat is the weather in Lima?"},
    ]
    for step in range(MAX_REQUESTS):
        completion = openai.chat.completions.create(
            model="sim-small",
            messages=messages,
            tools=tools,
            tool_choice="required",
            stop=["Observation:", "Calling tools:"],
        )
        (call,) = completion.choices[0].message.tool_calls or []
        assert call.type == "function"
        arguments = json.loads(call.function.arguments)
        if call.function.name == "final_answer":
            assert arguments == {"answer": f"{RESULT} in Lima"}
            assert step == 1
            return
        assert (call.function.name, arguments) == ("get_weather", {"city": "Lima"})
        transcript = [{"id": call.id, "type": "function", "function": {"name": "get_weather"}}]
        messages.append({"role": "assistant", "content": f"Calling tools:\n{transcript}"})
        messages.append({"role": "user", "content": f"Observation:\n{RESULT} in Lima"})
    raise AssertionError("smolagents' loop did not end")


def test_repeated_requests_read_their_prompt_from_the_cache(
    openai: OpenAI, anthropic: Anthropic
) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": n, "description": d, "parameters": CITY}}
        for n, d in TOOLS
    ]
    chat = [
        openai.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "Hi"}], tools=tools
        ).usage
        for _ in range(2)
    ]
    assert chat[1] is not None and chat[1].prompt_tokens_details is not None
    cached = chat[1].prompt_tokens_details.cached_tokens or 0
    assert chat[1].prompt_tokens - 16 < cached < chat[1].prompt_tokens

    system: Any = [
        {
            "type": "text",
            "text": "You are a careful coding assistant. " * 300,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    usages = [
        anthropic.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            system=system,
            messages=[{"role": "user", "content": "Hi"}],
        ).usage
        for _ in range(2)
    ]
    written = usages[0].cache_creation_input_tokens or 0
    assert written > 1024
    assert usages[1].cache_read_input_tokens == written
    assert usages[1].cache_creation_input_tokens == 0
