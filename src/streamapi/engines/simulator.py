"""The embedded simulator: realistic answers and pacing with no weights and no network."""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from streamapi.engines import FinishReason, GenerationRequest, TokenDelta
from streamapi.settings import Settings
from streamapi.text.tokenizer import tokenize
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
    """Writes an on-topic answer and streams it token by token at a set pace.

    Answers are deterministic for a given conversation, seed and choice index
    (at temperature 0 all choices are the same); pacing is ``asyncio.sleep`` on
    the shared event loop against an absolute schedule, so delays do not drift.
    """

    def __init__(
        self,
        *,
        time_to_first_token_ms: float = 0.0,
        inter_token_latency_ms: float = 0.0,
        min_answer_chars: int = 1378,
        seed: int | None = None,
    ) -> None:
        self._ttft_s = time_to_first_token_ms / 1000
        self._itl_s = inter_token_latency_ms / 1000
        self._min_answer_chars = min_answer_chars
        self._seed = seed

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatorEngine:
        """The simulator configured by ``settings``."""
        return cls(
            time_to_first_token_ms=settings.time_to_first_token_ms,
            inter_token_latency_ms=settings.inter_token_latency_ms,
            min_answer_chars=settings.min_answer_chars,
            seed=settings.seed,
        )

    def plan(self, request: GenerationRequest) -> Plan:
        """Everything ``stream`` will send, decided up front."""
        min_chars = self._min_answer_chars
        if request.ignore_eos and request.max_tokens is not None:
            min_chars = max(min_chars, request.max_tokens * _CHARS_PER_TOKEN_HEADROOM)
        text = write_answer(_question(request), self._rng(request), min_chars=min_chars)
        finish_reason: FinishReason = "stop"
        if not request.ignore_eos:
            text = _cut_at_stop(text, request.stop)
        tokens = tokenize(text)
        if request.max_tokens is not None and len(tokens) >= request.max_tokens:
            # A real engine that is stopped by the limit reports "length" even
            # when the answer would have ended on that very token.
            finish_reason = "length" if len(tokens) > request.max_tokens else finish_reason
            tokens = tokens[: request.max_tokens]
        return Plan(tokens, finish_reason)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[TokenDelta]:
        plan = self.plan(request)
        loop = asyncio.get_running_loop()
        start = loop.time() + self._ttft_s
        last = len(plan.tokens) - 1
        if last < 0:
            await asyncio.sleep(self._ttft_s)
            yield TokenDelta("", plan.finish_reason)
            return
        for i, token in enumerate(plan.tokens):
            # Sleeping to an absolute deadline keeps the pace when the loop is
            # late; sleep(0) still yields so one fast stream cannot starve others.
            await asyncio.sleep(max(0.0, start + i * self._itl_s - loop.time()))
            yield TokenDelta(token, plan.finish_reason if i == last else None)

    async def aclose(self) -> None:
        """Nothing to release: the simulator holds no connections."""

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
