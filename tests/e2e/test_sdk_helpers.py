"""The official SDKs' high-level helpers, unchanged, against a real server process.

Each test drives one helper the way an application would (``stream()`` and
``get_final_completion()``, ``parse()``, ``responses.stream()``,
``messages.stream()``, ...) and checks what the helper hands back. Every tool
argument and structured output the server generates is validated with
``jsonschema`` against the very schema the request sent, formats included.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

import anthropic
import httpx
import jsonschema
import openai
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.types import TextBlock, ThinkingBlock, ToolChoiceParam, ToolParam, ToolUseBlock
from jsonschema import Draft202012Validator
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ParsedFunctionToolCall,
)
from openai.types.responses import (
    FunctionToolParam,
    ParsedResponseFunctionToolCall,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseStreamEvent,
)
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "1")
MODEL = "sim-small"
REASONER = "sim-reasoner"
SEED = 20260807
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")
TOOLU_ID = re.compile(r"^toolu_[0-9a-f]{24}$")
# The formats that jsonschema really checks without optional extras.
CHECKED_FORMATS = {"date", "email", "uuid", "ipv4"}

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "timezone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"},
        "format": {"type": "string", "enum": ["12h", "24h"]},
    },
    "required": ["timezone", "format"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather and forecast for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
TIME_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local clock reading in a timezone",
        "parameters": TIME_SCHEMA,
    },
}
CHAT_TOOLS = [WEATHER_TOOL, TIME_TOOL]
WEATHER_OUTPUT = '{"city": "Paris", "temperature_c": 17, "sky": "overcast with light drizzle"}'

# A nested structured-output schema: $defs and $ref, enums, bounded arrays and
# integers, and string formats that the validator checks.
PROFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "minLength": 1},
                "postcode": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"type": "string", "enum": ["FR", "DE", "NO"]},
            },
            "required": ["street", "postcode", "country"],
            "additionalProperties": False,
        },
        "visit": {
            "type": "object",
            "properties": {
                "on": {"type": "string", "format": "date"},
                "from_ip": {"type": "string", "format": "ipv4"},
                "pages": {"type": "integer", "minimum": 1, "maximum": 50},
            },
            "required": ["on", "from_ip", "pages"],
            "additionalProperties": False,
        },
    },
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "email": {"type": "string", "format": "email"},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "tier": {"type": "string", "enum": ["free", "pro", "enterprise"]},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "address": {"$ref": "#/$defs/address"},
        "tags": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 4,
            "uniqueItems": True,
        },
        "visits": {"type": "array", "items": {"$ref": "#/$defs/visit"}, "minItems": 1},
    },
    "required": ["id", "email", "age", "tier", "score", "address", "tags", "visits"],
    "additionalProperties": False,
}


class Landmark(BaseModel):
    name: str
    built: int = Field(ge=800, le=2025)


class CityCard(BaseModel):
    """What ``parse()`` and ``responses.parse()`` turn the answer into."""

    name: str
    climate: Literal["oceanic", "continental", "arid"]
    population: int = Field(ge=1, le=40_000_000)
    founded: date
    landmarks: list[Landmark] = Field(min_length=2)


class GetWeather(BaseModel):
    """Current weather for a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


