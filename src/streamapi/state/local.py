"""The in-process state: what one process has always kept in memory, behind the shared Protocols.

The default (no ``--state-url``): nothing to set up, nothing shared. With
``--workers N`` each worker has its own.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from streamapi.state.base import (
    Bucket,
    BucketVerdict,
    ConfigSnapshot,
    Dimension,
    LeaseDecision,
    StoreHealth,
    process_id,
)

# Past this many buckets the least recently used are forgotten: full ones first (a
# full bucket is a fresh one), and past the cap the oldest anyway, so memory is bounded.
_MAX_BUCKETS = 10_000


class _Level:
    __slots__ = ("level", "limit", "updated")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.updated) * self.limit / 60)
        self.updated = now


class LocalBuckets:
    """Token buckets in a dict; ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Least recently used first: expiry looks at the front only.
        self._buckets: OrderedDict[tuple[str, str], tuple[_Level | None, _Level | None]] = (
            OrderedDict()
        )

    async def take(
        self,
        identity: str,
        model: str,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        tokens: int,
    ) -> BucketVerdict:
        now = self._clock()
        pair = self._pair(identity, model, (requests_per_minute, tokens_per_minute), now)
        refused: Dimension | None = None
        steps: tuple[tuple[_Level | None, int, Dimension], ...] = (
            (pair[0], 1, "requests"),
            (pair[1], tokens, "tokens"),
        )
        for level, cost, dimension in steps:
            if level is not None:
                level.refill(now)
                # Short now, or never enough (cost over the limit): refused.
                if refused is None and cost > level.level:
                    refused = dimension
        if refused is None:
            for level, cost in ((pair[0], 1), (pair[1], tokens)):
                if level is not None:
                    level.level -= cost
        requests, token_level = (
            None if level is None else Bucket(level.limit, level.level) for level in pair
        )
        return BucketVerdict(requests, token_level, refused)

    async def reset(self) -> None:
        self._buckets.clear()

    def _pair(
        self, identity: str, model: str, limits: tuple[int, int], now: float
    ) -> tuple[_Level | None, _Level | None]:
        key = (identity, model)
        pair = self._buckets.get(key)
        if pair is not None and tuple(0 if b is None else b.limit for b in pair) == limits:
            self._buckets.move_to_end(key)
            return pair
        if pair is None:
            self._expire(now)
        pair = (
            _Level(limits[0], now) if limits[0] else None,
            _Level(limits[1], now) if limits[1] else None,
        )
        self._buckets[key] = pair
        self._buckets.move_to_end(key)
        return pair

    def _expire(self, now: float) -> None:
        """Forget the least recently used buckets that are full again, and past the cap
        the least recently used whatever their level: O(1) amortised per new identity."""
        while self._buckets:
            key, pair = next(iter(self._buckets.items()))
            full = all(
                b is None or b.level + (now - b.updated) * b.limit / 60 >= b.limit for b in pair
            )
            if not full and len(self._buckets) < _MAX_BUCKETS:
                return
            del self._buckets[key]


class LocalLeases:
    """Open requests counted in memory; a lease lives until released."""

    def __init__(self) -> None:
        self._total = 0
        self._by_key: Counter[str] = Counter()
        self._held: dict[str, str | None] = {}

    async def acquire(self, key: str | None, *, total: int, per_key: int) -> LeaseDecision:
        if total and self._total >= total:
            return LeaseDecision(None, "total")
        if key is not None and per_key and self._by_key[key] >= per_key:
            return LeaseDecision(None, "key")
        lease_id = uuid.uuid4().hex
        self._held[lease_id] = key
        self._total += 1
        if key is not None:
            self._by_key[key] += 1
        return LeaseDecision(lease_id)

    def _release(self, lease_id: str) -> None:
        if lease_id not in self._held:
            return
        key = self._held.pop(lease_id)
        self._total -= 1
        if key is not None:
            self._by_key[key] -= 1
            if not self._by_key[key]:
                del self._by_key[key]

    def release_soon(self, lease_id: str) -> None:
        # Nothing to wait for in memory.
        self._release(lease_id)

    async def release(self, lease_id: str) -> None:
        self._release(lease_id)

    async def count(self, key: str | None = None) -> int:
        return self._total if key is None else self._by_key[key]


class LocalConfig:
    """The runtime configuration of this process alone: nobody else to tell."""

    def __init__(self) -> None:
        self._snapshot = ConfigSnapshot(0, None)

    async def read(self) -> ConfigSnapshot:
        return self._snapshot

    async def write(self, document: dict[str, Any] | None) -> ConfigSnapshot:
        self._snapshot = ConfigSnapshot(self._snapshot.version + 1, document)
        return self._snapshot

    def watch(self, apply: Callable[[ConfigSnapshot], None]) -> None:
        """Nothing to watch: only this process writes."""


class LocalCounters:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    async def increment(self, names: Sequence[str]) -> list[int]:
        counts = []
        for name in names:
            self._counts[name] += 1
            counts.append(self._counts[name])
        return counts

    def clear(self) -> None:
        self._counts.clear()


class LocalJournal:
    """The last ``size`` records, oldest dropped first."""

    def __init__(self, size: int) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=size)
        self._by_id: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._process = process_id()

    async def open(self, record: dict[str, Any]) -> int:
        entry = {**record, "id": next(self._ids), "process": self._process}
        if len(self._records) == self._records.maxlen:
            self._by_id.pop(self._records[0]["id"], None)
        self._records.append(entry)
        self._by_id[entry["id"]] = entry
        return int(entry["id"])

    async def update(self, record: dict[str, Any]) -> None:
        entry = self._by_id.get(record["id"])
        if entry is not None:
            entry.update(record, process=self._process)

    async def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        records = list(self._records)
        return [dict(r) for r in (records if limit is None else records[-limit:])]

    async def clear(self) -> None:
        self._records.clear()
        self._by_id.clear()


class LocalResponses:
    """The last ``capacity`` responses, oldest dropped first; 0 keeps none."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def get(self, response_id: str) -> dict[str, Any] | None:
        return self._items.get(response_id)

    async def put(self, response_id: str, stored: dict[str, Any]) -> None:
        if self._capacity == 0:
            return
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


class LocalState:
    """Every store in this process's memory."""

    kind: Literal["local", "redis"] = "local"

    def __init__(
        self,
        *,
        journal_size: int = 1000,
        responses_capacity: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = LocalBuckets(clock=clock)
        self.leases = LocalLeases()
        self.config = LocalConfig()
        self.counters = LocalCounters()
        self.journal = LocalJournal(journal_size)
        self.responses = LocalResponses(responses_capacity)
        self.health = StoreHealth()

    async def start(self) -> None:
        """Nothing to reach."""

    async def reset(self) -> ConfigSnapshot:
        await self.buckets.reset()
        self.counters.clear()
        await self.journal.clear()
        return await self.config.write(None)

    async def aclose(self) -> None:
        """Nothing to close."""
