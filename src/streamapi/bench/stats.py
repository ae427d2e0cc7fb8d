"""One request's timings, the run's totals, and the percentiles reported from them."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ascending values, interpolating linearly
    between the closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    """Count, mean, p50, p90, p99 and max of ``values`` times ``scale`` (s to ms)."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": math.fsum(ordered) / len(ordered) * scale,
        "p50": percentile(ordered, 50) * scale,
        "p90": percentile(ordered, 90) * scale,
        "p99": percentile(ordered, 99) * scale,
        "max": ordered[-1] * scale,
    }


def cdf(values: Sequence[float], points: int = 200, scale: float = 1000.0) -> list[list[float]]:
    """The empirical distribution of ``values`` times ``scale`` as at most ``points``
    ``[value, fraction at or below it]`` pairs, evenly spaced in rank (enough to draw)."""
    if not values:
        return []
    ordered = sorted(values)
    count = len(ordered)
    drawn = min(points, count)
    ranks = sorted({round(i * (count - 1) / max(drawn - 1, 1)) for i in range(drawn)})
    return [[ordered[rank] * scale, (rank + 1) / count] for rank in ranks]


class RequestRecord:
    """One request as the client saw it: when it started, its first and last token, how it ended."""

    __slots__ = (
        "done",
        "end",
        "error",
        "events",
        "first",
        "last",
        "measured",
        "start",
        "usage_tokens",
    )

    def __init__(self, measured: bool) -> None:
        self.measured = measured
        self.start = 0.0
        self.first = 0.0
        self.last = 0.0
        self.end = 0.0
        self.events = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error: str | None = None


class Stats:
    """The run's counts and latency samples, which every finished request adds to."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}
        self.tokens = 0
        self.events = 0
        self.sse_events = 0
        self.ttft = array("d")
        self.gaps = array("d")
        self.tpot = array("d")
        self.e2e = array("d")
        self.failed_latency = array("d")

    def note_error(self, kind: str, detail: str) -> None:
        self.error_samples.setdefault(kind, detail[:300])

    def record(self, request: RequestRecord) -> None:
        tokens = request.usage_tokens if request.usage_tokens is not None else request.events
        self.tokens += tokens
        if request.error is not None:
            self.failed += 1
            self.errors[request.error] = self.errors.get(request.error, 0) + 1
            self.failed_latency.append(request.end - request.start)
            return
        self.ok += 1
        if not request.measured:
            return
        self.e2e.append(request.end - request.start)
        if request.events:
            self.ttft.append(request.first - request.start)
        if tokens > 1 and request.events > 1:
            self.tpot.append((request.last - request.first) / (tokens - 1))