def validate(instance: object, schema: Mapping[str, Any]) -> None:
    """``jsonschema.validate`` with formats checked (a bad date or email fails)."""
    jsonschema.validate(
        instance,
        dict(schema),
        cls=Draft202012Validator,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(
        *FAST_PACING,
        "--no-accept-unknown-models",
        "--served-model-names",
        f"{MODEL},{REASONER}",
    )


@pytest.fixture
def client(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def async_client(server: ServerProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(server: ServerProcess) -> Iterator[Anthropic]:
    with Anthropic(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def async_claude(server: ServerProcess) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def _user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def _calls(tool_calls: Sequence[ParsedFunctionToolCall] | None) -> list[tuple[str, Any]]:
    return [(call.function.name, json.loads(call.function.arguments)) for call in tool_calls or ()]


# --- chat: the stream helper with tools ------------------------------------------------


def test_stream_helper_tool_call_is_clean_and_matches_non_streamed(client: OpenAI) -> None:
    messages = _user("What is the weather in Paris this week?")
    with client.chat.completions.stream(
        model=MODEL, messages=messages, tools=CHAT_TOOLS, seed=SEED
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, tools=CHAT_TOOLS, seed=SEED
    )
    choice = final.choices[0]
    calls = choice.message.tool_calls or []
    raw_calls = [
        call
        for event in events
        if event.type == "chunk"
        for chunk_choice in event.chunk.choices
        for call in chunk_choice.delta.tool_calls or ()
    ]
    done = [event for event in events if event.type == "tool_calls.function.arguments.done"]
    roles = [
        chunk_choice.delta.role
        for event in events
        if event.type == "chunk"
        for chunk_choice in event.chunk.choices
        if chunk_choice.delta.role
    ]
    assert roles == ["assistant"]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert [call.function.name for call in calls] == ["get_weather"]
    assert CALL_ID.match(calls[0].id)
    assert calls[0].type == "function"
    validate(json.loads(calls[0].function.arguments), WEATHER_SCHEMA)
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"
    # id, type and name arrive once; every later delta carries only arguments.
    assert sum(1 for call in raw_calls if call.id) == 1
    assert sum(1 for call in raw_calls if call.type) == 1
    assert sum(1 for call in raw_calls if call.function and call.function.name) == 1
    assert all(call.function is not None for call in raw_calls)
    assert [(e.name, e.arguments) for e in done] == [("get_weather", calls[0].function.arguments)]
    # The helper's accumulation equals the server's own non-streamed answer.
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (c.id, c.function.name, c.function.arguments)
        for c in whole.choices[0].message.tool_calls or ()
        if c.type == "function"
    ]
    assert whole.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("question", "tool_choice", "parallel", "expected"),
    [
        pytest.param(
            "Tell me a fun fact about owls", "required", openai.omit, ["get_weather"], id="required"
        ),
        pytest.param(
            "What is the weather in Paris?",
            {"type": "function", "function": {"name": "get_time"}},
            openai.omit,
            ["get_time"],
            id="named",
        ),
        pytest.param(
            "What is the weather in Paris and the local time there?",
            "auto",
            True,
            ["get_weather", "get_time"],
            id="auto-parallel",
        ),
        pytest.param(
            "What is the weather in Paris and the local time there?",
            "auto",
            False,
            ["get_weather"],
            id="auto-not-parallel",
        ),
    ],
)
def test_stream_helper_tool_choice_decides_the_calls(
    client: OpenAI,
    question: str,
    tool_choice: ChatCompletionToolChoiceOptionParam,
    parallel: bool | openai.Omit,
    expected: list[str],
) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=_user(question),
        tools=CHAT_TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert [call.function.name for call in calls] == expected
    assert len({call.id for call in calls}) == len(calls)
    assert all(CALL_ID.match(call.id) for call in calls)
    for name, arguments in _calls(calls):
        validate(arguments, SCHEMAS[name])


@pytest.mark.parametrize(
    ("question", "tool_choice"),
    [
        pytest.param("What is the weather in Paris?", "none", id="none"),
        pytest.param("Tell me a fun fact about owls", "auto", id="auto-unnamed"),
    ],
)
def test_stream_helper_without_a_call_answers_in_text(
    client: OpenAI, question: str, tool_choice: ChatCompletionToolChoiceOptionParam
) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=_user(question), tools=CHAT_TOOLS, tool_choice=tool_choice
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "stop"
    assert message.tool_calls is None
    assert len(message.content or "") >= 1378


def test_stream_helper_parses_strict_pydantic_tool_arguments(client: OpenAI) -> None:
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    with client.chat.completions.stream(
        model=MODEL, messages=_user("What is the weather in Oslo?"), tools=[tool]
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    parsed = calls[0].function.parsed_arguments
    assert tool["function"].get("strict") is True
    assert len(calls) == 1
    assert isinstance(parsed, GetWeather)
    assert parsed == GetWeather.model_validate_json(calls[0].function.arguments)
    assert parsed.city == "Oslo"
    validate(json.loads(calls[0].function.arguments), tool["function"].get("parameters", {}))


def test_tool_argument_keeps_a_place_name_that_starts_with_a_non_ascii_letter(
    client: OpenAI,
) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=_user("What is the weather in Ålesund this week?"), tools=CHAT_TOOLS
    ) as stream:
        final = stream.get_final_completion()
    assert _calls(final.choices[0].message.tool_calls)[0][1]["city"] == "Ålesund"


async def test_async_tool_round_trip_answers_from_the_tool_output(
    async_client: AsyncOpenAI,
) -> None:
    messages = _user("What is the weather in Paris?")
    async with async_client.chat.completions.stream(
        model=MODEL, messages=messages, tools=CHAT_TOOLS
    ) as stream:
        first = await stream.get_final_completion()
    call = (first.choices[0].message.tool_calls or [])[0]
    follow_up: list[ChatCompletionMessageParam] = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": WEATHER_OUTPUT},
    ]
    async with async_client.chat.completions.stream(
        model=MODEL, messages=follow_up, tools=CHAT_TOOLS
    ) as stream:
        second = await stream.get_final_completion()
    answer = second.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert second.choices[0].finish_reason == "stop"
    assert answer.tool_calls is None
    assert WEATHER_OUTPUT in (answer.content or "")
    assert "get_weather" in (answer.content or "")


# --- chat: structured outputs ----------------------------------------------------------


def test_parse_returns_an_instance_of_the_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=_user("Describe Paris as a city card"), response_format=CityCard
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, CityCard)
    assert message.parsed == CityCard.model_validate_json(message.content or "")
    assert len(message.parsed.landmarks) >= 2
    assert all(isinstance(landmark, Landmark) for landmark in message.parsed.landmarks)


