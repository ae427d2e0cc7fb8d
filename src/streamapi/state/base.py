"""What the shared state offers, whatever holds it: one small Protocol per concern.

Every method is a coroutine so that one interface fits both the in-process
store (``state.local``, today's behaviour, no setup) and Redis
(``state.redis_store``). The stores hold numbers and JSON-ready dicts only:
rendering headers and errors, and what a document means, stay with the callers.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from streamapi.errors import ServiceUnavailableError

logger = logging.getLogger("streamapi.state")

Dimension = Literal["requests", "tokens"]
# A failure is logged at most this often (they are all counted).
_LOG_EVERY_S = 60.0


def process_id() -> str:
    """``pid@host``: which process served a request, in the shared journal."""
    return f"{os.getpid()}@{socket.gethostname()}"


class StateUnavailableError(ServiceUnavailableError):
    """The state store did not answer in time; a 503 when it reaches a client."""

    code = "state_store_unavailable"


class StateStoreError(RuntimeError):
    """The state store cannot be used at all (start-up: unreachable, or a bad URL)."""


# --- rate-limit buckets ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket as the request left it: ``limit`` per minute, ``level`` spendable now."""

    limit: int
    level: float


@dataclass(frozen=True, slots=True)
class BucketVerdict:
    """The buckets after a request: taken from if admitted, as they were if refused."""

    requests: Bucket | None
    tokens: Bucket | None
    refused: Dimension | None
    """The first bucket that was short (requests are checked first), or None."""


class RateBuckets(Protocol):
    """Requests and tokens per minute per (identity, model), refilled at limit/60 a second.

    ``take`` costs one request and ``tokens`` tokens, and takes them only if both
    buckets hold enough; a limit of 0 has no bucket. A bucket whose limit
    changed starts full. None means the store could not count it (failing open).
    """

    async def take(
        self,
        identity: str,
        model: str,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        tokens: int,
    ) -> BucketVerdict | None: ...

    async def reset(self) -> None:
        """Every bucket full again."""


# --- concurrency leases ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    """A place under the caps (``lease_id``), or which cap refused it."""

    lease_id: str | None
    """None when refused, or when the store could not count it (failing open)."""
    refused: Literal["total", "key"] | None = None


class LeaseStore(Protocol):
    """Open generation requests, in all and per key, as leases; a cap of 0 is no cap."""

    async def acquire(self, key: str | None, *, total: int, per_key: int) -> LeaseDecision: ...

    async def release(self, lease_id: str) -> None: ...

    def release_soon(self, lease_id: str) -> None:
        """``release`` in the background, for callers that cannot wait (awaited at close)."""

    async def count(self, key: str | None = None) -> int:
        """Live leases in all, or of ``key``."""

    def held(self, key: str | None = None) -> int:
        """This process's live leases, in all or of ``key``, without waiting: a lower
        bound of ``count``, for refusing before a request's body is read."""


# --- runtime configuration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """The admin API's changes: a version and a JSON document (None: the settings)."""

    version: int
    document: dict[str, Any] | None


class ConfigStore(Protocol):
    """The runtime configuration every process applies (``watch``)."""

    async def read(self) -> ConfigSnapshot: ...

    async def write(self, document: dict[str, Any] | None) -> ConfigSnapshot:
        """Store a new version; it changes nothing if it raises."""

    def watch(self, apply: Callable[[ConfigSnapshot], None]) -> None:
        """Call ``apply`` with each version written by another process (none in-process)."""


# --- rule sequence counters ----------------------------------------------------------------


class Counters(Protocol):
    """Named counters (rule ``sequence``), restarting at ``reset``."""

    async def increment(self, names: Sequence[str]) -> list[int]:
        """Each counter plus one, as it is now; ``StateUnavailableError`` if unreachable."""


# --- the journal -----------------------------------------------------------------------------


class JournalStore(Protocol):
    """The last ``size`` requests as dicts, each with an ``id`` and its ``process``."""

    async def open(self, record: dict[str, Any]) -> int:
        """List ``record`` (its ``id`` is assigned here and returned)."""

    async def update(self, record: dict[str, Any]) -> None:
        """Replace the entry with ``record["id"]``."""

    async def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; only the last ``limit`` if given."""

    async def clear(self) -> None: ...


# --- the Responses store ----------------------------------------------------------------------


class ResponseStorage(Protocol):
    """The last ``capacity`` stored responses (JSON-ready dicts), oldest dropped first
    (in process, least recently used first, and capped in bytes too)."""

    async def get(self, response_id: str) -> dict[str, Any] | None: ...

    async def put(self, response_id: str, stored: dict[str, Any]) -> None: ...


# --- the whole -------------------------------------------------------------------------------


class StoreHealth:
    """How the store has been doing: counts failures, logs them at most once a minute.

    ``on_error(operation)`` is called for every failure (the app counts it in
    ``streamapi_state_errors_total``).
    """

    def __init__(
        self, on_error: Callable[[str], None] | None = None, *, fail_closed: bool = False
    ) -> None:
        self.on_error = on_error
        self.fail_closed = fail_closed
        self.ok = True
        self.errors = 0
        self.last_error: str | None = None
        self._logged_at = -_LOG_EVERY_S

    def failed(self, operation: str, exc: BaseException) -> None:
        self.ok = False
        self.errors += 1
        self.last_error = f"{operation}: {type(exc).__name__}: {exc}".rstrip(": ")
        if self.on_error is not None:
            self.on_error(operation)
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            logger.warning(
                "The state store failed (%s); limits and caps fail %s until it is back. "
                "Later failures this minute are counted, not logged.",
                self.last_error,
                "closed" if self.fail_closed else "open",
            )

    def succeeded(self) -> None:
        if not self.ok:
            self.ok = True
            logger.warning("The state store answers again.")

    def describe(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "last_error": self.last_error}


class SharedState(Protocol):
    """Every store of one backend, with its lifecycle."""

    # Read-only members, so that each backend's own store classes satisfy them.
    @property
    def kind(self) -> Literal["local", "redis"]: ...
    @property
    def buckets(self) -> RateBuckets: ...
    @property
    def leases(self) -> LeaseStore: ...
    @property
    def config(self) -> ConfigStore: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def journal(self) -> JournalStore: ...
    @property
    def responses(self) -> ResponseStorage: ...
    @property
    def health(self) -> StoreHealth: ...

    async def start(self) -> None:
        """Check the store is there (``StateStoreError`` if not) and start its tasks."""

    async def reset(self) -> ConfigSnapshot:
        """Everywhere: configuration back to the settings, buckets full, counters and
        journal emptied (``StateUnavailableError`` changes nothing)."""

    async def aclose(self) -> None: ...
