"""Faults: errors before the stream, and breakage during it, in each protocol's own terms.

A fault is written in one grammar wherever it is given (the ``X-Streamapi-Fault``
header, a rule's ``respond.fault``, ``--fault-kinds``)::

    faults = fault *( ";" fault )
    fault  = kind *( "," name "=" value )      e.g. drop,after=5
           | "status=" code *( "," name "=" value )   e.g. status=429,retry_after=2

Before the stream, ``status=<code>`` answers with that HTTP status in the
route's own error shape. During the stream (after ``after`` tokens or
``after_ms`` milliseconds): ``mid_stream_error`` (an in-protocol error event),
``drop`` (the connection is cut), ``stall`` (no bytes for ``ms``, then
``then=resume|drop``), ``slow`` (each token ``ms`` late), and three frame-level
faults: ``no_done`` (the terminal event is missing), ``malformed`` (one event's
JSON is cut in half) and ``no_usage`` (the usage is missing).

Delta-level faults wrap each engine stream (``FaultedStream``), so every
protocol renders them with its own in-stream error; frame-level ones filter the
frames on their way to the socket (``watch_frames``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from streamapi import sse
from streamapi.control.journal import JournalEntry
from streamapi.engines import TokenDelta
from streamapi.errors import (
    APIError,
    AuthenticationError,
    BadGatewayError,
    ContextLengthExceededError,
    GatewayTimeoutError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
)

FAULT_HEADER: Final = "x-streamapi-fault"

FaultKind = Literal[
    "status", "mid_stream_error", "drop", "stall", "slow", "no_done", "malformed", "no_usage"
]
# Each kind and the parameters it takes.
_PARAMS: Final[dict[FaultKind, frozenset[str]]] = {
    "status": frozenset({"status", "retry_after"}),
    "mid_stream_error": frozenset({"after", "after_ms", "status"}),
    "drop": frozenset({"after", "after_ms"}),
    "stall": frozenset({"after", "after_ms", "ms", "then"}),
    "slow": frozenset({"after", "after_ms", "ms"}),
    "no_done": frozenset(),
    "malformed": frozenset({"after"}),
    "no_usage": frozenset(),
}
_DEFAULT_STALL_MS = 1000.0
_DEFAULT_SLOW_MS = 200.0
_MAX_MS = 600_000.0
_MAX_RETRY_AFTER_S = 3600.0


class FaultSyntaxError(ValueError):
    """A fault specification that does not follow the grammar; the message says where."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault and its parameters (``after`` in tokens; ``after_ms``, ``ms`` in ms)."""

    kind: FaultKind
    status: int | None = None
    after: int | None = None
    after_ms: float | None = None
    ms: float | None = None
    then: Literal["resume", "drop"] = "resume"
    retry_after_s: float | None = None

    @property
    def mid_stream(self) -> bool:
        """Whether it acts on the engine's deltas (as opposed to frames, or before)."""
        return self.kind in ("mid_stream_error", "drop", "stall", "slow")


@dataclass(frozen=True, slots=True)
class FaultSet:
    """The faults of one request, and the text they were written as (for the journal)."""

    faults: tuple[Fault, ...] = ()
    spec: str = ""

    def get(self, kind: FaultKind) -> Fault | None:
        return next((f for f in self.faults if f.kind == kind), None)

    @property
    def before_stream(self) -> Fault | None:
        """The ``status`` fault, which answers instead of streaming."""
        return self.get("status")

    @property
    def mid_stream(self) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults if f.mid_stream)

    @property
    def frame_level(self) -> bool:
        return any(f.kind in ("no_done", "malformed", "no_usage") for f in self.faults)


NO_FAULTS: Final = FaultSet()


def parse_faults(spec: str) -> FaultSet:
    """``spec`` in the fault grammar, or ``FaultSyntaxError`` naming the problem."""
    parts = [part.strip() for part in spec.split(";")]
    if not any(parts):
        raise FaultSyntaxError("empty fault specification")
    faults = tuple(_parse_one(part) for part in parts if part)
    kinds = [f.kind for f in faults]
    if len(set(kinds)) != len(kinds):
        raise FaultSyntaxError(f"a fault kind is given twice in {spec!r}")
    if "status" in kinds and len(kinds) > 1:
        raise FaultSyntaxError(
            "status=<code> answers before the stream starts; it cannot be combined with "
            "other faults"
        )
    return FaultSet(faults, "; ".join(part for part in parts if part))


def parse_fault_choices(text: str) -> tuple[FaultSet, ...]:
    """``--fault-kinds``: fault specifications separated by ``|``, to draw from."""
    choices = tuple(parse_faults(part) for part in text.split("|") if part.strip())
    if not choices:
        raise FaultSyntaxError("give at least one fault")
    return choices


