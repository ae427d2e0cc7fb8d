"""Every request type the installed official SDKs define is accepted: walked, not listed.

The test walks the ``openai`` and ``anthropic`` packages' request type unions (tools,
input items, messages, content blocks, tool results' content), builds one example
of each member from its TypedDict's required keys (or a pydantic model's required
fields, which the Anthropic SDK also takes back as params), and sends it to the
app. None may be refused: so a newer SDK in the lock shows at once which member
the server does not know yet, by name.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import httpx
import pytest
import typing_extensions
from anthropic.types import (
    content_block_param,
    message_param,
    thinking_config_param,
    tool_choice_param,
    tool_result_block_param as anthropic_tool_result,
    tool_union_param,
)
from anthropic.types.beta import (
    beta_content_block_param,
    beta_message_param,
    beta_thinking_config_param,
    beta_tool_choice_param,
    beta_tool_result_block_param,
    beta_tool_union_param,
)
from openai.types.chat import (
    chat_completion_content_part_param,
    chat_completion_message_param,
    chat_completion_tool_choice_option_param,
    chat_completion_tool_union_param,
)
from openai.types.responses import (
    response_create_params,
    response_input_content_param,
    response_input_item_param,
    tool_param,
)
from pydantic import BaseModel

from streamapi.serving import compaction

# Models whose names read images (--vision-model-pattern's default).
OPENAI_MODEL = "gpt-5-sim"
ANTHROPIC_MODEL = "claude-sim"
_WRAPPERS = {
    typing.Required,
    typing.NotRequired,
    typing_extensions.Required,
    typing_extensions.NotRequired,
    typing.ReadOnly if hasattr(typing, "ReadOnly") else typing.Required,
}


def members(union: Any) -> list[Any]:
    """A union's members, nested unions and ``Annotated`` unwrapped."""
    if get_origin(union) is typing.Annotated:
        return members(get_args(union)[0])
    if get_origin(union) in (Union, types.UnionType):
        return [m for arg in get_args(union) for m in members(arg)]
    return [union]


def type_name(member: Any) -> str:
    """What the member's ``type`` (or ``role``) field must be: its first literal."""
    for key in ("type", "role"):
        hints = _hints(member)
        if key in hints:
            literal = _first_literal(hints[key])
            if literal is not None:
                return f"{key}={literal}"
    return getattr(member, "__name__", str(member))


class Examples:
    """Builds a value of a type from its required parts, the first choice of each union."""

    def __init__(self) -> None:
        self._stack: list[Any] = []

    def of(self, annotation: Any) -> Any:
        origin, args = get_origin(annotation), get_args(annotation)
        if origin in _WRAPPERS or origin is typing.Annotated:
            return self.of(args[0])
        if origin is Literal:
            return args[0]
        if origin in (Union, types.UnionType):
            concrete = [a for a in args if a is not type(None)]
            return self.of(concrete[0]) if concrete else None
        if origin in (list, typing.List, typing.Iterable) or _is_sequence(origin):  # noqa: UP006
            return [self.of(args[0])] if args else []
        if origin in (dict, typing.Dict) or annotation in (dict, object):  # noqa: UP006
            return {}
        if annotation is str:
            return "x"
        if annotation is bool:
            return False
        if annotation in (int, float):
            return 1
        if annotation is type(None):
            return None
        if _is_typed_dict(annotation) or _is_model(annotation):
            return self._object(annotation)
        if _is_sequence(annotation):
            return []
        return "x"

    def _object(self, kind: Any) -> dict[str, Any]:
        if kind in self._stack:
            return {}
        self._stack.append(kind)
        try:
            return {key: self.of(hint) for key, hint in _required(kind).items()}
        finally:
            self._stack.pop()


def _is_sequence(origin: Any) -> bool:
    return getattr(origin, "__name__", "") in ("SequenceNotStr", "Sequence", "Iterable")


def _is_typed_dict(kind: Any) -> bool:
    return isinstance(kind, type) and typing_extensions.is_typeddict(kind)


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _hints(kind: Any) -> dict[str, Any]:
    if _is_model(kind):
        return {name: f.annotation for name, f in kind.model_fields.items()}
    if _is_typed_dict(kind):
        return typing.get_type_hints(kind, include_extras=True)
    return {}


def _required(kind: Any) -> dict[str, Any]:
    if _is_model(kind):
        return {
            field.alias or name: field.annotation
            for name, field in kind.model_fields.items()
            if field.is_required()
        }
    # Read from the hints: with postponed annotations (as the SDKs write them) Python
    # 3.11's ``__required_keys__`` misses ``Required[...]`` keys of a ``total=False`` dict.
    hints = _hints(kind)
    total = getattr(kind, "__total__", True)
    required = {}
    for key, hint in hints.items():
        origin = get_origin(hint)
        if origin in (typing.Required, typing_extensions.Required) or (
            total and origin not in (typing.NotRequired, typing_extensions.NotRequired)
        ):
            required[key] = hint
    return required


