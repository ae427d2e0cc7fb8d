"""Checks on the tools and JSON Schemas a request brings, before any byte is sent.

Every ``$ref`` must point inside its schema: nothing is ever fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import SchemaError, validators

from streamapi.engines.protocol import ToolSpec
from streamapi.errors import InvalidRequestError


def check_schema(schema: Mapping[str, Any], *, param: str) -> None:
    """400 naming the problem when ``schema`` is not a valid JSON Schema.

    Every ``$ref`` must point inside the schema: nothing is fetched from elsewhere.
    """
    try:
        validators.validator_for(schema).check_schema(dict(schema))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        detail = f" at '{where}'" if where else ""
        raise InvalidRequestError(
            f"Invalid JSON Schema{detail}: {exc.message}", param=param
        ) from None
    for ref in _refs(schema):
        if not _resolves(schema, ref):
            raise InvalidRequestError(
                f"Invalid JSON Schema: the reference '{ref}' does not point inside the schema.",
                param=param,
            )


def _refs(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolves(root: Mapping[str, Any], ref: str) -> bool:
    if not ref.startswith("#"):
        return False
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def tool_spec(
    name: str, description: str | None, parameters: Mapping[str, Any] | None, *, param: str
) -> ToolSpec:
    """A checked tool definition."""
    schema = parameters if parameters is not None else {"type": "object", "properties": {}}
    check_schema(schema, param=param)
    return ToolSpec(name=name, description=description or "", parameters=schema)


def check_tool_choice(tools: Sequence[ToolSpec], choice: str, *, param: str) -> None:
    """400 when ``tool_choice`` cannot be honoured with these tools."""
    if choice in ("none", "auto"):
        return
    if not tools:
        raise InvalidRequestError(
            f"tool_choice '{choice}' is only allowed when tools are given.", param=param
        )
    if choice != "required" and choice not in {t.name for t in tools}:
        raise InvalidRequestError(
            f"tool_choice names the function '{choice}', which is not among the tools.",
            param=param,
        )
