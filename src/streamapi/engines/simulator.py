"""The embedded simulator: realistic answers and pacing with no weights and no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from streamapi.engines import GenerationRequest, TokenDelta
from streamapi.engines.planner import Plan, Planner
from streamapi.settings import Settings


class SimulatorEngine:
    """Streams the planner's answer token by token at a set pace.

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
        self._planner = Planner(min_answer_chars=min_answer_chars, seed=seed)

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
        return self._planner.plan(request)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[TokenDelta]:
        deltas = self.plan(request).deltas
        loop = asyncio.get_running_loop()
        start = loop.time() + self._ttft_s
        for i, delta in enumerate(deltas):
            # Sleeping to an absolute deadline keeps the pace when the loop is
            # late; sleep(0) still yields so one fast stream cannot starve others.
            await asyncio.sleep(max(0.0, start + i * self._itl_s - loop.time()))
            yield delta

    async def aclose(self) -> None:
        """Nothing to release: the simulator holds no connections."""