async def test_async_stream_helper_parses_the_pydantic_model(async_client: AsyncOpenAI) -> None:
    async with async_client.chat.completions.stream(
        model=MODEL, messages=_user("Describe Oslo as a city card"), response_format=CityCard
    ) as stream:
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, CityCard)


def test_streamed_json_schema_output_validates(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=_user("Create a customer profile for Alice who lives in Lyon"),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "profile", "schema": PROFILE_SCHEMA, "strict": True},
        },
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    content = final.choices[0].message.content or ""
    assert set(Draft202012Validator.FORMAT_CHECKER.checkers) >= CHECKED_FORMATS
    assert len(deltas) > 10  # streamed token by token, not in one piece
    assert "".join(deltas) == content
    assert final.choices[0].finish_reason == "stop"
    validate(json.loads(content), PROFILE_SCHEMA)


def test_json_object_output_is_one_json_object(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=_user("Summarise the history of Rome as JSON"),
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content or ""
    value, end = json.JSONDecoder().raw_decode(content)
    assert isinstance(value, dict)
    assert end == len(content)
    assert value


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        pytest.param(
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "bad",
                        "schema": {"type": "object", "properties": {"a": {"type": "strin"}}},
                    },
                }
            },
            "response_format.json_schema.schema",
            id="response_format",
        ),
        pytest.param(
            {
                "tools": [
                    WEATHER_TOOL,
                    {
                        "type": "function",
                        "function": {"name": "bad", "parameters": {"minimum": "zero"}},
                    },
                ]
            },
            "tools[1].function.parameters",
            id="tool-parameters",
        ),
    ],
)
def test_invalid_json_schema_is_a_bad_request_naming_it(
    client: OpenAI, overrides: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=_user("Hello"), **overrides)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert "Invalid JSON Schema" in caught.value.message


# --- chat: logprobs and reasoning ------------------------------------------------------


