"""The simulator's realism, through third-party clients against a real ``streamapi serve``.

Issue 16 items 9 to 12 and 16 (docs/client-compatibility.md): pydantic-ai's
prompted and native structured output, and LiteLLM over its OpenAI and
Anthropic providers (a plain call, a stream, a tool call, a short answer, an
image). instructor and LlamaIndex's OpenAILike do not install beside the
``openai`` this project pins (instructor pins ``jiter<0.15``, openai 3.x needs
``>=0.16``; ``llama-index-llms-openai`` pins ``openai<3``): what they send is
covered over the wire in ``tests/test_simulator_realism.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput, PromptedOutput
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.profiles import merge_profile
from pydantic_ai.profiles.anthropic import AnthropicModelProfile, anthropic_model_profile
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

# LiteLLM fetches its model price list from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm
from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = [
    pytest.mark.e2e,
    # pydantic warns about a TypedDict of LiteLLM's own, not about anything tested here.
    pytest.mark.filterwarnings("ignore:Items? .*ReadOnly. qualifier:UserWarning"),
]

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
# Model names no provider lists, so no client warns that they are retired; each is a vision
# model by the default --vision-model-pattern ("claude", "vision").
CLAUDE_MODEL = "claude-sim"
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwAB"
    "BAEAWjR2ZQAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "11")


class Address(BaseModel):
    street: str | None = None
    city: str


class Person(BaseModel):
    name: str
    age: int
    email: str | None = None
    address: Address | None = None


@pytest.fixture
async def openai_provider(server: ServerProcess) -> AsyncIterator[OpenAIProvider]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused") as client:
        yield OpenAIProvider(openai_client=client)


# --- pydantic-ai: structure asked for in words, and Anthropic's structured outputs ----


@pytest.mark.parametrize("model_class", [OpenAIChatModel, OpenAIResponsesModel])
async def test_pydantic_ai_prompted_output(
    openai_provider: OpenAIProvider, model_class: type[OpenAIChatModel | OpenAIResponsesModel]
) -> None:
    """Item 9: the schema in the instructions got the simulator's own prose, then a retry."""
    agent = Agent(
        model_class("sim-small", provider=openai_provider), output_type=PromptedOutput(Person)
    )
    result = await agent.run("Who is Ada Lovelace?")
    assert isinstance(result.output, Person)
    assert len(result.all_messages()) == 2  # one request: no retry for invalid JSON


async def test_pydantic_ai_anthropic_native_output(server: ServerProcess) -> None:
    """Item 10: output_config.format was ignored, so the answer was prose."""
    async with AsyncAnthropic(api_key="unused", base_url=server.base_url) as client:
        provider = AnthropicProvider(anthropic_client=client)
        # A name no provider lists (so none warns that it is retired), with the structured
        # outputs pydantic-ai enables only for the Claude models it knows.
        profile = merge_profile(
            anthropic_model_profile(CLAUDE_MODEL),
            AnthropicModelProfile(supports_json_schema_output=True),
        )
        model = AnthropicModel(CLAUDE_MODEL, provider=provider, profile=profile)
        agent = Agent(model, output_type=NativeOutput(Person))
        result = await agent.run("Who is Grace Hopper?")
    assert isinstance(result.output, Person)
    assert len(result.all_messages()) == 2


# --- LiteLLM over its OpenAI and Anthropic providers ----------------------------------


def providers(server: ServerProcess) -> list[dict[str, Any]]:
    return [
        {"model": "openai/gpt-sim-vision", "api_base": f"{server.base_url}/v1"},
        {"model": f"anthropic/{CLAUDE_MODEL}", "api_base": server.base_url},
    ]


@pytest.fixture(params=["openai", "anthropic"])
async def route(
    request: pytest.FixtureRequest, server: ServerProcess
) -> AsyncIterator[dict[str, Any]]:
    chosen = providers(server)[0 if request.param == "openai" else 1]
    yield {**chosen, "api_key": "unused", "max_tokens": 1024}
    # LiteLLM caches its HTTP clients across calls; close them within the test's loop.
    await close_litellm_async_clients()  # type: ignore[no-untyped-call]


async def test_litellm_plain_call_answers_in_one_sentence(route: dict[str, Any]) -> None:
    """Item 11: "in one sentence" got ~1,300 characters, cut at a small max_tokens."""
    response: Any = await litellm.acompletion(
        **{**route, "max_tokens": 80},
        messages=[{"role": "user", "content": "What is a mutex? Answer in one sentence."}],
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content.count(". ") == 0
    assert response.usage.completion_tokens < 80


async def test_litellm_stream(route: dict[str, Any]) -> None:
    stream: Any = await litellm.acompletion(
        **route, stream=True, messages=[{"role": "user", "content": "Explain DNS briefly."}]
    )
    pieces: list[str] = []
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
    assert finish == "stop"
    assert 40 < len("".join(pieces)) < 500


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather conditions for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


async def test_litellm_tool_call_with_auto(route: dict[str, Any]) -> None:
    """Item 12: with auto, one tool that fits the request is called, its arguments plausible."""
    response: Any = await litellm.acompletion(
        **route,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What are the weather conditions in Lisbon?"}],
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] == "Lisbon"
    assert 1 <= arguments.get("days", 1) <= 100


async def test_litellm_image_to_a_vision_model(route: dict[str, Any]) -> None:
    """Item 16: images got 400 "only reads text" from every model."""
    response: Any = await litellm.acompletion(
        **route,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": PIXEL}},
                ],
            }
        ],
    )
    assert "image" in response.choices[0].message.content.lower()
    assert response.usage.prompt_tokens > 765