def _parse_one(text: str) -> Fault:
    kind: str | None = None
    params: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            raise FaultSyntaxError(f"empty item in {text!r}")
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        if not equals:
            if kind is not None:
                raise FaultSyntaxError(f"two fault kinds in {text!r}: {kind!r} and {name!r}")
            kind = name
            continue
        if name in params:
            raise FaultSyntaxError(f"{name} is given twice in {text!r}")
        params[name] = value.strip()
    if kind is None:
        if "status" not in params:
            raise FaultSyntaxError(f"no fault kind in {text!r}")
        kind = "status"
    if kind not in _PARAMS:
        known = ", ".join(["status=<code>", *(k for k in _PARAMS if k != "status")])
        raise FaultSyntaxError(f"unknown fault {kind!r}; the faults are {known}")
    fault_kind: FaultKind = kind
    unknown = sorted(set(params) - _PARAMS[fault_kind])
    if unknown:
        takes = ", ".join(sorted(_PARAMS[fault_kind])) or "no parameters"
        raise FaultSyntaxError(f"{kind} does not take {', '.join(unknown)} (it takes {takes})")
    if "after" in params and "after_ms" in params:
        raise FaultSyntaxError(f"{kind} takes after (tokens) or after_ms, not both")
    then = params.get("then", "resume")
    if then not in ("resume", "drop"):
        raise FaultSyntaxError(f"then must be resume or drop; got {then!r}")
    status = _number(params, "status", 400, 599, whole=True)
    if fault_kind == "status" and status is None:
        raise FaultSyntaxError("status needs a code from 400 to 599")
    default_ms = {"stall": _DEFAULT_STALL_MS, "slow": _DEFAULT_SLOW_MS}.get(fault_kind)
    ms = _number(params, "ms", 0, _MAX_MS)
    after = _number(params, "after", 0, 1_000_000, whole=True)
    return Fault(
        kind=fault_kind,
        status=None if status is None else int(status),
        after=None if after is None else int(after),
        after_ms=_number(params, "after_ms", 0, _MAX_MS),
        ms=ms if ms is not None else default_ms,
        then="drop" if then == "drop" else "resume",
        retry_after_s=_number(params, "retry_after", 0, _MAX_RETRY_AFTER_S),
    )


def _number(
    params: dict[str, str], name: str, low: float, high: float, *, whole: bool = False
) -> float | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise FaultSyntaxError(f"{name} must be {kind} from {low:g} to {high:g}; got {raw!r}")
    return value


# --- errors before (or instead of) the stream ------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """What a faked error may say about the request it refuses."""

    model: str
    prompt_tokens: int
    max_tokens: int
    max_model_len: int


def status_error(
    status: int,
    context: ErrorContext,
    *,
    retry_after_s: float | None = None,
    message: str | None = None,
    type_: str | None = None,
    code: str | None = None,
) -> APIError:
    """The error a provider answers with ``status``, worded as OpenAI words it.

    400 without a ``message`` is OpenAI's context-length error, exactly (clients
    classify it by its opening sentence); 429, 503 and 529 carry ``Retry-After``.
    The route renders it in its own dialect (Anthropic's envelope on /v1/messages).
    """
    error: APIError
    if status == 400 and message is None:
        room = context.max_model_len - context.prompt_tokens + 1
        error = ContextLengthExceededError(
            max_model_len=context.max_model_len,
            prompt_tokens=context.prompt_tokens,
            max_tokens=max(context.max_tokens, room),
        )
    elif status == 401:
        error = AuthenticationError(
            message
            or "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    elif status == 403:
        error = PermissionDeniedError(message or "You are not allowed to make this request.")
    elif status == 404:
        error = ModelNotFoundError(context.model) if message is None else NotFoundError(message)
    elif status == 408:
        error = RequestTimeoutError(message or "Request timed out.")
    elif status == 429:
        wait = 1.0 if retry_after_s is None else retry_after_s
        error = RateLimitError(
            message
            or f"Rate limit reached for {context.model} on requests per min (RPM): "
            f"Please try again in {format_duration(wait)}.",
            retry_after_s=wait,
        )
        error.type = "requests"  # OpenAI names the exhausted limit here
        error.headers.update(
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": format_duration(wait),
            }
        )
    elif status == 500:
        error = APIError(
            message or "The server had an error while processing your request. Sorry about that!"
        )
    elif status == 502:
        error = BadGatewayError(message or "Bad gateway.")
    elif status == 503:
        error = ServiceUnavailableError(
            message or "The engine is currently overloaded, please try again later.",
            code="server_is_overloaded",
        )
    elif status == 504:
        error = GatewayTimeoutError(message or "Gateway timeout.")
    elif status == 529:
        error = OverloadedError(message or "Overloaded")
    elif status < 500:
        error = APIError(message or f"The request was refused with status {status}.")
        error.status_code, error.type = status, "invalid_request_error"
    else:
        error = APIError(message or f"The server failed with status {status}.")
        error.status_code = status
    if type_ is not None:
        error.type = type_
    if code is not None:
        error.code = code
    if retry_after_s is not None and status in (503, 529):
        error.headers.update(_retry_after(retry_after_s))
    return error


