"""Delta-level faults: one request's engine streams with its mid-stream faults applied.

``mid_stream_error``, ``drop``, ``stall`` and ``slow`` act on the engine's
deltas (``FaultedStream``), so every protocol renders them with its own
in-stream error. ``Watch`` is what one request's streams share, and the frame
filters (``fault_frames``) read it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from streamapi import sse
from streamapi.aio import aclose_iterator
from streamapi.control.fault_errors import ErrorContext, status_error
from streamapi.control.journal import JournalEntry
from streamapi.engines.protocol import TokenDelta
from streamapi.fault_grammar import Fault, FaultKind, FaultSet


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

    __slots__ = ("_inner", "_pending", "_watch")

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
        await aclose_iterator(self._inner)


class CountedStream:
    """One choice's deltas counted for the journal, when the request has no fault at all.

    Nothing can fire between two tokens, so the engine's ready tokens are handed
    on together (``take_ready``, when the engine has it) and share a write, as
    they do with no journal at all; ``FaultedStream`` waits for each delta alone.
    """

    __slots__ = ("_inner", "_ready", "_watch", "take_ready")

    def __init__(self, inner: AsyncIterator[TokenDelta], watch: Watch) -> None:
        self._inner = inner
        self._watch = watch
        ready: Callable[[], list[TokenDelta]] | None = getattr(inner, "take_ready", None)
        if ready is not None:
            self._ready = ready
            self.take_ready = self._take_ready

    def __aiter__(self) -> CountedStream:
        return self

    async def __anext__(self) -> TokenDelta:
        delta = await anext(self._inner)
        if delta.is_token:
            self._watch.token(asyncio.get_running_loop().time())
        return delta

    def _take_ready(self) -> list[TokenDelta]:
        ready = self._ready()
        if ready:
            now = asyncio.get_running_loop().time()
            for delta in ready:
                if delta.is_token:
                    self._watch.token(now)
        return ready

    async def aclose(self) -> None:
        await aclose_iterator(self._inner)
