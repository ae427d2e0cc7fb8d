"""LangChain's ``ChatOpenAI``, unchanged, against a real server process.

``ChatOpenAI`` runs on the official ``openai`` SDK, but it accumulates
streamed chunks, tool calls and usage its own way: these tests check what an
application built on LangChain gets back, over Chat Completions and over the
Responses API (``use_responses_api=True``).
"""

from __future__ import annotations

import json
import operator
from collections.abc import AsyncIterator, Iterable, Iterator
from functools import reduce
from typing import TYPE_CHECKING, Any, Literal

import httpx
import jsonschema
import pytest
from jsonschema import Draft202012Validator
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "1")
MODEL = "sim-small"
SEED = 20260807
WEATHER_OUTPUT = '{"city": "Oslo", "temperature_c": 3, "sky": "sleet"}'


class GetWeather(BaseModel):
    """Current weather and forecast for a city."""

    city: str = Field(description="The city, e.g. Oslo")
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7, description="How many days of forecast")


def get_local_time(timezone: str, twenty_four_hour: bool = True) -> str:
    """Local clock reading in an IANA timezone.

    Args:
        timezone: The IANA timezone, e.g. Europe/Oslo.
        twenty_four_hour: Whether to use a 24-hour clock.
    """
    return "12:00"


TOOLS: list[Any] = [GetWeather, get_local_time]
# The JSON Schema LangChain sends for each tool: what generated arguments must satisfy.
TOOL_SCHEMAS = {
    spec["function"]["name"]: spec["function"]["parameters"]
    for spec in map(convert_to_openai_tool, TOOLS)
}


class Film(BaseModel):
    title: str
    year: int = Field(ge=1900, le=2100)
    genres: list[Literal["drama", "comedy", "documentary"]] = Field(min_length=1)


def validate(instance: object, schema: dict[str, Any]) -> None:
    jsonschema.validate(
        instance,
        schema,
        cls=Draft202012Validator,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(*FAST_PACING, "--no-accept-unknown-models")


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:
        yield client


@pytest.fixture
async def http_async_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def _chat(server: ServerProcess, http_client: httpx.Client, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="unused",
        model=MODEL,
        max_retries=0,
        http_client=http_client,
        **options,
    )


@pytest.fixture
def llm(server: ServerProcess, http_client: httpx.Client) -> ChatOpenAI:
    return _chat(server, http_client, stream_usage=True)


@pytest.fixture
def async_llm(server: ServerProcess, http_async_client: httpx.AsyncClient) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="unused",
        model=MODEL,
        max_retries=0,
        http_async_client=http_async_client,
        stream_usage=True,
    )


def _chunks(stream: Iterable[object]) -> list[AIMessageChunk]:
    chunks = list(stream)
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    return chunks  # type: ignore[return-value]


def _sum(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total: AIMessageChunk = reduce(operator.add, chunks)
    return total


# --- streaming and usage ------------------------------------------------------------


def test_stream_sums_to_the_invoked_answer_and_reports_usage_once(llm: ChatOpenAI) -> None:
    seeded = llm.bind(seed=SEED)
    chunks = _chunks(seeded.stream("Explain vector databases"))
    invoked = seeded.invoke("Explain vector databases")
    total = _sum(chunks)
    with_usage = [i for i, chunk in enumerate(chunks) if chunk.usage_metadata]
    usage = total.usage_metadata
    assert isinstance(invoked, AIMessage)
    assert isinstance(total.content, str)
    assert len(total.content) >= 1378
    assert total.content == invoked.content
    # The server's usage chunk comes last; LangChain then adds its own empty end marker.
    assert with_usage == [len(chunks) - 2]
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].content == ""
    assert usage is not None
    assert usage["output_tokens"] == sum(1 for chunk in chunks if chunk.content)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage == invoked.usage_metadata
    assert total.response_metadata["finish_reason"] == "stop"
    assert total.response_metadata["model_name"] == MODEL


def test_stream_without_stream_usage_has_no_usage(
    server: ServerProcess, http_client: httpx.Client
) -> None:
    chunks = _chunks(_chat(server, http_client).stream("Explain vector databases"))
    total = _sum(chunks)
    assert [chunk.usage_metadata for chunk in chunks] == [None] * len(chunks)
    assert len(str(total.content)) >= 1378
    assert total.response_metadata["finish_reason"] == "stop"


