"""smolagents and DSPy, unscripted, against a real ``streamapi serve``: every agent finishes.

No rules: the simulator answers as a model would (docs/simulator.md), and each agent
loop must end on its own within its step budget, with a final answer and no 4xx in the
server's journal. smolagents' ToolCallingAgent (``tool_choice: "required"``, results
sent back as "Observation:" text) and CodeAgent (code blocks calling ``final_answer``);
DSPy's Predict, ChainOfThought, ReAct and streamify, through its default ChatAdapter
(``[[ ## field ## ]]`` sections) over litellm.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.agent_clis import ADMIN_KEY, API_KEY, journal, refused

# litellm (under DSPy) would fetch its model price list from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients
from smolagents import CodeAgent, OpenAIServerModel, ToolCallingAgent, tool

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
MAX_STEPS = 6
WEATHER_QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "5", "--admin-key", ADMIN_KEY)


@pytest.fixture
def requests(server: ServerProcess) -> Iterator[list[dict[str, Any]]]:
    """The journal entries of this test, filled in at its end, after a check of no 4xx."""
    httpx.delete(
        server.base_url + "/admin/journal",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ).raise_for_status()
    entries: list[dict[str, Any]] = []
    yield entries


def finished(server: ServerProcess, entries: list[dict[str, Any]], what: str) -> int:
    """How many requests the test made, after checking none was refused."""
    entries.extend(journal(server.base_url))
    bad = refused(entries)
    assert not bad, f"{what}: streamapi refused requests:\n" + "\n".join(bad)
    print(f"{what}: {len(entries)} requests")  # noqa: T201 (the CI log, with -rP)
    return len(entries)


@tool  # type: ignore[untyped-decorator]
def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name, e.g. Paris.
    """
    return f"Sunny, 18 C in {city}"


ASKED: list[str] = []


def weather(city: str) -> str:
    """Get the current weather in a city."""
    ASKED.append(city)
    return f"Sunny, 18 C in {city}"


# --- smolagents -----------------------------------------------------------------------


@pytest.mark.parametrize("agent_class", [ToolCallingAgent, CodeAgent])
def test_smolagents_agent_finishes_unscripted(
    server: ServerProcess, requests: list[dict[str, Any]], agent_class: Any
) -> None:
    model = OpenAIServerModel(model_id="gpt-4o", api_base=server.base_url + "/v1", api_key=API_KEY)
    agent = agent_class(tools=[get_weather], model=model, max_steps=MAX_STEPS, verbosity_level=0)
    result = agent.run(WEATHER_QUESTION, return_full_result=True)
    count = finished(server, requests, f"smolagents {agent_class.__name__}")
    assert result.state == "success", (result.state, result.output)
    # It called the tool (CodeAgent: in a code block), then answered with its result.
    assert str(result.output) == "Sunny, 18 C in Paris"
    assert count == 2


# --- DSPy -------------------------------------------------------------------------------


@pytest.fixture
def lm(server: ServerProcess) -> Iterator[Any]:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    model = dspy.LM(
        "openai/gpt-4o-mini", api_base=server.base_url + "/v1", api_key=API_KEY, cache=False
    )
    with dspy.context(lm=model):
        yield model


def test_dspy_predict_fills_its_output_field(
    server: ServerProcess, requests: list[dict[str, Any]], lm: Any
) -> None:
    predict = dspy.Predict("question -> answer: str, confidence: float")
    answer = predict(question="What is the capital of France?")
    assert finished(server, requests, "dspy Predict") == 1  # ChatAdapter read it at once
    assert answer.answer.strip()
    assert 0 <= answer.confidence <= 1


def test_dspy_chain_of_thought_fills_reasoning_and_answer(
    server: ServerProcess, requests: list[dict[str, Any]], lm: Any
) -> None:
    answer = dspy.ChainOfThought("question -> answer")(question="What is the capital of France?")
    assert finished(server, requests, "dspy ChainOfThought") == 1
    assert answer.reasoning.strip()
    assert answer.answer.strip()


def test_dspy_react_calls_its_tool_and_finishes(
    server: ServerProcess, requests: list[dict[str, Any]], lm: Any
) -> None:
    react = dspy.ReAct("question -> answer", tools=[weather], max_iters=MAX_STEPS)
    ASKED.clear()
    answer = react(question=WEATHER_QUESTION)
    assert ASKED == ["Paris"]
    assert "Sunny, 18 C in Paris" in answer.answer
    count = finished(server, requests, "dspy ReAct")
    tools = [value for key, value in answer.trajectory.items() if key.startswith("tool_name_")]
    # It finished by its own choice, before running out of iterations.
    assert tools and tools[-1] == "finish", answer.trajectory
    assert len(tools) < MAX_STEPS
    assert answer.answer.strip()
    assert count <= MAX_STEPS + 1  # the steps, and the extraction of the answer


async def test_dspy_streamify_streams_the_answer_field(
    server: ServerProcess, requests: list[dict[str, Any]], lm: Any
) -> None:
    program = dspy.streamify(
        dspy.Predict("question -> answer"),
        stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")],
    )
    items = [item async for item in program(question="What is the capital of France?")]
    await close_litellm_async_clients()  # type: ignore[no-untyped-call]
    finished(server, requests, "dspy streamify")
    chunks = [item for item in items if isinstance(item, dspy.streaming.StreamResponse)]
    assert chunks and all(chunk.signature_field_name == "answer" for chunk in chunks)
    final = items[-1]
    assert isinstance(final, dspy.Prediction)
    assert final.answer.strip()
    assert "".join(chunk.chunk for chunk in chunks).strip() == final.answer.strip()
