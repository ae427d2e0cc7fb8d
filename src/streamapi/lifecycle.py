"""The server's life: requests in flight, and the drain that follows SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

logger = logging.getLogger(__name__)

DRAIN_EXPIRED = "streamapi: shutdown grace period over"


class Lifecycle:
    """Counts generation requests in flight and runs the shutdown drain.

    On ``begin_drain`` the server reports itself draining (``/health`` 503,
    new generation requests 503) while open streams go on; once the grace
    period is over ``drain_expired`` turns true and every stream still open
    ends at its next token with an in-stream error and ``[DONE]``.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self.drain_expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interruptible: set[asyncio.Task[object]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop the server runs on (called from the app's lifespan)."""
        self._loop = loop

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1

    def interruptible(self, loop: asyncio.AbstractEventLoop | None = None) -> Interruptible:
        """Within this block the current task is cancelled when the grace period ends.

        That cancellation raises ``asyncio.CancelledError`` with ``DRAIN_EXPIRED``
        as its message, wherever the task waits: a stream asleep before its first
        token ends at the deadline, not at its next token. ``loop`` is the running
        loop, when the caller has it at hand (asking for it again costs a getpid()
        system call on Python 3.11).
        """
        return Interruptible(self._interruptible, asyncio.current_task(loop))

    def begin_drain(self, grace_period_s: float) -> None:
        """Start draining; safe to call from a signal handler."""
        if self._loop is None:
            self._start_drain(grace_period_s)
        else:
            self._loop.call_soon_threadsafe(self._start_drain, grace_period_s)

    def _start_drain(self, grace_period_s: float) -> None:
        if self.draining:
            return
        self.draining = True
        logger.info(
            "Draining: %d request(s) in flight may run for %.1f s more",
            self.in_flight,
            grace_period_s,
        )
        if self._loop is None:
            self._expire()
        else:
            self._loop.call_later(grace_period_s, self._expire)

    def _expire(self) -> None:
        self.drain_expired = True
        if self.in_flight:
            logger.warning("Grace period over: ending %d open request(s)", self.in_flight)
        for task in self._interruptible:
            task.cancel(DRAIN_EXPIRED)


class Interruptible:
    """The block of ``Lifecycle.interruptible``.

    A slotted object rather than a generator-based context manager: every open
    stream holds one for its whole life (48 bytes instead of ~400).
    """

    __slots__ = ("_task", "_tasks")

    def __init__(self, tasks: set[asyncio.Task[object]], task: asyncio.Task[object] | None) -> None:
        self._tasks = tasks
        self._task = task

    def __enter__(self) -> None:
        if self._task is not None:
            self._tasks.add(self._task)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._tasks.discard(self._task)
            self._task = None
