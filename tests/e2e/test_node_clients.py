"""npm clients, unchanged, against a real ``streamapi serve`` (issue 16, Proof).

The Node scripts in ``tests/e2e/node/`` use the ``openai`` and ``@anthropic-ai/sdk``
packages and the Vercel AI SDK (``ai`` with its OpenAI-compatible, OpenAI and
Anthropic providers) as applications do, and print what they saw as JSON, one entry
per case; each test here asserts on one case. ``docs/client-compatibility.md`` lists
what is covered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.node_project import run_script

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
AI_SDK_PROVIDERS = ["openai_compatible", "openai_responses", "openai_chat", "anthropic"]


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "7")


@pytest.fixture(scope="module")
def openai_results(node_project: Path, server: ServerProcess) -> dict[str, Any]:
    return run_script("openai.mjs", server.base_url)


@pytest.fixture(scope="module")
def anthropic_results(node_project: Path, server: ServerProcess) -> dict[str, Any]:
    return run_script("anthropic.mjs", server.base_url)


@pytest.fixture(scope="module")
def ai_sdk_results(node_project: Path, server: ServerProcess) -> dict[str, Any]:
    return run_script("ai-sdk.mjs", server.base_url)


def case(results: dict[str, Any], name: str) -> dict[str, Any]:
    """One case's result; fails with the client's own error when the case raised."""
    assert name in results, f"the script ran no case {name!r}: {sorted(results)}"
    result: dict[str, Any] = results[name]
    if not result["ok"]:
        pytest.fail(f"{name}: the client raised {result['error']}")
    return result


# --- openai -----------------------------------------------------------------


def test_openai_chat_stream(openai_results: dict[str, Any]) -> None:
    result = case(openai_results, "chat_stream")
    assert result["text"]
    assert result["chunks"] > 2  # token by token, not one block
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 40


def test_openai_chat_create(openai_results: dict[str, Any]) -> None:
    result = case(openai_results, "chat_create")
    assert result["object"] == "chat.completion"
    assert result["text"]
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 40


def test_openai_streamed_tool_call(openai_results: dict[str, Any]) -> None:
    """Item 13: the call's first delta carries the role with content null, as OpenAI's."""
    result = case(openai_results, "chat_tool_stream")
    first = result["first_deltas"][0]
    assert first["role"] == "assistant"
    assert first["content"] is None
    assert first["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result["finish_reason"] == "tool_calls"
    assert result["content"] is None
    [call] = result["tool_calls"]
    assert call["name"] == "get_weather"
    assert call["id"].startswith("call_")
    assert call["arguments"] == {"location": "Paris"}


def test_openai_responses_stream(openai_results: dict[str, Any]) -> None:
    result = case(openai_results, "responses_stream")
    types = result["event_types"]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in types
    assert types[-1] == "response.completed"
    assert result["status"] == "completed"
    assert result["final_text"] == result["text"] != ""
    assert result["usage"]["output_tokens"] > 0


def test_openai_responses_create(openai_results: dict[str, Any]) -> None:
    result = case(openai_results, "responses_create")
    assert result["status"] == "incomplete"  # max_output_tokens 40
    assert result["output_text"]
    assert result["usage"]["output_tokens"] == 40


def test_openai_error_is_the_sdk_error_class(openai_results: dict[str, Any]) -> None:
    result = case(openai_results, "bad_request_error")
    assert result["is_bad_request_error"], result
    assert result["status"] == 400
    assert result["type"] == "invalid_request_error"
    assert result["param"] == "messages"
    not_found = case(openai_results, "not_found_error")
    assert not_found["is_not_found_error"], not_found
    assert not_found["status"] == 404


# --- @anthropic-ai/sdk ----------------------------------------------------------


def test_anthropic_messages_stream(anthropic_results: dict[str, Any]) -> None:
    result = case(anthropic_results, "messages_stream")
    assert result["text"]
    assert result["final_text"] == result["text"]
    assert result["stop_reason"] == "max_tokens"
    assert result["usage"]["output_tokens"] == 64
    assert result["usage"]["input_tokens"] > 0


def test_anthropic_messages_create(anthropic_results: dict[str, Any]) -> None:
    result = case(anthropic_results, "messages_create")
    assert (result["type"], result["role"]) == ("message", "assistant")
    assert result["text"]
    assert result["stop_reason"] == "max_tokens"
    assert result["usage"]["output_tokens"] == 64


def test_anthropic_count_tokens(anthropic_results: dict[str, Any]) -> None:
    """Item 14: count_tokens answers what the same request is charged."""
    result = case(anthropic_results, "count_tokens")
    assert result["input_tokens"] > 0
    assert result["input_tokens"] == result["usage_input_tokens"]


@pytest.mark.parametrize("name", ["tool_use", "tool_use_stream"])
def test_anthropic_tool_use(anthropic_results: dict[str, Any], name: str) -> None:
    result = case(anthropic_results, name)
    assert result["stop_reason"] == "tool_use"
    [call] = result["tool_uses"]
    assert call["name"] == "get_weather"
    assert call["id"].startswith("toolu_")
    assert call["input"] == {"location": "Paris"}


def test_anthropic_tool_result_turn(anthropic_results: dict[str, Any]) -> None:
    result = case(anthropic_results, "tool_result_turn")
    assert "Sunny, 21 °C" in result["text"]


def test_anthropic_error_is_the_sdk_error_class(anthropic_results: dict[str, Any]) -> None:
    result = case(anthropic_results, "bad_request_error")
    assert result["is_bad_request_error"], result
    assert result["status"] == 400
    assert result["type"] == "invalid_request_error"


# --- Vercel AI SDK --------------------------------------------------------------


def _wire_parts(parts: list[Any]) -> list[Any]:
    """The parts the answer is made of: without the ``custom`` parts that carry a provider's
    own metadata (AI SDK 7's Anthropic provider adds one, ``anthropic.message_start``, to
    every stream), which say nothing of what the server sent."""
    return [p for p in parts if (p.get("type") if isinstance(p, dict) else p) != "custom"]


@pytest.mark.parametrize("provider", AI_SDK_PROVIDERS)
def test_ai_sdk_stream_text(ai_sdk_results: dict[str, Any], provider: str) -> None:
    result = case(ai_sdk_results, f"{provider}.stream_text")
    assert _wire_parts(result["types"]) == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert result["text"]
    assert result["finish_reason"] == "length"
    assert result["usage"]["outputTokens"] == 60
    assert result["usage"]["inputTokens"] > 0


@pytest.mark.parametrize("provider", AI_SDK_PROVIDERS)
def test_ai_sdk_generate_text(ai_sdk_results: dict[str, Any], provider: str) -> None:
    result = case(ai_sdk_results, f"{provider}.generate_text")
    assert result["text"]
    assert result["finish_reason"] == "length"
    assert result["usage"]["outputTokens"] == 60


@pytest.mark.parametrize("provider", AI_SDK_PROVIDERS)
def test_ai_sdk_streamed_tool_call_has_no_empty_text_part(
    ai_sdk_results: dict[str, Any], provider: str
) -> None:
    """Item 13: a streamed tool call opened with content "", and the SDK made a text part of it."""
    result = case(ai_sdk_results, f"{provider}.tool_call_stream")
    assert result["text_parts_before_tool_call"] == 0, result["types"]
    assert "text-start" not in result["types"]
    assert _wire_parts(result["content"]) == [{"type": "tool-call", "empty": False}]
    assert result["finish_reason"] == "tool-calls"
    assert result["tool_calls"] == [{"name": "get_weather", "input": {"location": "Paris"}}]


@pytest.mark.parametrize("provider", AI_SDK_PROVIDERS)
def test_ai_sdk_tool_loop(ai_sdk_results: dict[str, Any], provider: str) -> None:
    """The SDK runs the zod-typed tool, sends its result, and the model answers from it."""
    result = case(ai_sdk_results, f"{provider}.tool_loop")
    assert result["steps"] == 2
    assert result["called_with"] == ["Paris"]
    assert "Sunny and 21 degrees in Paris." in result["text"]
    assert _wire_parts(result["first_step_content"]) == [
        {"type": "tool-call", "empty": False},
        {"type": "tool-result", "empty": False},
    ]


def test_ai_sdk_error_is_json_with_the_message(ai_sdk_results: dict[str, Any]) -> None:
    """Item 2: the AI SDK's fetch sends no Accept: application/json; the error is JSON anyway."""
    result = case(ai_sdk_results, "openai_compatible.bad_request_error")
    assert result["is_api_call_error"]
    assert result["status"] == 400
    assert result["response_content_type"] == "application/json"
    assert "temperature" in result["message"]


GENERATE_OBJECT_CASES = [
    "openai_compatible.generate_object",
    "openai_responses.generate_object",
    "openai_chat.generate_object",
    "anthropic.generate_object_json_tool",
    # For Claude 4.5 models the provider sends Anthropic's structured outputs
    # (output_config.format).
    "anthropic.generate_object",
]


@pytest.mark.parametrize("name", GENERATE_OBJECT_CASES)
def test_ai_sdk_generate_object(ai_sdk_results: dict[str, Any], name: str) -> None:
    """generateObject validates the answer against the zod schema, so ok means valid."""
    result = case(ai_sdk_results, name)
    facts = result["object"]
    assert set(facts) == {"city", "population", "rivers"}
    assert isinstance(facts["population"], int)
    assert result["finish_reason"] in {"stop", "tool-calls"}
