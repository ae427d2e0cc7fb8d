"""The tools a client runs itself, as each protocol defines them, for the engine.

The engine knows two kinds of tool (``engines.protocol.ToolSpec``): JSON functions
and free-form (custom) tools. Each protocol's other client tools become one of
those here, with an input schema shaped like the call the protocol reports, so
that the call the engine makes can be turned back into that protocol's item or
block:

- Responses: ``function`` and ``custom`` tools, the functions of a ``namespace``
  (each by its own name; the call names its namespace), ``shell``
  (a ``shell_call`` with ``action.commands``), ``local_shell`` (a
  ``local_shell_call`` with an ``exec`` action) and ``apply_patch`` (an
  ``apply_patch_call`` with a ``create_file`` operation). Hosted tools
  (web search, file search, code interpreter, image generation, MCP, computer
  use, tool search) are accepted and never called.
- Messages: custom tools, and Anthropic's versioned client tools (``bash_*``,
  ``text_editor_*``, ``memory_*``, ``computer_*``) under the name the request
  gives them, with the input Anthropic documents for each. Server tools
  (``web_search_*``, ``web_fetch_*``, ``code_execution_*``, tool search,
  MCP toolsets...) are accepted and never called.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamapi.engines.protocol import ToolSpec
from streamapi.serving.schema_checks import tool_spec

_COMMANDS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "maxItems": 1,
}
# Each built-in Responses tool: its description for the engine, and its input schema.
RESPONSES_BUILTINS: dict[str, tuple[str, dict[str, Any]]] = {
    "shell": (
        "Run shell commands on the user's machine.",
        {"type": "object", "properties": {"commands": _COMMANDS}, "required": ["commands"]},
    ),
    "local_shell": (
        "Run a command on the user's machine.",
        {"type": "object", "properties": {"command": _COMMANDS}, "required": ["command"]},
    ),
    "apply_patch": (
        "Create a file with the given content.",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,15}\.txt$"},
                "content": {"type": "string", "minLength": 1},
            },
            "required": ["path", "content"],
        },
    ),
}
_ITEM_TYPES = {
    "shell": "shell_call",
    "local_shell": "local_shell_call",
    "apply_patch": "apply_patch_call",
}


@dataclass(frozen=True, slots=True)
class ToolBook:
    """The engine's tools for one request, and how each one's call is reported."""

    specs: tuple[ToolSpec, ...] = ()
    item_types: Mapping[str, str] = field(default_factory=dict)
    """Tool name to the Responses item type its call is (``function_call`` if absent)."""
    namespaces: Mapping[str, str] = field(default_factory=dict)
    """A namespaced function's name to its namespace's."""

    def item_type(self, name: str) -> str:
        return self.item_types.get(name, "function_call")


def responses_tools(tools: list[Any], loaded: Sequence[Any] = ()) -> ToolBook:
    """The engine's tools for a Responses ``tools`` list (``schemas.responses`` models).

    A ``defer_loading`` tool is left out until the conversation loads it: ``loaded``
    holds the tools of its ``tool_search_output`` and ``additional_tools`` items,
    each callable whatever its own ``defer_loading``.
    """
    specs: list[ToolSpec] = []
    item_types: dict[str, str] = {}
    namespaces: dict[str, str] = {}
    loaded_names = {
        inner.name
        for tool in loaded
        for inner in getattr(tool, "tools", None) or [tool]
        if hasattr(inner, "name")
    }
    seen: set[str] = set()

    def add(tool: Any, param: str, namespace: str | None = None, *, load: bool = False) -> None:
        if tool.name in seen or (tool.defer_loading and not load and tool.name not in loaded_names):
            return
        seen.add(tool.name)
        if tool.type == "function":
            specs.append(tool_spec(tool.name, tool.description, tool.parameters, param=param))
        else:
            fmt = tool.format.model_dump(exclude_none=True) if tool.format else {"type": "text"}
            specs.append(ToolSpec(tool.name, tool.description or "", {}, format=fmt))
            item_types[tool.name] = "custom_tool_call"
        if namespace is not None:
            namespaces[tool.name] = namespace

    offered = [(tool, f"tools[{i}]", False) for i, tool in enumerate(tools)]
    offered += [(tool, "input", True) for tool in loaded]
    for tool, where, load in offered:
        if tool.type in ("function", "custom"):
            add(tool, f"{where}.parameters", load=load)
        elif tool.type == "namespace":
            for inner_index, inner in enumerate(tool.tools):
                param = f"{where}.tools[{inner_index}].parameters"
                add(inner, param, tool.name, load=load)
        elif tool.type in RESPONSES_BUILTINS and tool.type not in seen:
            seen.add(tool.type)
            description, schema = RESPONSES_BUILTINS[tool.type]
            specs.append(ToolSpec(tool.type, description, schema))
            item_types[tool.type] = _ITEM_TYPES[tool.type]
    return ToolBook(tuple(specs), item_types, namespaces)


def builtin_action(item_type: str, arguments: str) -> dict[str, Any]:
    """The action (or operation) of a built-in tool's call, from the engine's arguments."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        parsed = {}  # cut short by max_output_tokens
    if not isinstance(parsed, dict):
        parsed = {}
    if item_type == "shell_call":
        commands = [str(c) for c in parsed.get("commands") or ()]
        return {"action": {"commands": commands, "timeout_ms": None, "max_output_length": None}}
    if item_type == "local_shell_call":
        command = [str(c) for c in parsed.get("command") or ()]
        return {"action": {"type": "exec", "command": command, "env": {}}}
    content = str(parsed.get("content", ""))
    diff = "".join(f"+{line}\n" for line in content.splitlines() or [""])
    operation = {"type": "create_file", "path": str(parsed.get("path", "notes.txt")), "diff": diff}
    return {"operation": operation}


# --- Anthropic --------------------------------------------------------------------------

_BASH = {
    "type": "object",
    "properties": {"command": {"type": "string", "minLength": 1}},
    "required": ["command"],
}
_EDITOR = {
    "type": "object",
    "properties": {
        "command": {"const": "view"},
        "path": {"type": "string", "pattern": r"^/tmp/[a-z][a-z0-9_]{0,15}\.txt$"},
    },
    "required": ["command", "path"],
}
# The memory tool works under /memories, as Anthropic documents it.
_MEMORY = {
    "type": "object",
    "properties": {
        "command": {"const": "view"},
        "path": {"type": "string", "pattern": r"^/memories(/[a-z][a-z0-9_]{0,15}\.md)?$"},
    },
    "required": ["command", "path"],
}
_COMPUTER = {
    "type": "object",
    "properties": {"action": {"const": "screenshot"}},
    "required": ["action"],
}
# Anthropic's client tools, by their type's name before the version date.
ANTHROPIC_CLIENT_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash": ("Run a shell command.", _BASH),
    "text_editor": ("View and edit text files.", _EDITOR),
    "memory": ("Read and write the memory directory.", _MEMORY),
    "computer": ("Use the computer's screen, keyboard and mouse.", _COMPUTER),
}


def anthropic_client_tool(tool_type: str) -> tuple[str, dict[str, Any]] | None:
    """The description and input schema of a versioned client tool (``bash_20250124``...)."""
    family = tool_type.rsplit("_", 1)[0]
    return ANTHROPIC_CLIENT_TOOLS.get(family)
