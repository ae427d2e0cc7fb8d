"""Chat tool calls, structured outputs, logprobs and reasoning, over ASGI."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.sse_helpers import chunks

URL = "/v1/chat/completions"
JSON = {"Accept": "application/json"}

WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["location", "unit", "days"],
    "additionalProperties": False,
}
FLIGHTS = {
    "type": "object",
    "properties": {
        "origin": {"type": "string"},
        "destination": {"type": "string"},
        "date": {"type": "string", "format": "date"},
        "passengers": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    },
    "required": ["origin", "destination", "date", "passengers"],
}


def tool(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": schema},
    }


TOOLS = [tool("get_weather", WEATHER, "Current weather"), tool("search_flights", FLIGHTS)]


def ask(question: str, **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": question}], "seed": 1} | fields


def tool_deltas(body: str) -> list[dict[str, Any]]:
    return [
        call
        for c in chunks(body)
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    ]


async def test_streamed_tool_call_follows_the_delta_rules(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=ask("What's the weather in Paris?", tools=TOOLS, stream=True)
    )
    deltas = tool_deltas(response.text)
    first, rest = deltas[0], deltas[1:]
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(d) == {"index", "function"} for d in rest), "id/type/name only once"
    assert all(set(d["function"]) == {"arguments"} for d in rest)
    arguments = json.loads("".join(d["function"]["arguments"] for d in rest))
    jsonschema.validate(arguments, WEATHER)
    assert arguments["location"] == "Paris"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks(response.text) if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert finishes.count("tool_calls") == 1


async def test_non_streamed_tool_call_has_null_content(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=ask("Any flights to Rome?", tools=TOOLS))
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "search_flights"
    jsonschema.validate(json.loads(call["function"]["arguments"]), FLIGHTS)


async def test_parallel_calls_for_every_named_tool(client: httpx.AsyncClient) -> None:
    question = "Check the weather and search flights to Oslo"
    both = await client.post(URL, json=ask(question, tools=TOOLS))
    one = await client.post(URL, json=ask(question, tools=TOOLS, parallel_tool_calls=False))
    assert [c["function"]["name"] for c in both.json()["choices"][0]["message"]["tool_calls"]] == [
        "get_weather",
        "search_flights",
    ]
    assert len(one.json()["choices"][0]["message"]["tool_calls"]) == 1


@pytest.mark.parametrize(
    ("question", "choice", "called"),
    [
        ("Tell me a story", "auto", []),
        ("Tell me a story", "required", ["get_weather"]),
        (
            "Tell me a story",
            {"type": "function", "function": {"name": "search_flights"}},
            ["search_flights"],
        ),
        ("What's the weather in Paris?", "none", []),
        ("What's the weather in Paris?", "auto", ["get_weather"]),
    ],
)
async def test_tool_choice_rules(
    client: httpx.AsyncClient, question: str, choice: Any, called: list[str]
) -> None:
    response = await client.post(URL, json=ask(question, tools=TOOLS, tool_choice=choice))
    message = response.json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in message.get("tool_calls") or []] == called


async def test_description_words_select_a_tool(client: httpx.AsyncClient) -> None:
    tools = [tool("lookup", {"type": "object"}, "Find a customer invoice by number")]
    response = await client.post(URL, json=ask("Find invoice 42 for this customer", tools=tools))
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_follow_up_with_tool_results_answers_from_them(client: httpx.AsyncClient) -> None:
    first = (await client.post(URL, json=ask("What's the weather in Paris?", tools=TOOLS))).json()
    call = first["choices"][0]["message"]["tool_calls"][0]
    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        first["choices"][0]["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    response = await client.post(URL, json={"model": "m", "messages": messages, "tools": TOOLS})
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert '`get_weather` returned: {"temp_c": 21, "sky": "clear"}' in choice["message"]["content"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": []}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        (
            {"tools": [tool("f", {"type": "object", "properties": {"a": {"type": "strin"}}})]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 5}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
async def test_invalid_tool_and_format_requests_get_400(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    response = await client.post(URL, json=ask("hi", **fields), headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


SCHEMAS = [
    WEATHER,
    FLIGHTS,
    {
        "type": "object",
        "$defs": {
            "step": {
                "type": "object",
                "properties": {
                    "explanation": {"type": "string"},
                    "output": {"type": "string"},
                },
                "required": ["explanation", "output"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 2},
            "final_answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["steps", "final_answer", "confidence"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "email": {"type": "string", "format": "email"},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3,5}$"},
            "count": {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 5, "maximum": 50},
            "ratio": {"type": "number", "multipleOf": 0.25, "minimum": 1, "maximum": 2},
            "tags": {
                "type": "array",
                "items": {"type": "string"},
                "uniqueItems": True,
                "minItems": 3,
            },
            "kind": {"anyOf": [{"type": "null"}, {"enum": ["a", "b"]}]},
            "nested": {
                "allOf": [
                    {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]}
                ]
            },
            "name": {"type": "string", "minLength": 12, "maxLength": 14},
            "fixed": {"const": "v1"},
        },
        "required": [
            "id",
            "email",
            "when",
            "code",
            "count",
            "ratio",
            "tags",
            "kind",
            "nested",
            "name",
            "fixed",
        ],
    },
    {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["value", "children"],
            }
        },
        "$ref": "#/$defs/node",
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", range(8))
async def test_json_schema_output_validates(
    client: httpx.AsyncClient, schema: dict[str, Any], seed: int
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    response = await client.post(
        URL, json=ask("Plan a trip to Lisbon", response_format=fmt, seed=seed, stream=True)
    )
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks(response.text) if c["choices"]
    )
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
    assert len([c for c in chunks(response.text) if c["choices"]]) > 3, "streamed in pieces"


async def test_json_object_output_is_one_object(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=ask("Summarise Kubernetes", response_format={"type": "json_object"})
    )
    body = json.loads(response.json()["choices"][0]["message"]["content"])
    assert isinstance(body, dict)
    assert body["subject"] == "Kubernetes"


async def test_logprobs_align_with_streamed_tokens(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=ask("Explain DNS", stream=True, max_tokens=12, logprobs=True, top_logprobs=3)
    )
    content = [c["choices"][0] for c in chunks(response.text) if c["choices"]]
    tokens = [c for c in content if c["delta"].get("content")]
    assert len(tokens) == 12
    for choice in tokens:
        (entry,) = choice["logprobs"]["content"]
        assert entry["token"] == choice["delta"]["content"]
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert [t["logprob"] for t in entry["top_logprobs"]] == sorted(
            (t["logprob"] for t in entry["top_logprobs"]), reverse=True
        )


async def test_logprobs_are_deterministic(client: httpx.AsyncClient) -> None:
    fields = {"logprobs": True, "top_logprobs": 2, "max_tokens": 5}
    a = (await client.post(URL, json=ask("Explain DNS", **fields))).json()
    b = (await client.post(URL, json=ask("Explain DNS", **fields))).json()
    assert a["choices"][0]["logprobs"] == b["choices"][0]["logprobs"]
    assert len(a["choices"][0]["logprobs"]["content"]) == 5


@pytest.mark.parametrize(
    "fields",
    [{"model": "sim-reasoner"}, {"model": "o3-mini"}, {"reasoning_effort": "low"}],
)
async def test_reasoning_streams_first_and_is_counted(
    client: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    body = ask("Why is the sky blue?", stream=True, stream_options={"include_usage": True})
    response = await client.post(URL, json=body | fields)
    parsed = chunks(response.text)
    deltas = [c["choices"][0]["delta"] for c in parsed if c["choices"]]
    kinds = [("reasoning" if "reasoning_content" in d else "content") for d in deltas[1:-1]]
    assert kinds == sorted(kinds, reverse=True), "all reasoning before any content"
    assert "reasoning" in kinds
    reasoning_tokens = sum(1 for d in deltas if "reasoning_content" in d)
    usage = parsed[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens
    assert usage["completion_tokens"] == len(deltas) - 2


async def test_reasoning_effort_none_turns_reasoning_off(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL, json=ask("Why?", model="sim-reasoner", reasoning_effort="none")
    )
    assert "reasoning_content" not in response.json()["choices"][0]["message"]
