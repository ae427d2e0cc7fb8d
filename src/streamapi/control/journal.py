"""The journal: the last requests on the generation routes, for tests to assert on.

Each entry is opened when a request arrives (so requests in flight are
listed) and filled in as it goes: the model and tokens when it is checked, the
matched rule and injected fault when they are chosen, the first token when it
is generated, and the status and outcome when its response ends.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from streamapi.state.base import JournalStore, StateUnavailableError, process_id

Outcome = Literal["in_progress", "completed", "error", "dropped", "client_disconnected"]
# The last user message is kept this long: enough to recognise a request by.
_USER_CHARS = 500
# Any other text a client can make long (a model name, an error's message) is cut here,
# so that no entry is large: the journal's bytes are bounded by its count times this.
_TEXT_CHARS = 1000
# What an entry costs beyond its texts (its dict and numbers), an estimate.
_ENTRY_OVERHEAD_BYTES = 600


@dataclass(slots=True)
class JournalEntry:
    """One request. Times are in milliseconds from its arrival; ``time`` is Unix time."""

    id: int
    time: float
    method: str
    path: str
    endpoint: str | None
    request_id: str | None = None
    model: str | None = None
    stream: bool | None = None
    identity: str | None = None
    """``key:<name>`` of the request's authenticated key (never the key), else
    ``addr:<client>`` (``hooks.identify``)."""
    key_name: str | None = None
    """The name of the API key it came with (with --api-key), never the key."""
    user: str | None = None
    status: int | None = None
    outcome: Outcome = "in_progress"
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float | None = None
    rule: str | None = None
    fault: str | None = None
    error: dict[str, Any] | None = None
    process: str | None = None
    """``pid@host`` of the process that served it."""
    arrived_at: float = field(default=0.0, repr=False)
    """The event loop's clock at arrival (not reported)."""
    counted_bytes: int = field(default=0, repr=False)
    """What the journal counted of it against its byte cap (not reported)."""

    def describe_user(self, text: str | None) -> None:
        self.user = None if text is None else text[:_USER_CHARS]

    def size_bytes(self) -> int:
        """About what the entry holds in memory: its texts and a fixed overhead."""
        texts = (self.path, self.model, self.user, self.request_id, self.identity, self.rule)
        size = _ENTRY_OVERHEAD_BYTES + sum(len(t) for t in texts if t is not None)
        if self.error is not None:
            size += sum(len(str(v)) for v in self.error.values())
        return size

    def close(self, status: int, error_body: bytes, now: float) -> None:
        """Record how the response ended: its status, duration and, if it failed, why."""
        self.status = status or None
        self.duration_ms = (now - self.arrived_at) * 1000
        if self.model is not None:
            self.model = self.model[:_TEXT_CHARS]
        if self.outcome != "in_progress":
            return
        if status >= 400 or not status:
            self.outcome = "error"
            self.error = _error_of(error_body)
        elif self.stream:
            # A stream whose frames never ran to their end: its client left early.
            self.outcome = "client_disconnected"
        else:
            self.outcome = "completed"

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        del body["arrived_at"], body["counted_bytes"]
        return body


class Journal:
    """The last ``size`` entries, oldest dropped first, and fewer past ``max_bytes``.

    With a shared ``store`` (``--state-url``) each entry is also written there
    when it opens (which gives it its cluster-wide id) and when it closes, and
    ``read`` lists every process's entries. The journal never fails a request:
    a store that fails costs the entry, counted and logged by the store.
    """

    def __init__(self, size: int, store: JournalStore | None = None, *, max_bytes: int = 0) -> None:
        self._entries: deque[JournalEntry] = deque(maxlen=size)
        self._max_bytes = max_bytes
        """0: no cap but the count."""
        self._bytes = 0
        self._ids = itertools.count(1)
        self.store = store
        self._process = process_id()

    def open(
        self, *, method: str, path: str, endpoint: str | None, arrived_at: float
    ) -> JournalEntry:
        """A new entry for a request that has just arrived, already listed."""
        entry = JournalEntry(
            id=next(self._ids),
            time=time.time(),
            method=method,
            path=path,
            endpoint=endpoint,
            arrived_at=arrived_at,
            process=self._process,
        )
        if len(self._entries) == self._entries.maxlen:
            self._bytes -= self._entries[0].counted_bytes  # the append drops it
        self._entries.append(entry)
        return entry

    def _count(self, entry: JournalEntry) -> None:
        """Count a closed entry's bytes, and drop the oldest while over ``max_bytes`` (the
        newest stays): O(1) amortised, each entry dropped once."""
        self._bytes -= entry.counted_bytes
        entry.counted_bytes = entry.size_bytes()
        self._bytes += entry.counted_bytes
        while self._max_bytes and self._bytes > self._max_bytes and len(self._entries) > 1:
            self._bytes -= self._entries.popleft().counted_bytes

    def entries(self) -> list[dict[str, Any]]:
        """Every entry kept, oldest first."""
        return [entry.to_dict() for entry in self._entries]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    async def opened(self, entry: JournalEntry) -> None:
        """Write a new entry to the shared store, where it gets its id."""
        if self.store is not None:
            with suppress(StateUnavailableError):
                entry.id = await self.store.open(entry.to_dict())

    async def closed(self, entry: JournalEntry) -> None:
        """Write an ended entry's final state to the shared store."""
        self._count(entry)
        if self.store is not None:
            with suppress(StateUnavailableError):
                await self.store.update(entry.to_dict())

    async def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; every process's with a shared store (503 if it fails)."""
        if self.store is not None:
            return await self.store.entries(limit)
        entries = self.entries()
        return entries if limit is None else entries[-limit:]

    async def clear_all(self) -> None:
        """Empty it; with a shared store, for every process (503 if it fails)."""
        if self.store is not None:
            await self.store.clear()
        self.clear()


def _error_of(body: bytes) -> dict[str, Any] | None:
    """``type``, ``code`` and ``message`` of an error body (OpenAI's, Anthropic's, an SSE event)."""
    payload: Any = None
    with suppress(orjson.JSONDecodeError):
        payload = orjson.loads(body.removeprefix(b"data: ").strip() or b"null")
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    found = {key: error.get(key) for key in ("type", "code", "message")}
    return {k: v[:_TEXT_CHARS] if isinstance(v, str) else v for k, v in found.items()}
