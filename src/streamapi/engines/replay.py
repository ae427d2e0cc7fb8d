"""An engine that answers from cassettes: recorded upstream exchanges, replayed.

A ``ReplayEngine`` stands in front of one upstream (``--replay``). Each
request's upstream payload (``chat_payload``, exactly what would be sent) is
matched against the recordings; a match is replayed by a ``ReplayStream``,
which is an ``UpstreamStream`` whose bytes come from the cassette instead of
the network: the recorded SSE events go through the same parsing, checks and
translation, so a recording made in chat form replays through every route
(chat, Responses, Messages, completions), with the recorded usage, tool calls
and finish reason, and the recorded failure where the original broke. Events
are released at their recorded offsets divided by ``speed`` (0: at once), on
the event loop's clock.

A request that matches nothing goes where ``miss`` says: to the simulator, to
the real upstream (which records it when recording is on), or a 404 naming
the nearest recording and what differed. Replay itself sends nothing anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Literal

from streamapi.cassettes import Exchange, Matcher, Miss, RecordedEvent
from streamapi.engines.protocol import Engine, GenerationRequest, LatencyControl, TokenDelta
from streamapi.engines.sse_decoder import SSEEvent
from streamapi.engines.upstream import UpstreamEngine, UpstreamStream, chat_payload
from streamapi.errors import NotFoundError, UpstreamError, UpstreamTimeoutError

logger = logging.getLogger(__name__)

ReplayMiss = Literal["simulator", "upstream", "error"]
ENDPOINT = "/chat/completions"


class ReplayMissError(NotFoundError):
    """404: no recording matches, and replay misses are errors."""

    code = "replay_miss"


class ReplayEngine:
    """Replays ``upstream``'s recordings; misses go to ``fallback`` or ``upstream``, or 404."""

    def __init__(
        self,
        upstream: UpstreamEngine,
        matcher: Matcher,
        *,
        speed: float = 1.0,
        miss: ReplayMiss = "error",
        fallback: Engine | None = None,
    ) -> None:
        if miss == "simulator" and fallback is None:
            raise ValueError("a simulator miss needs the simulator as fallback")
        self._upstream = upstream
        self._matcher = matcher
        self._speed = speed
        self._miss = miss
        self._fallback = fallback

    @property
    def latency_control(self) -> LatencyControl | None:
        return None

    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        found = self._matcher.find(ENDPOINT, chat_payload(request))
        if isinstance(found, Exchange):
            return ReplayStream(self._upstream, request, found, speed=self._speed)
        if self._miss == "upstream":
            return self._upstream.stream(request)
        if self._miss == "simulator" and self._fallback is not None:
            return self._fallback.stream(request)
        raise _miss_error(found, request.model)

    async def aclose(self) -> None:
        """Nothing of its own: the upstream and the fallback are closed by their owner."""


def _miss_error(miss: Miss, model: str) -> ReplayMissError:
    message = miss.describe(model)
    logger.info("Replay miss: %s", message)
    return ReplayMissError(message)


class ReplayStream(UpstreamStream):
    """An ``UpstreamStream`` fed by one recorded exchange, at its recorded pace."""

    __slots__ = ("_cassette", "_exchange", "_speed", "_start")

    def __init__(
        self,
        engine: UpstreamEngine,
        request: GenerationRequest,
        exchange: Exchange,
        *,
        speed: float,
    ) -> None:
        super().__init__(engine, request)
        self._exchange = exchange
        self._speed = speed
        self._cassette = iter(exchange.events)
        self._start = 0.0

    async def _wait_until(self, offset_ms: float) -> None:
        if self._speed <= 0:
            return
        loop = asyncio.get_running_loop()
        delay = self._start + offset_ms / 1000 / self._speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        self._start = asyncio.get_running_loop().time()
        exchange = self._exchange
        if exchange.status is None:
            # Refused, unreachable or timed out before any answer.
            await self._wait_until(exchange.end_offset_ms)
            raise self._failure()
        await self._wait_until(exchange.response_offset_ms)
        if exchange.status != 200:
            body = "".join(e.data for e in exchange.events if e.kind == "body")
            raise self._error_of_status(
                exchange.status, exchange.response_headers, body.encode("utf-8")
            )

    async def _next_event(self, *, first: bool) -> SSEEvent | None:
        if self._events:
            return self._events.popleft()
        recorded: RecordedEvent | None = next(self._cassette, None)
        while recorded is not None and recorded.kind != "event":
            recorded = next(self._cassette, None)
        if recorded is None:
            await self._wait_until(self._exchange.end_offset_ms)
            if self._exchange.end in ("dropped", "timeout", "unreachable"):
                raise self._failure()
            return None
        await self._wait_until(recorded.offset_ms)
        return SSEEvent(recorded.data, recorded.event, recorded.error)

    def _failure(self) -> UpstreamError | UpstreamTimeoutError:
        """The recorded failure, with its recorded message."""
        exchange = self._exchange
        message = exchange.message or f"The upstream '{exchange.upstream}' failed."
        if exchange.end == "timeout":
            return UpstreamTimeoutError(message)
        return UpstreamError(message)

    async def aclose(self) -> None:
        self._closed = self._opened = self._ended = True