def test_streamed_logprobs_cover_every_content_token(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=_user("Explain caching in a Zürich café"),
        logprobs=True,
        top_logprobs=3,
        stream_options={"include_usage": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    entries = (final.choices[0].logprobs and final.choices[0].logprobs.content) or []
    streamed = [entry for e in events if e.type == "logprobs.content.delta" for entry in e.content]
    content = final.choices[0].message.content or ""
    assert final.usage is not None
    assert len(entries) == final.usage.completion_tokens
    assert streamed == entries
    assert "".join(entry.token for entry in entries) == content
    assert [entry.bytes for entry in entries] == [list(e.token.encode()) for e in entries]
    assert [len(entry.top_logprobs) for entry in entries] == [3] * len(entries)
    assert all(entry.logprob <= 0 for entry in entries)
    assert all(entry.top_logprobs[0].token == entry.token for entry in entries)
    assert all(entry.top_logprobs[0].logprob == entry.logprob for entry in entries)
    assert all(
        top.bytes == list(top.token.encode()) for entry in entries for top in entry.top_logprobs
    )
    assert all(len({top.token for top in entry.top_logprobs}) == 3 for entry in entries)
    assert any(any(b >= 0x80 for b in entry.bytes or ()) for entry in entries)  # ü, é


@pytest.mark.parametrize(
    ("model", "effort", "reasons"),
    [
        pytest.param(REASONER, openai.omit, True, id="reasoning-model"),
        pytest.param(MODEL, "low", True, id="reasoning_effort-low"),
        pytest.param(REASONER, "none", False, id="reasoning_effort-none"),
    ],
)
def test_stream_helper_reasoning_content_and_tokens(
    client: OpenAI, model: str, effort: Literal["low", "none"] | openai.Omit, reasons: bool
) -> None:
    with client.chat.completions.stream(
        model=model,
        messages=_user("Explain how a B-tree index works"),
        stream_options={"include_usage": True},
        reasoning_effort=effort,
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content") or ""
    usage = final.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert ((usage.completion_tokens_details.reasoning_tokens or 0) > 0) is reasons
    assert (len(reasoning) > 40) is reasons
    assert len(message.content or "") >= 1378
    assert usage.completion_tokens > (usage.completion_tokens_details.reasoning_tokens or 0)


# --- Responses ------------------------------------------------------------------------


RESPONSE_WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather and forecast for a city",
    "parameters": WEATHER_SCHEMA,
    "strict": True,
}


RESPONSE_TIME_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_time",
    "description": "Local clock reading in a timezone",
    "parameters": TIME_SCHEMA,
    "strict": True,
}


def test_responses_stream_text(client: OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Explain message queues") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        response = stream.get_final_response()
    usage = response.usage
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert len(response.output_text) >= 1378
    assert "".join(deltas) == response.output_text
    assert [item.type for item in response.output] == ["message"]
    assert usage is not None
    assert usage.output_tokens == len(deltas)
    assert usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_responses_stream_strict_function_tool(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="What is the weather in Oslo this week?", tools=[RESPONSE_WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        response = stream.get_final_response()
    calls = [item for item in response.output if item.type == "function_call"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert response.status == "completed"
    assert len(calls) == 1
    assert isinstance(calls[0], ParsedResponseFunctionToolCall)
    assert calls[0].name == "get_weather"
    assert CALL_ID.match(calls[0].call_id)
    validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)
    assert calls[0].parsed_arguments == json.loads(calls[0].arguments)
    assert [e.arguments for e in done] == [calls[0].arguments]
    assert response.output_text == ""


def test_responses_stream_pydantic_tool_parses_arguments(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        input="What is the weather in Bergen?",
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
    ) as stream:
        response = stream.get_final_response()
    call = response.output[0]
    assert isinstance(call, ParsedResponseFunctionToolCall)
    assert isinstance(call.parsed_arguments, GetWeather)
    assert call.parsed_arguments.city == "Bergen"


def test_responses_stream_json_schema_output_validates(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        input="Create a customer profile for Bob who lives in Bergen",
        text={
            "format": {
                "type": "json_schema",
                "name": "profile",
                "schema": PROFILE_SCHEMA,
                "strict": True,
            }
        },
    ) as stream:
        response = stream.get_final_response()
    assert response.status == "completed"
    validate(json.loads(response.output_text), PROFILE_SCHEMA)


def test_responses_parse_returns_the_pydantic_model(client: OpenAI) -> None:
    response = client.responses.parse(
        model=MODEL, input="Describe Bergen as a city card", text_format=CityCard
    )
    assert isinstance(response.output_parsed, CityCard)
    assert response.output_parsed == CityCard.model_validate_json(response.output_text)


def test_responses_stream_reasoning_item_comes_before_the_message(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Explain consistent hashing", reasoning={"effort": "low"}
    ) as stream:
        response = stream.get_final_response()
    reasoning, message = response.output
    usage = response.usage
    assert isinstance(reasoning, ResponseReasoningItem)
    assert isinstance(message, ResponseOutputMessage)
    assert len(" ".join(part.text for part in reasoning.content or ())) > 40
    assert len(response.output_text) >= 1378
    assert usage is not None
    assert usage.output_tokens_details.reasoning_tokens > 0
    assert usage.output_tokens > usage.output_tokens_details.reasoning_tokens


def test_responses_previous_response_id_with_function_call_output(client: OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=[RESPONSE_WEATHER_TOOL]
    )
    call = first.output[0]
    assert isinstance(call, ResponseFunctionToolCall)
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_OUTPUT}],
        tools=[RESPONSE_WEATHER_TOOL],
    )
    assert second.status == "completed"
    assert second.previous_response_id == first.id
    assert [item.type for item in second.output] == ["message"]
    assert WEATHER_OUTPUT in second.output_text
    assert "get_weather" in second.output_text


def test_responses_unknown_previous_response_id_is_a_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="Hello", previous_response_id="resp_unknown")
    assert caught.value.param == "previous_response_id"
    assert "resp_unknown" in caught.value.message


