"""Parsing what the server streams, strictly, for assertions."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx

DONE = "[DONE]"
# A stream that sends more events than this is a server bug, not a long answer.
MAX_EVENTS = 5_000


async def live_payloads(response: httpx.Response) -> AsyncGenerator[str]:
    """The ``data:`` payloads of a streamed response, as they arrive."""
    pending = b""
    count = 0
    # aiter_raw is an async generator, typed as a plain iterator.
    raw = cast(AsyncGenerator[bytes], response.aiter_raw())
    async with contextlib.aclosing(raw) as pieces:
        async for piece in pieces:
            *frames, pending = (pending + piece).split(b"\n\n")
            for frame in frames:
                count += 1
                assert count < MAX_EVENTS, "runaway stream"
                assert frame.startswith(b"data: "), frame
                yield frame[len(b"data: ") :].decode()


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
