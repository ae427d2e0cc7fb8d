"""``--replay``: the recorded requests of cassettes, at their recorded arrival times.

The cassettes are read by ``streamapi.cassettes``, the format's one reader: it
is standard library only and imports nothing of the server, so the bench stays
independent of what it measures while a corrupt cassette gets the same error,
naming the file and line, as ``streamapi serve --replay-dir`` gives.

Each exchange's request is sent as recorded (its endpoint under the target's
``/v1`` base, its JSON body, streamed), ``started_at`` seconds after the first
one, divided by the speed. A cassette recorded before ``started_at`` was kept
spaces its requests back to back: each when the one before it ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamapi.cassettes import Exchange, load_exchanges


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One request to send: when (seconds from the run's start), where and what."""

    at_s: float
    endpoint: str
    body: dict[str, Any]


def schedule(path: Path, *, speed: float, model: str | None = None) -> list[Scheduled]:
    """The requests of the cassettes at ``path`` in arrival order; ``CassetteError`` if unreadable.

    ``speed`` divides the recorded spacing (0: every request at once); ``model``
    replaces the recorded model name (the upstream's, which the target may not serve).
    """
    exchanges = load_exchanges(path)
    arrivals = _arrivals(exchanges)
    order = sorted(range(len(exchanges)), key=lambda i: arrivals[i])
    first = arrivals[order[0]] if order else 0.0
    out = []
    for index in order:
        exchange = exchanges[index]
        body = dict(exchange.body)
        if model is not None:
            body["model"] = model
        # The bench measures streams; the gateway records every exchange streamed anyway.
        body["stream"] = True
        at_s = 0.0 if speed <= 0 else (arrivals[index] - first) / speed
        out.append(Scheduled(at_s, exchange.endpoint, body))
    return out


def _arrivals(exchanges: list[Exchange]) -> list[float]:
    """Each exchange's start in seconds: recorded, or right after the one before it."""
    arrivals: list[float] = []
    previous: tuple[float, float] | None = None  # (start, duration) of the one before
    for exchange in exchanges:
        if exchange.started_at is not None:
            start = exchange.started_at
        elif previous is None:
            start = 0.0
        else:
            start = previous[0] + previous[1]
        arrivals.append(start)
        previous = (start, exchange.end_offset_ms / 1000)
    return arrivals
