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

from streamapi.lifecycle import DRAIN_EXPIRED
from streamapi.scope_keys import BODY_SEND as BODY_SEND_KEY

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


# Marks the one string of a DataTemplate's payload that each frame fills in
# (private-use characters: no text a client sends is expected to hold them).
HOLE = "\ue000streamapi-hole\ue000"
_ENCODED_HOLE = orjson.dumps(HOLE)


class DataTemplate:
    """``encode_data`` for payloads that differ only in one string, pre-encoded once.

    A streamed answer's chunks repeat the same id, model and framing around one
    token of text: encoding that frame once and splicing each token's JSON
    string into it costs a fraction of building and encoding a dict per token.
    The result is byte for byte what ``encode_data`` gives for the same payload.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, payload: Any) -> None:
        """``payload`` holds ``HOLE`` as its last string that might repeat it."""
        head, hole, tail = encode_data(payload).rpartition(_ENCODED_HOLE)
        if not hole:
            raise ValueError("a DataTemplate's payload must hold HOLE")
        self._head = head
        self._tail = tail

    def fill(self, text: str) -> bytes:
        """The frame with ``text`` where ``HOLE`` was."""
        return self._head + orjson.dumps(text) + self._tail


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
    always runs this one. ``on_complete`` runs once every frame has been sent,
    before the body's end: only a stream that ran to its end calls it.
    """

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        ping_interval_s: float,
        send_timeout_s: float,
        headers: dict[str, str] | None = None,
        on_start: Callable[[], None] | None = None,
        on_complete: Callable[[], None] | None = None,
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
        self._on_complete = on_complete
        self._on_finish = on_finish

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        """``send``, or ``SendTimeoutError`` if the client takes over ``send_timeout`` to take it.

        Only the rare sends come here (pings, sse-starlette's HEAD path); the
        stream's frames go through ``_SendWatchdog``. sse-starlette wraps each
        send in an anyio cancel scope; one timer, cancelled as soon as the send
        returns, gives the same ``SendTimeoutError`` for less.
        """
        if self.send_timeout is None:
            await send(message)
            return
        task = asyncio.current_task()
        assert task is not None
        timer = asyncio.get_running_loop().call_later(
            self.send_timeout, task.cancel, _SEND_TIMED_OUT
        )
        try:
            await send(message)
        except asyncio.CancelledError as cancel:
            if cancel.args != (_SEND_TIMED_OUT,):
                raise
            task.uncancel()
            raise SendTimeoutError() from None
        finally:
            timer.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._on_start is not None:
            self._on_start()
        try:
            if scope["method"] == "HEAD":
                await super().__call__(scope, receive, send)
            else:
                await self._serve(receive, send, scope.get(BODY_SEND_KEY, send))
        except SendTimeoutError:
            # A client that stopped reading; its generator has been closed.
            logger.warning("Dropped a stream whose client stopped reading")
        except AbortConnection:
            # Returning with the body unfinished makes the server close the
            # socket: the client gets an incomplete chunked body, not an event.
            logger.info("Cut a stream's connection on purpose (an injected fault)")
        finally:
            if self._on_finish is not None:
                await self._on_finish()

    async def _serve(self, receive: Receive, send: Send, body_send: Send) -> None:
        """``_stream`` in a task of its own, which the request's task awaits.

        Every wake-up of a task resumes each coroutine it awaits through, and
        the request's task awaits through two dozen layers of server, framework
        and middleware: a token resumed there costs each of them, twice. A task
        whose stack starts at ``_stream`` pays that once per response instead.
        Cancelling the request's task cancels this one (it is what it awaits).
        """
        await asyncio.get_running_loop().create_task(self._stream(receive, send, body_send))

    async def _stream(self, receive: Receive, send: Send, body_send: Send) -> None:
        """The stream, sent from the task that runs this, and one task that watches for disconnects.

        sse-starlette runs four anyio tasks per response (stream, disconnect,
        pings, shutdown signal); their start and teardown cost about a fifth of
        a short stream's CPU. Here the frames are sent from this task (see
        ``_serve``); a watcher cancels it when the client disconnects, pings
        (when on) get a task of their own, and shutdown is ``Lifecycle``'s
        drain, not a signal listener. What the client sees is the same.

        The response's start goes through ``send``, every layer of middleware;
        the frames through ``body_send`` (``BODY_SEND_KEY``), past the layers
        that only look at a response's start.
        """
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        streaming = True

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if streaming:
                task.cancel(_CLIENT_GONE)

        watcher = loop.create_task(watch())
        pinger = loop.create_task(self._pings(send)) if self._ping_interval > 0 else None
        watchdog = _SendWatchdog(task, loop, self.send_timeout)
        frames = self.body_iterator
        try:
            watchdog.sending = True
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            # Waiting for a frame (a long first token, a slow upstream) is not a
            # stalled send: only time inside send counts.
            watchdog.sending = False
            watchdog.sent += 1
            async for frame in frames:
                watchdog.sending = True
                await body_send({"type": "http.response.body", "body": frame, "more_body": True})
                watchdog.sending = False
                watchdog.sent += 1
            if self._on_complete is not None:
                self._on_complete()
            self.active = streaming = False
            watchdog.sending = True
            await body_send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError as cancel:
            streaming = False
            if cancel.args == (_SEND_TIMED_OUT,):
                task.uncancel()
                await _close(frames)
                raise SendTimeoutError() from None
            if cancel.args not in _STOP_NOW:
                raise
            # The client is gone, or the drain deadline came while a send waited
            # on a client that does not read: nothing more can be delivered.
            task.uncancel()
            await _close(frames)
        except BaseException:
            streaming = False
            # A failed send leaves the generator suspended at its yield: close it so
            # its cleanup (the engine's slot) runs before the error goes on.
            await _close(frames)
            raise
        finally:
            self.active = streaming = False
            watchdog.stop()
            watcher.cancel()
            if pinger is not None:
                pinger.cancel()

    async def _pings(self, send: Send) -> None:
        ping = _ping().encode()
        while True:
            await asyncio.sleep(self._ping_interval)
            if not self.active:
                return
            try:
                await self._send_with_timeout(
                    send, {"type": "http.response.body", "body": ping, "more_body": True}
                )
            except SendTimeoutError:
                return  # the stream's own next send times out and drops the client


