"""The simulator's realism gaps of issue 16 (items 9 to 12 and 16), over ASGI.

Each test sends what a real client sends (instructor's JSON modes, pydantic-ai's
prompted output, Anthropic's structured outputs, the Agents SDK's short answers,
LlamaIndex's one tool, images) and checks the answer a real model would give.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import pytest

from streamapi.settings import Settings
from tests.sse_helpers import chunks

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
JSON = {"Accept": "application/json"}

# What pydantic's model_json_schema() gives for a user with optional fields.
USER_SCHEMA: dict[str, Any] = {
    "$defs": {
        "Address": {
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            "required": ["city"],
            "title": "Address",
            "type": "object",
        }
    },
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "age": {"title": "Age", "type": "integer"},
        "email": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "address": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}], "default": None},
    },
    "required": ["name", "age"],
    "title": "User",
    "type": "object",
}


def instructor_system(schema: dict[str, Any]) -> str:
    """instructor's Mode.JSON / MD_JSON system message (instructor 1.x)."""
    return (
        "\nAs a genius expert, your task is to understand the content and provide\n"
        "the parsed objects in json that match the following json_schema:\n\n\n"
        f"{json.dumps(schema, indent=2)}\n\n"
        "Make sure to return an instance of the JSON, not the schema itself\n"
    )


def pydantic_ai_instructions(schema: dict[str, Any]) -> str:
    """pydantic-ai's DEFAULT_PROMPTED_OUTPUT_TEMPLATE, filled."""
    return (
        "\nAlways respond with a JSON object that's compatible with this schema:\n\n"
        f"{json.dumps(schema)}\n\n"
        "Don't include any text or Markdown fencing before or after.\n"
    )


async def chat_text(client: httpx.AsyncClient, **body: Any) -> tuple[str, str]:
    response = await client.post(CHAT, json={"model": "m", **body}, headers=JSON)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


# --- 9. structure asked for in words ---------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_instructor_json_mode_gets_an_instance_of_the_schema(
    client: httpx.AsyncClient, seed: int
) -> None:
    text, finish = await chat_text(
        client,
        seed=seed,
        response_format={"type": "json_object"},
        messages=[
            {"role": "system", "content": instructor_system(USER_SCHEMA)},
            {"role": "user", "content": "Extract: Jason is 25 years old"},
        ],
    )
    assert finish == "stop"
    jsonschema.validate(json.loads(text), USER_SCHEMA)


async def test_instructor_md_json_mode_gets_a_json_code_block(client: httpx.AsyncClient) -> None:
    text, _ = await chat_text(
        client,
        seed=3,
        messages=[
            {"role": "system", "content": instructor_system(USER_SCHEMA)},
            {
                "role": "user",
                "content": "Extract: Jason is 25 years old\n\nReturn the correct JSON response "
                "within a ```json codeblock. not the JSON_SCHEMA",
            },
        ],
    )
    match = re.fullmatch(r"```json\n(.*)\n```", text, re.DOTALL)
    assert match is not None, text
    jsonschema.validate(json.loads(match.group(1)), USER_SCHEMA)


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
async def test_pydantic_ai_prompted_output_is_bare_json_on_every_api(
    client: httpx.AsyncClient, path: str
) -> None:
    instructions = pydantic_ai_instructions(USER_SCHEMA)
    question = "Who is Ada Lovelace?"
    body: dict[str, Any]
    if path == CHAT:
        body = {
            "messages": [
                {"role": "system", "content": instructions},
                {"role": "user", "content": question},
            ]
        }
    elif path == RESPONSES:
        body = {"instructions": instructions, "input": question}
    else:
        body = {
            "system": instructions,
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": question}],
        }
    response = await client.post(path, json={"model": "m", "seed": 1, **body}, headers=JSON)
    assert response.status_code == 200, response.text
    data = response.json()
    if path == CHAT:
        text = data["choices"][0]["message"]["content"]
    elif path == RESPONSES:
        text = data["output"][-1]["content"][0]["text"]
    else:
        text = data["content"][0]["text"]
    jsonschema.validate(json.loads(text), USER_SCHEMA)


async def test_an_example_object_in_the_prompt_shapes_the_json(client: httpx.AsyncClient) -> None:
    text, _ = await chat_text(
        client,
        seed=2,
        messages=[
            {
                "role": "user",
                "content": 'List a city as JSON like {"city": "Paris", "population": 2100000, '
                '"tags": ["capital"]}. Return only the JSON.',
            }
        ],
    )
    value = json.loads(text)
    assert set(value) == {"city", "population", "tags"}
    assert isinstance(value["city"], str)
    assert isinstance(value["population"], int)
    assert all(isinstance(tag, str) for tag in value["tags"])