# --- tools ---------------------------------------------------------------------------


def test_bind_tools_invoke_returns_valid_parallel_tool_calls(llm: ChatOpenAI) -> None:
    message = llm.bind_tools(TOOLS).invoke("What is the weather in Oslo and the local time there?")
    assert isinstance(message, AIMessage)
    calls = message.tool_calls
    assert [call["name"] for call in calls] == ["GetWeather", "get_local_time"]
    assert len({call["id"] for call in calls}) == 2
    assert message.invalid_tool_calls == []
    assert message.response_metadata["finish_reason"] == "tool_calls"
    for call in calls:
        validate(call["args"], TOOL_SCHEMAS[call["name"]])
    assert GetWeather.model_validate(calls[0]["args"]).city == "Oslo"


async def test_astream_with_tools_accumulates_clean_tool_calls(async_llm: ChatOpenAI) -> None:
    bound = async_llm.bind_tools(TOOLS, tool_choice="get_local_time")
    chunks = _chunks([chunk async for chunk in bound.astream("What time is it in Oslo right now?")])
    total = _sum(chunks)
    calls = total.tool_calls
    assert [call["name"] for call in calls] == ["get_local_time"]
    assert total.invalid_tool_calls == []
    assert str(calls[0]["id"]).startswith("call_")
    assert len(str(calls[0]["id"])) == len("call_") + 24  # one id, not repeated per chunk
    validate(calls[0]["args"], TOOL_SCHEMAS["get_local_time"])
    assert total.response_metadata["finish_reason"] == "tool_calls"
    assert total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] > 0


def test_tool_round_trip_answers_from_the_tool_message(llm: ChatOpenAI) -> None:
    bound = llm.bind_tools(TOOLS)
    question = HumanMessage("What is the weather in Oslo?")
    first = bound.invoke([question])
    assert isinstance(first, AIMessage)
    call = first.tool_calls[0]
    second = bound.invoke(
        [question, first, ToolMessage(WEATHER_OUTPUT, tool_call_id=str(call["id"]))]
    )
    assert isinstance(second, AIMessage)
    assert call["name"] == "GetWeather"
    assert second.tool_calls == []
    assert WEATHER_OUTPUT in str(second.content)
    assert second.response_metadata["finish_reason"] == "stop"


# --- structured output --------------------------------------------------------------


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_the_model(
    llm: ChatOpenAI, method: Literal["json_schema", "function_calling"]
) -> None:
    result = llm.with_structured_output(Film, method=method, include_raw=True).invoke(
        "Suggest a film set in Rome"
    )
    assert isinstance(result, dict)
    assert result["parsing_error"] is None
    assert isinstance(result["parsed"], Film)
    assert isinstance(result["raw"], AIMessage)


# --- ChatOpenAI over the Responses API -----------------------------------------------


def test_responses_api_stream_text_and_usage(
    server: ServerProcess, http_client: httpx.Client
) -> None:
    llm = _chat(server, http_client, use_responses_api=True)
    chunks = _chunks(llm.stream("Explain vector databases"))
    total = _sum(chunks)
    usage = total.usage_metadata
    assert len(total.text) >= 1378
    assert total.response_metadata["status"] == "completed"
    assert str(total.response_metadata["id"]).startswith("resp_")
    assert usage is not None
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_responses_api_tool_round_trip(server: ServerProcess, http_client: httpx.Client) -> None:
    bound = _chat(server, http_client, use_responses_api=True).bind_tools(TOOLS)
    question = HumanMessage("What is the weather in Oslo?")
    first = bound.invoke([question])
    assert isinstance(first, AIMessage)
    call = first.tool_calls[0]
    second = bound.invoke(
        [question, first, ToolMessage(WEATHER_OUTPUT, tool_call_id=str(call["id"]))]
    )
    assert [c["name"] for c in first.tool_calls] == ["GetWeather"]
    validate(call["args"], TOOL_SCHEMAS["GetWeather"])
    assert WEATHER_OUTPUT in second.text


def test_responses_api_structured_output(server: ServerProcess, http_client: httpx.Client) -> None:
    llm = _chat(server, http_client, use_responses_api=True)
    film = llm.with_structured_output(Film).invoke("Suggest a film set in Rome")
    assert isinstance(film, Film)
    validate(json.loads(film.model_dump_json()), Film.model_json_schema())
