"""Parsing what the server streams, strictly, for assertions."""

from __future__ import annotations

import json
from typing import Any

DONE = "[DONE]"


def events(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking OpenAI's framing on the way."""
    assert "\r" not in body, "frames must use \\n, not \\r\\n"
    assert body.endswith("\n\n"), "the body must end with a complete event"
    payloads = []
    for frame in body[:-2].split("\n\n"):
        lines = frame.split("\n")
        assert len(lines) == 1, f"one data line per event: {frame!r}"
        assert lines[0].startswith("data: "), f"only data fields: {frame!r}"
        payloads.append(lines[0][len("data: ") :])
    return payloads


def chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks of a stream that ends with ``[DONE]``."""
    payloads = events(body)
    assert payloads[-1] == DONE
    assert DONE not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def content(body: str) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks(body) if c["choices"]
    )
