"""The embedded simulator: realistic answers, and an engine's timing, with no weights or network."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final, cast

from streamapi.engines.planner import AnswerPlan, Planner
from streamapi.engines.protocol import GenerationRequest, TokenDelta
from streamapi.engines.scheduler import BatchModel, Pace, ScheduledSequence, Scheduler
from streamapi.metrics import Metrics
from streamapi.settings import Settings
from streamapi.text.freeform import grammar_ready
from streamapi.text.tokenizer import chat_prompt_tokens


class SimulatorEngine:
    """Plans an answer (``Planner``) and streams it through a simulated continuous-batching engine.

    Answers are deterministic for a given conversation, seed and choice index
    (greedy decoding, ``planner.is_greedy``, makes all choices the same).
    Pacing, queueing and the engine's metrics come from the ``Scheduler``: one step loop for all
    requests, whose cost model is ``batch``. Without ``batch``, the engine has
    256 slots and paces a lone request by ``time_to_first_token_ms`` and
    ``inter_token_latency_ms``, whatever the load.
    """

    def __init__(
        self,
        *,
        time_to_first_token_ms: float = 0.0,
        inter_token_latency_ms: float = 0.0,
        min_answer_chars: int = 1378,
        seed: int | None = None,
        batch: BatchModel | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._planner = Planner(min_answer_chars=min_answer_chars, seed=seed)
        model = batch or BatchModel(
            time_to_first_token_ms=time_to_first_token_ms,
            inter_token_latency_ms=inter_token_latency_ms,
        )
        # Jitter is reproducible when the server has a seed, like the answers.
        self._scheduler = Scheduler(model, metrics=metrics, rng=random.Random(seed))
        self._latency = SchedulerLatency(self._scheduler)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, metrics: Metrics | None = None
    ) -> SimulatorEngine:
        """The simulator configured by ``settings``, recording into ``metrics`` if given."""
        return cls(
            min_answer_chars=settings.min_answer_chars,
            seed=settings.seed,
            batch=BatchModel(
                time_to_first_token_ms=settings.time_to_first_token_ms,
                prefill_overhead_ms=settings.prefill_overhead_ms,
                prefill_ms_per_token=settings.prefill_ms_per_token,
                inter_token_latency_ms=settings.inter_token_latency_ms,
                load_factor=settings.load_factor,
                max_num_seqs=settings.max_num_seqs,
                max_waiting_requests=settings.max_waiting_requests,
                kv_cache_tokens=settings.kv_cache_tokens,
                latency_jitter_pct=settings.latency_jitter_pct,
                enable_prefix_caching=settings.enable_prefix_caching,
            ),
            metrics=metrics,
        )

    @property
    def scheduler(self) -> Scheduler:
        """The step loop that runs this engine's sequences."""
        return self._scheduler

    @property
    def latency_control(self) -> SchedulerLatency:
        """The step loop's cost model, changeable at runtime."""
        return self._latency

    def plan(self, request: GenerationRequest) -> AnswerPlan:
        """Everything ``stream`` will send, decided up front."""
        return self._planner.plan(request)

    def stream(self, request: GenerationRequest) -> ScheduledSequence | PlannedInThread:
        """Admit ``request`` now (``RateLimitError`` if the queue is full); its token stream.

        A long answer (``_plans_long``) is planned in a worker thread when the
        stream opens, not here on the event loop: its plan costs ~9 us a token.
        """
        scheduler = self._scheduler
        scheduler.start()
        # Refuse before writing an answer that would be thrown away.
        scheduler.check_capacity()
        if _plans_long(request):
            return PlannedInThread(self, request)
        sequence = self.sequence(request)
        scheduler.submit(sequence)
        return sequence

    def sequence(self, request: GenerationRequest) -> ScheduledSequence:
        """``request``'s planned sequence, not queued yet; it touches no event loop, so a
        worker thread can build it."""
        return ScheduledSequence(
            self._scheduler,
            plan=self.plan(request),
            prompt=chat_prompt_tokens(
                ((m.role, m.content) for m in request.messages),
                tools=(tool.prompt_text for tool in request.tools),
            ),
            pace=_pace(request),
        )

    async def start(self) -> None:
        """Start the step loop on the running event loop (idempotent)."""
        self._scheduler.start()

    async def aclose(self) -> None:
        """Stop the step loop; sequences still open end with an error."""
        await self._scheduler.aclose()