class _SendWatchdog:
    """Cancels the stream's task when one send has waited ``timeout_s`` for the client.

    The stream's loop flags each send (``sending``, ``sent``); this checks the
    flags a few times per timeout from one timer, instead of arming and
    cancelling a timer around every send, which cost about 13 % of a paced
    stream's CPU (docs/performance.md). A send is cut between 1 and 1.5 times
    ``timeout_s`` after it began. With no timeout it never fires.
    """

    __slots__ = ("_interval", "_loop", "_seen", "_stalled", "_task", "_timer", "sending", "sent")
    _CHECKS = 4

    def __init__(
        self, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, timeout_s: float | None
    ) -> None:
        self.sending = False
        self.sent = 0
        self._task = task
        self._loop = loop
        self._seen = 0
        self._stalled = 0
        self._timer: asyncio.TimerHandle | None = None
        if timeout_s is not None:
            self._interval = timeout_s / self._CHECKS
            self._timer = loop.call_later(self._interval, self._check)

    def _check(self) -> None:
        if self.sending and self.sent == self._seen:
            self._stalled += 1
            # Pending at this many checks in a row: for at least timeout_s.
            if self._stalled > self._CHECKS:
                self._task.cancel(_SEND_TIMED_OUT)
                return
        else:
            self._stalled = 0
            self._seen = self.sent
        self._timer = self._loop.call_later(self._interval, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


# Cancellation messages: why the stream's task was cancelled.
_SEND_TIMED_OUT = "streamapi: send timed out"
_CLIENT_GONE = "streamapi: client disconnected"
_STOP_NOW = frozenset({(_CLIENT_GONE,), (DRAIN_EXPIRED,)})
_CLOSE_TIMEOUT_S = 5.0


async def _close(frames: Any) -> None:
    aclose = getattr(frames, "aclose", None)
    if aclose is None:
        return
    try:
        await asyncio.wait_for(aclose(), _CLOSE_TIMEOUT_S)
    except Exception:
        logger.exception("Error closing a stream's generator")
