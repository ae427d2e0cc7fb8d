"""Background Responses (``background: true``): runs that outlive their request.

``POST /v1/responses`` with ``background: true`` admits the job (every refusal
is still an HTTP status), starts a run as a task of its own and answers at once
with the Response ``queued`` (or streams the run's events). The run records
every event it makes; ``GET /v1/responses/{id}`` shows its latest state
(``queued`` → ``in_progress`` → ``completed``, ``incomplete``, ``failed`` or
``cancelled``), and ``GET ...?stream=true&starting_after=N`` replays the events
after sequence number ``N`` and follows the rest as they come. A client that
leaves a stream leaves the run going: only ``POST /v1/responses/{id}/cancel``
stops it.

A run keeps its events as SSE frames for replay, within a byte budget shared by
every run (``--background-events-max-bytes``): past it the finished runs' events
are forgotten first, oldest first (their Responses stay in the store), and then a
running run stops keeping its text and argument deltas. A follower, live or
replaying, then gets the ``*.done`` events and the terminal Response, which carry
the whole text: memory stays bounded however long a run is.

Each run counts as a request in flight, so the shutdown drain waits for it
within the grace period and then ends it (``response.failed``,
``server_shutting_down``); the app's lifespan cancels whatever is left
(``aclose``) before the engine closes, so no task outlives the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from streamapi import sse
from streamapi.lifecycle import Lifecycle
from streamapi.serving.generation import Admission
from streamapi.serving.responses import ResponseJob, ResponseService, response_body, sse_event

logger = logging.getLogger(__name__)

_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})


class Run:
    """One background response: its events so far and its latest Response object."""

    def __init__(self, response: ResponseJob, budget: EventBudget | None = None) -> None:
        self.response = response
        self.events: list[bytes] = []
        """Its events as SSE frames, for replay."""
        self.bytes = 0
        self.deltas_dropped = 0
        """Delta events not kept: the budget was spent."""
        self._budget = budget
        self.body = response_body(response, "queued", output=[], usage=None)
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        # Set once the task runs its body: a task cancelled before that would
        # skip its own cleanup (the admission, the count in flight).
        self.started = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def id(self) -> str:
        return self.response.job.id

    def record(self, kind: str, payload: dict[str, Any]) -> bytes:
        """Keep one event (``serving.responses.Encode``); nothing is sent from here."""
        frame = sse_event(kind, payload)
        if self._budget is None or self._budget.take(self, len(frame), kind.endswith(".delta")):
            self.events.append(frame)
            self.bytes += len(frame)
        else:
            self.deltas_dropped += 1
        snapshot = payload.get("response")
        if isinstance(snapshot, dict):
            self.body = snapshot
        self._signal()
        return b""

    def cancelled(self) -> None:
        """The run was stopped: it keeps what it had made, and says it was cancelled."""
        if self.body["status"] not in _TERMINAL:
            self.body = {**self.body, "status": "cancelled"}

    async def cancel_soon(self) -> None:
        """Cancel the task once it has started, and wait for it to end."""
        task = self.task
        if task is None or task.done():
            return
        await self.started.wait()
        task.cancel()
        await asyncio.wait({task})

    def finish(self) -> None:
        self.finished = True
        self._signal()

    async def follow(self, starting_after: int) -> AsyncIterator[bytes]:
        """SSE frames of the events after sequence number ``starting_after``, live to the end."""
        index = max(starting_after + 1, 0)
        # Each pass sends what was recorded, then waits for more; the run ends
        # (finish) after a bounded number of events, and so does this loop.
        while True:
            changed = self._changed
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.finished:
                break
            await changed.wait()
        yield sse.DONE

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class EventBudget:
    """The bytes every run's kept events may hold together; 0 is no cap."""

    def __init__(self, max_bytes: int, runs: OrderedDict[str, Run]) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._runs = runs
        # Finished runs in the order they finished: the first to forget, each once.
        self._finished: deque[Run] = deque()

    def finished(self, run: Run) -> None:
        self._finished.append(run)

    def take(self, run: Run, size: int, droppable: bool) -> bool:
        """Count ``size`` more bytes of ``run``'s events, or say not to keep them.

        Over the budget, finished runs' events are forgotten first, oldest
        first; an event that is still over is kept only if it is not a delta
        (the events that carry a run's state must all be kept).
        """
        if self.max_bytes:
            while self.bytes + size > self.max_bytes and self._finished:
                oldest = self._finished.popleft()
                if self._runs.pop(oldest.id, None) is oldest:
                    self.forget(oldest)
            if droppable and self.bytes + size > self.max_bytes:
                return False
        self.bytes += size
        return True

    def forget(self, run: Run) -> None:
        self.bytes -= run.bytes
        run.bytes = 0


class BackgroundRuns:
    """The background runs: running ones, and the last ``capacity`` finished ones, whose
    events together stay under ``max_event_bytes``."""

    def __init__(
        self,
        service: ResponseService,
        lifecycle: Lifecycle,
        capacity: int,
        *,
        max_event_bytes: int = 0,
    ) -> None:
        self._service = service
        self._lifecycle = lifecycle
        self._capacity = capacity
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self.budget = EventBudget(max_event_bytes, self._runs)

    def get(self, response_id: str) -> Run | None:
        return self._runs.get(response_id)

    def start(self, response: ResponseJob, admission: Admission) -> Run:
        """Run ``response`` on its own task; ``admission`` is closed when it ends."""
        run = Run(response, self.budget)
        self._runs[run.id] = run
        self._forget_finished()
        self._lifecycle.request_started()
        run.task = asyncio.create_task(self._drive(run, admission), name=f"background {run.id}")
        return run

    async def cancel(self, run: Run) -> dict[str, Any]:
        """Stop ``run`` if it still runs (idempotent); its Response object as it ends."""
        await run.cancel_soon()
        return run.body

    async def aclose(self) -> None:
        """Cancel every run still going and wait for each to end (the app's shutdown)."""
        running = [run for run in self._runs.values() if run.task and not run.task.done()]
        if running:
            await asyncio.wait([asyncio.ensure_future(run.cancel_soon()) for run in running])

    async def _drive(self, run: Run, admission: Admission) -> None:
        try:
            run.started.set()
            async for _ in self._service.events(run.response, admission, run.record):
                pass
            admission.ended = True
        except asyncio.CancelledError:
            # Cancelled on purpose (its route, or the app's shutdown): an end,
            # not a client that went away. The task then ends normally.
            admission.ended = True
            run.cancelled()
        finally:
            try:
                await admission.aclose()
            except Exception:
                # Nobody awaits this task's result: say it here, not never.
                logger.exception("Closing background response %s failed", run.id)
            self._lifecycle.request_finished()
            run.finish()
            self.budget.finished(run)

    def _forget_finished(self) -> None:
        if len(self._runs) <= self._capacity:
            return
        for response_id in [rid for rid, run in self._runs.items() if run.finished]:
            if len(self._runs) <= self._capacity:
                return
            self.budget.forget(self._runs.pop(response_id))
