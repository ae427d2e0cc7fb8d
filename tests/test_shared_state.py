"""Two apps pointed at one real Redis (``--state-url``) behave as one server.

Each app stands for a worker or a replica: its own process state, the same
Redis. Every test starts its own ``redis-server`` (``tests/redis_server.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.settings import Settings
from streamapi.state import StateStoreError
from tests.redis_server import RedisServer

ADMIN = {"Authorization": "Bearer admin-key"}
CHAT = "/v1/chat/completions"


def _settings(server: RedisServer, **options: Any) -> Settings:
    values: dict[str, Any] = {
        "time_to_first_token_ms": 0,
        "inter_token_latency_ms": 0,
        "admin_key": "admin-key",
        "state_url": server.url,
        # Generous for a loaded machine; the tests of failures stop Redis outright.
        "state_timeout_s": 2.0,
        **options,
    }
    return Settings(**values)


@asynccontextmanager
async def _apps(*settings: Settings) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        clients = []
        for one in settings:
            manager = await stack.enter_async_context(LifespanManager(create_app(one)))
            transport = httpx.ASGITransport(app=manager.app)
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=transport,
                        base_url="http://test",
                        timeout=10,
                        # Errors as JSON (without it, a chat error may come as an SSE event).
                        headers={"Accept": "application/json"},
                    )
                )
            )
        yield clients


def _chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


async def test_a_rate_limit_is_shared_exactly(redis_server: RedisServer) -> None:
    settings = _settings(redis_server, rate_limit_requests_per_minute=3)
    async with _apps(settings, settings) as (a, b):
        answers = [await (a if n % 2 else b).post(CHAT, json=_chat()) for n in range(12)]
    assert [r.status_code for r in answers].count(200) == 3
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) == 9
    assert refused[0].headers["x-ratelimit-limit-requests"] == "3"
    assert refused[0].headers["x-ratelimit-remaining-requests"] == "0"
    assert float(refused[0].headers["retry-after"]) > 0
    assert refused[0].json()["error"]["type"] == "requests"
    assert (
        "Rate limit reached for m on requests per min (RPM): Limit 3"
        in (refused[0].json()["error"]["message"])
    )


async def test_a_rule_put_on_one_answers_on_the_other_within_a_second(
    redis_server: RedisServer,
) -> None:
    settings = _settings(redis_server)
    async with _apps(settings, settings) as (a, b):
        rules = {"rules": [{"match": {"user": "ping"}, "respond": {"text": "pong"}}]}
        put = await a.put("/admin/rules", json=rules, headers=ADMIN)
        assert put.status_code == 200
        await asyncio.sleep(1.0)
        answer = await b.post(CHAT, json=_chat("ping"))
        assert answer.json()["choices"][0]["message"]["content"] == "pong"
        assert (await b.get("/admin/rules", headers=ADMIN)).json()["source"] == "admin"
        # Reverting on B reaches A too.
        assert (await b.delete("/admin/rules", headers=ADMIN)).status_code == 200
        await asyncio.sleep(1.0)
        answer = await a.post(CHAT, json=_chat("ping"))
        assert answer.json()["choices"][0]["message"]["content"] != "pong"


async def test_a_sequence_rule_fires_once_across_both(redis_server: RedisServer) -> None:
    settings = _settings(redis_server)
    async with _apps(settings, settings) as (a, b):
        rules = [{"match": {"sequence": 1}, "respond": {"text": "first"}}]
        assert (await a.put("/admin/rules", json=rules, headers=ADMIN)).status_code == 200
        await asyncio.sleep(1.0)
        answers = [await (b if n % 2 else a).post(CHAT, json=_chat()) for n in range(6)]
        said = [r.json()["choices"][0]["message"]["content"] for r in answers]
        assert said.count("first") == 1
        # A cluster reset restarts the counters.
        assert (await b.post("/admin/reset", headers=ADMIN)).status_code == 200
        assert (await a.put("/admin/rules", json=rules, headers=ADMIN)).status_code == 200
        await asyncio.sleep(1.0)
        again = await b.post(CHAT, json=_chat())
        assert again.json()["choices"][0]["message"]["content"] == "first"


async def test_previous_response_id_works_on_the_other(redis_server: RedisServer) -> None:
    settings = _settings(redis_server)
    async with _apps(settings, settings) as (a, b):
        first = await a.post("/v1/responses", json={"model": "m", "input": "my name is Ada"})
        assert first.status_code == 200
        response_id = first.json()["id"]
        follow_up = await b.post(
            "/v1/responses",
            json={"model": "m", "input": "what is my name?", "previous_response_id": response_id},
        )
        assert follow_up.status_code == 200, follow_up.text
        stored = await b.get(f"/v1/responses/{response_id}")
        assert stored.status_code == 200 and stored.json() == first.json()
        missing = await b.get("/v1/responses/resp_nothing")
        assert missing.status_code == 404


async def test_the_journal_on_one_lists_the_other_s_requests(redis_server: RedisServer) -> None:
    settings = _settings(redis_server)
    async with _apps(settings, settings) as (a, b):
        for n in range(3):
            assert (await a.post(CHAT, json=_chat(f"on a {n}"))).status_code == 200
        assert (await b.post(CHAT, json=_chat("on b"))).status_code == 200
        entries = (await b.get("/admin/journal", headers=ADMIN)).json()["entries"]
    assert [e["user"] for e in entries] == ["on a 0", "on a 1", "on a 2", "on b"]
    assert {e["outcome"] for e in entries} == {"completed"}
    assert {e["process"] for e in entries} == {f"{os.getpid()}@{socket.gethostname()}"}
    assert [e["id"] for e in entries] == sorted({e["id"] for e in entries})


async def test_a_per_key_cap_holds_across_both(redis_server: RedisServer) -> None:
    settings = _settings(
        redis_server,
        api_keys=["sk-shared"],
        max_concurrent_requests_per_key=1,
        time_to_first_token_ms=1500,
    )
    key = {"Authorization": "Bearer sk-shared"}
    async with _apps(settings, settings) as (a, b):
        slow = asyncio.ensure_future(a.post(CHAT, json=_chat(), headers=key))
        for _ in range(100):  # until A holds its lease: 5 s at most
            if (await a.get("/load", headers=key)).json()["server_load"]:
                break
            await asyncio.sleep(0.05)
        refused = await b.post(CHAT, json=_chat(), headers=key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
        assert (await slow).status_code == 200
        await asyncio.sleep(0.1)  # the lease is given back in the background
        admitted = await b.post(CHAT, json=_chat(), headers={**key, "x-streamapi-ttft-ms": "0"})
        assert admitted.status_code == 200


async def _until_loaded(client: httpx.AsyncClient) -> None:
    """Until ``client``'s app holds a request in flight: 5 s at most."""
    for _ in range(100):
        if (await client.get("/load")).json()["server_load"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no request in flight after 5 s")


async def test_the_server_cap_holds_across_both_and_is_given_back(
    redis_server: RedisServer,
) -> None:
    settings = _settings(redis_server, max_concurrent_requests=1, time_to_first_token_ms=1500)
    async with _apps(settings, settings) as (a, b):
        slow = asyncio.ensure_future(a.post(CHAT, json=_chat()))
        await _until_loaded(a)
        refused = await b.post(CHAT, json=_chat())
        assert (await slow).status_code == 200
        await asyncio.sleep(0.1)  # the lease is given back in the background
        admitted = await b.post(CHAT, json=_chat(), headers={"x-streamapi-ttft-ms": "0"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
    assert refused.json()["error"]["message"] == (
        "Too many concurrent requests (at most 1); retry shortly."
    )
    assert admitted.status_code == 200


async def test_with_redis_lost_each_process_still_caps_its_own_requests(
    redis_server: RedisServer,
) -> None:
    # No journal: each of its calls to the lost Redis would take the timeout.
    settings = _settings(
        redis_server,
        max_concurrent_requests=1,
        time_to_first_token_ms=1500,
        state_timeout_s=0.25,
        admin_key=None,
    )
    async with _apps(settings, settings) as (a, b):
        redis_server.stop()
        async with asyncio.timeout(30):
            slow = asyncio.ensure_future(a.post(CHAT, json=_chat()))
            await _until_loaded(a)
            # Open: A refuses its own second; B, which cannot count A's lease, admits.
            here = await a.post(CHAT, json=_chat())
            assert not slow.done()
            elsewhere = await b.post(CHAT, json=_chat())
            assert (await slow).status_code == 200
            again = await a.post(CHAT, json=_chat())
    assert elsewhere.status_code == 200
    assert here.status_code == 429
    assert here.json()["error"]["code"] == "too_many_concurrent_requests"
    assert again.status_code == 200


async def test_stored_responses_keep_the_last_store_size(redis_server: RedisServer) -> None:
    settings = _settings(redis_server, responses_store_size=2)
    async with _apps(settings, settings) as (a, b):
        made = [(await a.post("/v1/responses", json={"input": f"{n}"})).json()["id"] for n in "abc"]
        kept = [(await b.get(f"/v1/responses/{response_id}")).status_code for response_id in made]
    assert kept == [404, 200, 200]


async def test_a_shared_stored_response_is_its_keys_alone_on_every_process(
    redis_server: RedisServer,
) -> None:
    settings = _settings(redis_server, api_keys=["sk-a", "sk-b"])
    key_a, key_b = {"x-api-key": "sk-a"}, {"x-api-key": "sk-b"}
    async with _apps(settings, settings) as (a, b):
        made = await a.post("/v1/responses", json={"input": "hi"}, headers=key_a)
        url = f"/v1/responses/{made.json()['id']}"
        own = await b.get(url, headers=key_a)
        other = await b.get(url, headers=key_b)
    assert own.status_code == 200
    assert other.status_code == 404


async def test_redis_lost_fails_open_and_fast_and_admin_writes_get_503(
    redis_server: RedisServer,
) -> None:
    settings = _settings(redis_server, rate_limit_requests_per_minute=2)
    async with _apps(settings, settings) as (a, b):
        assert (await a.post(CHAT, json=_chat())).status_code == 200
        redis_server.stop()
        async with asyncio.timeout(10):  # no hang: every call to Redis is bounded
            served = [await (a if n % 2 else b).post(CHAT, json=_chat()) for n in range(4)]
            assert [r.status_code for r in served] == [200] * 4  # uncounted: open
            assert "x-ratelimit-limit-requests" not in served[0].headers
            patch = await a.patch("/admin/config", json={"faults": {"rate": 1.0}}, headers=ADMIN)
            assert patch.status_code == 503
            assert patch.json()["error"]["code"] == "state_store_unavailable"
            health = await a.get("/health")
        assert health.status_code == 200
        assert health.json()["state"]["ok"] is False
        metrics = (await a.get("/metrics")).text
        assert 'streamapi_state_errors_total{operation="ratelimit"}' in metrics
        # The refused write changed nothing here.
        config = (await a.get("/admin/config", headers=ADMIN)).json()
        assert config["faults"]["rate"] == 0
        redis_server.start()  # back, empty
        counted = [await (b if n % 2 else a).post(CHAT, json=_chat()) for n in range(3)]
        assert [r.status_code for r in counted] == [200, 200, 429]
        assert (await b.get("/health")).json()["state"]["ok"] is True


async def test_fail_closed_refuses_with_503(redis_server: RedisServer) -> None:
    settings = _settings(redis_server, rate_limit_requests_per_minute=5, state_fail_closed=True)
    async with _apps(settings) as (a,):
        redis_server.stop()
        refused = await a.post(CHAT, json=_chat())
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "state_store_unavailable"


async def test_an_unreachable_redis_stops_start_up(redis_server: RedisServer) -> None:
    redis_server.stop()
    app = create_app(_settings(redis_server))
    with pytest.raises(StateStoreError, match="unreachable"):
        async with LifespanManager(app):
            pass


async def test_admin_config_says_what_is_per_worker() -> None:
    alone = Settings(admin_key="admin-key", workers=2)
    async with _apps(alone) as (app,):
        state = (await app.get("/admin/config", headers=ADMIN)).json()["state"]
    assert state["backend"] == "local"
    assert "rate limits" in state["per_worker"] and "journal" in state["per_worker"]


async def test_admin_config_with_a_state_url_has_nothing_per_worker(
    redis_server: RedisServer,
) -> None:
    async with _apps(_settings(redis_server, workers=2)) as (app,):
        state = (await app.get("/admin/config", headers=ADMIN)).json()["state"]
    assert state["backend"] == "redis" and state["per_worker"] == [] and state["ok"] is True
