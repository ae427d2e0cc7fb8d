"""The opaque ``encrypted_content`` of a compaction item (``POST /v1/responses/compact``).

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
