"""Third-party clients, unchanged, against a real ``streamapi serve`` (issue 16).

Each test is what an application built on the client does; it failed before
the fix named in its docstring (``docs/client-compatibility.md``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent, UsageLimits
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
MODEL = "sim-small"
# A Claude-named model that no provider lists, so no client warns that it is retired.
CLAUDE_MODEL = "claude-sim"
# A looping agent would make 50 requests; one tool call and the output tool take 2.
REQUEST_LIMIT = 5


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "7")


class CityFacts(BaseModel):
    city: str
    population: int


def facts_agent(
    model: OpenAIChatModel | OpenAIResponsesModel | AnthropicModel,
) -> Agent[None, CityFacts]:
    agent = Agent(model, output_type=CityFacts)
    calls: list[str] = []

    @agent.tool_plain
    def lookup_population(city: str) -> str:
        """The population of a city."""
        calls.append(city)
        return f"{city} has 700000 inhabitants."

    return agent


@pytest.fixture
async def openai_provider(server: ServerProcess) -> AsyncIterator[OpenAIProvider]:
    # The test's own SDK client, closed when the test ends.
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused") as client:
        yield OpenAIProvider(openai_client=client)


@pytest.mark.parametrize("model_class", [OpenAIChatModel, OpenAIResponsesModel])
async def test_pydantic_ai_agent_with_a_tool_and_an_output_type_finishes(
    openai_provider: OpenAIProvider, model_class: type[OpenAIChatModel | OpenAIResponsesModel]
) -> None:
    """Issue 16 item 1: tool_choice "required" after a tool result called the same tool forever."""
    agent = facts_agent(model_class(MODEL, provider=openai_provider))
    result = await agent.run(
        "How many people live in Oslo?", usage_limits=UsageLimits(request_limit=REQUEST_LIMIT)
    )
    assert isinstance(result.output, CityFacts)
    tool_calls = [
        part.tool_name
        for message in result.all_messages()
        for part in message.parts
        if part.part_kind == "tool-call"
    ]
    assert tool_calls[-1] == "final_result"
    assert result.usage.requests <= 3


async def test_anthropic_sdk_counts_tokens_as_messages_usage_does(server: ServerProcess) -> None:
    """Issue 16 item 14: POST /v1/messages/count_tokens was a 404 in OpenAI's shape."""
    request: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "system": "Answer in one line.",
        "messages": [{"role": "user", "content": "What is the capital of Norway?"}],
    }
    async with AsyncAnthropic(base_url=server.base_url, api_key="unused") as client:
        counted = await client.messages.count_tokens(**request)
        message = await client.messages.create(max_tokens=64, **request)
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.batches.retrieve("msgbatch_unknown")
    assert counted.input_tokens == message.usage.input_tokens > 0
    body = missing.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "not_found_error"


async def test_pydantic_ai_anthropic_agent_fits_its_max_tokens_and_finishes(
    server: ServerProcess,
) -> None:
    """Issue 16 items 8 and 1: pydantic-ai asks a Claude model for its whole output limit
    (16384 tokens for a name it does not know, 64000 for Sonnet 4.5: a 400 under the old
    8192-token context), and its tool choice {"type": "any"} looped."""
    async with AsyncAnthropic(base_url=server.base_url, api_key="unused") as client:
        model = AnthropicModel(CLAUDE_MODEL, provider=AnthropicProvider(anthropic_client=client))
        result = await facts_agent(model).run(
            "How many people live in Oslo?", usage_limits=UsageLimits(request_limit=REQUEST_LIMIT)
        )
    assert isinstance(result.output, CityFacts)
    assert result.usage.requests <= 3
