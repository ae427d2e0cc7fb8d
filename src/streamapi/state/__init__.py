"""Shared state: what one process keeps in memory, or, with ``--state-url``, Redis for all.

``base`` has the Protocols (rate-limit buckets, concurrency leases, the runtime
configuration, rule sequence counters, the journal, the Responses store),
``local`` the in-process stores (the default) and ``redis_store`` the Redis
ones, imported only when a state URL is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streamapi.state.base import SharedState, StateStoreError, StateUnavailableError
from streamapi.state.local import LocalState

__all__ = [
    "PER_WORKER",
    "SharedState",
    "StateStoreError",
    "StateUnavailableError",
    "create_state",
]

# What each process keeps for itself without a state URL (shared with one).
PER_WORKER = (
    "rate limits",
    "concurrency caps",
    "admin changes and rules",
    "rule sequence counters",
    "journal",
    "Responses store",
)


def create_state(
    url: str | None,
    *,
    prefix: str = "streamapi:",
    timeout_s: float = 0.25,
    fail_closed: bool = False,
    lease_ttl_s: float = 10.0,
    journal_size: int = 1000,
    responses_capacity: int = 1000,
    responses_max_bytes: int = 0,
    on_error: Callable[[str], None] | None = None,
) -> SharedState:
    """The in-process stores without ``url``, else Redis's (``StateStoreError`` if the URL is bad).

    Nothing is reached until ``start``. ``responses_max_bytes`` caps the in-process
    store (Redis's own memory settings bound Redis's).
    """
    if url is None:
        return LocalState(
            journal_size=journal_size,
            responses_capacity=responses_capacity,
            responses_max_bytes=responses_max_bytes,
        )
    from streamapi.state.redis_store import RedisState

    return RedisState(
        url,
        prefix=prefix,
        timeout_s=timeout_s,
        fail_closed=fail_closed,
        lease_ttl_s=lease_ttl_s,
        journal_size=journal_size,
        responses_capacity=responses_capacity,
        on_error=on_error,
    )


def check_reachable(url: str, *, timeout_s: float = 1.0) -> str | None:
    """Why the state store at ``url`` cannot be used, or None: for a clear start-up error.

    Run before the server starts (no event loop running yet).
    """

    async def probe() -> None:
        state = create_state(url, timeout_s=timeout_s)
        await state.start()
        await state.aclose()

    try:
        asyncio.run(probe())
    except StateStoreError as exc:
        return str(exc)
    return None