async def test_a_schema_that_is_not_asked_for_is_just_text(client: httpx.AsyncClient) -> None:
    """Talking about a schema is not asking for an instance of it."""
    text, _ = await chat_text(
        client,
        seed=1,
        messages=[
            {"role": "user", "content": f"What is wrong here? {json.dumps(USER_SCHEMA)}"},
        ],
    )
    assert not text.lstrip().startswith("{")


# --- 10. Anthropic structured outputs ------------------------------------------------


@pytest.mark.parametrize("field", ["output_config", "output_format"])
async def test_anthropic_structured_outputs_are_schema_valid(
    client: httpx.AsyncClient, field: str
) -> None:
    fmt = {"type": "json_schema", "schema": USER_SCHEMA}
    extra = (
        {"output_config": {"format": fmt}} if field == "output_config" else {"output_format": fmt}
    )
    for seed in range(4):
        response = await client.post(
            MESSAGES,
            json={
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "seed": seed,
                "messages": [{"role": "user", "content": "Tell me about Grace Hopper"}],
                **extra,
            },
        )
        assert response.status_code == 200, response.text
        (block,) = response.json()["content"]
        jsonschema.validate(json.loads(block["text"]), USER_SCHEMA)


async def test_anthropic_structured_output_with_a_bad_schema_is_a_400(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        MESSAGES,
        json={
            "model": "m",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": 7}}},
        },
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- 11. brevity -------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


@pytest.mark.parametrize(
    ("ask", "check"),
    [
        ("What is a mutex? Answer in one sentence.", lambda t: len(sentences(t)) == 1),
        ("In one word: what colour is the sky?", lambda t: len(t.split()) == 1),
        ("Describe Kubernetes in 12 words.", lambda t: len(t.split()) == 12),
        ("Explain TCP in two sentences.", lambda t: len(sentences(t)) == 2),
        ("Briefly, what is DNS?", lambda t: 40 < len(t) < 500),
        ("What is Rust? Be brief.", lambda t: 40 < len(t) < 500),
    ],
)
async def test_length_instructions_are_honoured(
    client: httpx.AsyncClient, ask: str, check: Any
) -> None:
    text, finish = await chat_text(client, seed=5, messages=[{"role": "user", "content": ask}])
    assert finish == "stop"
    assert check(text), text


async def test_agents_sdk_short_answer_stops_under_a_small_max_tokens(
    client: httpx.AsyncClient,
) -> None:
    """The Agents SDK raises on an incomplete response: one sentence fits in 100 tokens."""
    response = await client.post(
        RESPONSES,
        json={
            "model": "m",
            "instructions": "You are a helpful assistant. Answer in one sentence.",
            "input": "What is the capital of France?",
            "max_output_tokens": 100,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


async def test_the_simple_prompt_form_keeps_its_minimum_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        CHAT, json={"prompt": "Explain recursion in one sentence.", "stream": True}
    )
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(response.text))
    assert len(text) >= 1378


async def test_without_an_instruction_the_answer_is_long(client: httpx.AsyncClient) -> None:
    text, _ = await chat_text(
        client, seed=5, messages=[{"role": "user", "content": "What is DNS?"}]
    )
    assert len(text) >= 1378


# --- 12. tool choice auto, and plausible arguments ---------------------------------------

# LlamaIndex's structured prediction offers the output class as its one tool.
ALBUM_TOOL = {
    "type": "function",
    "function": {
        "name": "Album",
        "description": "Data model for an album with its songs.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "artist": {"type": "string"},
                "songs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "title": {"type": "string"},
                            "length_seconds": {"type": "integer"},
                        },
                        "required": ["title", "length_seconds"],
                    },
                },
            },
            "required": ["name", "artist", "songs"],
        },
    },
}


async def test_auto_calls_the_one_tool_that_fits_the_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        CHAT,
        json={
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": "Invent a tracklist of songs inspired by the film Dune.",
                }
            ],
            "tools": [ALBUM_TOOL],
            "tool_choice": "auto",
        },
        headers=JSON,
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "Album"


async def test_auto_answers_a_request_the_one_tool_does_not_fit(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        CHAT,
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "Tell me a joke about penguins."}],
            "tools": [ALBUM_TOOL],
        },
        headers=JSON,
    )
    assert response.json()["choices"][0]["finish_reason"] == "stop"


