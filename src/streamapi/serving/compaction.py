"""The opaque ``encrypted_content`` of compaction and reasoning items.

A compaction item comes from ``POST /v1/responses/compact``; a reasoning item
has one when a request's ``include`` asks for ``reasoning.encrypted_content``
(as Codex does with ``store: false``), to hand the reasoning back later.

OpenAI encrypts a compacted conversation so that only its own servers can read
it back. The simulator has nothing to hide and does not summarise: the content
is the conversation's messages themselves, as base64url of their JSON behind a
version prefix, so a later request that hands the item back continues the very
same conversation (on this server or on any other streamapi).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

import orjson

from streamapi.engines.protocol import PromptMessage, PromptToolCall

PREFIX = "streamapi.compaction.v1."


def encode(messages: Iterable[PromptMessage]) -> str:
    """The ``encrypted_content`` that stands for ``messages``."""
    payload = [
        {
            "role": m.role,
            "content": m.content,
            "name": m.name,
            "tool_call_id": m.tool_call_id,
            "tool_calls": [[c.id, c.name, c.arguments] for c in m.tool_calls],
        }
        for m in messages
    ]
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(payload)).decode()


def decode(content: str) -> list[PromptMessage] | None:
    """The messages ``encode`` packed in ``content``; None if it is not such content."""
    if not content.startswith(PREFIX):
        return None
    try:
        payload: Any = orjson.loads(base64.urlsafe_b64decode(content[len(PREFIX) :]))
        return [
            PromptMessage(
                str(m["role"]),
                str(m["content"]),
                m["name"],
                tuple(PromptToolCall(str(i), str(n), str(a)) for i, n, a in m["tool_calls"]),
                m["tool_call_id"],
            )
            for m in payload
        ]
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


REASONING_PREFIX = "streamapi.reasoning.v1."


def encode_reasoning(text: str) -> str:
    """The ``encrypted_content`` of a reasoning item that thought ``text``."""
    return REASONING_PREFIX + base64.urlsafe_b64encode(text.encode()).decode()


def decode_reasoning(content: str) -> str | None:
    """The reasoning ``encode_reasoning`` packed in ``content``; None if it is not ours."""
    if not content.startswith(REASONING_PREFIX):
        return None
    try:
        packed = content[len(REASONING_PREFIX) :]
        return base64.b64decode(packed, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
