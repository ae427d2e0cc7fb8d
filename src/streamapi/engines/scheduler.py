"""Continuous batching: one task and one timer advance every running sequence, step by step.

The model (docs/engine-model.md gives the formulas and a worked example):

- at most ``max_num_seqs`` sequences run; more wait, first come first served, in
  a queue of at most ``max_waiting_requests`` (beyond it ``submit`` raises a 429);
  a sequence is admitted only when its prompt and planned output fit in the KV
  budget that running sequences leave free;
- sequences are admitted at the start of a step; a step lasts
  ``decode_ms(d) + prefill_ms(u)``: ``d`` running sequences decode one token each,
  and the sequences admitted in it prefill ``u`` uncached prompt tokens;
- a prefilled sequence gets its first token ``time_to_first_token_ms`` after its
  prefill step, a latency that holds its slot but not the engine (so a slow
  first token does not stall everyone else), then joins the batch at the next
  step's start and gets one token a step;
- a sequence's queue time is from ``submit`` to its admission, its prefill time
  from there to its first token, its decode time the rest.

Sequences hand their tokens to the consumer through a counter into their
plan, not a queue: a consumer slower than the steps falls behind by at most its
plan's length (bounded by ``max_model_len``). The plan makes each delta as it is
handed on (the step loop settles a waiting consumer's future with it; a consumer that
fell behind takes the ready ones), so an open sequence holds no delta of its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from streamapi.engines.prefix_cache import PrefixCache
from streamapi.engines.protocol import FinishReason, TokenDelta
from streamapi.errors import APIError, RateLimitError, ServiceUnavailableError
from streamapi.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchModel:
    """The engine's capacity and step-cost model; every time is in milliseconds."""

    time_to_first_token_ms: float = 0.0
    prefill_overhead_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    inter_token_latency_ms: float = 0.0
    load_factor: float = 0.0
    max_num_seqs: int = 256
    max_waiting_requests: int = 1000
    kv_cache_tokens: int = 2_097_152
    latency_jitter_pct: float = 0.0
    enable_prefix_caching: bool = True

    def decode_ms(self, decoding: int) -> float:
        """One decode step of ``decoding`` sequences: ITL x (1 + load x (d-1)/(max-1))."""
        if decoding <= 0:
            return 0.0
        fill = (decoding - 1) / (self.max_num_seqs - 1) if self.max_num_seqs > 1 else 0.0
        return self.inter_token_latency_ms * (1.0 + self.load_factor * fill)

    def prefill_ms(self, uncached_tokens: int) -> float:
        """The prefill part of a step that admits sequences with ``uncached_tokens`` in all."""
        return self.prefill_overhead_ms + self.prefill_ms_per_token * uncached_tokens

    def step_ms(self, decoding: int, prefilling: int, uncached_tokens: int) -> float:
        """A whole step: decode of the running batch plus prefill of the admitted ones."""
        prefill = self.prefill_ms(uncached_tokens) if prefilling else 0.0
        return self.decode_ms(decoding) + prefill


class SequenceState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class Pace:
    """A test's own pace for one sequence: first token ``ttft_s`` after admission,
    then one every ``itl_s``, outside the batch's steps (it still takes a slot)."""

    ttft_s: float
    itl_s: float


class DeltaPlan(Protocol):
    """What a sequence streams: its deltas' count, known up front, and the deltas, made
    as they are read (the planner's ``AnswerPlan``, or ``DeltaList``)."""

    @property
    def total(self) -> int:
        """Deltas; only the last may carry no token."""
        ...

    @property
    def token_count(self) -> int:
        """Deltas that are generated tokens (what the KV cache holds of the answer)."""
        ...

    @property
    def finish_reason(self) -> FinishReason:
        """The last delta's finish reason."""
        ...

    def __iter__(self) -> Iterator[TokenDelta]: ...


