"""Tools the client runs, simulated as calls in each protocol's own items, blocks and events.

Over ASGI: Responses' custom (free-form, grammar), namespace, shell, local_shell and
apply_patch calls; hosted tools accepted and never called; reasoning's encrypted
content round-tripping; Messages' versioned client tools, deferred tools, thinking
display and context management; chat's custom tools.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from anthropic.types.beta import BetaMessage
from asgi_lifespan import LifespanManager
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseApplyPatchToolCall
from openai.types.responses.response_apply_patch_tool_call import OperationCreateFile
from openai.types.responses.response_output_item import LocalShellCall

from streamapi.app import create_app
from streamapi.settings import Settings
from tests.test_responses_messages import named_events

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
# Codex CLI's apply_patch tool: free-form, with a Lark grammar (as Codex 0.171 sends it).
PATCH_GRAMMAR = (
    'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
    'end_patch: "*** End Patch" LF?\n\nhunk: add_hunk | delete_hunk | update_hunk\n'
    'add_hunk: "*** Add File: " filename LF add_line+\n'
    'delete_hunk: "*** Delete File: " filename LF\n'
    'update_hunk: "*** Update File: " filename LF change_move? change?\n\n'
    'filename: /(.+)/\nadd_line: "+" /(.*)/ LF -> line\n\n'
    'change_move: "*** Move to: " filename LF\n'
    "change: (change_context | change_line)+ eof_line?\n"
    'change_context: ("@@" | "@@ " /(.+)/) LF\nchange_line: ("+" | "-" | " ") /(.*)/ LF\n'
    'eof_line: "*** End of File" LF\n\n%import common.LF\n'
)
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": PATCH_GRAMMAR},
}


def _done_items(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [data["item"] for name, data in events if name == "response.output_item.done"]


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> list[tuple[str, Any]]:
    response = await client.post(RESPONSES, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    return named_events(response.text, done=True)


async def test_a_custom_tool_with_a_lark_grammar_is_called_with_input_in_that_grammar(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "input": "Create a file that greets the team",
        "tools": [APPLY_PATCH],
        "tool_choice": {"type": "custom", "name": "apply_patch"},
    }
    events = await _stream(client, body)
    names = [name for name, _ in events]
    deltas = [d["delta"] for n, d in events if n == "response.custom_tool_call_input.delta"]
    done = next(d for n, d in events if n == "response.custom_tool_call_input.done")
    assert deltas and "".join(deltas) == done["input"]
    assert "response.function_call_arguments.delta" not in names
    patch = done["input"]
    assert patch.startswith("*** Begin Patch\n*** Add File: ")
    assert patch.endswith("\n*** End Patch\n")
    assert all(line.startswith("+") for line in patch.splitlines()[2:-1])
    final = Response.model_validate(events[-1][1]["response"])
    call = final.output[0]
    assert call.type == "custom_tool_call"
    assert (call.name, call.input) == ("apply_patch", patch)
    # The call and its output go back as input: the next turn answers.
    follow = await client.post(
        RESPONSES,
        json={
            "input": [
                {"role": "user", "content": "Create a file that greets the team"},
                {
                    "type": "custom_tool_call",
                    "call_id": call.call_id,
                    "name": "apply_patch",
                    "input": patch,
                },
                {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done"},
            ],
            "tools": [APPLY_PATCH],
        },
    )
    assert follow.status_code == 200, follow.text
    assert Response.model_validate(follow.json()).output_text


async def test_a_regex_custom_tool_is_called_with_input_its_expression_matches(
    client: httpx.AsyncClient,
) -> None:
    tool = {
        "type": "custom",
        "name": "ticket",
        "format": {"type": "grammar", "syntax": "regex", "definition": r"[A-Z]{3}-\d{2,4}"},
    }
    body = {"input": "Open a ticket", "tools": [tool], "tool_choice": "required"}
    final = Response.model_validate((await client.post(RESPONSES, json=body)).json())
    call = final.output[0]
    assert call.type == "custom_tool_call"
    assert re.fullmatch(r"[A-Z]{3}-\d{2,4}", call.input)


async def test_a_namespace_function_is_called_by_its_own_name_naming_its_namespace(
    client: httpx.AsyncClient,
) -> None:
    namespace = {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Sub-agents.",
        "tools": [
            {
                "type": "function",
                "name": "spawn_agent",
                "description": "Spawn an agent.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"task": {"type": "string"}},
                    "required": ["task"],
                },
            }
        ],
    }
    body = {
        "input": "Spawn a helper",
        "tools": [namespace, {"type": "web_search", "external_web_access": False}],
        "tool_choice": {"type": "function", "name": "spawn_agent"},
    }
    events = await _stream(client, body)
    (call,) = _done_items(events)
    assert call["type"] == "function_call"
    assert (call["name"], call["namespace"]) == ("spawn_agent", "multi_agent_v1")
    assert isinstance(json.loads(call["arguments"])["task"], str)
    final = Response.model_validate(events[-1][1]["response"])
    assert [t.type for t in final.tools] == ["namespace", "web_search"]


async def test_shell_calls_carry_their_commands_and_stream_them(client: httpx.AsyncClient) -> None:
    events = await _stream(
        client,
        {"input": "List the files", "tools": [{"type": "shell"}], "tool_choice": {"type": "shell"}},
    )
    (call,) = _done_items(events)
    assert call["type"] == "shell_call"
    commands = call["action"]["commands"]
    assert commands and all(isinstance(c, str) and c for c in commands)
    streamed = [d["command"] for n, d in events if n == "response.shell_call_command.done"]
    assert streamed == commands
    final = Response.model_validate(events[-1][1]["response"])
    assert final.output[0].type == "shell_call"
    follow = await client.post(
        RESPONSES,
        json={
            "input": [
                {"role": "user", "content": "List the files"},
                {"type": "shell_call", "call_id": call["call_id"], "action": call["action"]},
                {
                    "type": "shell_call_output",
                    "call_id": call["call_id"],
                    "output": [
                        {
                            "stdout": "a.txt\n",
                            "stderr": "",
                            "outcome": {"type": "exit", "exit_code": 0},
                        }
                    ],
                },
            ],
            "tools": [{"type": "shell"}],
        },
    )
    assert follow.status_code == 200, follow.text


async def test_local_shell_and_apply_patch_calls_are_their_own_items(
    client: httpx.AsyncClient,
) -> None:
    async def call_of(tool: str) -> Any:
        body = {"input": "Do it", "tools": [{"type": tool}], "tool_choice": "required"}
        final = Response.model_validate((await client.post(RESPONSES, json=body)).json())
        (call,) = final.output
        return call

    shell = await call_of("local_shell")
    assert isinstance(shell, LocalShellCall)
    assert shell.action.type == "exec" and shell.action.command
    patch = await call_of("apply_patch")
    assert isinstance(patch, ResponseApplyPatchToolCall)
    assert isinstance(patch.operation, OperationCreateFile)
    assert patch.operation.path.endswith(".txt")
    assert patch.operation.diff.startswith("+")


async def test_hosted_tools_are_accepted_echoed_and_never_called(
    client: httpx.AsyncClient,
) -> None:
    hosted: list[dict[str, Any]] = [
        {"type": "web_search"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        {"type": "mcp", "server_label": "docs"},
        {"type": "tool_search", "execution": "client"},
    ]
    body = {"input": "Search the web for the news", "tools": hosted, "tool_choice": "required"}
    response = await client.post(RESPONSES, json=body)
    final = Response.model_validate(response.json())
    assert [item.type for item in final.output] == ["message"]
    assert [t.type for t in final.tools] == [t["type"] for t in hosted]


async def test_encrypted_reasoning_round_trips(client: httpx.AsyncClient) -> None:
    body = {
        "input": "Explain DNS",
        "reasoning": {"effort": "medium"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
    }
    final = Response.model_validate((await client.post(RESPONSES, json=body)).json())
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert "DNS" not in reasoning.encrypted_content  # opaque
    handed_back = reasoning.model_dump(exclude_none=True)
    history = [{"role": "user", "content": "Explain DNS"}, handed_back]
    follow = await client.post(
        RESPONSES, json={"input": [*history, {"role": "user", "content": "More"}]}
    )
    assert follow.status_code == 200, follow.text
    tampered = {**handed_back, "encrypted_content": reasoning.encrypted_content + "%"}
    refused = await client.post(RESPONSES, json={"input": [history[0], tampered]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input[1].encrypted_content"
    # Without include, reasoning items carry none.
    plain = (await client.post(RESPONSES, json={**body, "include": []})).json()
    assert "encrypted_content" not in plain["output"][0]


# --- Messages -----------------------------------------------------------------------------


def _message(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sim",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Look at the notes"}],
        **fields,
    }


async def test_anthropic_client_tools_are_called_with_their_documented_input(
    client: httpx.AsyncClient,
) -> None:
    tools = [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "memory_20250818", "name": "memory"},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
        {"type": "code_execution_20250825", "name": "code_execution"},
    ]
    for name, key in (
        ("bash", "command"),
        ("str_replace_based_edit_tool", "path"),
        ("memory", "path"),
    ):
        body = _message(tools=tools, tool_choice={"type": "tool", "name": name})
        message = BetaMessage.model_validate((await client.post(MESSAGES, json=body)).json())
        (block,) = message.content
        assert block.type == "tool_use" and block.name == name
        assert isinstance(block.input[key], str) and block.input[key]
    # Server tools are never called: naming one is naming no tool the model can call.
    body = _message(tools=tools, tool_choice={"type": "tool", "name": "web_search"})
    assert (await client.post(MESSAGES, json=body)).status_code == 400


async def test_a_deferred_tool_is_callable_once_a_tool_reference_loads_it(
    client: httpx.AsyncClient,
) -> None:
    hidden = {
        "name": "Deploy",
        "defer_loading": True,
        "input_schema": {"type": "object", "properties": {"env": {"type": "string"}}},
    }
    search = {"name": "ToolSearch", "input_schema": {"type": "object"}}
    choice = {"type": "tool", "name": "Deploy"}
    before = await client.post(MESSAGES, json=_message(tools=[search, hidden], tool_choice=choice))
    assert before.status_code == 400
    loaded = [
        {"role": "user", "content": "Deploy it"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "tool_reference", "tool_name": "Deploy"}],
                }
            ],
        },
    ]
    after = await client.post(
        MESSAGES, json=_message(messages=loaded, tools=[search, hidden], tool_choice=choice)
    )
    assert after.status_code == 200, after.text
    assert after.json()["content"][0]["name"] == "Deploy"


async def test_thinking_display_omitted_streams_a_signature_and_no_thinking_text(
    client: httpx.AsyncClient,
) -> None:
    body = _message(
        stream=True, thinking={"type": "enabled", "budget_tokens": 1024, "display": "omitted"}
    )
    events = named_events((await client.post(MESSAGES, json=body)).text)
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert "thinking_delta" not in deltas
    assert "signature_delta" in deltas and "text_delta" in deltas
    shown = body | {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    events = named_events((await client.post(MESSAGES, json=shown)).text)
    assert "thinking_delta" in [d["delta"]["type"] for n, d in events if n == "content_block_delta"]


async def test_context_management_answers_what_it_applied(client: httpx.AsyncClient) -> None:
    turns = [
        {"role": "user", "content": "Plan the trip"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Paris first, then Lyon.", "signature": "s1"},
                {"type": "text", "text": "Paris, then Lyon."},
            ],
        },
        {"role": "user", "content": "And after?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Then Nice.", "signature": "s2"},
                {"type": "text", "text": "Nice."},
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]
    edits = {
        "edits": [
            {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}
        ]
    }
    body = _message(messages=turns, context_management=edits)
    message = BetaMessage.model_validate((await client.post(MESSAGES, json=body)).json())
    assert message.context_management is not None
    (applied,) = message.context_management.applied_edits
    assert applied.type == "clear_thinking_20251015"
    assert applied.cleared_thinking_turns == 1 and applied.cleared_input_tokens > 0
    streamed = named_events((await client.post(MESSAGES, json={**body, "stream": True})).text)
    delta = next(d for n, d in streamed if n == "message_delta")
    assert delta["context_management"] == message.context_management.model_dump()
    kept = _message(
        messages=turns,
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    )
    assert (await client.post(MESSAGES, json=kept)).json()["context_management"] == {
        "applied_edits": []
    }


# --- chat ---------------------------------------------------------------------------------


async def test_chat_custom_tools_are_called_as_custom_calls(client: httpx.AsyncClient) -> None:
    tool = {"type": "custom", "custom": {"name": "note", "description": "Write a note."}}
    body = {
        "messages": [{"role": "user", "content": "Note the plan for Paris"}],
        "tools": [tool],
        "tool_choice": {"type": "custom", "custom": {"name": "note"}},
    }
    completion = ChatCompletion.model_validate((await client.post(CHAT, json=body)).json())
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "custom" and call.custom.name == "note" and call.custom.input
    streamed = await client.post(CHAT, json={**body, "stream": True})
    chunks = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    calls = [
        c
        for chunk in chunks
        for choice in chunk["choices"]
        for c in choice["delta"].get("tool_calls") or ()
    ]
    assert calls[0]["type"] == "custom" and calls[0]["custom"]["name"] == "note"
    assert "".join(c["custom"]["input"] for c in calls) == call.custom.input


async def test_rules_script_custom_and_builtin_calls(tmp_path: Path) -> None:
    """A rule's string arguments are a custom tool's raw input; an object, a built-in's."""
    patch = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"
    rules = {
        "rules": [
            {
                "match": {"tool_name": "apply_patch", "user": "patch"},
                "respond": {"tool_calls": [{"name": "apply_patch", "arguments": patch}]},
            },
            {
                "match": {"tool_name": "shell"},
                "respond": {"tool_calls": [{"name": "shell", "arguments": {"commands": ["ls"]}}]},
            },
        ]
    }
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, rules_file=path))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        body = {"input": "Write the patch", "tools": [APPLY_PATCH]}
        events = await _stream(c, body)
        assert (
            next(d for n, d in events if n == "response.custom_tool_call_input.done")["input"]
            == patch
        )
        shell = (await c.post(RESPONSES, json={"input": "ls", "tools": [{"type": "shell"}]})).json()
        assert shell["output"][0]["type"] == "shell_call"
        assert shell["output"][0]["action"]["commands"] == ["ls"]


