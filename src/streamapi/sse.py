"""Server-Sent Events framing: the only place that writes SSE bytes.

Frames are pre-encoded ``bytes`` that sse-starlette passes through untouched,
so the framing is exactly what OpenAI's clients parse:

- ``\\n`` line endings, not sse-starlette's default ``\\r\\n`` (vLLM's
  benchmark splits events on ``\\n\\n`` only);
- no ``id:`` field: the openai SDK never forgets a last event id, and with one
  set every keep-alive comment would dispatch an empty event that crashes it;
- keep-alives are ``:`` comments, never ``event: ping``, and off by default;
- one line of compact JSON per ``data:`` field.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
SEP = "\n"
# sse-starlette defaults to no-store; the original spec and proxies want no-cache.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
# [DONE] is not JSON: OpenAI's clients stop on it before parsing.
DONE = b"data: [DONE]\n\n"


def encode_data(payload: Any) -> bytes:
    """``data: <json>\\n\\n`` for one JSON-serialisable payload."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_event(event: str, payload: Any) -> bytes:
    """A named event (``event: <name>``), as the Anthropic and Responses streams use."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AbortConnection(BaseException):
    """Raised by a stream's frames to cut the connection without ending the body.

    A ``BaseException``, so that the services' ``except Exception`` (which turns
    failures into in-stream error events) lets it through: the point is that
    the client sees a chunked body that never ends, as when a network drops.
    """


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep=SEP)


class EventStreamResponse(EventSourceResponse):
    """sse-starlette's response with OpenAI framing, and hooks around the whole stream.

    ``on_start`` and ``on_finish`` (awaited) run around the entire response,
    not inside the generator: a client that disconnects before the generator's
    first step never runs the generator's ``finally`` (sse-starlette #156), but
    always runs this one.
    """

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        ping_interval_s: float,
        send_timeout_s: float,
        headers: dict[str, str] | None = None,
        on_start: Callable[[], None] | None = None,
        on_finish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            frames,
            headers={**HEADERS, **(headers or {})},
            sep=SEP,
            ping=ping_interval_s,
            ping_message_factory=_ping,
            send_timeout=send_timeout_s,
        )
        self._on_start = on_start
        self._on_finish = on_finish

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette wraps every send in an anyio cancel scope, which costs more
        # than the rest of a frame's work; one timer per send, cancelled at once
        # when the send returns (the usual case), gives the same SendTimeoutError.
        if self.send_timeout is None:
            await send(message)
            return
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.send_timeout, expire)
        try:
            await send(message)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            raise SendTimeoutError() from None
        finally:
            timer.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._on_start is not None:
            self._on_start()
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # A client that stopped reading; sse-starlette has closed the generator.
            logger.warning("Dropped a stream whose client stopped reading")
        except AbortConnection:
            # Returning with the body unfinished makes the server close the
            # socket: the client gets an incomplete chunked body, not an event.
            logger.info("Cut a stream's connection on purpose (an injected fault)")
        finally:
            if self._on_finish is not None:
                await self._on_finish()
