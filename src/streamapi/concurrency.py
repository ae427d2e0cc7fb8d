"""Caps on concurrent generation requests: one for the server, one for each API key.

A request takes a ``ConcurrencyLease`` before its engine sequences open and gives it back
when its ``Admission`` closes, which happens exactly once however the request
ends (finished, failed, client gone, or refused at admission). A request over
a cap gets 429 with ``Retry-After`` before its response starts.

The leases live in the state store (``state.base.LeaseStore``): this process's
memory by default, Redis with ``--state-url`` (then the caps count every
process's requests).
"""

from __future__ import annotations

from typing import Literal

from streamapi.errors import RateLimitError
from streamapi.keys import Principal
from streamapi.state.base import LeaseStore


class ConcurrencyLimiter:
    """Caps open generation requests, in all and per key, in ``leases``; 0 means no cap."""

    def __init__(
        self, leases: LeaseStore, *, total: int, per_key: int, retry_after_s: float
    ) -> None:
        self.leases = leases
        self._total = total
        self._per_key = per_key
        self._retry_after_s = retry_after_s

    def _cap_of(self, principal: Principal | None) -> int:
        cap = None if principal is None else principal.max_concurrent_requests
        return self._per_key if cap is None else cap

    def check(self, principal: Principal | None) -> None:
        """``RateLimitError`` if a cap is reached now; takes nothing.

        Routes call it before reading the body, so that a refusal under
        overload costs no parsing, validation or planning (``take`` checks
        again: the caps may fill while the body arrives). It reads this
        process's leases alone, with no round trip (a lower bound with Redis).
        """
        leases = self.leases
        if self._total and leases.held() >= self._total:
            raise self._refusal("total", self._total)
        if principal is not None:
            cap = self._cap_of(principal)
            if cap and leases.held(principal.name) >= cap:
                raise self._refusal("key", cap)

    async def take(self, principal: Principal | None) -> ConcurrencyLease:
        """A lease, or ``RateLimitError`` when a cap is reached. Every generation path
        takes its lease here; a request under no cap takes none from the store."""
        per_key = self._cap_of(principal)
        if not (self._total or per_key):
            return ConcurrencyLease(self.leases, None)
        decision = await self.leases.acquire(
            None if principal is None else principal.name, total=self._total, per_key=per_key
        )
        if decision.refused is not None:
            most = self._total if decision.refused == "total" else per_key
            raise self._refusal(decision.refused, most)
        return ConcurrencyLease(self.leases, decision.lease_id)

    def _refusal(self, scope: Literal["total", "key"], most: int) -> RateLimitError:
        whose = "" if scope == "total" else " for this API key"
        return RateLimitError(
            f"Too many concurrent requests{whose} (at most {most}); retry shortly.",
            retry_after_s=self._retry_after_s,
            code="too_many_concurrent_requests",
        )


class ConcurrencyLease:
    """One request's place under the caps; ``release`` gives it back once.

    ``lease_id`` is None when the request took no place (under no cap, or the store
    could not count it).
    """

    __slots__ = ("_leases", "lease_id")

    def __init__(self, leases: LeaseStore, lease_id: str | None) -> None:
        self._leases = leases
        self.lease_id = lease_id

    def release(self) -> None:
        lease_id = self.lease_id
        if lease_id is None:
            return
        self.lease_id = None
        # Callers release synchronously: in memory this is done at once; with Redis,
        # this process's count at once and Redis's in the background (if that never
        # happens, the lease lapses within its TTL).
        self._leases.release_soon(lease_id)
