"""The shared-state stores: one contract for the in-process and Redis backends, then what
only Redis does (two processes sharing it, leases of a killed process, propagation, faults).

Every Redis test runs against a real ``redis-server`` of its own (``tests/redis_server.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from streamapi.state import SharedState, StateStoreError, StateUnavailableError, create_state
from streamapi.state.base import ConfigSnapshot
from streamapi.state.local import MAX_BUCKETS, LocalBuckets, LocalResponses
from streamapi.state.redis_store import RedisState
from tests.redis_server import RedisServer


def _redis(server: RedisServer, **options: Any) -> RedisState:
    # A timeout generous for a loaded machine, except where the test is about failures.
    options.setdefault("timeout_s", 2.0)
    state = create_state(server.url, **options)
    assert isinstance(state, RedisState)
    return state


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[SharedState]:
    if request.param == "local":
        state = create_state(None, journal_size=3, responses_capacity=2)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        state = _redis(server, journal_size=3, responses_capacity=2)
    await state.start()
    try:
        yield state
    finally:
        await state.aclose()


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[RedisState, RedisState]]:
    """Two stores on one Redis: two processes, as far as Redis can tell."""
    a, b = _redis(redis_server), _redis(redis_server)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


# --- the contract, on both backends --------------------------------------------------------


async def test_buckets_admit_the_limit_then_refuse_with_levels(store: SharedState) -> None:
    take = store.buckets.take
    verdicts = [
        await take("key:a", "m", requests_per_minute=3, tokens_per_minute=100, tokens=10)
        for _ in range(4)
    ]
    assert [v.refused if v else "uncounted" for v in verdicts] == [None, None, None, "requests"]
    first, last = verdicts[0], verdicts[3]
    assert first is not None and last is not None
    assert first.requests is not None and first.requests.limit == 3
    assert first.requests.level == pytest.approx(2, abs=0.01)
    assert first.tokens is not None and first.tokens.level == pytest.approx(90, abs=0.1)
    # A refusal takes nothing: the levels are as the third request left them (plus refill).
    assert last.requests is not None and last.requests.level == pytest.approx(0, abs=0.01)
    assert last.tokens is not None and last.tokens.level == pytest.approx(70, abs=0.1)
    # Another identity, and another model, have buckets of their own.
    other = await take("key:b", "m", requests_per_minute=3, tokens_per_minute=100, tokens=10)
    assert other is not None and other.refused is None
    other = await take("key:a", "n", requests_per_minute=3, tokens_per_minute=100, tokens=10)
    assert other is not None and other.refused is None


async def test_buckets_refuse_tokens_and_reset(store: SharedState) -> None:
    take = store.buckets.take
    verdict = await take("id", "m", requests_per_minute=0, tokens_per_minute=50, tokens=51)
    assert verdict is not None and verdict.refused == "tokens" and verdict.requests is None
    verdict = await take("id", "m", requests_per_minute=0, tokens_per_minute=50, tokens=50)
    assert verdict is not None and verdict.refused is None
    verdict = await take("id", "m", requests_per_minute=0, tokens_per_minute=50, tokens=5)
    assert verdict is not None and verdict.refused == "tokens"
    await store.buckets.reset()
    verdict = await take("id", "m", requests_per_minute=0, tokens_per_minute=50, tokens=5)
    assert verdict is not None and verdict.refused is None
    # New limits start with a full bucket.
    verdict = await take("id", "m", requests_per_minute=0, tokens_per_minute=60, tokens=60)
    assert verdict is not None and verdict.refused is None


async def test_leases_cap_in_all_and_per_key(store: SharedState) -> None:
    leases = store.leases
    first = await leases.acquire("alice", total=3, per_key=2)
    second = await leases.acquire("alice", total=3, per_key=2)
    assert first.lease_id and second.lease_id
    assert (await leases.acquire("alice", total=3, per_key=2)).refused == "key"
    bob = await leases.acquire("bob", total=3, per_key=2)
    assert bob.lease_id
    assert (await leases.acquire(None, total=3, per_key=2)).refused == "total"
    assert await leases.count() == 3 and await leases.count("alice") == 2
    await leases.release(first.lease_id)
    await leases.release(first.lease_id)  # once only
    assert await leases.count() == 2
    assert (await leases.acquire("alice", total=3, per_key=2)).lease_id


async def test_config_versions(store: SharedState) -> None:
    start = await store.config.read()
    written = await store.config.write({"faults": {"rate": 0.5}})
    assert written.version == start.version + 1
    assert await store.config.read() == ConfigSnapshot(written.version, {"faults": {"rate": 0.5}})
    reset = await store.reset()
    assert reset.version == written.version + 1 and reset.document is None
    assert (await store.config.read()).document is None


async def test_counters_count_and_restart_at_reset(store: SharedState) -> None:
    assert await store.counters.increment(["a", "b"]) == [1, 1]
    assert await store.counters.increment(["a"]) == [2]
    await store.reset()
    assert await store.counters.increment(["a"]) == [1]


async def test_journal_keeps_the_last_entries_with_their_process(store: SharedState) -> None:
    journal = store.journal
    ids = [await journal.open({"path": f"/{n}", "outcome": "in_progress"}) for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    await journal.update({"id": ids[4], "path": "/4", "outcome": "completed"})
    entries = await journal.entries()
    assert [e["path"] for e in entries] == ["/2", "/3", "/4"]
    assert entries[-1]["outcome"] == "completed" and entries[0]["outcome"] == "in_progress"
    assert all(e["process"] == f"{os.getpid()}@{os.uname().nodename}" for e in entries)
    assert [e["path"] for e in await journal.entries(limit=1)] == ["/4"]
    await journal.clear()
    assert await journal.entries() == []


async def test_responses_keep_the_last_capacity(store: SharedState) -> None:
    for n in range(3):
        await store.responses.put(f"resp_{n}", {"body": {"id": f"resp_{n}"}, "n": n})
    assert await store.responses.get("resp_0") is None
    assert await store.responses.get("resp_2") == {"body": {"id": "resp_2"}, "n": 2}
    assert await store.responses.get("resp_1") is not None


async def test_leases_held_is_this_process_s_count_at_once(store: SharedState) -> None:
    leases = store.leases
    first = await leases.acquire("alice", total=0, per_key=5)
    await leases.acquire(None, total=0, per_key=5)
    assert (leases.held(), leases.held("alice"), leases.held("bob")) == (2, 1, 0)
    assert first.lease_id is not None
    leases.release_soon(first.lease_id)
    assert (leases.held(), leases.held("alice")) == (1, 0)


# --- in process only: what memory bounds ---------------------------------------------------


async def test_local_buckets_past_the_cap_the_least_recently_used_go_first() -> None:
    now = [1000.0]
    buckets = LocalBuckets(clock=lambda: now[0])

    async def take(identity: str) -> str | None:
        verdict = await buckets.take(
            identity, "m", requests_per_minute=1, tokens_per_minute=0, tokens=0
        )
        return verdict.refused

    await take("oldest")
    await take("recent")
    for number in range(MAX_BUCKETS - 2):
        await take(f"new-{number}")
    # "recent" is used again (refused: its bucket is empty), so "oldest" is the first out.
    assert await take("recent") == "requests"
    await take("one-more")
    assert await take("oldest") is None  # forgotten past the cap: a fresh bucket
    assert len(buckets._buckets) == MAX_BUCKETS


async def test_local_buckets_full_again_are_forgotten_by_the_next_new_identity() -> None:
    # Issue 26: no sweep per new identity; each bucket is dropped once, from the front.
    now = [1000.0]
    buckets = LocalBuckets(clock=lambda: now[0])
    limits: dict[str, Any] = {"requests_per_minute": 2, "tokens_per_minute": 0, "tokens": 0}
    for number in range(100):
        await buckets.take(f"old-{number}", "m", **limits)
    await buckets.take("busy", "m", **limits)
    now[0] += 61  # every bucket has refilled
    await buckets.take("busy", "m", **limits)
    await buckets.take("newcomer", "m", **limits)
    # Only the two in use remain: the full ones went, each once.
    assert [identity for identity, _ in buckets._buckets] == ["busy", "newcomer"]


async def test_local_responses_are_capped_in_bytes_least_recently_used_first() -> None:
    weight = len(orjson.dumps({"body": {"id": "resp_0"}, "text": "x" * 100}))
    responses = LocalResponses(10, max_bytes=3 * weight)
    for n in range(3):
        await responses.put(f"resp_{n}", {"body": {"id": f"resp_{n}"}, "text": "x" * 100})
    assert responses.bytes == 3 * weight
    assert await responses.get("resp_0") is not None  # used: now the most recent
    await responses.put("resp_3", {"body": {"id": "resp_3"}, "text": "x" * 100})
    assert await responses.get("resp_1") is None
    assert [await responses.get(f"resp_{n}") is not None for n in (0, 2, 3)] == [True] * 3
    # One heavier than the whole budget is not kept, and pushes nothing out.
    await responses.put("huge", {"body": {"id": "huge"}, "text": "x" * 1000})
    assert await responses.get("huge") is None and responses.bytes == 3 * weight
    responses.discard("resp_0")
    assert await responses.get("resp_0") is None and responses.bytes == 2 * weight
    none_kept = LocalResponses(0)
    await none_kept.put("resp_0", {"body": {}})
    assert await none_kept.get("resp_0") is None


# --- Redis only: shared across processes ---------------------------------------------------


async def test_two_stores_share_a_limit_exactly(pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair

    async def take(state: RedisState) -> bool:
        verdict = await state.buckets.take(
            "key:x", "m", requests_per_minute=10, tokens_per_minute=0, tokens=5
        )
        assert verdict is not None
        return verdict.refused is None

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(take(a if n % 2 else b)) for n in range(30)]
    assert sum(task.result() for task in tasks) == 10


async def test_a_cap_holds_across_stores(pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair
    assert (await a.leases.acquire("k", total=0, per_key=2)).lease_id
    held = await b.leases.acquire("k", total=0, per_key=2)
    assert held.lease_id
    assert (await a.leases.acquire("k", total=0, per_key=2)).refused == "key"
    await b.leases.release(held.lease_id)
    assert (await a.leases.acquire("k", total=0, per_key=2)).lease_id


async def test_config_written_by_one_reaches_the_other_within_a_second(
    pair: tuple[RedisState, RedisState],
) -> None:
    a, b = pair
    seen: list[ConfigSnapshot] = []
    arrived = asyncio.Event()

    def apply(snapshot: ConfigSnapshot) -> None:
        seen.append(snapshot)
        arrived.set()

    b.config.watch(apply)
    written = await a.config.write({"rules": []})
    await asyncio.wait_for(arrived.wait(), 1.0)
    assert seen == [written]
    # The writer does not apply its own change twice.
    mine: list[ConfigSnapshot] = []
    a.config.watch(mine.append)
    await asyncio.sleep(0.6)
    assert mine == []


async def test_a_new_store_applies_what_is_stored(redis_server: RedisServer) -> None:
    first = _redis(redis_server)
    await first.start()
    await first.config.write({"faults": {"rate": 1.0}})
    late = _redis(redis_server)
    seen: list[ConfigSnapshot] = []
    late.config.watch(seen.append)
    await late.start()
    try:
        assert [s.document for s in seen] == [{"faults": {"rate": 1.0}}]
    finally:
        await late.aclose()
        await first.aclose()


async def test_a_killed_process_s_leases_lapse_within_the_ttl(redis_server: RedisServer) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, redis_server.url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(60):  # a holder that died before it held fails, not hangs
            assert (await holder.stdout.readline()).strip() == b"held"
        observer = _redis(redis_server)
        await observer.start()
        try:
            assert await observer.leases.count() == 2
            # Still held past their TTL (1 s): the holder's heartbeat keeps them.
            await asyncio.sleep(1.3)
            assert await observer.leases.count("k") == 2
            holder.send_signal(signal.SIGKILL)
            async with asyncio.timeout(30):
                await holder.wait()
            for _ in range(50):  # the TTL is 1 s; 5 s at most
                if not await observer.leases.count():
                    break
                await asyncio.sleep(0.1)
            assert await observer.leases.count() == 0
            assert await observer.leases.count("k") == 0
        finally:
            await observer.aclose()
    finally:
        if holder.returncode is None:
            holder.kill()
            async with asyncio.timeout(30):
                await holder.wait()


# A process holding two leases of TTL 1 s, until it is killed.
_HOLDER = """
import asyncio, sys
from streamapi.state import create_state

