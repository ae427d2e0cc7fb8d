"""The OpenAI Agents SDK (``openai-agents``), unchanged, against a real ``streamapi serve``.

An agent with one function tool runs to its final answer over the Responses API
and over chat completions, streamed and not (issue 16 item 3: the Responses
objects and events it reads, and the ``[DONE]`` that now ends a Responses
stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from agents import (
    Agent,
    Model,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from openai import AsyncOpenAI

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
MODEL = "sim-small"
# The tool, then the answer: two model calls; a loop would hit this.
MAX_TURNS = 4
# The simulator calls a tool on "auto" when the user's message names it.
QUESTION = "Use get_weather to tell me the weather in Oslo."


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "11")


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused") as openai:
        yield openai


def weather_agent(model: Model, calls: list[str]) -> Agent[None]:
    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"{city}: 3C and snow."

    return Agent(name="weather", instructions="Answer briefly.", tools=[get_weather], model=model)


def model_of(api: str, client: AsyncOpenAI) -> Model:
    if api == "responses":
        return OpenAIResponsesModel(model=MODEL, openai_client=client)
    return OpenAIChatCompletionsModel(model=MODEL, openai_client=client)


# Tracing would export each run to OpenAI's servers.
RUN_CONFIG = RunConfig(tracing_disabled=True)


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_agent_calls_its_tool_then_answers(api: str, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(model_of(api, client), calls)
    result = await Runner.run(agent, QUESTION, max_turns=MAX_TURNS, run_config=RUN_CONFIG)
    assert len(calls) == 1
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert kinds[-1] == "message_output_item"
    assert len(result.raw_responses) == 2
    assert all(response.usage.output_tokens > 0 for response in result.raw_responses)


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_streamed_agent_calls_its_tool_then_answers(api: str, client: AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(model_of(api, client), calls)
    result = Runner.run_streamed(agent, QUESTION, max_turns=MAX_TURNS, run_config=RUN_CONFIG)
    deltas: list[str] = []
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
    assert len(calls) == 1
    # The first turn is the tool call alone: every text delta is the answer's.
    assert "".join(deltas) == result.final_output != ""
    assert len(result.raw_responses) == 2
