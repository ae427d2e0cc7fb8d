"""The in-process state: what one process has always kept in memory, behind the shared Protocols.

The default (no ``--state-url``): nothing to set up, nothing shared. With
``--workers N`` each worker has its own. These are the only in-process
implementations of the rate-limit buckets, concurrency leases and stored Responses:
the app reaches them through the Protocols alone, as it reaches Redis's. Two are
used on their own too: a Responses WebSocket keeps its ``store: false`` responses in
a ``LocalResponses`` of its own, and ``RedisLeases`` counts this process's leases in
a ``LocalLeases``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson

from streamapi.state.base import (
    Bucket,
    BucketVerdict,
    ConfigSnapshot,
    Dimension,
    LeaseDecision,
    StoreHealth,
    process_id,
)

logger = logging.getLogger("streamapi.state")

# Past this many buckets the least recently used are forgotten: full ones first (a
# full bucket is a fresh one), and past the cap the oldest anyway, so memory is bounded.
MAX_BUCKETS = 10_000


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
    """Token buckets in a dict, at most ``max_buckets`` of them; ``clock`` (monotonic
    seconds) is injectable for tests."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS
    ) -> None:
        self._clock = clock
        self._max_buckets = max_buckets
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
            if not full and len(self._buckets) < self._max_buckets:
                return
            del self._buckets[key]


_REFUSED_TOTAL = LeaseDecision(None, "total")
_REFUSED_KEY = LeaseDecision(None, "key")


class LocalLeases:
    """Open requests counted in memory; a lease lives until released.

    The default store of the concurrency caps, and, inside the Redis one, the count
    of this process's own leases (a lower bound of the cluster's, read without a round
    trip, and the caps per process while Redis does not answer).
    """

    def __init__(self) -> None:
        self._total = 0
        self._by_key: Counter[str] = Counter()
        self._held: dict[str, str | None] = {}
        # Ids need only be unique among this process's live leases: a counter, not uuid4.
        self._ids = itertools.count(1)

    async def acquire(self, key: str | None, *, total: int, per_key: int) -> LeaseDecision:
        # refusal() and hold() inline: this runs for every capped request.
        if total and self._total >= total:
            return _REFUSED_TOTAL
        if key is not None and per_key and self._by_key[key] >= per_key:
            return _REFUSED_KEY
        lease_id = str(next(self._ids))
        self._held[lease_id] = key
        self._total += 1
        if key is not None:
            self._by_key[key] += 1
        return LeaseDecision(lease_id)

    def refusal(
        self, key: str | None, *, total: int, per_key: int
    ) -> Literal["total", "key"] | None:
        """Which cap is full now, if any (a cap of 0 is no cap); takes nothing."""
        if total and self._total >= total:
            return "total"
        if key is not None and per_key and self._by_key[key] >= per_key:
            return "key"
        return None

    def hold(self, lease_id: str, key: str | None) -> None:
        """Count ``lease_id`` (of ``key``) as held, caps unchecked."""
        self._held[lease_id] = key
        self._total += 1
        if key is not None:
            self._by_key[key] += 1

    def held(self, key: str | None = None) -> int:
        return self._total if key is None else self._by_key[key]

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
        return self.held(key)


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
    """At most ``capacity`` responses and ``max_bytes`` of them (0: no byte cap), least
    recently used dropped first; a capacity of 0 keeps none.

    A response weighs the bytes of its JSON; one heavier than ``max_bytes`` alone is
    not kept. ``get`` counts as a use.
    """

    def __init__(self, capacity: int, *, max_bytes: int = 0) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        """What the responses kept weigh, as JSON."""

    async def get(self, response_id: str) -> dict[str, Any] | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)  # used: the last to go
        return stored

    async def put(self, response_id: str, stored: dict[str, Any]) -> None:
        if self._capacity == 0:
            return
        size = len(orjson.dumps(stored))
        self.discard(response_id)
        if self._max_bytes and size > self._max_bytes:
            logger.warning(
                "Response %s not stored: its %d bytes exceed the store's %d",
                response_id,
                size,
                self._max_bytes,
            )
            return
        self._items[response_id] = stored
        self._sizes[response_id] = size
        self.bytes += size
        while len(self._items) > self._capacity or (
            self._max_bytes and self.bytes > self._max_bytes
        ):
            oldest, _ = self._items.popitem(last=False)
            self.bytes -= self._sizes.pop(oldest)

    def discard(self, response_id: str) -> None:
        """Forget ``response_id`` if kept."""
        if self._items.pop(response_id, None) is not None:
            self.bytes -= self._sizes.pop(response_id)


class LocalState:
    """Every store in this process's memory."""

    kind: Literal["local", "redis"] = "local"

    def __init__(
        self,
        *,
        journal_size: int = 1000,
        responses_capacity: int = 1000,
        responses_max_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.buckets = LocalBuckets(clock=clock, max_buckets=max_buckets)
        self.leases = LocalLeases()
        self.config = LocalConfig()
        self.counters = LocalCounters()
        self.journal = LocalJournal(journal_size)
        self.responses = LocalResponses(responses_capacity, max_bytes=responses_max_bytes)
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