def test_responses_retrieve_returns_the_stored_response(client: OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Explain DNS caching") as stream:
        created = stream.get_final_response()
    stored = client.responses.retrieve(created.id)
    assert stored.id == created.id
    assert stored.status == "completed"
    assert stored.output_text == created.output_text
    assert stored.usage == created.usage
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_never_created")


def _order_problems(events: Sequence[ResponseStreamEvent]) -> list[str]:
    """What breaks the Responses stream order that the SDK's accumulator relies on."""
    problems: list[str] = []
    items: set[str] = set()
    parts: set[tuple[str, int]] = set()
    closed: set[str] = set()
    for event in events:
        if event.type == "response.output_item.added":
            items.add(event.item.id or "")
        elif event.type == "response.content_part.added":
            parts.add((event.item_id, event.content_index))
        elif event.type == "response.output_item.done":
            closed.add(event.item.id or "")
        elif event.type in ("response.output_text.delta", "response.reasoning_text.delta"):
            ok = (event.item_id, event.content_index) in parts and event.item_id not in closed
            problems += [] if ok else [f"{event.type} #{event.sequence_number} before its part"]
        elif event.type == "response.function_call_arguments.delta":
            ok = event.item_id in items and event.item_id not in closed
            problems += [] if ok else [f"{event.type} #{event.sequence_number} before its item"]
    return problems


@pytest.mark.parametrize(
    "request_fields",
    [
        pytest.param({"input": "Explain message queues"}, id="text"),
        pytest.param(
            {
                "input": "What is the weather in Oslo and the local time there?",
                "tools": [RESPONSE_WEATHER_TOOL, RESPONSE_TIME_TOOL],
                "reasoning": {"effort": "low"},
            },
            id="reasoning-and-two-tools",
        ),
    ],
)
def test_responses_raw_event_order(client: OpenAI, request_fields: dict[str, Any]) -> None:
    with client.responses.create(model=MODEL, stream=True, **request_fields) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    added = [i for i, kind in enumerate(kinds) if kind.endswith(".added")]
    first_delta = min(i for i, kind in enumerate(kinds) if kind.endswith(".delta"))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert Counter(kinds)["response.completed"] == 1
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert added[0] < first_delta
    assert (
        Counter(kinds)["response.output_item.added"] == Counter(kinds)["response.output_item.done"]
    )
    assert _order_problems(events) == []


def test_responses_max_output_tokens_ends_with_response_incomplete(client: OpenAI) -> None:
    with client.responses.create(
        model=MODEL, input="Explain message queues", max_output_tokens=12, stream=True
    ) as stream:
        events = list(stream)
    last = events[-1]
    kinds = [event.type for event in events]
    assert last.type == "response.incomplete"
    assert "response.completed" not in kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 12
    assert kinds.count("response.output_text.delta") == 12


# --- legacy completions ----------------------------------------------------------------


def test_completions_stream_chunks_finish_and_usage(client: OpenAI) -> None:
    with client.completions.create(
        model=MODEL,
        prompt="Write about the harbour of Bergen",
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    finishes = [c.finish_reason for chunk in text_chunks for c in chunk.choices if c.finish_reason]
    text = "".join(c.text for chunk in text_chunks for c in chunk.choices)
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert finishes == ["length"]
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 24
    assert usage_chunk.usage.total_tokens == (
        usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    )
    assert [chunk.usage for chunk in text_chunks] == [None] * len(text_chunks)
    assert "Bergen" in text


def test_completions_two_prompts_times_n2_give_four_choices(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt=["Tell me about Rome", "Tell me about Oslo"], n=2, max_tokens=16
    )
    choices = completion.choices
    assert [choice.index for choice in choices] == [0, 1, 2, 3]
    assert [choice.finish_reason for choice in choices] == ["length"] * 4
    # Choice i * n + j is the j-th answer to prompt i.
    assert ["Rome" in c.text for c in choices] == [True, True, False, False]
    assert ["Oslo" in c.text for c in choices] == [False, False, True, True]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4 * 16


def test_completions_echo_with_logprobs(client: OpenAI) -> None:
    prompt = "Say hello to Zoë"
    completion = client.completions.create(
        model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=8
    )
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None
    tokens = logprobs.tokens or []
    offsets = logprobs.text_offset or []
    assert choice.text.startswith(prompt)
    # With echo, the prompt's tokens are scored too (the first has nothing to condition on).
    assert "".join(tokens) == choice.text
    assert len(tokens) == 4 + 8
    assert [choice.text[o : o + len(t)] for o, t in zip(offsets, tokens, strict=True)] == tokens
    top = logprobs.top_logprobs or []
    assert top[0] is None
    assert (logprobs.token_logprobs or [])[0] is None
    assert [len(entry or {}) for entry in top[1:]] == [2] * 11
    assert [entry[token] for entry, token in zip(top[1:], tokens[1:], strict=True)] == (
        (logprobs.token_logprobs or [])[1:]
    )


# --- embeddings ----------------------------------------------------------------------


def _norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embeddings_equal_inputs_equal_unit_vectors(client: OpenAI) -> None:
    result = client.embeddings.create(
        model=MODEL, input=["a red fox", "a blue whale", "a red fox"], encoding_format="float"
    )
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert [len(v) for v in vectors] == [1536] * 3
    assert [_norm(v) for v in vectors] == pytest.approx([1.0] * 3, abs=1e-9)
    assert result.usage.prompt_tokens > 0


def test_embeddings_dimensions_shorten_the_full_vector(client: OpenAI) -> None:
    full = client.embeddings.create(model=MODEL, input="a red fox", encoding_format="float")
    short = client.embeddings.create(
        model=MODEL, input="a red fox", dimensions=256, encoding_format="float"
    )
    head = full.data[0].embedding[:256]
    vector = short.data[0].embedding
    assert len(vector) == 256
    assert _norm(vector) == pytest.approx(1.0, abs=1e-9)
    assert vector == pytest.approx([x / _norm(head) for x in head], abs=1e-9)


def test_embeddings_base64_is_little_endian_float32(client: OpenAI) -> None:
    floats = client.embeddings.create(
        model=MODEL, input="a red fox", dimensions=256, encoding_format="float"
    )
    explicit = client.embeddings.create(
        model=MODEL, input="a red fox", dimensions=256, encoding_format="base64"
    )
    # Without encoding_format the SDK asks for base64 itself and decodes it.
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="a red fox", dimensions=256)
    implicit = raw.parse()
    encoded = explicit.data[0].embedding
    assert isinstance(encoded, str)  # an explicit base64 request is handed back as is
    decoded = list(struct.unpack("<256f", base64.b64decode(encoded)))
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert implicit.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


# --- Anthropic Messages ------------------------------------------------------------------


ANTHROPIC_WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "Current weather and forecast for a city",
    "input_schema": WEATHER_SCHEMA,
}