# instructor's Iterable[User]: one optional list property.
ITERABLE_SCHEMA = {
    "type": "object",
    "properties": {
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "email": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
                    "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["name", "age"],
            },
        }
    },
}
# zod's z.number().int() bounds: the safe-integer range.
ZOD_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {
            "type": "integer",
            "minimum": -9007199254740991,
            "maximum": 9007199254740991,
        },
        "area": {"type": "number"},
        "founded": {"type": "integer", "minimum": 1000},
    },
    "required": ["city", "population", "area", "founded"],
}


async def generated_arguments(
    client: httpx.AsyncClient, schema: dict[str, Any], seed: int
) -> dict[str, Any]:
    response = await client.post(
        CHAT,
        json={
            "model": "m",
            "seed": seed,
            "messages": [{"role": "user", "content": "Extract the users: Jason 25, Ann 31"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        },
        headers=JSON,
    )
    (call,) = response.json()["choices"][0]["message"]["tool_calls"]
    arguments: dict[str, Any] = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, schema)
    return arguments


async def test_generated_arguments_fill_most_optional_properties(
    client: httpx.AsyncClient,
) -> None:
    offered = filled = 0
    for seed in range(8):
        arguments = await generated_arguments(client, ITERABLE_SCHEMA, seed)
        assert arguments.get("tasks"), arguments  # never {} nor an empty list
        for task in arguments["tasks"]:
            offered += 2
            filled += len(set(task) & {"email", "nickname"})
    assert filled >= 0.7 * offered


async def test_generated_numbers_are_plausible_and_json_safe(client: httpx.AsyncClient) -> None:
    for seed in range(8):
        arguments = await generated_arguments(client, ZOD_SCHEMA, seed)
        assert 0 < arguments["population"] <= 10_000_000_000
        assert 0 <= arguments["area"] <= 1_000_000
        assert 1000 <= arguments["founded"] <= 3000


# --- 16. images --------------------------------------------------------------------------

PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwAB"
    "BAEAWjR2ZQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        served_model_names=["sim-small", "sim-vision", "gpt-4o-mini"],
    )


def image_chat(model: str, detail: str | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"url": PIXEL}
    if detail is not None:
        image["detail"] = detail
    return {
        "model": model,
        "seed": 1,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": image},
                ],
            }
        ],
    }


async def test_a_vision_model_reads_an_image_and_counts_it(client: httpx.AsyncClient) -> None:
    text_only = await client.post(
        CHAT,
        json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "What is in this picture?"}],
        },
        headers=JSON,
    )
    low = await client.post(CHAT, json=image_chat("gpt-4o-mini", "low"), headers=JSON)
    high = await client.post(CHAT, json=image_chat("sim-vision"), headers=JSON)
    assert low.status_code == high.status_code == 200, low.text
    base = text_only.json()["usage"]["prompt_tokens"]
    assert low.json()["usage"]["prompt_tokens"] == base + 85
    assert high.json()["usage"]["prompt_tokens"] == base + 765
    assert "image" in low.json()["choices"][0]["message"]["content"].lower()


async def test_a_text_model_still_refuses_an_image(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=image_chat("sim-small"), headers=JSON)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "sim-small" in error["message"]
    assert error["param"] == "messages[0].content[1].type"


async def test_responses_input_image_on_a_vision_model(client: httpx.AsyncClient) -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Describe this"},
                    {"type": "input_image", "image_url": PIXEL, "detail": "low"},
                ],
            }
        ],
    }
    response = await client.post(RESPONSES, json=body)
    assert response.status_code == 200, response.text
    assert "image" in response.json()["output"][-1]["content"][0]["text"].lower()
    refused = await client.post(RESPONSES, json={**body, "model": "sim-small"})
    assert refused.status_code == 400


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "image/png", "data": PIXEL.split(",", 1)[1]},
        {"type": "url", "url": "https://example.com/cat.png"},
    ],
)
async def test_anthropic_image_blocks_on_a_vision_model(
    client: httpx.AsyncClient, source: dict[str, Any]
) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 2000,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": source},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    }
    counted = await client.post(f"{MESSAGES}/count_tokens", json=body)
    without = await client.post(
        f"{MESSAGES}/count_tokens",
        json={**body, "messages": [{"role": "user", "content": "What is this?"}]},
    )
    assert counted.json()["input_tokens"] == without.json()["input_tokens"] + 765
    response = await client.post(MESSAGES, json=body)
    assert response.status_code == 200, response.text
    assert "image" in response.json()["content"][0]["text"].lower()
    refused = await client.post(MESSAGES, json={**body, "model": "sim-small"})
    assert refused.status_code == 400
    assert refused.json()["type"] == "error"
