"""The prompt cache keys on the whole prompt (tools, system, messages), over ASGI: a repeated
request reads it in every protocol, and Anthropic's breakpoints behave as Anthropic documents."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from streamapi.engines.prefix_cache import BLOCK_TOKENS
from tests.test_agents import CLAUDE_CODE_TOOLS, REMINDER, SYSTEM, chat_tools, text_block

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
EPHEMERAL = {"type": "ephemeral"}
# A system prompt long enough to be cached by every model (Anthropic's minimum is 1,024
# to 4,096 tokens by model).
LONG_SYSTEM = "You are a careful assistant. Answer with care and cite the sources. " * 400


async def test_a_repeated_chat_request_with_tools_reads_its_tools_from_the_cache(
    client: httpx.AsyncClient,
) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": chat_tools(), "seed": 1}
    first = (await client.post(CHAT, json=body)).json()["usage"]
    second = (await client.post(CHAT, json=body)).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert second["prompt_tokens"] - BLOCK_TOKENS < cached < second["prompt_tokens"]
    # Other messages after the same tools still read the tools.
    body["messages"] = [{"role": "user", "content": "Something else entirely, please."}]
    third = (await client.post(CHAT, json=body)).json()["usage"]
    assert third["prompt_tokens_details"]["cached_tokens"] >= 48


async def test_a_repeated_response_reads_its_instructions_and_tools_from_the_cache(
    client: httpx.AsyncClient,
) -> None:
    tools = [
        {
            "type": "function",
            "name": f["function"]["name"],
            "parameters": f["function"]["parameters"],
        }
        for f in chat_tools()
    ]
    body = {"instructions": "Be helpful. " * 40, "input": "Hi", "tools": tools}
    first = (await client.post(RESPONSES, json=body)).json()["usage"]
    second = (await client.post(RESPONSES, json=body)).json()["usage"]
    assert first["input_tokens_details"]["cached_tokens"] == 0
    cached = second["input_tokens_details"]["cached_tokens"]
    assert second["input_tokens"] - BLOCK_TOKENS < cached < second["input_tokens"]


def claude_code_turn(*history: dict[str, Any]) -> dict[str, Any]:
    """A Claude Code request: breakpoints on the system prompt and the last message."""
    system: list[dict[str, Any]] = copy.deepcopy(SYSTEM)
    system[-1]["text"] += LONG_SYSTEM
    system[-1]["cache_control"] = EPHEMERAL
    messages = copy.deepcopy(list(history))
    messages[-1]["content"][-1]["cache_control"] = EPHEMERAL
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "system": system,
        "tools": CLAUDE_CODE_TOOLS,
        "messages": messages,
    }


def prompt_size(usage: dict[str, int]) -> int:
    return (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )


async def test_a_claude_code_session_writes_then_reads_up_to_its_breakpoints(
    client: httpx.AsyncClient,
) -> None:
    ask = {"role": "user", "content": [text_block(REMINDER), text_block("Say hello.")]}
    cold = (await client.post(MESSAGES, json=claude_code_turn(ask))).json()["usage"]
    assert cold["cache_read_input_tokens"] == 0
    # Everything up to the last breakpoint (the whole prompt but the reply's framing).
    assert cold["input_tokens"] == 3
    assert cold["cache_creation_input_tokens"] == prompt_size(cold) - 3
    warm = (await client.post(MESSAGES, json=claude_code_turn(ask))).json()["usage"]
    assert cold["cache_creation"] == {
        "ephemeral_5m_input_tokens": cold["cache_creation_input_tokens"],
        "ephemeral_1h_input_tokens": 0,
    }
    assert warm == cold | {
        "cache_read_input_tokens": cold["cache_creation_input_tokens"],
        "cache_creation_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": warm["output_tokens"],
    }
    # The next turn reads the last one's entry (found looking back from its breakpoint)
    # and writes only what it adds.
    answer = {"role": "assistant", "content": [text_block("Hello!")]}
    more = {"role": "user", "content": [text_block("Now say goodbye.")]}
    next_turn = (await client.post(MESSAGES, json=claude_code_turn(ask, answer, more))).json()
    usage = next_turn["usage"]
    assert usage["cache_read_input_tokens"] == prompt_size(cold) - 3
    assert 0 < usage["cache_creation_input_tokens"] < 30
    # Another session with the same tools and system prompt reads up to the system's breakpoint.
    other = {"role": "user", "content": [text_block("Something else.")]}
    fresh = (await client.post(MESSAGES, json=claude_code_turn(other))).json()["usage"]
    assert 0 < fresh["cache_read_input_tokens"] < usage["cache_read_input_tokens"]
    assert fresh["cache_read_input_tokens"] > 4000  # the tools and the long system prompt


@pytest.mark.parametrize(
    ("model", "cached"),
    [("claude-sonnet-4-5", True), ("claude-haiku-4-5", False), ("claude-opus-4-6", False)],
)
async def test_a_prefix_under_the_models_minimum_is_not_cached(
    client: httpx.AsyncClient, model: str, cached: bool
) -> None:
    """About 1,800 tokens: over Sonnet 4.5's 1,024, under Haiku 4.5's and Opus 4.6's 4,096."""
    body = {
        "model": model,
        "max_tokens": 50,
        "system": [{"type": "text", "text": LONG_SYSTEM[:8000], "cache_control": EPHEMERAL}],
        "messages": [{"role": "user", "content": "Hi"}],
    }
    first = (await client.post(MESSAGES, json=body)).json()["usage"]
    second = (await client.post(MESSAGES, json=body)).json()["usage"]
    assert 1024 < prompt_size(first) < 4096
    assert (first["cache_creation_input_tokens"] > 0) is cached
    assert (second["cache_read_input_tokens"] > 0) is cached
    if not cached:
        assert second["input_tokens"] == prompt_size(second)


async def test_a_breakpoint_on_the_last_tool_caches_the_tools_alone(
    client: httpx.AsyncClient,
) -> None:
    tools = copy.deepcopy(CLAUDE_CODE_TOOLS)
    tools[-1]["description"] += " Retrieves output from a background shell." * 150
    tools[-1]["cache_control"] = EPHEMERAL

    def ask(question: str) -> dict[str, Any]:
        return {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "tools": tools,
            "messages": [{"role": "user", "content": question}],
        }

    first = (await client.post(MESSAGES, json=ask("Hi"))).json()["usage"]
    second = (await client.post(MESSAGES, json=ask("Something else"))).json()["usage"]
    assert first["cache_creation_input_tokens"] > 1024
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == prompt_size(second) - second["cache_read_input_tokens"]


async def test_what_is_written_is_told_apart_by_lifetime(client: httpx.AsyncClient) -> None:
    """A 1-hour breakpoint on the system prompt, a 5-minute one on the last message."""
    ask = {"role": "user", "content": [text_block("Say hello.")]}
    body = claude_code_turn(ask)
    body["system"][-1]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    usage = (await client.post(MESSAGES, json=body)).json()["usage"]
    hour = usage["cache_creation"]["ephemeral_1h_input_tokens"]
    five = usage["cache_creation"]["ephemeral_5m_input_tokens"]
    assert hour > 4000  # the tools and the long system prompt
    assert 0 < five < 20  # the user's message
    assert hour + five == usage["cache_creation_input_tokens"]
