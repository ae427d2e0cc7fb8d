"""The layers a request passes: our one middleware (``middleware.EdgeMiddleware``), its
place, CORS inside it, and what FastAPI adds to a generation route.

Each request meets the arrival and id, the origin check, CORS (when configured), auth,
the journal and rate-limit headers, then the body limit. With ``--cors-allow-origins``
the middleware runs in two halves around Starlette's ``CORSMiddleware``; these tests
drive the same requests through both arrangements and check they answer alike, CORS's
own headers aside.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from streamapi import scope_keys
from streamapi.app import create_app
from streamapi.middleware import EdgeMiddleware, ServeLaterLayer
from streamapi.settings import Settings
from tests.asgi_driver import OpenStream, post_scope

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
APP_ORIGIN = "https://app.example"
KEY = {"Authorization": "Bearer sk-a"}
ADMIN = {"Authorization": "Bearer admin", "x-api-key": "sk-a"}
IDS = [b"x-request-id", b"request-id"]


def _settings(**fields: Any) -> Settings:
    return Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        served_model_names=["sim"],
        api_keys=["sk-a"],
        admin_key="admin",
        rate_limit_requests_per_minute=100,
        max_request_body_bytes=4096,
        **fields,
    )


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as http,
    ):
        yield http


def _names(response: httpx.Response) -> list[bytes]:
    """The response's header names in order, without CORS's own."""
    return [
        name.lower()
        for name, _ in response.headers.raw
        if not name.lower().startswith(b"access-control-") and name.lower() != b"vary"
    ]


def test_the_app_has_one_middleware_of_ours_whatever_the_settings() -> None:
    # A layer added inside EdgeMiddleware would miss a stream's body frames (they go to
    # the send it was given): the stack is pinned here.
    for settings in (Settings(), Settings(cors_allow_origins=[APP_ORIGIN])):
        assert _stack(settings) == [EdgeMiddleware]
    assert _stack(Settings(forwarded_allow_ips=["127.0.0.1"])) == [
        ProxyHeadersMiddleware,
        EdgeMiddleware,
    ]


def _stack(settings: Settings) -> list[object]:
    """The app's middleware, outermost first (FastAPI's own outside and inside them)."""
    return [middleware.cls for middleware in create_app(settings).user_middleware]


async def _scenario(http: httpx.AsyncClient, origin: dict[str, str]) -> dict[str, Any]:
    """The same requests, from a page on ``origin`` (or from an SDK: no Origin)."""
    served = await http.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={**origin, **KEY, "Accept": "application/json", "X-Request-Id": "req-1"},
    )
    streamed = await http.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers={**origin, **KEY}
    )
    unauthenticated = await http.post("/v1/chat/completions", json=CHAT, headers=origin)
    too_large = await http.post(
        "/v1/chat/completions",
        content=b"x" * 5000,
        headers={**origin, **KEY, "Accept": "application/json"},
    )
    journal = (await http.get("/admin/journal", headers=ADMIN)).json()["entries"]
    metrics = (await http.get("/metrics")).text
    return {
        "served": served,
        "streamed": streamed,
        "unauthenticated": unauthenticated,
        "too_large": too_large,
        "journal": journal,
        "metrics": metrics,
    }


@pytest.mark.parametrize("origin", [{}, {"Origin": APP_ORIGIN}], ids=["sdk", "page"])
async def test_with_or_without_cors_a_request_is_answered_alike(origin: dict[str, str]) -> None:
    async with serve(_settings()) as http:
        alone = await _scenario(http, {})
    async with serve(_settings(cors_allow_origins=[APP_ORIGIN])) as http:
        with_cors = await _scenario(http, origin)
    for name in ("served", "streamed", "unauthenticated", "too_large"):
        one, other = alone[name], with_cors[name]
        assert one.status_code == other.status_code, name
        assert _names(one) == _names(other), name
        # The ids come last, after the route's own headers and the rate limits'.
        assert _names(one)[-2:] == IDS, name
    served = with_cors["served"]
    assert [alone["served"].status_code, alone["unauthenticated"].status_code] == [200, 401]
    assert alone["too_large"].status_code == 413
    assert served.headers["x-request-id"] == served.headers["request-id"] == "req-1"
    assert served.headers["x-ratelimit-limit-requests"] == "100"
    for run in (alone, with_cors):
        assert run["streamed"].text.endswith("data: [DONE]\n\n")
    # Journaled alike: what passed auth, with its id and the 413 among them.
    for run in (alone, with_cors):
        assert [(e["status"], e["request_id"] is not None) for e in run["journal"]] == [
            (200, True),
            (200, True),
            (413, True),
        ]
        assert (
            'streamapi_unjournaled_requests_total{reason="unauthenticated"} 1.0' in run["metrics"]
        )
    assert with_cors["journal"][0]["request_id"] == "req-1"
    if origin:
        # CORS's headers on every answer from the page's origin, refusals included.
        for name in ("served", "streamed", "unauthenticated", "too_large"):
            assert with_cors[name].headers["access-control-allow-origin"] == APP_ORIGIN, name


async def test_with_cors_a_preflight_is_answered_before_auth_and_the_origin_check_first() -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "*"}
    async with serve(_settings(cors_allow_origins=[APP_ORIGIN])) as http:
        allowed = await http.options(
            "/v1/chat/completions", headers={"Origin": APP_ORIGIN, **preflight}
        )
        other = await http.options(
            "/v1/chat/completions",
            headers={"Origin": "https://evil.example", "Accept": "application/json", **preflight},
        )
        journal = (await http.get("/admin/journal", headers=ADMIN)).json()["entries"]
        metrics = (await http.get("/metrics")).text
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert _names(allowed)[-2:] == IDS
    # Refused by the origin check, before CORS could answer it.
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in other.headers
    assert journal == []
    assert 'streamapi_unjournaled_requests_total{reason="preflight"} 2.0' in metrics
    assert 'streamapi_unjournaled_requests_total{reason="origin"} 1.0' in metrics


def test_with_cors_a_websocket_meets_the_origin_check_then_auth() -> None:
    with TestClient(create_app(_settings(cors_allow_origins=[APP_ORIGIN]))) as test_client:
        with (
            pytest.raises(WebSocketDisconnect) as foreign,
            test_client.websocket_connect("/v1/responses", headers={"Origin": "https://x.example"}),
        ):
            pass
        with (
            pytest.raises(WebSocketDisconnect) as keyless,
            test_client.websocket_connect("/v1/responses", headers={"Origin": APP_ORIGIN}),
        ):
            pass
        with test_client.websocket_connect(
            "/v1/responses", headers={"Origin": APP_ORIGIN, **KEY}
        ) as socket:
            socket.send_text(json.dumps({"type": "response.create", "input": "hi"}))
            served = json.loads(socket.receive_text())
    assert (foreign.value.code, foreign.value.reason) == (1008, "Origin not allowed.")
    assert (keyless.value.code, keyless.value.reason) == (1008, "Invalid API key.")
    assert served["type"] == "response.created"


async def _served_scope(app: Any, scope: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """``scope`` once the app has answered it (the router and routes write into it)."""
    messages = [{"type": "http.request", "body": json.dumps(body).encode()}]
    statuses = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    assert statuses == [200]
    return scope


async def test_a_generation_route_runs_without_fastapis_dependency_exit_stacks() -> None:
    # Its endpoint takes the request alone: FastAPI's two AsyncExitStacks per request
    # (for dependencies with yield) would only be kept alive for the stream's life.
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=0))
    async with LifespanManager(app) as manager:
        streamed = await _served_scope(
            manager.app, post_scope("/v1/chat/completions"), {**CHAT, "stream": True}
        )
        listed = await _served_scope(manager.app, {**post_scope("/v1/models"), "method": "GET"}, {})
    assert "fastapi_inner_astack" not in streamed
    assert "fastapi_function_astack" not in streamed
    # A route with dependencies keeps FastAPI's handling.
    assert "fastapi_inner_astack" in listed


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines ``task`` awaits through, outermost first."""
    chain = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        chain.append(coro.__qualname__)
        coro = coro.cr_await
    return chain


