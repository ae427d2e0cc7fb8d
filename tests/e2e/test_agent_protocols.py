"""Codex-like and Claude-Code-like requests, sent by the official SDKs to a real server.

The shapes are those Codex CLI 0.171 and Claude Code 2.1.332 send on their first
requests (captured against a logging server): Codex's function, free-form
``apply_patch`` (Lark grammar), ``namespace``, ``tool_search`` and ``web_search``
tools with ``include: ["reasoning.encrypted_content"]``, ``store: false``,
``prompt_cache_key`` and ``client_metadata``; Claude Code's beta Messages with a
system turn, adaptive thinking shown as ``omitted``, ``context_management``, a
deferred tool, and a Read result holding an image and text.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.e2e.conftest import FAST_PACING, ServerFactory, ServerProcess
from tests.test_client_tools import APPLY_PATCH

pytestmark = pytest.mark.e2e

# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
        "0000000c49444154789c63f8cfc000000301010018dd8db40000000049454e44ae426082"
    )
).decode()
EXEC_COMMAND = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command in a PTY.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"cmd": {"type": "string", "description": "Shell command to execute."}},
        "required": ["cmd"],
        "additionalProperties": False,
    },
}
NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "description": "Spawn a sub-agent.",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {"message": {"type": "string"}},
                "required": ["message"],
            },
        }
    ],
}
TOOL_SEARCH = {
    "type": "tool_search",
    "execution": "client",
    "description": "Searches over deferred tool metadata.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}
WEB_SEARCH = {"type": "web_search", "external_web_access": False}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(*FAST_PACING)


@pytest.fixture
def openai_client(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def anthropic_client(server: ServerProcess) -> Iterator[Anthropic]:
    with Anthropic(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def codex_request(**overrides: Any) -> dict[str, Any]:
    return {
        "model": "gpt-5.5",
        "instructions": None,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are a coding agent."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Add a greeting file"}],
            },
        ],
        "tools": [EXEC_COMMAND, APPLY_PATCH, NAMESPACE, TOOL_SEARCH, WEB_SEARCH],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0a1b2c",
        "text": {"verbosity": "low"},
        "extra_body": {"client_metadata": {"x-codex-installation-id": "test"}},
        **overrides,
    }


def test_codex_like_streams_a_free_form_patch_the_sdk_accumulates(openai_client: OpenAI) -> None:
    request = codex_request(tool_choice={"type": "custom", "name": "apply_patch"})
    with openai_client.responses.stream(**request) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.custom_tool_call_input.delta" in kinds
    assert "response.custom_tool_call_input.done" in kinds
    reasoning, call = final.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert call.type == "custom_tool_call" and call.name == "apply_patch"
    assert call.input.startswith("*** Begin Patch\n") and call.input.endswith("*** End Patch\n")
    # Codex sends the whole history back (store false): reasoning, call and output.
    history = [
        *request["input"],
        reasoning.model_dump(exclude_none=True),
        {
            "type": "custom_tool_call",
            "call_id": call.call_id,
            "name": call.name,
            "input": call.input,
        },
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Success."},
    ]
    follow = openai_client.responses.create(**codex_request(input=history))
    assert follow.status == "completed"
    assert follow.output_text


def test_codex_like_namespace_function_call_names_its_namespace(openai_client: OpenAI) -> None:
    stream = openai_client.responses.create(
        **codex_request(tool_choice={"type": "function", "name": "spawn_agent"}), stream=True
    )
    done = [e.item for e in stream if e.type == "response.output_item.done"]
    call = done[-1]
    assert call.type == "function_call"
    assert (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")


def test_codex_like_hosted_tools_alone_get_an_answer(openai_client: OpenAI) -> None:
    response = openai_client.responses.create(
        **codex_request(tools=[WEB_SEARCH, TOOL_SEARCH], tool_choice="auto")
    )
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert [tool.type for tool in response.tools] == ["web_search", "tool_search"]


def claude_code_request(messages: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    read = {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
        },
    }
    deferred = {
        "name": "NotebookEdit",
        "defer_loading": True,
        "input_schema": {"type": "object", "properties": {}},
    }
    return {
        "model": "claude-opus-5-5",
        "max_tokens": 2048,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=test;"},
            {
                "type": "text",
                "text": "You are a Claude agent.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": messages,
        "tools": [read, deferred],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "metadata": {"user_id": '{"session_id":"s"}'},
        "betas": ["claude-code-20250219", "context-management-2025-06-27"],
        **overrides,
    }


def test_claude_code_like_image_in_a_tool_result_and_a_system_turn(
    anthropic_client: Anthropic,
) -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>Be brief.</system-reminder>"},
                {"type": "text", "text": "What is in red.png?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "Read",
                    "input": {"file_path": "/tmp/red.png"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "text", "text": "[image 1x1]"},
                    ],
                },
                {"type": "text", "text": "Describe it."},
            ],
        },
        {"role": "system", "content": "The user prefers short answers."},
    ]
    with anthropic_client.beta.messages.stream(**claude_code_request(messages)) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "message_stop" in kinds
    assert final.stop_reason == "end_turn"
    texts = [b.text for b in final.content if b.type == "text"]
    assert texts and texts[0]
    assert final.context_management is not None
    assert final.context_management.applied_edits == []


def test_claude_code_like_thinking_omitted_streams_no_thinking(anthropic_client: Anthropic) -> None:
    request = claude_code_request(
        [{"role": "user", "content": "Plan a refactor"}],
        thinking={"type": "enabled", "budget_tokens": 1024, "display": "omitted"},
    )
    with anthropic_client.beta.messages.stream(**request) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" not in deltas and "signature_delta" in deltas
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "" and thinking.signature


def test_builtin_client_tools_stream_through_the_sdk_helper(openai_client: OpenAI) -> None:
    for tool, kind in (
        ("shell", "shell_call"),
        ("local_shell", "local_shell_call"),
        ("apply_patch", "apply_patch_call"),
    ):
        tools: list[Any] = [{"type": tool}]
        with openai_client.responses.stream(
            model="gpt-5.5", input="Do it", tools=tools, tool_choice="required"
        ) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        assert [item.type for item in final.output] == [kind]
        assert kinds[-1] == "response.completed"
        if kind == "shell_call":
            assert "response.shell_call_command.done" in kinds
