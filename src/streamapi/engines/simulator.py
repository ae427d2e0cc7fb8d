"""The embedded simulator: realistic answers, and an engine's timing, with no weights or network."""

from __future__ import annotations

import hashlib
import random
import secrets
from dataclasses import dataclass

from streamapi.engines import FinishReason, GenerationRequest
from streamapi.engines.scheduler import BatchModel, Pace, Scheduler, Sequence
from streamapi.metrics import Metrics
from streamapi.settings import Settings
from streamapi.text.tokenizer import chat_prompt_tokens, tokenize
from streamapi.text.writer import write_answer

# With ignore_eos the answer must reach max_tokens: write this many characters
# per wanted token, comfortably above the tokenizer's ~4.2.
_CHARS_PER_TOKEN_HEADROOM = 6


@dataclass(frozen=True, slots=True)
class Plan:
    """The tokens a request will stream and why it ends."""

    tokens: list[str]
    finish_reason: FinishReason


class SimulatorEngine:
    """Writes an on-topic answer and streams it through a simulated continuous-batching engine.

    Answers are deterministic for a given conversation, seed and choice index
    (at temperature 0 all choices are the same). Pacing, queueing and the
    engine's metrics come from the ``Scheduler``: one step loop for all
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
        self._min_answer_chars = min_answer_chars
        self._seed = seed
        model = batch or BatchModel(
            time_to_first_token_ms=time_to_first_token_ms,
            inter_token_latency_ms=inter_token_latency_ms,
        )
        # Jitter is reproducible when the server has a seed, like the answers.
        self._scheduler = Scheduler(model, metrics=metrics, rng=random.Random(seed))

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

    def plan(self, request: GenerationRequest) -> Plan:
        """Everything ``stream`` will send, decided up front."""
        min_chars = self._min_answer_chars
        wanted = request.output_tokens
        if request.ignore_eos and request.max_tokens is not None:
            wanted = max(wanted or 0, request.max_tokens)
        if wanted is not None:
            min_chars = max(min_chars, wanted * _CHARS_PER_TOKEN_HEADROOM)
        text = write_answer(_question(request), self._rng(request), min_chars=min_chars)
        finish_reason: FinishReason = "stop"
        if not request.ignore_eos and request.output_tokens is None:
            text = _cut_at_stop(text, request.stop)
        tokens = tokenize(text)
        if request.output_tokens is not None:
            tokens = tokens[: request.output_tokens]
        if request.max_tokens is not None and len(tokens) >= request.max_tokens:
            # A real engine that is stopped by the limit reports "length" even
            # when the answer would have ended on that very token.
            finish_reason = "length" if len(tokens) > request.max_tokens else finish_reason
            tokens = tokens[: request.max_tokens]
        return Plan(tokens, finish_reason)

    def stream(self, request: GenerationRequest) -> Sequence:
        """Admit ``request`` now (``RateLimitError`` if the queue is full); its token stream."""
        scheduler = self._scheduler
        scheduler.start()
        # Refuse before writing an answer that would be thrown away.
        scheduler.check_capacity()
        plan = self.plan(request)
        sequence = Sequence(
            scheduler,
            tokens=plan.tokens,
            finish_reason=plan.finish_reason,
            prompt=chat_prompt_tokens((m.role, m.content) for m in request.messages),
            pace=_pace(request),
        )
        scheduler.submit(sequence)
        return sequence

    async def start(self) -> None:
        """Start the step loop on the running event loop (idempotent)."""
        self._scheduler.start()

    async def aclose(self) -> None:
        """Stop the step loop; sequences still open end with an error."""
        await self._scheduler.aclose()

    def _rng(self, request: GenerationRequest) -> random.Random:
        seed = request.seed if request.seed is not None else self._seed
        if seed is None and request.temperature == 0:
            seed = 0  # greedy decoding is deterministic with or without a seed
        if seed is None:
            return random.Random(secrets.randbits(64))
        conversation = hashlib.sha256()
        for message in request.messages:
            conversation.update(f"{message.role}\x00{message.content}\x01".encode())
        choice = 0 if request.temperature == 0 else request.choice_index
        return random.Random(f"{seed}:{choice}:{conversation.hexdigest()}")


def _question(request: GenerationRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return request.messages[-1].content if request.messages else ""


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _pace(request: GenerationRequest) -> Pace | None:
    ttft, itl = request.time_to_first_token_ms, request.inter_token_latency_ms
    if ttft is None and itl is None:
        return None
    return Pace(ttft_s=(ttft or 0.0) / 1000, itl_s=(itl or 0.0) / 1000)