def test_anthropic_stream_text_matches_non_streamed(claude: Anthropic) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Explain write-ahead logging"}],
        "extra_body": {"seed": SEED},
    }
    with claude.messages.stream(**request) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    whole = claude.messages.create(**request)
    block = message.content[0]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert isinstance(block, TextBlock)
    assert block.text == "".join(texts)
    assert len(block.text) >= 1378
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == len(texts)
    assert [(b.type, b.text) for b in whole.content if isinstance(b, TextBlock)] == [
        ("text", block.text)
    ]
    assert len(whole.content) == 1
    assert whole.stop_reason == "end_turn"
    assert whole.usage.output_tokens == message.usage.output_tokens


async def test_anthropic_stream_tool_use_validates(async_claude: AsyncAnthropic) -> None:
    async with async_claude.messages.stream(
        model=MODEL,
        max_tokens=1024,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Tromsø this week?"}],
    ) as stream:
        message = await stream.get_final_message()
    uses = [block for block in message.content if isinstance(block, ToolUseBlock)]
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["tool_use"]
    assert [use.name for use in uses] == ["get_weather"]
    assert TOOLU_ID.match(uses[0].id)
    validate(uses[0].input, WEATHER_SCHEMA)
    assert uses[0].input["city"] == "Tromsø"