class DeltaList:
    """A ``DeltaPlan`` of deltas made already (the last one carries the finish reason)."""

    __slots__ = ("_deltas", "finish_reason", "token_count", "total")

    def __init__(self, deltas: list[TokenDelta]) -> None:
        self._deltas = deltas
        self.total = len(deltas)
        self.token_count = sum(1 for delta in deltas if delta.is_token)
        self.finish_reason: FinishReason = deltas[-1].finish_reason or "stop"

    def __iter__(self) -> Iterator[TokenDelta]:
        return iter(self._deltas)


class ScheduledSequence:
    """One choice inside the engine, and the async iterator of its ``TokenDelta``s.

    ``aclose`` takes it out of the queue or the batch at once; it is idempotent
    and works whether or not the iterator was ever started.
    """

    __slots__ = (
        "_error",
        "_reader",
        "_scheduler",
        "_waiter",
        "cached_tokens",
        "consumed",
        "enqueued_at",
        "finish_reason",
        "first_token_at",
        "kv_tokens",
        "next_due",
        "pace",
        "produced",
        "prompt",
        "prompt_tokens",
        "scheduled_at",
        "state",
        "token_count",
        "total",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        plan: DeltaPlan,
        prompt: list[str],
        pace: Pace | None = None,
    ) -> None:
        self._scheduler = scheduler
        # One delta a step. A plan with no token is one empty delta carrying the
        # finish reason, which is no token: only a plan's last delta can be so.
        # Each delta is made when it is handed on: an open stream holds none.
        self._reader = iter(plan)
        self.finish_reason = plan.finish_reason
        # The prompt's tokens are read once, by the prefix cache at admission;
        # an open stream keeps only their count.
        self.prompt: list[str] | None = prompt
        self.prompt_tokens = len(prompt)
        self.pace = pace
        self.total = plan.total
        self.token_count = plan.token_count
        self.kv_tokens = self.prompt_tokens + self.token_count
        self.state = SequenceState.WAITING
        self.produced = 0
        self.consumed = 0
        self.cached_tokens = 0
        self.enqueued_at = self.scheduled_at = self.first_token_at = 0.0
        self.next_due = math.inf
        self._waiter: asyncio.Future[TokenDelta] | None = None
        self._error: APIError | None = None

    def __aiter__(self) -> ScheduledSequence:
        return self

    def __anext__(self) -> asyncio.Future[TokenDelta]:
        """The next delta, as a future: done now if the delta is ready (or the sequence
        over), else when the step loop produces it.

        A future rather than a coroutine: a coroutine would cost each token one more
        object and one more level for the stream's task to resume through, and an open
        stream would hold its frame while it waits.
        """
        # The step loop's own event loop: ``asyncio.get_running_loop()`` costs a
        # getpid() system call on Python 3.11, once a token.
        loop = self._scheduler.loop or asyncio.get_running_loop()
        future: asyncio.Future[TokenDelta] = loop.create_future()
        if (
            self.consumed < self.produced
            or self._error is not None
            or self.state is SequenceState.FINISHED
            or self.state is SequenceState.ABORTED
        ):
            self._settle(future)
        else:
            self._waiter = future  # the usual case: the step loop settles it
        return future

    def _settle(self, future: asyncio.Future[TokenDelta]) -> bool:
        """Give ``future`` the next delta, or the sequence's end or error; False if there is
        none of them yet."""
        if self.state is SequenceState.ABORTED:
            future.set_exception(StopAsyncIteration())
        elif self._error is not None:
            future.set_exception(self._error)
        elif self.consumed < self.produced:
            index = self.consumed
            self.consumed += 1
            try:
                delta = next(self._reader)
            except Exception:
                # Usually made in the step loop: a plan that fails ends its own stream
                # (an in-stream error), not the loop every stream shares.
                logger.exception("A sequence's plan failed")
                future.set_exception(APIError("The engine failed while generating."))
                return True
            if index == 0 and self.cached_tokens:
                delta = replace(delta, cached_prompt_tokens=self.cached_tokens)
            future.set_result(delta)
        elif self.state is SequenceState.FINISHED:
            future.set_exception(StopAsyncIteration())
        else:
            return False
        return True

    def take_ready(self) -> list[TokenDelta]:
        """The deltas produced and not yet consumed, taken now without waiting.

        Tokens produced faster than their consumer reads them (steps of no
        length, or a consumer that fell behind) are handed on together.
        """
        start, end = self.consumed, self.produced
        if start >= end or self.state is SequenceState.ABORTED or self._error is not None:
            return []
        self.consumed = end
        reader = self._reader
        ready = [next(reader) for _ in range(end - start)]
        if start == 0 and ready and self.cached_tokens:
            ready[0] = replace(ready[0], cached_prompt_tokens=self.cached_tokens)
        return ready

    async def aclose(self) -> None:
        """Leave the engine now; the slot goes to the next waiting sequence."""
        self._scheduler.abort(self)

    @property
    def generated(self) -> int:
        """Tokens generated so far (the empty closing delta of an empty plan is none)."""
        return min(self.produced, self.token_count)

    def _produce(self, now: float) -> bool:
        """One more token; True when that was the last."""
        self.produced += 1
        if self.produced == 1:
            self.first_token_at = now
        self._wake()
        return self.produced >= self.total

    def _wake(self) -> None:
        waiter = self._waiter
        # A waiter cancelled with its consumer is done: nothing is taken for it.
        if waiter is not None and (waiter.done() or self._settle(waiter)):
            self._waiter = None

    def _fail(self, error: APIError) -> None:
        self._error = error
        self._wake()