async def test_a_custom_tools_grammar_counts_in_the_prompt(client: httpx.AsyncClient) -> None:
    plain = {**APPLY_PATCH, "format": {"type": "text"}}
    counts = []
    for tool in (plain, APPLY_PATCH):
        body = {"input": "Hello", "tools": [tool], "tool_choice": "none"}
        counts.append((await client.post(RESPONSES, json=body)).json()["usage"]["input_tokens"])
    assert counts[1] > counts[0] + 100  # the Lark grammar is ~170 tokens of the prompt


async def test_mid_conversation_tool_changes_add_and_withdraw_tools(
    client: httpx.AsyncClient,
) -> None:
    deferred = {"name": "Deploy", "defer_loading": True, "input_schema": {"type": "object"}}
    read = {"name": "Read", "input_schema": {"type": "object"}}
    added = {"name": "Lint", "input_schema": {"type": "object"}}

    def turn(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": "Go"},
            {"role": "system", "content": [{"type": "text", "text": "Tools changed."}, *blocks]},
        ]

    async def status(messages: list[dict[str, Any]], name: str) -> int:
        body = _message(
            messages=messages, tools=[deferred, read], tool_choice={"type": "tool", "name": name}
        )
        return (await client.post(MESSAGES, json=body)).status_code

    load = {"type": "tool_addition", "tool": {"type": "tool_reference", "name": "Deploy"}}
    define = {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": added}}
    withdraw = {"type": "tool_removal", "tool": {"type": "tool_reference", "name": "Read"}}
    assert await status(turn(), "Deploy") == 400
    assert await status(turn(load), "Deploy") == 200
    assert await status(turn(define), "Lint") == 200
    assert await status(turn(), "Read") == 200
    assert await status(turn(withdraw), "Read") == 400
    bad = {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": {"x": 1}}}
    assert await status(turn(bad), "Read") == 400


async def test_a_deferred_responses_tool_is_callable_once_the_conversation_loads_it(
    client: httpx.AsyncClient,
) -> None:
    deploy = {
        "type": "function",
        "name": "deploy",
        "defer_loading": True,
        "parameters": {"type": "object"},
        "strict": False,
    }
    lint = {"type": "function", "name": "lint", "parameters": {"type": "object"}, "strict": False}
    search = {"type": "tool_search", "execution": "client"}

    async def status(items: list[dict[str, Any]], name: str) -> int:
        body = {
            "input": [{"role": "user", "content": "Ship it"}, *items],
            "tools": [deploy, search],
            "tool_choice": {"type": "function", "name": name},
        }
        return (await client.post(RESPONSES, json=body)).status_code

    found = {
        "type": "tool_search_output",
        "execution": "client",
        "call_id": "ts_1",
        "tools": [deploy],
    }
    more = {"type": "additional_tools", "role": "developer", "tools": [lint]}
    assert await status([], "deploy") == 400
    assert await status([found], "deploy") == 200
    assert await status([], "lint") == 400
    assert await status([more], "lint") == 200
