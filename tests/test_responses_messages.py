"""The Responses API and Anthropic Messages over ASGI: event order, items, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from anthropic.types import Message
from openai.types.responses import Response

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
JSON = {"Accept": "application/json"}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
}


def named_events(body: str, *, done: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` pairs, checking the name matches the data's type.

    ``done``: the stream ends with ``data: [DONE]`` (Responses), and nowhere else.
    """
    assert "\r" not in body
    if done:
        assert body.endswith("\n\ndata: [DONE]\n\n")
        body = body.removesuffix("data: [DONE]\n\n")
    assert "[DONE]" not in body
    events = []
    for frame in body.strip("\n").split("\n\n"):
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


async def test_responses_stream_follows_the_documented_order(client: httpx.AsyncClient) -> None:
    response = await client.post(RESPONSES, json={"input": "Explain DNS", "stream": True})
    events = named_events(response.text, done=True)
    names = [name for name, _ in events]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert names[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(events[-1][1]["response"])
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert final.output_text == deltas
    assert final.usage is not None
    assert final.usage.output_tokens == names.count("response.output_text.delta")


async def test_responses_max_output_tokens_makes_it_incomplete(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(RESPONSES, json={"input": "Explain DNS", "max_output_tokens": 10})
    ).json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 10
    assert body["output"][-1]["status"] == "incomplete"


async def test_responses_function_call_then_output_continues(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    first = (
        await client.post(RESPONSES, json={"input": "Weather in Oslo?", "tools": tools})
    ).json()
    (call,) = first["output"]
    assert call["type"] == "function_call"
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, WEATHER)
    assert arguments["city"] == "Oslo"
    follow_up = {
        "previous_response_id": first["id"],
        "input": [
            {"type": "function_call_output", "call_id": call["call_id"], "output": "3C, snow"}
        ],
        "tools": tools,
    }
    second = Response.model_validate((await client.post(RESPONSES, json=follow_up)).json())
    assert "`get_weather` returned: 3C, snow" in second.output_text
    stored = (await client.get(f"{RESPONSES}/{second.id}")).json()
    assert stored["id"] == second.id


async def test_responses_stream_function_call_events(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    response = await client.post(
        RESPONSES, json={"input": "Weather in Oslo?", "tools": tools, "stream": True}
    )
    events = named_events(response.text, done=True)
    names = [n for n, _ in events]
    assert "response.function_call_arguments.delta" in names
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    deltas = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta")
    assert done["arguments"] == deltas
    jsonschema.validate(json.loads(deltas), WEATHER)


async def test_responses_json_schema_format_validates(client: httpx.AsyncClient) -> None:
    fmt = {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}
    body = (await client.post(RESPONSES, json={"input": "Lima", "text": {"format": fmt}})).json()
    jsonschema.validate(json.loads(body["output"][0]["content"][0]["text"]), WEATHER)


async def test_responses_reasoning_item_comes_first(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(RESPONSES, json={"input": "Why?", "reasoning": {"effort": "low"}})
    ).json()
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0


async def test_responses_instructions_and_input_items(client: httpx.AsyncClient) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        {"type": "message", "role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Explain HTTP caching"},
    ]
    body = (await client.post(RESPONSES, json={"input": items, "instructions": "Be brief."})).json()
    assert body["instructions"] == "Be brief."
    assert "HTTP caching" in body["output"][0]["content"][0]["text"]


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"previous_response_id": "resp_nope"}, 400, "previous_response_id"),
        ({"input": [{"type": "mystery"}]}, 400, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            400,
            "input[0].content[0].type",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}},
            400,
            "text.format.schema",
        ),
        ({"tool_choice": "required"}, 400, "tool_choice"),
    ],
)
async def test_responses_errors(
    client: httpx.AsyncClient, fields: dict[str, Any], status: int, param: str
) -> None:
    response = await client.post(RESPONSES, json={"input": "hi"} | fields, headers=JSON)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


async def test_unknown_stored_response_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{RESPONSES}/resp_missing")
    assert response.status_code == 404


def message(**fields: Any) -> dict[str, Any]:
    body = {"model": "claude-sim", "max_tokens": 200, "seed": 2}
    return body | {"messages": [{"role": "user", "content": "Explain DNS"}]} | fields


async def test_messages_stream_has_anthropic_named_events(client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json=message(stream=True))
    events = named_events(response.text)
    names = [n for n, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == names.count("content_block_delta") == 200


async def test_messages_whole_message_validates(client: httpx.AsyncClient) -> None:
    body = (await client.post(MESSAGES, json=message(max_tokens=4000))).json()
    parsed = Message.model_validate(body)
    assert parsed.stop_reason == "end_turn"
    assert parsed.content[0].type == "text"
    assert parsed.usage.output_tokens > 300


async def test_messages_stop_sequence_is_reported(client: httpx.AsyncClient) -> None:
    body = (await client.post(MESSAGES, json=message(stop_sequences=["\n\n", "zzz"]))).json()
    assert body["stop_reason"] == "stop_sequence"
    assert body["stop_sequence"] == "\n\n"
    assert "\n\n" not in body["content"][0]["text"]


async def test_messages_thinking_then_text_with_signature(client: httpx.AsyncClient) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    response = await client.post(MESSAGES, json=message(stream=True, thinking=thinking))
    events = named_events(response.text)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert kinds.index("signature_delta") == kinds.count("thinking_delta")


async def test_messages_tool_use_and_tool_result(client: httpx.AsyncClient) -> None:
    tools = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]
    body = (
        await client.post(
            MESSAGES,
            json=message(tools=tools, messages=[{"role": "user", "content": "Weather in Lima?"}]),
        )
    ).json()
    assert body["stop_reason"] == "tool_use"
    (use,) = body["content"]
    assert use["id"].startswith("toolu_")
    jsonschema.validate(use["input"], WEATHER)
    turns = [
        {"role": "user", "content": "Weather in Lima?"},
        {"role": "assistant", "content": body["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "19C"}],
        },
    ]
    answer = (
        await client.post(MESSAGES, json=message(tools=tools, messages=turns, max_tokens=2000))
    ).json()
    assert answer["stop_reason"] == "end_turn"
    assert "`get_weather` returned: 19C" in answer["content"][0]["text"]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            400,
            "invalid_request_error",
        ),
        (message(messages=[{"role": "tool", "content": "hi"}]), 400, "invalid_request_error"),
        (
            message(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
            400,
            "invalid_request_error",
        ),
        (message(tool_choice={"type": "any"}), 400, "invalid_request_error"),
    ],
)
async def test_messages_errors_use_anthropic_envelope(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, kind: str
) -> None:
    response = await client.post(MESSAGES, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == kind
    assert error["error"]["message"]


async def test_messages_accepts_anthropic_headers(client: httpx.AsyncClient) -> None:
    headers = {"x-api-key": "anything", "anthropic-version": "2023-06-01"}
    response = await client.post(MESSAGES, json=message(max_tokens=5), headers=headers)
    assert response.status_code == 200
