"""The dashboard's live numbers, read once per tick for every page that watches them.

Reading the numbers means rendering the whole ``/metrics`` page and parsing it
back, and reading the journal: done once per tick here, by one task, however
many pages are open, rather than once per page (40 pages had taken an idle
server to 74 % of a core). Each page's stream then only picks the journal
entries that changed since its own last event. The task runs while anyone
watches, and the number of watchers is capped (``--dashboard-max-subscribers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamapi import sse
from streamapi.control.hooks import Control
from streamapi.control.rules import ENDPOINT_PATHS
from streamapi.errors import RateLimitError
from streamapi.lifecycle import Lifecycle
from streamapi.metrics import Metrics
from streamapi.state import StateUnavailableError

# How often the page is sent fresh numbers: live to the eye, cheap to render.
TICK_S = 0.5


@dataclass(frozen=True, slots=True)
class Tick:
    """One reading, shared by every subscriber: what goes in a ``tick`` event but the
    journal's changes, which are each subscriber's own."""

    number: int
    numbers: dict[str, Any]
    journal: list[dict[str, Any]] | None


class DashboardFeed:
    """One reading per tick for every open ``/dashboard/events``, at most ``max_subscribers``."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        control: Control,
        lifecycle: Lifecycle,
        max_subscribers: int,
        tick_s: float = TICK_S,
    ) -> None:
        self._metrics = metrics
        self._control = control
        self._lifecycle = lifecycle
        self.max_subscribers = max_subscribers
        self._tick_s = tick_s
        self.subscribers = 0
        self.readings = 0
        """Ticks read so far: one per tick, whatever the number of subscribers."""
        self._latest: Tick | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def reserve(self) -> None:
        """Take a subscriber's place, or 429 when all are taken; ``release`` gives it back."""
        if self.subscribers >= self.max_subscribers:
            raise RateLimitError(
                f"Too many dashboard event streams open (at most {self.max_subscribers}); "
                "close one, or raise --dashboard-max-subscribers.",
                retry_after_s=self._tick_s * 4,
                code="too_many_dashboard_subscribers",
            )
        self.subscribers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read_forever(), name="dashboard feed")

    async def release(self) -> None:
        self.subscribers -= 1

    async def aclose(self) -> None:
        """Stop the reading task (the app's shutdown)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def ticks(self) -> AsyncIterator[Tick]:
        """Each tick's reading from now on (the latest at once), until the server drains."""
        seen = -1
        while not self._lifecycle.draining:
            latest = self._latest
            if latest is not None and latest.number != seen:
                seen = latest.number
                yield latest
                continue
            changed = self._changed
            # Bounded, so that a drain is noticed even if no tick comes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._tick_s * 4)

    async def _read_forever(self) -> None:
        rates = _Rates()
        number = 0
        while self.subscribers > 0 and not self._lifecycle.draining:
            numbers = _read_metrics(self._metrics.render().decode())
            journal = self._control.journal
            entries: list[dict[str, Any]] | None = None
            if journal is not None:
                try:  # with --state-url, every process's requests
                    entries = await journal.read()
                except StateUnavailableError:  # Redis lost: this process's own meanwhile
                    entries = journal.entries()
            number += 1
            self.readings += 1
            self._latest = Tick(
                number,
                {
                    "engine": rates.engine(numbers),
                    "histograms": {
                        "ttft": numbers.buckets.get("vllm:time_to_first_token_seconds", []),
                        "itl": numbers.buckets.get("vllm:inter_token_latency_seconds", []),
                    },
                },
                entries,
            )
            self._changed.set()
            self._changed = asyncio.Event()
            await asyncio.sleep(self._tick_s)
        # The next subscriber starts a fresh task, with fresh numbers.
        self._latest = None


async def tick_events(feed: DashboardFeed) -> AsyncIterator[bytes]:
    """A subscriber's ``tick`` events: the shared reading, and its own journal changes."""
    sent: dict[int, dict[str, Any]] = {}
    async for tick in feed.ticks():
        changed: list[dict[str, Any]] | None = None
        if tick.journal is not None:
            changed = [entry for entry in tick.journal if sent.get(entry["id"]) != entry]
            sent = {entry["id"]: entry for entry in tick.journal}
        yield sse.encode_event(
            "tick",
            {
                "now": time.time(),
                **tick.numbers,
                # Which ids the journal still holds, so the page drops the rest.
                "journal_ids": None if tick.journal is None else sorted(sent),
                "journal": changed,
            },
        )


class _Numbers:
    """What the page needs of one ``/metrics`` rendering."""

    def __init__(self) -> None:
        self.gauges: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.buckets: dict[str, list[tuple[float | None, float]]] = {}


def _read_metrics(text: str) -> _Numbers:
    numbers = _Numbers()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.type == "gauge":
                numbers.gauges[family.name] = numbers.gauges.get(family.name, 0) + sample.value
            elif family.type == "counter" and sample.name.endswith("_total"):
                if family.name == "streamapi_requests" and not _is_generation(sample.labels):
                    continue
                numbers.counters[family.name] = numbers.counters.get(family.name, 0) + sample.value
            elif family.type == "histogram" and sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                numbers.buckets.setdefault(family.name, []).append(
                    # JSON has no infinity: the last bucket's bound is sent as null.
                    (bound if math.isfinite(bound) else None, sample.value)
                )
    return numbers


def _is_generation(labels: dict[str, str]) -> bool:
    return labels.get("route") in ENDPOINT_PATHS


class _Rates:
    """Requests and tokens per second, from the counters' growth between two ticks."""

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def engine(self, numbers: _Numbers) -> dict[str, float]:
        now = time.monotonic()
        requests = numbers.counters.get("streamapi_requests", 0.0)
        tokens = numbers.counters.get("vllm:generation_tokens", 0.0)
        per_s = (0.0, 0.0)
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            per_s = ((requests - self._last[1]) / elapsed, (tokens - self._last[2]) / elapsed)
        self._last = (now, requests, tokens)
        gauges = numbers.gauges
        return {
            "running": gauges.get("vllm:num_requests_running", 0.0),
            "waiting": gauges.get("vllm:num_requests_waiting", 0.0),
            "kv_cache_usage": gauges.get("vllm:kv_cache_usage_perc", 0.0),
            "streams": gauges.get("streamapi_streams_in_flight", 0.0),
            "requests_per_s": max(per_s[0], 0.0),
            "tokens_per_s": max(per_s[1], 0.0),
        }