def _first_literal(annotation: Any) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return args[0]
    if origin in _WRAPPERS or origin is typing.Annotated or origin in (Union, types.UnionType):
        for arg in args:
            found = _first_literal(arg)
            if found is not None:
                return found
    return None


def build(member: Any) -> Any:
    return Examples().of(member)


# --- what each union's example is sent in -------------------------------------------------

# An output item must answer a call made earlier in the conversation: the call first.
_CALL_FOR_OUTPUT: dict[str, dict[str, Any]] = {
    "function_call_output": {"type": "function_call", "name": "x", "arguments": "{}"},
    "custom_tool_call_output": {"type": "custom_tool_call", "name": "x", "input": "x"},
    "local_shell_call_output": {
        "type": "local_shell_call",
        "status": "completed",
        "action": {"type": "exec", "command": ["ls"], "env": {}},
    },
    "shell_call_output": {"type": "shell_call", "action": {"commands": ["ls"]}},
    "apply_patch_call_output": {
        "type": "apply_patch_call",
        "status": "completed",
        "operation": {"type": "delete_file", "path": "x"},
    },
}


def responses_input_item(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("type") == "compaction":
        # Only a compaction this server made can be read back: an empty one.
        item = {**item, "encrypted_content": compaction.encode([])}
    call = _CALL_FOR_OUTPUT.get(str(item.get("type")))
    items = [{"role": "user", "content": "Hello"}]
    call_id = (
        item.get("id") if item.get("type") == "local_shell_call_output" else item.get("call_id")
    )
    if call is not None and call_id is not None:
        items.append({**call, "call_id": call_id, "id": "fc_1"})
    return {"model": OPENAI_MODEL, "input": [*items, item]}


def responses_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "input": "Hello", "tools": [tool]}


def responses_content(part: dict[str, Any]) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "input": [{"role": "user", "content": [part]}]}


def responses_tool_choice(choice: Any) -> dict[str, Any]:
    # A named choice names the tool offered: "x" as a function, a custom tool and an MCP one.
    tools = [
        {"type": "function", "name": "x", "parameters": None, "strict": None},
        {"type": "shell"},
        {"type": "apply_patch"},
        {"type": "mcp", "server_label": "x"},
    ]
    if isinstance(choice, dict) and choice.get("type") == "custom":
        tools[0] = {"type": "custom", "name": "x"}
    return {"model": OPENAI_MODEL, "input": "Hello", "tools": tools, "tool_choice": choice}


def chat_tool_choice(choice: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "function", "function": {"name": "x"}}
    if isinstance(choice, dict) and choice.get("type") == "custom":
        tool = {"type": "custom", "custom": {"name": "x"}}
    return {**chat_tool(tool), "tool_choice": choice}


def anthropic_tool_choice(choice: Any) -> dict[str, Any]:
    tool = {"name": "x", "input_schema": {"type": "object"}}
    return {**anthropic_tool(tool), "tool_choice": choice}


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": [tool]}


def chat_message(message: dict[str, Any]) -> dict[str, Any]:
    first: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
    if message.get("role") == "tool":
        call = {"id": message["tool_call_id"], "type": "function"}
        call["function"] = {"name": "x", "arguments": "{}"}
        first.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return {"model": OPENAI_MODEL, "messages": [*first, message]}


def chat_content(part: dict[str, Any]) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": [part]}]}


def _messages(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": ANTHROPIC_MODEL, "max_tokens": 64, "messages": messages, **extra}


def anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return _messages([{"role": "user", "content": "Hi"}], tools=[tool])


def anthropic_block(block: dict[str, Any]) -> dict[str, Any]:
    return _messages([{"role": "user", "content": [block]}, {"role": "user", "content": "Go on."}])


def anthropic_tool_result_part(part: dict[str, Any]) -> dict[str, Any]:
    call = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [part]}
    return _messages(
        [
            {"role": "user", "content": "Read it."},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ]
    )


def anthropic_message(message: dict[str, Any]) -> dict[str, Any]:
    return _messages([{"role": "user", "content": "Hi"}, message])


def anthropic_thinking(thinking: dict[str, Any]) -> dict[str, Any]:
    return _messages([{"role": "user", "content": "Hi"}], thinking=thinking)