def _retry_after(seconds: float) -> dict[str, str]:
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it: 20ms, 1.5s, 6m0s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


# --- during the stream ------------------------------------------------------------------


@dataclass(slots=True)
class Watch:
    """What one request's armed streams share: tokens so far, faults fired, its journal entry.

    ``on_drop`` runs before the connection is cut (it marks the admission
    ended, so the cut is not counted as a client disconnect).
    """

    faults: FaultSet
    context: ErrorContext
    arrived_at: float
    entry: JournalEntry | None = None
    on_drop: Callable[[], None] | None = None
    tokens: int = 0
    started_at: float | None = None
    fired: set[FaultKind] = field(default_factory=set)

    def token(self, now: float) -> None:
        self.tokens += 1
        entry = self.entry
        if entry is not None:
            entry.completion_tokens += 1
            if entry.ttft_ms is None:
                entry.ttft_ms = (now - self.arrived_at) * 1000

    def next_deadline(self) -> float | None:
        """When the earliest timed fault not yet fired is due (loop time), if any."""
        if self.started_at is None:
            return None
        due = [
            self.started_at + f.after_ms / 1000
            for f in self.faults.mid_stream
            if f.after_ms is not None and f.kind != "slow" and f.kind not in self.fired
        ]
        return min(due, default=None)

    async def fire_due(self, now: float) -> None:
        """Apply every one-off mid-stream fault that is due: stall, raise an error, or cut."""
        for fault in self.faults.mid_stream:
            if fault.kind == "slow" or fault.kind in self.fired or not self._due(fault, now):
                continue
            self.fired.add(fault.kind)
            if fault.kind == "stall":
                await asyncio.sleep((fault.ms or 0) / 1000)
                if fault.then == "drop":
                    self.drop()
            elif fault.kind == "mid_stream_error":
                error = status_error(fault.status or 500, self.context)
                if self.entry is not None:
                    self.entry.outcome = "error"
                    self.entry.error = {
                        "type": error.type,
                        "code": error.code,
                        "message": error.message,
                    }
                raise error
            else:
                self.drop()

    async def drip(self, now: float) -> None:
        """Hold a delta back by ``slow``'s ``ms`` once that fault is due."""
        slow = self.faults.get("slow")
        if slow is not None and self._due(slow, now):
            await asyncio.sleep((slow.ms or 0) / 1000)

    def drop(self) -> None:
        if self.on_drop is not None:
            self.on_drop()
        if self.entry is not None:
            self.entry.outcome = "dropped"
        raise sse.AbortConnection

    def _due(self, fault: Fault, now: float) -> bool:
        if fault.after_ms is not None:
            return self.started_at is not None and now - self.started_at >= fault.after_ms / 1000
        return self.tokens >= (fault.after or 0)


class FaultedStream:
    """One choice's deltas with the request's mid-stream faults applied, and counted.

    Timed faults fire on time even while the engine has nothing to hand on: the
    next delta is awaited in a task that outlives a fault's stall. ``aclose``
    closes the engine's stream, whether or not this one was ever iterated.
    """

    def __init__(self, inner: AsyncIterator[TokenDelta], watch: Watch) -> None:
        self._inner = inner
        self._watch = watch
        self._pending: asyncio.Future[TokenDelta] | None = None

    def __aiter__(self) -> FaultedStream:
        return self

    async def __anext__(self) -> TokenDelta:
        watch = self._watch
        loop = asyncio.get_running_loop()
        if watch.started_at is None:
            watch.started_at = loop.time()
        await watch.fire_due(loop.time())
        delta = await self._pull(loop)
        await watch.drip(loop.time())
        if delta.is_token:
            watch.token(loop.time())
        return delta

    async def _pull(self, loop: asyncio.AbstractEventLoop) -> TokenDelta:
        watch = self._watch
        while True:
            deadline = watch.next_deadline()
            if deadline is None and self._pending is None:
                return await anext(self._inner)
            if self._pending is None:
                self._pending = asyncio.ensure_future(anext(self._inner))
            pending = self._pending
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait({pending}, timeout=timeout)
            if pending.done():
                self._pending = None
                return pending.result()
            await watch.fire_due(loop.time())

    async def aclose(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()


# --- frames -----------------------------------------------------------------------------

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
            if no_done and (frame == sse.DONE or frame.startswith(_TERMINAL_PREFIXES)):
                continue
            out: bytes | None = _without_usage(frame) if no_usage else frame
            if out is None:
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
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


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
    """The frame with its usage taken out (None: drop the whole frame).

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


class DroppedResponse(Response):
    """A whole (non-streamed) answer cut off: the headers promise a body that never comes.

    Returning with the body unfinished makes the server close the socket, so the
    client reads an incomplete body, as when the network drops mid-answer.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})
