"""smolagents (ToolCallingAgent, CodeAgent) and DSPy, unscripted, against `streamapi serve`.

Each agent must finish on the simulator alone, in a bounded number of requests. These
frameworks are not among the test extras (their CI runs, pinned, are the CLI tests'
business): each test runs where the framework is installed
(``uv pip install smolagents dspy``) and is skipped elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "3")


def test_smolagents_tool_calling_agent_finishes_with_the_tools_result(
    server: ServerProcess,
) -> None:
    smolagents: Any = pytest.importorskip("smolagents")
    requests: list[httpx.Request] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: The city name.
        """
        return f"Sunny, 21 C in {city}"

    with httpx.Client(event_hooks={"request": [requests.append]}) as http:
        model = smolagents.OpenAIServerModel(
            model_id="sim-small",
            api_base=f"{server.base_url}/v1",
            api_key="unused",
            client_kwargs={"http_client": http},
        )
        # Not as a decorator: smolagents reads the function's source, and wants ``@tool`` alone.
        agent = smolagents.ToolCallingAgent(
            tools=[smolagents.tool(get_weather)], model=model, max_steps=6, verbosity_level=0
        )
        answer = agent.run("What is the weather in Paris?")
    assert answer == "Sunny, 21 C in Paris"
    assert len(requests) == 2  # get_weather, then final_answer


def test_smolagents_code_agent_finishes_with_the_tools_result(server: ServerProcess) -> None:
    smolagents: Any = pytest.importorskip("smolagents")
    requests: list[httpx.Request] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: The city name.
        """
        return f"Sunny, 21 C in {city}"

    with httpx.Client(event_hooks={"request": [requests.append]}) as http:
        model = smolagents.OpenAIServerModel(
            model_id="sim-small",
            api_base=f"{server.base_url}/v1",
            api_key="unused",
            client_kwargs={"http_client": http},
        )
        agent = smolagents.CodeAgent(
            tools=[smolagents.tool(get_weather)], model=model, max_steps=6, verbosity_level=0
        )
        answer = agent.run("What is the weather in Paris?")
    assert answer == "Sunny, 21 C in Paris"
    assert len(requests) == 2  # get_weather in code, then final_answer


def test_dspy_predict_chain_of_thought_react_and_streamify_finish(server: ServerProcess) -> None:
    dspy: Any = pytest.importorskip("dspy")
    lm = dspy.LM(
        "openai/sim-small", api_base=f"{server.base_url}/v1", api_key="unused", cache=False
    )
    with dspy.context(lm=lm):
        predicted = dspy.Predict("question -> answer: str, confidence: float")(
            question="What is the capital of France?"
        )
        assert predicted.answer and 0 <= predicted.confidence <= 1
        thought = dspy.ChainOfThought("question -> answer")(question="Why is the sky blue?")
        assert thought.reasoning and thought.answer

        cities: list[str] = []

        def get_weather(city: str) -> str:
            """Get the weather in a city."""
            cities.append(city)
            return f"Sunny, 21 C in {city}"

        react = dspy.ReAct("question -> answer", tools=[get_weather], max_iters=6)
        result = react(question="What is the weather in Paris?")
        assert cities == ["Paris"]
        assert "Sunny, 21 C in Paris" in result.answer

        async def streamed() -> list[Any]:
            program = dspy.streamify(
                dspy.ChainOfThought("question -> answer"),
                stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")],
            )
            return [item async for item in program(question="What is DNS?")]

        items = asyncio.run(streamed())
        assert isinstance(items[-1], dspy.Prediction) and items[-1].answer
        chunks = [i.chunk for i in items if isinstance(i, dspy.streaming.StreamResponse)]
        assert "".join(chunks).strip() == items[-1].answer.strip()
    # Predict, ChainOfThought, ReAct's two steps and its extract, streamify: six requests.
    assert len(lm.history) == 6
