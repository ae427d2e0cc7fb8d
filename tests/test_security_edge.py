"""The hostile-input pass of issue 26 at the edge: identity, tenants, the journal, browsers.

Each test replays one row of the attack and checks it gets a bounded answer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from streamapi.app import create_app
from streamapi.settings import Settings
from tests.asgi_driver import post_scope, samples
from tests.virtual_time import virtual_time

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
JSON = {"Accept": "application/json"}


def _settings(**fields: Any) -> Settings:
    instant: dict[str, Any] = {"time_to_first_token_ms": 0, "inter_token_latency_ms": 0}
    return Settings(**{**instant, "served_model_names": ["sim"], **fields})


@asynccontextmanager
async def serve(
    settings: Settings, client: tuple[str, int] = ("127.0.0.1", 50000)
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, client=client),
            base_url="http://test",
        ) as http,
    ):
        yield http


async def _statuses(http: httpx.AsyncClient, headers_of: Any, count: int) -> list[int]:
    return [
        (
            await http.post("/v1/chat/completions", json=CHAT, headers={**JSON, **headers_of()})
        ).status_code
        for _ in range(count)
    ]


# --- one identity per request -------------------------------------------------------


async def test_a_junk_bearer_beside_a_valid_x_api_key_counts_against_the_key() -> None:
    settings = _settings(api_keys=["sk-real"], rate_limit_requests_per_minute=5)
    async with serve(settings) as http:
        statuses = await _statuses(
            http,
            lambda: {"x-api-key": "sk-real", "Authorization": f"Bearer junk-{uuid.uuid4()}"},
            20,
        )
        # The same key in the other header is the same identity.
        other_header = await http.post(
            "/v1/chat/completions", json=CHAT, headers={**JSON, "Authorization": "Bearer sk-real"}
        )
    assert statuses == [200] * 5 + [429] * 15
    assert other_header.status_code == 429


async def test_two_keys_have_two_buckets() -> None:
    settings = _settings(api_keys=["sk-a", "sk-b"], rate_limit_requests_per_minute=1)
    async with serve(settings) as http:
        a = await _statuses(http, lambda: {"Authorization": "Bearer sk-a"}, 2)
        b = await _statuses(http, lambda: {"x-api-key": "sk-b"}, 2)
    assert a == b == [200, 429]


async def test_with_auth_off_a_rotating_key_or_forwarded_for_is_still_one_address() -> None:
    settings = _settings(rate_limit_requests_per_minute=5)
    async with serve(settings) as http:
        statuses = await _statuses(
            http,
            lambda: {
                "Authorization": f"Bearer junk-{uuid.uuid4()}",
                "X-Forwarded-For": f"10.0.{uuid.uuid4().int % 250}.1",
            },
            10,
        )
    assert statuses == [200] * 5 + [429] * 5


async def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    settings = _settings(rate_limit_requests_per_minute=1, forwarded_allow_ips=["127.0.0.1"])
    async with serve(settings) as proxied:
        # Behind the trusted proxy: each forwarded client has its own bucket.
        first = await _statuses(proxied, lambda: {"X-Forwarded-For": "203.0.113.1"}, 2)
        second = await _statuses(proxied, lambda: {"X-Forwarded-For": "203.0.113.2"}, 1)
    async with serve(settings, client=("192.0.2.9", 40000)) as direct:
        # Not from the proxy: the header is ignored, the peer is the identity.
        spoofed = await _statuses(
            direct, lambda: {"X-Forwarded-For": f"203.0.113.{uuid.uuid4().int % 250}"}, 2
        )
    assert first == [200, 429]
    assert second == [200]
    assert spoofed == [200, 429]


# --- tenants kept apart -------------------------------------------------------------

KEY_A = {"Authorization": "Bearer sk-a", **JSON}
KEY_B = {"x-api-key": "sk-b", **JSON}
RESPONSES = "/v1/responses"


async def test_a_stored_response_is_its_keys_alone() -> None:
    settings = _settings(api_keys=["sk-a", "sk-b"], inter_token_latency_ms=20)
    async with serve(settings) as http:
        mine = await http.post(
            RESPONSES, json={"input": "Remember: cobalt.", "max_output_tokens": 5}, headers=KEY_A
        )
        response_id = mine.json()["id"]
        assert (await http.get(f"{RESPONSES}/{response_id}", headers=KEY_A)).status_code == 200
        read = await http.get(f"{RESPONSES}/{response_id}", headers=KEY_B)
        continued = await http.post(
            RESPONSES,
            json={"input": "The word?", "previous_response_id": response_id},
            headers=KEY_B,
        )
        compacted = await http.post(
            f"{RESPONSES}/compact",
            json={"model": "sim", "previous_response_id": response_id},
            headers=KEY_B,
        )
        # A background run: another key can neither see, follow nor cancel it.
        run = await http.post(
            RESPONSES,
            json={"input": "hi", "background": True, "max_output_tokens": 500},
            headers=KEY_A,
        )
        run_id = run.json()["id"]
        cancelled = await http.post(f"{RESPONSES}/{run_id}/cancel", headers=KEY_B)
        followed = await http.get(f"{RESPONSES}/{run_id}?stream=true", headers=KEY_B)
        polled = await http.get(f"{RESPONSES}/{run_id}", headers=KEY_B)
        own_cancel = await http.post(f"{RESPONSES}/{run_id}/cancel", headers=KEY_A)
        own_continue = await http.post(
            RESPONSES,
            json={
                "input": "The word?",
                "previous_response_id": response_id,
                "max_output_tokens": 5,
            },
            headers=KEY_A,
        )
    # As an unknown id is answered: nothing says the id exists.
    for answer in (read, cancelled, followed, polled):
        assert answer.status_code == 404
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert "No response with id" in answer.json()["error"]["message"]
    assert continued.status_code == compacted.status_code == 400
    assert continued.json()["error"]["code"] == "previous_response_not_found"
    assert compacted.json()["error"]["code"] == "previous_response_not_found"
    assert own_cancel.status_code == 200
    assert own_continue.status_code == 200


def test_a_websocket_turn_cannot_continue_another_keys_response() -> None:
    settings = _settings(api_keys=["sk-a", "sk-b"])
    with TestClient(create_app(settings)) as test_client:
        made = test_client.post(RESPONSES, json={"input": "Remember: ember."}, headers=KEY_A)
        response_id = made.json()["id"]
        with test_client.websocket_connect(RESPONSES, headers={"x-api-key": "sk-b"}) as socket:
            socket.send_text(
                json.dumps(
                    {"type": "response.create", "input": "?", "previous_response_id": response_id}
                )
            )
            refused = json.loads(socket.receive_text())
        with test_client.websocket_connect(RESPONSES, headers={"x-api-key": "sk-a"}) as socket:
            socket.send_text(
                json.dumps(
                    {"type": "response.create", "input": "?", "previous_response_id": response_id}
                )
            )
            own = json.loads(socket.receive_text())
    assert refused["error"]["code"] == "previous_response_not_found"
    assert own["type"] == "response.created"


async def test_with_auth_off_everyone_is_one_tenant() -> None:
    async with serve(_settings()) as http:
        made = await http.post(RESPONSES, json={"input": "hi"})
        read = await http.get(f"{RESPONSES}/{made.json()['id']}", headers={"x-api-key": "any"})
    assert read.status_code == 200


# --- auth before everything that records ----------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_requests_without_a_key_and_preflights_are_counted_not_journaled() -> None:
    settings = _settings(api_keys=["sk-a"], admin_key="admin")
    async with serve(settings) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "nope"}):
            refused = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert refused.status_code == 401
        await http.options("/v1/chat/completions")
        served = await http.post("/v1/chat/completions", json=CHAT, headers=KEY_A)
        journal = await http.get(
            "/admin/journal", headers={"Authorization": "Bearer admin", "x-api-key": "sk-a"}
        )
        metrics = (await http.get("/metrics")).text
    assert served.status_code == 200
    entries = journal.json()["entries"]
    assert [(e["method"], e["status"], e["key_name"]) for e in entries] == [("POST", 200, "key-1")]
    assert _sample(metrics, "streamapi_unjournaled_requests_total", reason="unauthenticated") == 3
    assert _sample(metrics, "streamapi_unjournaled_requests_total", reason="preflight") == 1


def _events_scope(headers: dict[str, str]) -> dict[str, Any]:
    scope = post_scope("/dashboard/events", headers)
    return {**scope, "method": "GET", "raw_path": b"/dashboard/events"}


async def _subscribe(
    app: Any, headers: dict[str, str], ticks: list[int], leave: asyncio.Event
) -> int:
    """Hold /dashboard/events open, counting its tick events, until ``leave``."""
    status = 0

    async def receive() -> dict[str, Any]:
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif b"event: tick" in message.get("body", b""):
            ticks.append(1)

    await app(_events_scope(headers), receive, send)
    return status


async def test_dashboard_events_are_read_once_per_tick_for_all_and_capped() -> None:
    settings = _settings(dashboard_max_subscribers=3)
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        feed = manager._state["dashboard"]
        with virtual_time():
            leave = asyncio.Event()
            counts: list[list[int]] = [[], [], []]
            watchers = [
                asyncio.create_task(_subscribe(manager.app, {}, ticks, leave)) for ticks in counts
            ]
            for _ in range(1_000):  # virtual seconds, bounded
                if min(len(ticks) for ticks in counts) >= 10:
                    break
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
            ) as http:
                one_too_many = await http.get("/dashboard/events")
            leave.set()
            statuses = await asyncio.gather(*watchers)
            readings = feed.readings
    assert statuses == [200, 200, 200]
    assert one_too_many.status_code == 429
    assert one_too_many.json()["error"]["code"] == "too_many_dashboard_subscribers"
    # Three subscribers, one reading per tick: no more readings than one of them saw.
    assert readings <= max(len(ticks) for ticks in counts) + 1
    assert feed.subscribers == 0


async def test_with_api_keys_the_dashboard_events_need_the_admin_key() -> None:
    async with serve(_settings(api_keys=["sk-a"])) as http:
        no_admin = await http.get("/dashboard/events", headers=KEY_A)
    async with serve(_settings(api_keys=["sk-a"], admin_key="admin")) as http:
        tenant_only = await http.get("/dashboard/events", headers=KEY_A)
    assert no_admin.status_code == 403
    assert no_admin.json()["error"]["code"] == "admin_key_required"
    assert tenant_only.status_code == 401
    assert tenant_only.json()["error"]["code"] == "invalid_admin_key"


# --- browsers cannot drive a keyless local server -------------------------------------


async def test_a_page_from_another_origin_is_refused_before_any_work() -> None:
    plain = json.dumps(CHAT).encode()
    async with serve(_settings(admin_key="admin")) as http:
        # What a page's fetch(..., {mode: "no-cors"}) sends: no preflight.
        refused = await http.post(
            "/v1/chat/completions",
            content=plain,
            headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
        )
        ws_style = await http.get("/v1/models", headers={"Origin": "null"})
        own_page = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"Origin": "http://test", **JSON}
        )
        no_origin = await http.post("/v1/chat/completions", json=CHAT, headers=JSON)
        journal = await http.get("/admin/journal", headers={"Authorization": "Bearer admin"})
        metrics = (await http.get("/metrics")).text
    assert refused.status_code == ws_style.status_code == 403
    # The chat route's dialect: one SSE error event for a client that did not ask for JSON.
    envelope = json.loads(refused.text.removeprefix("data: ").strip())
    assert envelope["error"]["type"] == "permission_error"
    assert envelope["error"]["code"] == ws_style.json()["error"]["code"] == "origin_not_allowed"
    assert own_page.status_code == no_origin.status_code == 200
    assert len(journal.json()["entries"]) == 2
    assert _sample(metrics, "streamapi_unjournaled_requests_total", reason="origin") == 2


async def test_an_origin_cors_allows_is_served() -> None:
    settings = _settings(cors_allow_origins=["https://app.example"])
    async with serve(settings) as http:
        allowed = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"Origin": "https://app.example", **JSON}
        )
        other = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example", **JSON}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert other.status_code == 403


def test_a_websocket_from_another_origin_is_closed_at_the_handshake() -> None:
    with TestClient(create_app(_settings())) as test_client:
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            test_client.websocket_connect(RESPONSES, headers={"Origin": "https://evil.example"}),
        ):
            pass
        with test_client.websocket_connect(RESPONSES) as socket:
            socket.send_text(json.dumps({"type": "response.create", "input": "hi"}))
            served = json.loads(socket.receive_text())
    assert refused.value.code == 1008
    assert served["type"] == "response.created"


# --- the WebSocket's per-message limit and idle timeout -------------------------------


def test_a_websocket_message_over_the_body_limit_is_a_413_error_event() -> None:
    settings = _settings(max_request_body_bytes=2048)
    with (
        TestClient(create_app(settings)) as test_client,
        test_client.websocket_connect(RESPONSES) as socket,
    ):
        big = {"type": "response.create", "input": "x" * 4096}
        socket.send_text(json.dumps(big))
        refused = json.loads(socket.receive_text())
        # The connection is still usable.
        socket.send_text(json.dumps({"type": "response.create", "input": "hi"}))
        served = json.loads(socket.receive_text())
    assert refused["status"] == 413
    assert refused["error"]["code"] == "request_too_large"
    assert served["type"] == "response.created"


def test_an_idle_websocket_is_told_and_closed() -> None:
    settings = _settings(websocket_idle_timeout_s=0.2)
    with (
        TestClient(create_app(settings)) as test_client,
        test_client.websocket_connect(RESPONSES) as socket,
    ):
        told = json.loads(socket.receive_text())
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert (told["status"], told["error"]["code"]) == (408, "websocket_idle_timeout")
    assert closed.value.code == 1000


# --- stores capped by bytes ---------------------------------------------------------


async def test_stored_responses_are_capped_by_bytes_least_recently_used_first() -> None:
    # Each of these responses weighs ~8.8 KB (its input is kept as its conversation):
    # four fit in 40 KB.
    settings = _settings(responses_store_max_bytes=40_000)
    padding = "word " * 1_500
    async with serve(settings) as http:

        async def make(number: int) -> str:
            made = await http.post(
                RESPONSES, json={"input": f"{number} {padding}", "max_output_tokens": 3}
            )
            response_id: str = made.json()["id"]
            return response_id

        async def status(response_id: str) -> int:
            return (await http.get(f"{RESPONSES}/{response_id}")).status_code

        ids = [await make(number) for number in range(4)]
        assert await status(ids[0]) == 200  # used: now the most recent
        ids.append(await make(4))
        after_fifth = [await status(rid) for rid in ids]
        ids += [await make(number) for number in range(5, 12)]
        last_four = [await status(rid) for rid in ids[-4:]]
        older = [await status(rid) for rid in ids[:-4]]
        too_big = await http.post(
            RESPONSES, json={"input": "word " * 10_000, "max_output_tokens": 3}
        )
        unstored = await status(too_big.json()["id"])
    # The fifth pushed out the least recently used (the second), not the first.
    assert after_fifth == [200, 404, 200, 200, 200]
    assert last_four == [200] * 4
    assert older == [404] * len(older)
    # One larger than the whole budget is answered, not stored.
    assert too_big.status_code == 200
    assert unstored == 404


async def test_stored_responses_are_capped_by_count_least_recently_used_first() -> None:
    async with serve(_settings(responses_store_size=2)) as http:

        async def make(text: str) -> str:
            made = await http.post(RESPONSES, json={"input": text, "max_output_tokens": 3})
            response_id: str = made.json()["id"]
            return response_id

        async def status(response_id: str) -> int:
            return (await http.get(f"{RESPONSES}/{response_id}")).status_code

        first, second = await make("a"), await make("b")
        assert await status(first) == 200  # used: now the most recent
        third = await make("c")
        kept = [await status(rid) for rid in (first, second, third)]
    assert kept == [200, 404, 200]
    async with serve(_settings(responses_store_size=0)) as http:
        unkept = await status(await make("a"))
    assert unkept == 404


async def test_a_background_runs_kept_events_stay_within_their_budget() -> None:
    budget = 30_000
    settings = _settings(background_events_max_bytes=budget, tokens_per_event=1)
    async with serve(settings) as http:
        run = await http.post(
            RESPONSES, json={"input": "hi", "background": True, "max_output_tokens": 1_000}
        )
        run_id = run.json()["id"]
        for _ in range(2_000):
            if (await http.get(f"{RESPONSES}/{run_id}")).json()["status"] == "completed":
                break
            await asyncio.sleep(0.01)
        replay = await http.get(f"{RESPONSES}/{run_id}?stream=true")
    frames = [f for f in replay.text.split("\n\n") if f.startswith("event: ")]
    events = [json.loads(f.split("data: ", 1)[1]) for f in frames]
    kinds = [e["type"] for e in events]
    # Every delta kept was kept within the budget (counting all the events before it);
    # the events after are the ones that carry the run's state, always kept.
    sizes = [len(f.encode()) + 2 for f in frames]
    last_delta = max(i for i, kind in enumerate(kinds) if kind.endswith(".delta"))
    assert sum(sizes[: last_delta + 1]) <= budget
    assert not any(kind.endswith(".delta") for kind in kinds[last_delta + 1 :])
    # Deltas past the budget were not kept; the whole text is still in the .done event
    # and the final Response.
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = next(e["text"] for e in events if e["type"] == "response.output_text.done")
    final = events[-1]["response"]["output"][-1]["content"][0]["text"]
    assert kinds[-1] == "response.completed"
    assert done == final
    assert len(deltas) < len(done)
    assert done.startswith(deltas)


async def test_the_journal_is_capped_by_bytes() -> None:
    settings = _settings(admin_key="admin", journal_max_bytes=20_000)
    long_question = "why " * 2_000
    async with serve(settings) as http:
        for _ in range(40):
            chat = {**CHAT, "messages": [{"role": "user", "content": long_question}]}
            assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
        listed = await http.get("/admin/journal", headers={"Authorization": "Bearer admin"})
    entries = listed.json()["entries"]
    # Each entry holds 500 characters of the question and some overhead: ~1 KB.
    assert 10 <= len(entries) < 40
    assert entries[-1]["id"] == 40
    assert all(len(entry["user"]) == 500 for entry in entries)


def test_websocket_turns_count_against_the_rate_limits() -> None:
    settings = _settings(api_keys=["sk-a"], rate_limit_requests_per_minute=2)
    with (
        TestClient(create_app(settings)) as test_client,
        test_client.websocket_connect(RESPONSES, headers={"x-api-key": "sk-a"}) as socket,
    ):
        firsts = []
        for _ in range(3):
            socket.send_text(json.dumps({"type": "response.create", "input": "hi"}))
            first = json.loads(socket.receive_text())
            firsts.append(first)
            while first["type"] not in {"error", "response.completed"}:
                first = json.loads(socket.receive_text())
        # The same key over HTTP shares the bucket.
        http = test_client.post(RESPONSES, json={"input": "hi"}, headers=KEY_A)
    assert [f["type"] for f in firsts] == ["response.created", "response.created", "error"]
    assert (firsts[2]["status"], firsts[2]["error"]["code"]) == (429, "rate_limit_exceeded")
    assert http.status_code == 429