# Answers planned on the event loop are at most this many tokens long; a longer one
# (ignore_eos, a structured output or tool arguments from a client's schema) is
# planned in a thread, so no request holds up the other streams for its planning.
_PLAN_ON_THE_LOOP_TOKENS = 2048


def _plans_long(request: GenerationRequest) -> bool:
    """Whether the answer is planned in a thread: if it may be longer than
    ``_PLAN_ON_THE_LOOP_TOKENS`` (prose answers are a few hundred tokens whatever max_tokens
    says, unless it is imposed or comes from a schema), or if planning it would import
    Lark (``freeform.grammar_ready``)."""
    if not grammar_ready() and any(
        tool.format is not None and tool.format.get("syntax") == "lark" for tool in request.tools
    ):
        return True
    tokens = request.output_tokens if request.output_tokens is not None else request.max_tokens
    if tokens is None or tokens <= _PLAN_ON_THE_LOOP_TOKENS:
        return False
    return (
        request.ignore_eos
        or request.output_tokens is not None
        or request.output_format.type != "text"
        or bool(request.tools)
    )


class PlannedInThread:
    """A sequence whose plan is made in a worker thread when it opens (at admission, or at
    its first delta if never opened); then it is the ``ScheduledSequence``."""

    def __init__(self, engine: SimulatorEngine, request: GenerationRequest) -> None:
        self._engine = engine
        # Planned from once, then dropped: an open stream keeps no prompt.
        self._request: GenerationRequest | None = request
        self._sequence: ScheduledSequence | None = None
        self._closed = False

    async def open(self) -> None:
        """Plan off the event loop, then queue (``RateLimitError`` if the queue filled)."""
        request = self._request
        if request is None or self._closed:  # planned (or being planned) already
            return
        self._request = None
        sequence = await asyncio.to_thread(self._engine.sequence, request)
        if not self._closed:
            self._engine.scheduler.submit(sequence)
            self._sequence = sequence

    def __aiter__(self) -> PlannedInThread:
        return self

    async def __anext__(self) -> TokenDelta:
        if self._sequence is None:
            await self.open()
        if self._sequence is None:  # closed
            raise StopAsyncIteration
        return await self._sequence.__anext__()

    def take_ready(self) -> list[TokenDelta]:
        return [] if self._sequence is None else self._sequence.take_ready()

    async def aclose(self) -> None:
        self._closed = True
        if self._sequence is not None:
            await self._sequence.aclose()


class SchedulerLatency:
    """A scheduler's ``BatchModel`` as an engine's ``LatencyControl``."""

    FIELDS: Final = (
        "time_to_first_token_ms",
        "prefill_overhead_ms",
        "prefill_ms_per_token",
        "inter_token_latency_ms",
        "load_factor",
        "latency_jitter_pct",
    )

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._initial = scheduler.model

    def latency(self) -> dict[str, float]:
        model = self._scheduler.model
        return {name: float(getattr(model, name)) for name in self.FIELDS}

    def set_latency(self, changes: Mapping[str, float]) -> None:
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"not latency settings: {', '.join(sorted(unknown))}")
        self._scheduler.model = replace(self._scheduler.model, **cast(dict[str, Any], changes))

    def reset_latency(self) -> None:
        self._scheduler.model = self._initial


def _pace(request: GenerationRequest) -> Pace | None:
    ttft, itl = request.time_to_first_token_ms, request.inter_token_latency_ms
    if ttft is None and itl is None:
        return None
    return Pace(ttft_s=(ttft or 0.0) / 1000, itl_s=(itl or 0.0) / 1000)
