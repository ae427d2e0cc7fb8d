"""Caps on concurrent generation requests: one for the server, one for each API key.

A request takes a ``ConcurrencyLease`` before its engine sequences open and gives it back
when its ``Admission`` closes, which happens exactly once however the request
ends (finished, failed, client gone, or refused at admission). A request over
a cap gets 429 with ``Retry-After`` before its response starts.
"""

from __future__ import annotations

from collections import Counter

from streamapi.errors import RateLimitError
from streamapi.keys import Principal
from streamapi.state.base import LeaseStore


class ConcurrencyLimiter:
    """Counts open generation requests, in all and per key; 0 means no cap."""

    def __init__(
        self, *, total: int, per_key: int, retry_after_s: float, shared: LeaseStore | None = None
    ) -> None:
        self.shared = shared
        """With a shared store (``--state-url``) the caps count every process's requests."""
        self._total = total
        self._per_key = per_key
        self._retry_after_s = retry_after_s
        self.open = 0
        self._by_key: Counter[str] = Counter()

    def check(self, principal: Principal | None) -> None:
        """``RateLimitError`` if a cap is reached now; takes nothing.

        Routes call it before reading the body, so that a refusal under
        overload costs no parsing, validation or planning (``acquire`` checks
        again: the caps may fill while the body arrives).
        """
        if self._total and self.open >= self._total:
            raise RateLimitError(
                f"Too many concurrent requests (at most {self._total}); retry shortly.",
                retry_after_s=self._retry_after_s,
                code="too_many_concurrent_requests",
            )
        if principal is not None:
            cap = principal.max_concurrent_requests
            cap = self._per_key if cap is None else cap
            if cap and self._by_key[principal.name] >= cap:
                raise RateLimitError(
                    f"Too many concurrent requests for this API key (at most {cap}); "
                    "retry shortly.",
                    retry_after_s=self._retry_after_s,
                    code="too_many_concurrent_requests",
                )

    def acquire(self, principal: Principal | None) -> ConcurrencyLease:
        """A lease, or ``RateLimitError`` when a cap is reached."""
        self.check(principal)
        key = principal.name if principal is not None else None
        if key is not None:
            self._by_key[key] += 1
        self.open += 1
        return ConcurrencyLease(self, key)

    async def take(self, principal: Principal | None) -> ConcurrencyLease:
        """``acquire``, and with a shared store counted across processes: this process's
        count first (a lower bound), then a lease in the shared store, which lapses if
        this process dies. Every generation path takes its lease here."""
        lease = self.acquire(principal)
        cap = 0 if principal is None else principal.max_concurrent_requests
        per_key = self._per_key if cap is None else cap
        if self.shared is None or not (self._total or per_key):
            return lease
        try:
            decision = await self.shared.acquire(
                None if principal is None else principal.name, total=self._total, per_key=per_key
            )
        except BaseException:
            lease.release()
            raise
        if decision.refused is not None:
            lease.release()
            most = self._total if decision.refused == "total" else per_key
            scope = "" if decision.refused == "total" else " for this API key"
            raise RateLimitError(
                f"Too many concurrent requests{scope} (at most {most}); retry shortly.",
                retry_after_s=self._retry_after_s,
                code="too_many_concurrent_requests",
            )
        lease.shared_id = decision.lease_id
        return lease

    def _release(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            self._by_key[key] -= 1
            if not self._by_key[key]:
                del self._by_key[key]


class ConcurrencyLease:
    """One request's place under the caps; ``release`` gives it back once."""

    def __init__(self, limiter: ConcurrencyLimiter, key: str | None) -> None:
        self._limiter = limiter
        self._key = key
        self._released = False
        self.shared_id: str | None = None

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._limiter._release(self._key)
        shared, lease_id = self._limiter.shared, self.shared_id
        if shared is not None and lease_id is not None:
            # In the background: callers release synchronously. If it never happens,
            # the lease lapses within its TTL.
            shared.release_soon(lease_id)
