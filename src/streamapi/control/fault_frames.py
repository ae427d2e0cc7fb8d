"""Frame-level faults: ``no_done``, ``malformed`` and ``no_usage`` on the frames to the socket.

``watch_frames`` also tells the request's journal entry how the stream ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from streamapi import sse
from streamapi.aio import aclose_iterator
from streamapi.control.fault_streams import Watch

# The last event of each protocol's stream.
_TERMINAL_PREFIXES = (
    b"event: message_stop\n",
    b"event: response.completed\n",
    b"event: response.incomplete\n",
    b"event: response.failed\n",
)


async def watch_frames(frames: AsyncIterator[bytes], watch: Watch) -> AsyncIterator[bytes]:
    """``frames`` with the frame-level faults applied, the journal told how the stream ended."""
    faults = watch.faults
    no_done = faults.get("no_done") is not None
    no_usage = faults.get("no_usage") is not None
    malformed = faults.get("malformed")
    entry = watch.entry
    try:
        async for frame in frames:
            out = _without_events(frame, no_done=no_done, no_usage=no_usage)
            if not out:
                continue
            if (
                malformed is not None
                and "malformed" not in watch.fired
                and watch.tokens >= (malformed.after or 0)
                and b"data: {" in out
            ):
                watch.fired.add("malformed")
                out = _cut_json(out)
            yield out
        if entry is not None and entry.outcome == "in_progress":
            entry.outcome = "completed"
    except GeneratorExit:
        if entry is not None and entry.outcome == "in_progress":
            entry.outcome = "client_disconnected"
        raise
    finally:
        await aclose_iterator(frames)


def _without_events(frame: bytes, *, no_done: bool, no_usage: bool) -> bytes:
    """``frame`` without its terminal event (``no_done``) and its usage (``no_usage``).

    A frame is one write and may hold several events: a stream's last token, its finish
    and usage chunks and ``[DONE]`` go out together. Each event is looked at alone.
    """
    if not no_done and not no_usage:
        return frame
    kept: list[bytes] = []
    for event in frame.split(b"\n\n"):
        if not event:
            continue
        event += b"\n\n"
        if no_done and (event == sse.DONE or event.startswith(_TERMINAL_PREFIXES)):
            continue
        out = _without_usage(event) if no_usage else event
        if out is not None:
            kept.append(out)
    return b"".join(kept)


def _cut_json(frame: bytes) -> bytes:
    """The frame's first event with its JSON cut in half: what a proxy that truncates a write sends.

    A write may hold several events (tokens ready together); cutting the first
    one's JSON, and sending nothing after it, makes sure the client gets JSON it
    cannot parse, wherever the events' boundaries fall.
    """
    head, marker, rest = frame.partition(b"data: ")
    payload = rest.split(b"\n\n", 1)[0].rstrip(b"\n")
    return head + marker + payload[: max(1, len(payload) // 2)] + b"\n\n"


def _without_usage(frame: bytes) -> bytes | None:
    """One event with its usage taken out (None: drop the event).

    OpenAI's data-only streams lose their usage chunk; Anthropic's
    ``message_delta`` loses its ``usage``; a Response's terminal event reports
    ``usage: null``.
    """
    if frame.startswith(b"data: {") and b'"choices":[]' in frame and b'"usage":{' in frame:
        return None
    if frame.startswith(b"event: message_delta\n"):
        payload = _payload(frame)
        payload.pop("usage", None)
        return sse.encode_event("message_delta", payload)
    if frame.startswith((b"event: response.completed\n", b"event: response.incomplete\n")):
        name = frame.split(b"\n", 1)[0].removeprefix(b"event: ").decode()
        payload = _payload(frame)
        payload["response"]["usage"] = None
        return sse.encode_event(name, payload)
    return frame


def _payload(frame: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(frame.partition(b"data: ")[2])
    return payload