# (union, path, how an example of a member is sent)
UNIONS: list[tuple[str, Any, str, Any]] = [
    ("responses ToolParam", tool_param.ToolParam, "/v1/responses", responses_tool),
    (
        "responses ResponseInputItemParam",
        response_input_item_param.ResponseInputItemParam,
        "/v1/responses",
        responses_input_item,
    ),
    (
        "responses ResponseInputContentParam",
        response_input_content_param.ResponseInputContentParam,
        "/v1/responses",
        responses_content,
    ),
    (
        "chat ChatCompletionToolUnionParam",
        chat_completion_tool_union_param.ChatCompletionToolUnionParam,
        "/v1/chat/completions",
        chat_tool,
    ),
    (
        "chat ChatCompletionMessageParam",
        chat_completion_message_param.ChatCompletionMessageParam,
        "/v1/chat/completions",
        chat_message,
    ),
    (
        "chat ChatCompletionContentPartParam",
        chat_completion_content_part_param.ChatCompletionContentPartParam,
        "/v1/chat/completions",
        chat_content,
    ),
    (
        "responses ToolChoice",
        response_create_params.ToolChoice,
        "/v1/responses",
        responses_tool_choice,
    ),
    (
        "chat ChatCompletionToolChoiceOptionParam",
        chat_completion_tool_choice_option_param.ChatCompletionToolChoiceOptionParam,
        "/v1/chat/completions",
        chat_tool_choice,
    ),
    (
        "messages ToolChoiceParam",
        tool_choice_param.ToolChoiceParam,
        "/v1/messages",
        anthropic_tool_choice,
    ),
    (
        "messages BetaToolChoiceParam",
        beta_tool_choice_param.BetaToolChoiceParam,
        "/v1/messages",
        anthropic_tool_choice,
    ),
    ("messages ToolUnionParam", tool_union_param.ToolUnionParam, "/v1/messages", anthropic_tool),
    (
        "messages BetaToolUnionParam",
        beta_tool_union_param.BetaToolUnionParam,
        "/v1/messages",
        anthropic_tool,
    ),
    (
        "messages ContentBlockParam",
        content_block_param.ContentBlockParam,
        "/v1/messages",
        anthropic_block,
    ),
    (
        "messages BetaContentBlockParam",
        beta_content_block_param.BetaContentBlockParam,
        "/v1/messages",
        anthropic_block,
    ),
    (
        "messages tool_result content",
        anthropic_tool_result.Content,
        "/v1/messages",
        anthropic_tool_result_part,
    ),
    (
        "messages beta tool_result content",
        beta_tool_result_block_param.Content,
        "/v1/messages",
        anthropic_tool_result_part,
    ),
    ("messages MessageParam", message_param.MessageParam, "/v1/messages", anthropic_message),
    (
        "messages ThinkingConfigParam",
        thinking_config_param.ThinkingConfigParam,
        "/v1/messages",
        anthropic_thinking,
    ),
    (
        "messages BetaThinkingConfigParam",
        beta_thinking_config_param.BetaThinkingConfigParam,
        "/v1/messages",
        anthropic_thinking,
    ),
    (
        "messages BetaMessageParam",
        beta_message_param.BetaMessageParam,
        "/v1/messages",
        anthropic_message,
    ),
]


def variants(member: Any) -> Iterator[tuple[str, Any]]:
    """One example per value of the member's ``type`` literal (dated aliases included), or
    the literal itself for a member that is a string literal (``"auto"``...)."""
    if get_origin(member) is Literal:
        for value in get_args(member):
            yield f"{value}", value
        return
    example = build(member)
    hint = _hints(member).get("type")
    values = _literals(hint) if hint is not None else []
    if len(values) <= 1:
        yield type_name(member), example
    for value in values if len(values) > 1 else ():
        yield f"type={value}", {**example, "type": value}
    # Every value of each other field that is a literal (an image's detail, a thinking
    # display): a value the SDK allows is a value a client sends.
    for key, annotation in _hints(member).items():
        if key in ("type", "role"):
            continue
        for value in _literals(annotation):
            yield f"{type_name(member)}:{key}={value}", {**example, key: value}


def _literals(annotation: Any) -> list[Any]:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin in _WRAPPERS or origin is typing.Annotated or origin in (Union, types.UnionType):
        return [value for arg in args for value in _literals(arg)]
    return []


def cases() -> Iterator[Any]:
    for label, union, path, wrap in UNIONS:
        for member in members(union):
            for name, example in variants(member):
                yield pytest.param(path, wrap(example), id=f"{label}:{name}")


CASES = list(cases())


def test_the_walk_finds_every_union_and_the_members_it_must() -> None:
    """The walk itself: each union yields members, and the ones Codex and Claude Code send."""
    ids = {case.id for case in CASES}
    assert len(CASES) > 100
    for needed in (
        "responses ToolParam:type=namespace",
        "responses ToolParam:type=custom",
        "responses ToolParam:type=web_search",
        "responses ResponseInputItemParam:type=custom_tool_call_output",
        "messages tool_result content:type=image",
        "messages tool_result content:type=tool_reference",
        "messages MessageParam:role=system",
        "messages BetaToolUnionParam:type=bash_20250124",
        "responses ResponseInputContentParam:type=input_image:detail=original",
        "messages BetaThinkingConfigParam:type=enabled:display=updates",
    ):
        assert needed in ids


@pytest.mark.parametrize(("path", "body"), CASES)
async def test_every_member_of_the_sdks_request_unions_is_accepted(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