ANTHROPIC_TIME_TOOL: ToolParam = {
    "name": "get_time",
    "description": "Local clock reading in a timezone",
    "input_schema": TIME_SCHEMA,
}


@pytest.mark.parametrize(
    ("tool_choice", "expected", "stop_reason"),
    [
        pytest.param({"type": "any"}, ["get_weather", "get_time"], "tool_use", id="any"),
        pytest.param({"type": "tool", "name": "get_time"}, ["get_time"], "tool_use", id="tool"),
        pytest.param(
            {"type": "auto", "disable_parallel_tool_use": True},
            ["get_weather"],
            "tool_use",
            id="auto-not-parallel",
        ),
        pytest.param({"type": "none"}, [], "end_turn", id="none"),
    ],
)
def test_anthropic_tool_choice_decides_the_tool_use_blocks(
    claude: Anthropic,
    tool_choice: ToolChoiceParam,
    expected: list[str],
    stop_reason: str,
) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=1024,
        tools=[ANTHROPIC_WEATHER_TOOL, ANTHROPIC_TIME_TOOL],
        tool_choice=tool_choice,
        messages=[{"role": "user", "content": "What is the weather and the local time in Oslo?"}],
    ) as stream:
        message = stream.get_final_message()
    uses = [block for block in message.content if isinstance(block, ToolUseBlock)]
    assert message.stop_reason == stop_reason
    assert [use.name for use in uses] == expected
    assert len({use.id for use in uses}) == len(uses)
    for use in uses:
        validate(use.input, SCHEMAS[use.name])


def test_anthropic_tool_result_turn_answers_from_it(claude: Anthropic) -> None:
    question = "What is the weather in Paris?"
    with claude.messages.stream(
        model=MODEL,
        max_tokens=1024,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[{"role": "user", "content": question}],
    ) as stream:
        first = stream.get_final_message()
    use = first.content[0]
    assert isinstance(use, ToolUseBlock)
    with claude.messages.stream(
        model=MODEL,
        max_tokens=2048,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": WEATHER_OUTPUT}
                ],
            },
        ],
    ) as stream:
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn"
    assert WEATHER_OUTPUT in "".join(b.text for b in second.content if isinstance(b, TextBlock))


def test_anthropic_stream_thinking_block_then_text(claude: Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Explain write-ahead logging"}],
    ) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    thinking, text = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert isinstance(text, TextBlock)
    assert len(thinking.thinking) > 40
    assert len(base64.b64decode(thinking.signature, validate=True)) > 0
    assert "signature" in kinds
    assert kinds.index("thinking") < kinds.index("text")
    assert len(text.text) >= 1378
    assert message.stop_reason == "end_turn"


def test_anthropic_stop_sequence(claude: Anthropic) -> None:
    # Every answer has paragraphs, so the blank line between them always comes.
    with claude.messages.stream(
        model=MODEL,
        max_tokens=1024,
        stop_sequences=["never-written", "\n\n"],
        messages=[{"role": "user", "content": "Explain write-ahead logging"}],
    ) as stream:
        message = stream.get_final_message()
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "\n\n"
    assert "\n\n" not in text
    assert len(text) > 100  # the opening paragraph


def test_anthropic_missing_max_tokens_is_an_invalid_request(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/messages",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]},
        headers={"x-api-key": "unused", "anthropic-version": "2023-06-01"},
        timeout=10.0,
    )
    body = response.json()
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_anthropic_unknown_model_is_not_found(claude: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(
            model="claude-nonexistent",
            max_tokens=16,
            messages=[{"role": "user", "content": "Hello"}],
        )
    body = caught.value.body
    assert caught.value.status_code == 404
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent" in body["error"]["message"]


def test_anthropic_error_carries_a_request_id(claude: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(
            model="claude-nonexistent",
            max_tokens=16,
            messages=[{"role": "user", "content": "Hello"}],
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert isinstance(body.get("request_id"), str)
    assert caught.value.request_id is not None