class Scheduler:
    """The step loop of one engine: admission, batching, timing and the engine's metrics.

    Its task starts with ``start`` (or the first ``submit``), waits on a future
    when nothing runs, sleeps until the next step's end otherwise, and is
    stopped by ``aclose``.
    """

    def __init__(
        self,
        model: BatchModel,
        *,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._waiting: deque[ScheduledSequence] = deque()
        self._running: list[ScheduledSequence] = []  # in the batch: one token a step
        self._warming: list[ScheduledSequence] = []  # prefilled; first token at next_due
        self._joining: list[ScheduledSequence] = []  # first token out; into the batch next step
        self._paced: list[ScheduledSequence] = []  # a test's own pace, outside the steps
        self._kv_reserved = 0
        self._prefix = PrefixCache(model.kv_cache_tokens) if model.enable_prefix_caching else None
        self._task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the step loop runs on (its sequences' futures are made there)."""
        self._wakeup: asyncio.Future[None] | None = None
        self._in_step = False
        self._closed = False
        if metrics is not None:
            metrics.bind_engine_state(
                running=lambda: self.running,
                waiting=lambda: self.waiting,
                kv_cache_usage=self.kv_cache_usage,
            )

    @property
    def running(self) -> int:
        """Sequences admitted and not yet finished."""
        return sum(len(bucket) for bucket in self._admitted())

    @property
    def waiting(self) -> int:
        """Sequences queued for a slot."""
        return len(self._waiting)

    def kv_cache_usage(self) -> float:
        """The KV budget's fraction that running sequences' prompts and outputs fill now."""
        used = sum(s.prompt_tokens + s.generated for b in self._admitted() for s in b)
        return used / self.model.kv_cache_tokens

    def start(self) -> None:
        """Start the step loop on the running event loop (idempotent)."""
        if self._closed:
            raise ServiceUnavailableError("The engine has stopped.", code="engine_stopped")
        if self._task is None or self._task.done():
            loop = self.loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="streamapi-scheduler")

    def check_capacity(self) -> None:
        """Raise ``RateLimitError`` if one more sequence would overflow the queue."""
        free = max(0, self.model.max_num_seqs - self.running)
        if len(self._waiting) >= free + self.model.max_waiting_requests:
            raise RateLimitError(
                f"The engine is at capacity: {self.running} sequences running and "
                f"{len(self._waiting)} waiting. Retry later.",
                retry_after_s=self._retry_after_s(),
            )

    def submit(self, sequence: ScheduledSequence) -> None:
        """Queue ``sequence`` for admission, or raise ``RateLimitError`` if the queue is full."""
        self.start()
        self.check_capacity()
        assert self.loop is not None  # start() set it
        sequence.enqueued_at = self.loop.time()
        self._waiting.append(sequence)
        self._wake_loop()

    def abort(self, sequence: ScheduledSequence) -> None:
        """Take ``sequence`` out of the queue or the batch at once (idempotent)."""
        if sequence.state is SequenceState.WAITING:
            self._waiting.remove(sequence)
        elif sequence.state is SequenceState.RUNNING:
            next(b for b in self._admitted() if sequence in b).remove(sequence)
            self._kv_reserved -= sequence.kv_tokens
        else:
            return
        sequence.state = SequenceState.ABORTED
        sequence._wake()
        self._wake_loop()

    async def aclose(self) -> None:
        """Stop the step loop; sequences still open end with a 503 error."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail_all(ServiceUnavailableError("The engine has stopped.", code="engine_stopped"))

    # --- the loop -----------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step_end: float | None = None
        budget = _TOKENS_PER_WAKE
        try:
            while True:
                now = loop.time()
                chained: float | None = None
                if step_end is not None and now >= step_end:
                    self._complete_step(now)
                    # Back-to-back steps follow the planned schedule, not the
                    # loop's lateness, so a busy event loop does not slow the model.
                    chained, step_end = step_end, None
                self._emit_due(now)
                instant = False
                if step_end is None:
                    self._running += self._joining
                    self._joining.clear()
                    decoding = len(self._running)
                    prefilling, uncached = self._admit(now)
                    if self._running:
                        start = chained if chained is not None else now
                        step_end = start + self._step_s(decoding, prefilling, uncached)
                        instant = step_end == start
                self._in_step = step_end is not None
                due = (s.next_due for b in (self._warming, self._paced) for s in b)
                deadline = min(math.inf if step_end is None else step_end, *due, math.inf)
                if instant and deadline <= now and budget > 0:
                    # A step of no length is over as it starts: run the next one
                    # without yielding, so the consumers find these tokens together
                    # and send them in one write. The budget bounds how long the
                    # event loop waits for its other work. (A loop running late on
                    # steps that have a length yields between them, so that
                    # requests that arrived meanwhile join the next step.)
                    budget -= len(self._running) + 1
                    continue
                budget = _TOKENS_PER_WAKE
                await self._sleep_until(loop, deadline)
        except Exception:  # CancelledError is no Exception: a cancel passes through
            # Logged here, once; the next submit starts a fresh loop.
            logger.exception("The engine's step loop failed")
            self._fail_all(APIError("The engine failed while generating."))

    def _admit(self, now: float) -> tuple[int, int]:
        """Admit waiting sequences while slots and KV allow; (admitted, uncached tokens)."""
        prefilling = uncached = 0
        model, metrics = self.model, self._metrics
        while self._waiting and self.running < model.max_num_seqs:
            sequence = self._waiting[0]
            if self._kv_reserved + sequence.kv_tokens > model.kv_cache_tokens:
                break  # first come, first served: the head waits for KV, the rest behind it
            self._waiting.popleft()
            sequence.state = SequenceState.RUNNING
            sequence.scheduled_at = now
            self._kv_reserved += sequence.kv_tokens
            prompt = sequence.prompt_tokens
            tokens, sequence.prompt = sequence.prompt, None
            cached = self._prefix.admit(tokens) if self._prefix is not None and tokens else 0
            sequence.cached_tokens = cached
            if metrics is not None:
                metrics.prompt_tokens.inc(prompt)
                metrics.prefix_cache_queries.inc(prompt)
                metrics.prefix_cache_hits.inc(cached)
            if sequence.pace is not None:
                sequence.next_due = now + sequence.pace.ttft_s
                self._paced.append(sequence)
            else:
                # Ahead of the batch (in arrival order): at the step's end their first
                # tokens go out first, so a large batch's wake-ups do not add to TTFT.
                self._running.insert(prefilling, sequence)
                prefilling += 1
                uncached += prompt - cached
        return prefilling, uncached

    def _step_s(self, decoding: int, prefilling: int, uncached: int) -> float:
        seconds = self.model.step_ms(decoding, prefilling, uncached) / 1000
        jitter = self.model.latency_jitter_pct / 100
        if jitter:
            seconds *= self._rng.uniform(1 - jitter, 1 + jitter)
        return seconds

    def _complete_step(self, now: float) -> None:
        generated = 0
        latency_s = self.model.time_to_first_token_ms / 1000
        # The batch that goes on, gathered in the same pass (once per token of every
        # running sequence: the step loop's hot path).
        going_on: list[ScheduledSequence] = []
        for sequence in self._running:
            if sequence.produced == 0 and latency_s > 0:
                sequence.next_due = now + latency_s  # prefilled; its first token waits
                self._warming.append(sequence)
                continue
            if sequence.produced < sequence.token_count:
                generated += 1
            if sequence._produce(now):
                self._finish(sequence, now)
            else:
                going_on.append(sequence)
        self._running = going_on
        if self._metrics is not None and generated:
            self._metrics.generation_tokens.inc(generated)

    def _emit_due(self, now: float) -> None:
        """First tokens of warmed-up sequences, and the tokens of paced ones, that are due."""
        for sequence in [s for s in self._warming if s.next_due <= now]:
            self._warming.remove(sequence)
            self._count_token(sequence)
            if sequence._produce(sequence.next_due):
                self._finish(sequence, now)
            else:
                self._joining.append(sequence)
        for sequence in list(self._paced):
            while sequence.next_due <= now:
                self._count_token(sequence)
                if sequence._produce(sequence.next_due):
                    self._paced.remove(sequence)
                    self._finish(sequence, now)
                    break
                assert sequence.pace is not None
                sequence.next_due += sequence.pace.itl_s

    def _count_token(self, sequence: ScheduledSequence) -> None:
        if sequence.produced < sequence.token_count and self._metrics is not None:
            self._metrics.generation_tokens.inc()

    def _finish(self, sequence: ScheduledSequence, now: float) -> None:
        sequence.state = SequenceState.FINISHED
        self._kv_reserved -= sequence.kv_tokens
        metrics = self._metrics
        if metrics is None:
            return
        metrics.request_success(sequence.finish_reason)
        metrics.request_queue_time.observe(sequence.scheduled_at - sequence.enqueued_at)
        metrics.request_prefill_time.observe(sequence.first_token_at - sequence.scheduled_at)
        metrics.request_decode_time.observe(now - sequence.first_token_at)
        metrics.request_prompt_tokens.observe(sequence.prompt_tokens)
        metrics.request_generation_tokens.observe(sequence.generated)

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Sleep until ``deadline`` (forever if infinite) or until ``_wake_loop``."""
        wakeup = self._wakeup = loop.create_future()
        timer = None if math.isinf(deadline) else loop.call_at(deadline, _resolve, wakeup)
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    def _wake_loop(self) -> None:
        # Mid-step, arrivals and departures wait for the step's end anyway.
        if not self._in_step and self._wakeup is not None:
            _resolve(self._wakeup)

    def _retry_after_s(self) -> float:
        """When a slot should free up: the end of the running sequence closest to done."""
        remaining = min((s.total - s.produced for s in self._running), default=1)
        return remaining * self.model.decode_ms(len(self._running)) / 1000

    def _admitted(self) -> tuple[list[ScheduledSequence], ...]:
        return (self._running, self._warming, self._joining, self._paced)

    def _fail_all(self, error: APIError) -> None:
        for sequence in (*self._waiting, *(s for b in self._admitted() for s in b)):
            sequence.state = SequenceState.FINISHED
            sequence._fail(error)
        self._waiting.clear()
        for bucket in self._admitted():
            bucket.clear()
        self._kv_reserved = 0


# Tokens produced, at most, between two yields of the step loop to the event loop
# when steps are due back to back: about a millisecond of work.
_TOKENS_PER_WAKE = 2048


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
