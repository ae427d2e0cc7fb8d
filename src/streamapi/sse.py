"""Server-Sent Events: the only place that writes SSE bytes, and the response that sends them.

Frames are pre-encoded ``bytes``, so the framing is exactly what OpenAI's
clients parse:

- ``\\n`` line endings, not ``\\r\\n`` (vLLM's benchmark splits events on
  ``\\n\\n`` only);
- no ``id:`` field: the openai SDK never forgets a last event id, and with one
  set every keep-alive comment would dispatch an empty event that crashes it;
- keep-alives are ``:`` comments, never ``event: ping``, and off by default;
- one line of compact JSON per ``data:`` field.

``EventStreamResponse`` is written against Starlette's public ``Response``
(for its headers) and the ASGI ``send`` and ``receive`` it is called with,
rather than extending sse-starlette's ``EventSourceResponse``: what a stream
needs here (its frames sent from a task of its own, its body served once the
layers around it have returned, a send timeout that costs nothing per frame, the
drain's deadline) would mean overriding that class's private methods, which any
release may rename.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from streamapi.lifecycle import DRAIN_EXPIRED
from streamapi.scope_keys import SERVE_LATER

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
SEP = "\n"
# no-cache, not no-store (sse-starlette's default): what OpenAI's API sends and
# proxies expect; X-Accel-Buffering stops nginx from holding frames back.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
# [DONE] is not JSON: OpenAI's clients stop on it before parsing.
DONE = b"data: [DONE]\n\n"
# A comment: SSE parsers skip it, so no client sees an event (the openai SDK
# would fail on an ``event: ping``); it only keeps proxies from timing out.
PING = b": ping\n\n"


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


class EventStreamResponse(Response):
    """A ``text/event-stream`` response: pre-encoded frames, sent as they come.

    Beyond sending each frame, it keeps these promises (``tests/test_sse_response.py``):

    - **Hooks around the whole response.** ``on_start`` and ``on_finish``
      (awaited) run around the entire response, not inside the generator: a
      client that disconnects before the generator's first step never runs the
      generator's ``finally``, but always runs this one. ``on_complete`` runs
      once every frame has been sent, before the body's end: only a stream that
      ran to its end calls it.
    - **A client that leaves ends the stream at once.** The request's task
      watches ``receive`` for ``http.disconnect`` while the stream's own task
      sends, and cancels the stream wherever it waits; the frames' generator is
      closed, so what it holds is released.
    - **A client that stops reading is dropped.** Once one send has waited
      ``send_timeout_s`` (cut between 1 and 1.5 times that) the stream ends as
      above, with a warning, and the body is left unfinished. Time spent waiting
      for the next frame (a slow first token) never counts; ``None``: no limit.
    - **Keep-alives** are ``PING`` comments every ``ping_interval_s`` from a task
      of their own, between the response's start and its end; 0 sends none.
    - **The drain's deadline.** When the shutdown grace period ends
      (``lifecycle.DRAIN_EXPIRED``) while a send waits on a client that does not
      read, nothing more can be delivered: the stream ends there. (A stream
      waiting for its next token gets its error event from the generator.)
    - **``AbortConnection``** from the frames returns with the body unfinished:
      the server closes the socket, as when a network drops.
    - **Fewer layers per frame, and none kept alive.** The response's start goes
      through ``send``, every layer of middleware, at once. Where a layer left a
      ``ServeLater`` at ``SERVE_LATER`` in the scope, the response leaves its body
      there and returns: every layer inside that one (the framework's, ours, the
      router, the route) returns with it, and that layer serves the body with the
      server's own ``receive`` and ``send``, past the layers that only act on a
      start, none of whose frames a stream then keeps alive.
    - **HEAD** is answered with the headers and an empty body; the frames are
      never read.
    """

    media_type = MEDIA_TYPE

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        ping_interval_s: float,
        send_timeout_s: float | None,
        headers: dict[str, str] | None = None,
        on_start: Callable[[], None] | None = None,
        on_complete: Callable[[], None] | None = None,
        on_finish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if ping_interval_s < 0:
            raise ValueError("ping_interval_s must be >= 0 (0 sends no pings)")
        if send_timeout_s is not None and send_timeout_s <= 0:
            raise ValueError("send_timeout_s must be > 0 (None: no limit)")
        # Starlette's StreamingResponse sets up a response the same way; there
        # is no body to render, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({**HEADERS, **(headers or {})})
        self._frames = frames
        self._ping_interval_s = ping_interval_s
        self._send_timeout_s = send_timeout_s
        self._on_start = on_start
        self._on_complete = on_complete
        self._on_finish = on_finish
        # True from the response's start until its last frame: pings go out only then.
        self._active = False
        # True once the stream has sent its end, or will send nothing more: a
        # disconnect then is the server's answer to a complete response.
        self._ended = False
        self._head_only = False
        # The event loop the start was sent on, for the body's tasks.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._on_start is not None:
            self._on_start()
        self._head_only = scope["method"] == "HEAD"
        start = {"type": "http.response.start", "status": self.status_code}
        # Asked once and passed on: on Python 3.11 each asyncio.get_running_loop() and
        # current_task() without a loop costs a getpid() system call.
        loop = asyncio.get_running_loop()
        try:
            # Through every layer of middleware, now: they act on a response's start
            # (its status, the headers they add), never on its body. Timed by a
            # watchdog as the body's frames are (an asyncio.timeout costs a timer
            # and three more getpid() calls).
            await self._send_watched(send, {**start, "headers": self.raw_headers}, loop)
        except BaseException as error:
            await self._end(error)
            return
        # Sent: an open stream need not keep them (Starlette's response would).
        self.raw_headers = []
        self._loop = loop
        body = self._head_body if self._head_only else self._serve
        later: ServeLater | None = scope.get(SERVE_LATER)
        if later is not None and later.serve is None:
            # The body is served by the layer that left ``later``, with the server's own
            # ``receive`` and ``send``, once every layer between it and here has
            # returned: their frames (and the request, the parsed body, the route's
            # locals) would otherwise stay alive, each of them, for the stream's life.
            later.serve = body
            return
        await body(receive, send)

    async def _head_body(self, receive: Receive, send: Send) -> None:
        """HEAD's empty body, then ``_end``."""
        try:
            await self._send_within_timeout(
                send, {"type": "http.response.body", "body": b"", "more_body": False}
            )
        except BaseException as error:
            await self._end(error)
            return
        await self._end(None)

    async def _end(self, error: BaseException | None) -> None:
        """``on_finish``, however the response ended; an error that is not the stream's own way
        of ending (a dropped or cut client) goes on."""
        try:
            if isinstance(error, _SendTimedOut):
                # A client that stopped reading; its generator has been closed.
                logger.warning("Dropped a stream whose client stopped reading")
            elif isinstance(error, AbortConnection):
                # Returning with the body unfinished makes the server close the
                # socket: the client gets an incomplete chunked body, not an event.
                logger.info("Cut a stream's connection on purpose (an injected fault)")
            elif error is not None:
                raise error
        finally:
            if self._on_finish is not None:
                await self._on_finish()
        if error is None and self.background is not None:
            await self.background()

    async def _serve(self, receive: Receive, send: Send) -> None:
        """``_stream`` in a task of its own, while this task watches for the client
        leaving; then ``_end``.

        Every wake-up of a task resumes each coroutine it awaits through, and the
        request's task awaits through the server's and the framework's layers: a
        token resumed there would cost each of them, twice. A task whose stack
        starts at ``_stream`` pays that once per response instead. Meanwhile the
        request's task, idle otherwise, waits on ``receive`` for ``http.disconnect``
        and cancels the stream if the client has left; a server also answers
        ``receive`` with it once the response is complete, and if it does not, the
        stream's end wakes this task (``_STREAM_ENDED``). One task per stream beyond
        the request's, and no watcher task. Cancelling the request's task cancels
        the stream's.
        """
        loop = self._loop or asyncio.get_running_loop()
        this = asyncio.current_task(loop)
        assert this is not None
        stream = loop.create_task(self._stream(send, loop))
        watch = _DisconnectWatch(this)
        stream.add_done_callback(watch.stream_ended)
        try:
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
                watch.waiting = False
                if not self._ended:
                    stream.cancel(_CLIENT_GONE)
            except BaseException as error:
                watch.waiting = False
                if isinstance(error, asyncio.CancelledError) and error.args == (_STREAM_ENDED,):
                    this.uncancel()
                else:
                    # This task cancelled, or the server's receive failed: the stream
                    # ends with it, its frames closed, before the error goes on.
                    stream.cancel()
                    await asyncio.wait((stream,))
                    if not stream.cancelled():
                        stream.exception()  # retrieved: the error that matters is this one
                    raise
            try:
                await stream
            except asyncio.CancelledError:
                if this.cancelling():
                    raise
                # The stream's task was cancelled (the client gone) before its first
                # step: its code never ran, so nothing closed the frames.
                await _close(self._frames)
        except BaseException as error:
            await self._end(error)
            return
        await self._end(None)

    async def _stream(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        """The frames, sent from the task that runs this.

        Per response: this task, and a pinger only when pings are on; no task,
        timer or wrapper per frame (the watchdog checks flags this loop sets).
        Shutdown is ``Lifecycle``'s drain, not a signal listener.
        """
        task = asyncio.current_task(loop)
        assert task is not None
        pinger: asyncio.Task[None] | None = None
        watchdog = _SendWatchdog(task, self._send_timeout_s, loop)
        frames = self._frames
        try:
            self._active = True
            if self._ping_interval_s > 0:
                pinger = loop.create_task(self._pings(send))
            # A frame that ends with [DONE] ends an OpenAI stream: it is held while its
            # generator finishes, then goes out with the body's end, in one write
            # rather than two (a frame after it, which no protocol sends, would send
            # it first).
            last = b""
            # Waiting for a frame (a long first token, a slow upstream) is not a
            # stalled send: only time inside send counts.
            async for frame in frames:
                if last:
                    frame, last = last + frame, b""
                if frame.endswith(DONE):
                    last = frame
                    continue
                watchdog.sending = True
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                watchdog.sending = False
                watchdog.sent += 1
                # Sent: not kept while the next one is made (a paced stream's whole life).
                del frame
            if self._on_complete is not None:
                self._on_complete()
            self._active = False
            self._ended = True
            watchdog.sending = True
            await send({"type": "http.response.body", "body": last, "more_body": False})
        except asyncio.CancelledError as cancel:
            self._ended = True
            if cancel.args == (_SEND_TIMED_OUT,):
                task.uncancel()
                await _close(frames)
                raise _SendTimedOut() from None
            if cancel.args not in _STOP_NOW:
                raise
            # The client is gone, or the drain deadline came while a send waited
            # on a client that does not read: nothing more can be delivered.
            task.uncancel()
            await _close(frames)
        except BaseException:
            self._ended = True
            # A failed send leaves the generator suspended at its yield: close it so
            # its cleanup (the engine's slot) runs before the error goes on.
            await _close(frames)
            raise
        finally:
            self._active = False
            self._ended = True
            watchdog.stop()
            if pinger is not None:
                pinger.cancel()

    async def _pings(self, send: Send) -> None:
        """A ``PING`` every ``ping_interval_s`` while the stream is on."""
        while True:
            await asyncio.sleep(self._ping_interval_s)
            if not self._active:
                return
            try:
                await self._send_within_timeout(
                    send, {"type": "http.response.body", "body": PING, "more_body": True}
                )
            except _SendTimedOut:
                return  # the stream's own next send times out and drops the client

    async def _send_watched(
        self, send: Send, message: Message, loop: asyncio.AbstractEventLoop
    ) -> None:
        """``send`` from the current task, or ``_SendTimedOut`` once it has waited
        ``send_timeout_s`` (as ``_SendWatchdog`` times the body's frames)."""
        task = asyncio.current_task(loop)
        if task is None or self._send_timeout_s is None:
            await self._send_within_timeout(send, message)
            return
        watchdog = _SendWatchdog(task, self._send_timeout_s, loop)
        watchdog.sending = True
        try:
            await send(message)
        except asyncio.CancelledError as cancel:
            if cancel.args != (_SEND_TIMED_OUT,):
                raise
            task.uncancel()
            raise _SendTimedOut() from None
        finally:
            watchdog.stop()

    async def _send_within_timeout(self, send: Send, message: Message) -> None:
        """``send``, or ``_SendTimedOut`` once it has waited ``send_timeout_s``.

        For the rare sends outside the stream's loop (pings, HEAD): a timer
        around each is fine there, not per frame.
        """
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await send(message)
        except TimeoutError:
            raise _SendTimedOut() from None


class ServeLater:
    """Left in the scope at ``SERVE_LATER`` by the layer that serves streams once every
    layer inside it has returned (``middleware.ServeLaterLayer``).

    A streamed response sends its start through every layer, sets ``serve`` and
    returns; that layer then awaits ``serve`` with the server's own ``receive`` and
    ``send``, then ``end``, which runs ``ends``: what the layers inside have to do
    once the stream is over (``middleware.EdgeMiddleware`` closes the request's
    journal entry and counts it there), in the order they were added, innermost
    layer first.
    """

    __slots__ = ("ends", "serve")

    def __init__(self) -> None:
        self.serve: Callable[[Receive, Send], Awaitable[None]] | None = None
        self.ends: list[Callable[[], Awaitable[None]]] = []

    async def end(self) -> None:
        """Every end, each of them however the ones before ended, as nested ``finally``
        blocks would."""
        await _run_all(self.ends)


async def _run_all(ends: list[Callable[[], Awaitable[None]]]) -> None:
    if ends:
        end = ends.pop(0)
        try:
            await end()
        finally:
            await _run_all(ends)


class _DisconnectWatch:
    """Wakes a request's task that waits on ``receive`` when its stream's task ends."""

    __slots__ = ("task", "waiting")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.waiting = True

    def stream_ended(self, _: asyncio.Task[None]) -> None:
        if self.waiting:
            self.task.cancel(_STREAM_ENDED)


class _SendTimedOut(Exception):
    """A send waited ``send_timeout_s`` for the client: the stream is dropped."""


class _SendWatchdog:
    """Cancels the stream's task when one send has waited ``timeout_s`` for the client.

    The stream's loop flags each send (``sending``, ``sent``); every open stream's
    watchdog is checked a few times per timeout from one timer (``_WatchdogTimer``),
    instead of arming and cancelling a timer around every send, which cost a
    noticeable share of a paced stream's CPU (docs/performance.md, "Optimisation
    steps"), or keeping a timer per stream, which cost each open stream a few
    hundred bytes. A send is cut between 1 and 1.5 times ``timeout_s`` after it
    began. With no timeout it never fires.
    """

    __slots__ = ("_seen", "_stalled", "_task", "_timer", "sending", "sent")

    def __init__(
        self, task: asyncio.Task[Any], timeout_s: float | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.sending = False
        self.sent = 0
        self._task = task
        self._seen = 0
        self._stalled = 0
        self._timer: _WatchdogTimer | None = None
        if timeout_s is not None:
            self._timer = _WatchdogTimer.of(loop, timeout_s)
            self._timer.watch(self)

    def check(self) -> None:
        """One look, from the timer: cancels the stream after enough looks at one pending send."""
        if self.sending and self.sent == self._seen:
            self._stalled += 1
            # Pending at this many checks in a row: for at least timeout_s.
            if self._stalled > _WatchdogTimer.CHECKS:
                self.stop()
                self._task.cancel(_SEND_TIMED_OUT)
        else:
            self._stalled = 0
            self._seen = self.sent

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.unwatch(self)
            self._timer = None


class _WatchdogTimer:
    """One timer per event loop and timeout, checking every open stream's watchdog
    ``CHECKS`` times per timeout; armed only while a stream is open."""

    CHECKS = 4

    __slots__ = ("_handle", "_interval_s", "_loop", "_watched")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._interval_s = timeout_s / self.CHECKS
        self._watched: set[_SendWatchdog] = set()
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, timeout_s: float) -> _WatchdogTimer:
        """``loop``'s timer for ``timeout_s``."""
        timers = _WATCHDOG_TIMERS.setdefault(loop, {})
        timer = timers.get(timeout_s)
        if timer is None:
            timer = timers[timeout_s] = cls(loop, timeout_s)
        return timer

    def watch(self, watchdog: _SendWatchdog) -> None:
        self._watched.add(watchdog)
        if self._handle is None:
            self._handle = self._loop.call_later(self._interval_s, self._check)

    def unwatch(self, watchdog: _SendWatchdog) -> None:
        self._watched.discard(watchdog)
        if not self._watched and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        for watchdog in list(self._watched):
            watchdog.check()
        if self._watched:
            self._handle = self._loop.call_later(self._interval_s, self._check)


_WATCHDOG_TIMERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[float, _WatchdogTimer]
] = weakref.WeakKeyDictionary()

# Cancellation messages: why the stream's task was cancelled.
_SEND_TIMED_OUT = "streamapi: send timed out"
_CLIENT_GONE = "streamapi: client disconnected"
_STREAM_ENDED = "streamapi: stream ended"
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
