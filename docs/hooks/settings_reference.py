"""MkDocs hook: the settings reference, generated from ``streamapi.settings.Settings``.

``docs/settings.md`` holds a marker; at build time it is replaced by a table with one row
per settings field (option, environment variable, type, default, description). The
description is the field's ``--help`` text, so the reference cannot drift from the code.
``tests/test_docs.py`` checks that the table covers every field.
"""

from __future__ import annotations

import html
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from streamapi.settings import LATENCY_PROFILES, Settings

MARKER = "<!-- settings-reference -->"
ENV_PREFIX = "STREAMAPI_"

# The fields a latency profile presets: their default depends on --latency-profile.
_PROFILE_FIELDS = frozenset(
    name for preset in LATENCY_PROFILES.values() for name in preset.__dataclass_fields__
)
_PLAIN_TYPES: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "file path",
    SecretStr: "secret",
}


def option_name(field: str) -> str:
    """The ``streamapi serve`` option of a settings field (``--max-num-seqs``)."""
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    """The environment variable of a settings field (``STREAMAPI_MAX_NUM_SEQS``)."""
    return ENV_PREFIX + field.upper()


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (" (optional)" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}s"
    return _PLAIN_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    # pydantic keeps Field(ge=..., le=...) as constraint objects named after the keyword.
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts: list[str] = []
    for item in info.metadata:
        for keyword, word in words.items():
            value = getattr(item, keyword, None)
            if value is not None:
                parts.append(f"{word} {value}")
        if getattr(item, "min_length", 0):
            parts.append(f"at least {item.min_length} item")
    return ", ".join(parts)


def _default(name: str, info: FieldInfo) -> str:
    value = info.default
    if isinstance(value, SecretStr):
        value = "**********"
    if value is None:
        shown = "unset"
    elif isinstance(value, str):
        shown = f"`{value}`"  # a pipe inside a code span does not split the cell
    else:
        shown = f"`{json.dumps(value, default=str)}`"
    if name in _PROFILE_FIELDS:
        return f"[profile](engine-model.md#latency-profiles) ({shown} in `default`)"
    return shown


def table_cell(text: str) -> str:
    """Help text as a table cell."""
    # Descriptions are plain help text: escape what Markdown tables and HTML would read.
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def settings_reference() -> str:
    """The Markdown table of every ``Settings`` field, in declaration order."""
    rows = [
        "| option | environment variable | type | default | what it does |",
        "|---|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        option = f"`{option_name(name)}`"
        if info.annotation is bool:
            option += f"<br>`--no-{name.replace('_', '-')}`"
        kind = _type_name(info.annotation)
        bounds = _bounds(info)
        if bounds:
            kind += f" ({bounds})"
        anchor = f'<span id="{name.replace("_", "-")}"></span>'
        rows.append(
            f"| {anchor}{option} | `{env_name(name)}` | {kind} | {_default(name, info)} "
            f"| {table_cell(info.description or '')} |"
        )
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """MkDocs event: put the generated table where the page has the marker."""
    return markdown.replace(MARKER, settings_reference()) if MARKER in markdown else markdown