async def main():
    state = create_state(sys.argv[1], lease_ttl_s=1.0)
    await state.start()
    for _ in range(2):
        assert (await state.leases.acquire("k", total=0, per_key=0)).lease_id
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


# --- Redis only: faults --------------------------------------------------------------------


async def test_an_unreachable_store_stops_start_up(redis_server: RedisServer) -> None:
    redis_server.stop()
    state = _redis(redis_server)
    with pytest.raises(StateStoreError, match=r"unreachable.*--state-url"):
        await state.start()


async def test_redis_lost_fails_fast_and_open_then_counts_again(
    redis_server: RedisServer,
) -> None:
    errors: list[str] = []
    state = _redis(redis_server, on_error=errors.append, timeout_s=0.25)
    closed = _redis(redis_server, fail_closed=True, timeout_s=0.25)
    await state.start()
    await closed.start()
    try:
        limits: dict[str, Any] = {"requests_per_minute": 1, "tokens_per_minute": 0, "tokens": 1}
        assert (await state.buckets.take("id", "m", **limits)) is not None
        redis_server.stop()
        async with asyncio.timeout(5):  # never hangs: every call has its own short timeout
            assert await state.buckets.take("id", "m", **limits) is None
            # Uncounted in Redis, yet this process's own leases still cap it alone.
            open_lease = await state.leases.acquire("k", total=1, per_key=1)
            assert open_lease.lease_id is not None and open_lease.refused is None
            assert (await state.leases.acquire("k", total=1, per_key=1)).refused == "total"
            assert state.leases.held() == 1
            await state.leases.release(open_lease.lease_id)
            assert state.leases.held() == 0
            with pytest.raises(StateUnavailableError):
                await closed.buckets.take("id", "m", **limits)
            with pytest.raises(StateUnavailableError):
                await closed.leases.acquire("k", total=1, per_key=1)
            with pytest.raises(StateUnavailableError) as refused:
                await state.config.write({"faults": {"rate": 1.0}})
        assert refused.value.status_code == 503
        assert "ratelimit" in errors and "lease" in errors
        assert not state.health.ok and state.health.describe()["errors"] >= 2
        redis_server.start()  # same port, empty: Redis without persistence came back
        async with asyncio.timeout(5):
            first = await state.buckets.take("id", "m", **limits)
            second = await state.buckets.take("id", "m", **limits)
        assert first is not None and first.refused is None
        assert second is not None and second.refused == "requests"
        assert state.health.ok
        # The write refused while Redis was down changed nothing.
        assert (await state.config.read()).document is None
    finally:
        await state.aclose()
        await closed.aclose()


async def test_keys_are_namespaced_and_hold_no_names(redis_server: RedisServer) -> None:
    state = _redis(redis_server, prefix="team-a:")
    await state.start()
    try:
        await state.buckets.take(
            "key:secret-identity", "m", requests_per_minute=1, tokens_per_minute=0, tokens=0
        )
        await state.leases.acquire("secret-key-name", total=0, per_key=1)
        keys = await _keys(redis_server)
        assert keys and all(key.startswith("team-a:") for key in keys)
        assert not [key for key in keys if "secret" in key]
    finally:
        await state.aclose()


async def _keys(server: RedisServer) -> list[str]:
    """Every key on the server, read by a client of the test's own."""
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        return sorted(str(key) for key in await client.keys("*"))
    finally:
        await client.aclose()