@pytest.mark.parametrize("cors", [[], [APP_ORIGIN]])
async def test_an_open_stream_is_served_from_the_middleware_past_the_routes_layers(
    cors: list[str],
) -> None:
    # The router, the exception handling and the route's frames (holding the request
    # and its parsed body) have returned: an open stream keeps none of them alive.
    settings = Settings(
        served_model_names=["sim"],
        time_to_first_token_ms=0,
        inter_token_latency_ms=60_000,
        cors_allow_origins=cors,
        admin_key="admin",
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        scope = post_scope("/v1/chat/completions")
        async with OpenStream(manager.app, scope, {**CHAT, "stream": True}) as stream:
            assert stream.task is not None
            chain = _await_chain(stream.task)
        # The client has left: the stream has ended, and its request with it.
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            entries = await http.get("/admin/journal", headers={"Authorization": "Bearer admin"})
            metrics = (await http.get("/metrics")).text
    assert stream.statuses == [200]
    # Served from the middleware, the stream still ends what its request holds: its
    # journal entry (closed when the stream is), its admission and in-flight count.
    [entry] = entries.json()["entries"]
    assert (entry["status"], entry["outcome"]) == (200, "client_disconnected")
    assert entry["duration_ms"] is not None
    assert "streamapi_streams_in_flight 0.0" in metrics
    # ... and its count by route and status, once it is over (the middleware's own end).
    labels = 'method="POST",route="/v1/chat/completions",status="200"'
    counted = "streamapi_requests_total{" + labels + "} 1.0"
    assert counted in metrics
    assert scope_keys.SERVE_LATER not in scope
    for key in ("fastapi_middleware_astack", "fastapi"):
        assert key not in scope  # what FastAPI's returned layers left
    # Not one layer of middleware (FastAPI's, Starlette's, CORS, ours), the router or
    # the route is still awaited: only the app's entry and the layer that serves.
    # (Then the server's receive: the request's task watches for the client leaving.)
    served = chain[chain.index("FastAPI.__call__") : chain.index("EventStreamResponse._serve") + 1]
    assert served == [
        "FastAPI.__call__",
        "Starlette.__call__",
        "ServeLaterLayer.__call__",
        "EventStreamResponse._serve",
    ]


# What FastAPI puts in the scope of a request its native telemetry records.
_RECORDED = {"fastapi.telemetry": object()}


@pytest.mark.parametrize(
    ("extra", "served"),
    [
        # As `streamapi serve` runs the app: FastAPI's and Starlette's own calls return too.
        ({}, ["ServeLaterLayer.__call__", "EventStreamResponse._serve"]),
        # A request FastAPI's telemetry records is served inside its span, to the end.
        (
            _RECORDED,
            [
                "ServeLaterLayer.__call__",
                "FastAPI.__call__",
                "Starlette.__call__",
                "ServeLaterLayer.__call__",
                "EventStreamResponse._serve",
            ],
        ),
    ],
    ids=["outside-fastapi", "telemetry-recorded"],
)
async def test_a_layer_around_the_app_serves_the_stream_from_outside_fastapis_own_call(
    extra: dict[str, Any], served: list[str]
) -> None:
    settings = Settings(
        served_model_names=["sim"], time_to_first_token_ms=0, inter_token_latency_ms=60_000
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        outer = ServeLaterLayer(manager.app)
        scope = {**post_scope("/v1/chat/completions"), **extra}
        async with OpenStream(outer, scope, {**CHAT, "stream": True}) as stream:
            assert stream.task is not None
            chain = _await_chain(stream.task)
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            metrics = (await http.get("/metrics")).text
    assert stream.statuses == [200]
    # (Less asgi-lifespan's own layer, which hands the app its lifespan state.)
    chain = [name for name in chain if not name.startswith("state_middleware.")]
    assert chain[chain.index("ServeLaterLayer.__call__") :][: len(served)] == served
    # Served from either layer, the stream ended what its request holds, once.
    assert scope_keys.SERVE_LATER not in scope
    assert "streamapi_streams_in_flight 0.0" in metrics
    labels = 'method="POST",route="/v1/chat/completions",status="200"'
    assert "streamapi_requests_total{" + labels + "} 1.0" in metrics
