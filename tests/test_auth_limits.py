"""API keys, per-key model allow-lists, concurrency caps and CORS, on every route."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from streamapi.app import create_app
from streamapi.keys import KeyRing, Principal, load_keys
from streamapi.settings import Settings
from tests.asgi_driver import samples

KEYS_FILE = """
keys:
  - name: team-a
    key: sk-team-a
    models: [sim-small]
    max_concurrent_requests: 1
  - name: team-b
    key_sha256: {digest}
"""
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
# Every route that needs a key, with a body that would succeed.
GUARDED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", {"model": "sim-small", **CHAT}),
    ("POST", "/v1/completions", {"model": "sim-small", "prompt": "Hi", "max_tokens": 5}),
    ("POST", "/v1/embeddings", {"model": "sim-small", "input": "Hi"}),
    ("POST", "/v1/responses", {"model": "sim-small", "input": "Hi", "max_output_tokens": 5}),
    ("POST", "/v1/messages", {"model": "sim-small", "max_tokens": 5, **CHAT}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/sim-small", None),
    ("GET", "/load", None),
    ("GET", "/version", None),
]


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"sk-team-b").hexdigest()
    path.write_text(KEYS_FILE.format(digest=digest))
    return path


@pytest.fixture
def settings(keys_file: Path) -> Settings:
    return Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        served_model_names=["sim-small", "sim-large"],
        api_keys=["sk-plain"],
        api_keys_file=keys_file,
    )


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
async def test_every_route_needs_a_key_and_takes_bearer_or_x_api_key(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    json_accept = {"Accept": "application/json"}
    missing = await client.request(method, path, json=body, headers=json_accept)
    wrong = await client.request(
        method, path, json=body, headers={**json_accept, "Authorization": "Bearer nope"}
    )
    bearer = await client.request(
        method, path, json=body, headers={**json_accept, "Authorization": "Bearer sk-plain"}
    )
    x_api_key = await client.request(
        method, path, json=body, headers={**json_accept, "x-api-key": "sk-team-b"}
    )
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert (bearer.status_code, x_api_key.status_code) == (200, 200)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.headers["x-request-id"]
    if path == "/v1/messages":
        assert missing.json()["type"] == "error"
        assert missing.json()["error"]["type"] == "authentication_error"
    else:
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert wrong.json()["error"]["message"] == "Incorrect API key provided."


async def test_curl_on_a_generation_route_gets_its_401_as_an_sse_event(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"prompt": "Hi", "stream": True}, headers={"Accept": "*/*"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith('data: {"error":')


@pytest.mark.parametrize("path", ["/health", "/ping", "/metrics", "/docs", "/openapi.json"])
async def test_probes_scrapes_and_docs_stay_open(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_a_key_sees_and_uses_only_its_allowed_models(client: httpx.AsyncClient) -> None:
    team_a = {"Authorization": "Bearer sk-team-a", "Accept": "application/json"}
    listed = (await client.get("/v1/models", headers=team_a)).json()["data"]
    hidden = await client.get("/v1/models/sim-large", headers=team_a)
    refused = await client.post(
        "/v1/chat/completions", json={"model": "sim-large", **CHAT}, headers=team_a
    )
    refused_messages = await client.post(
        "/v1/messages", json={"model": "sim-large", "max_tokens": 5, **CHAT}, headers=team_a
    )
    refused_embeddings = await client.post(
        "/v1/embeddings", json={"model": "sim-large", "input": "x"}, headers=team_a
    )
    default = await client.post("/v1/chat/completions", json=CHAT, headers=team_a)
    other = await client.get("/v1/models", headers={"x-api-key": "sk-plain"})
    assert [m["id"] for m in listed] == ["sim-small"]
    assert hidden.status_code == 404
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert refused_messages.status_code == 404
    assert refused_messages.json()["error"]["type"] == "not_found_error"
    assert refused_embeddings.status_code == 404
    assert default.status_code == 200
    assert [m["id"] for m in other.json()["data"]] == ["sim-small", "sim-large"]


@pytest.mark.parametrize("settings", [Settings(time_to_first_token_ms=0)])
async def test_with_auth_off_any_key_is_ignored(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-dummy"}, {"x-api-key": "whatever"}):
        response = await client.post(
            "/v1/chat/completions", json={"model": "sim-small", **CHAT}, headers=headers
        )
        assert response.status_code == 200


def test_keys_are_compared_as_digests_and_never_shown() -> None:
    ring = load_keys([], None)
    assert not ring.enabled
    ring = KeyRing(((hashlib.sha256(b"k").digest(), Principal("one")),))
    assert ring.authenticate("k") == Principal("one")
    assert ring.authenticate("k ") is None
    assert ring.authenticate("") is None
    settings = Settings(api_keys=["sk-very-secret"])
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys:\n  - {name: a}\n", "keys.0: give exactly one of key and key_sha256"),
        ("keys:\n  - {name: a, key: x, key_sha256: 'ab'}\n", "keys.0.key_sha256"),
        ("keys:\n  - {name: a, key: x, model: [m]}\n", "keys.0.model: Extra inputs"),
        ("keys:\n  - {name: a, key: x}\n  - {name: b, key: x}\n", "the same API key"),
    ],
)
def test_a_bad_keys_file_stops_start_up_and_does_not_echo_keys(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError) as caught:
        Settings(api_keys_file=path)
    assert message in str(caught.value)


# --- concurrency caps ---------------------------------------------------------


def slow(settings: Settings) -> Settings:
    return settings.model_copy(update={"time_to_first_token_ms": 300.0})


async def start(client: httpx.AsyncClient, headers: dict[str, str]) -> asyncio.Task[httpx.Response]:
    body = {"model": "sim-small", "stream": True, **CHAT}
    task = asyncio.ensure_future(client.post("/v1/chat/completions", json=body, headers=headers))
    await asyncio.sleep(0.05)  # it is admitted and waits for its first token
    return task


@pytest.fixture
async def capped(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    capped = slow(settings).model_copy(update={"max_concurrent_requests": 2})
    app = create_app(capped)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as c,
    ):
        yield c


async def test_a_keys_own_cap_answers_429_in_its_dialect_and_frees_at_the_end(
    capped: httpx.AsyncClient,
) -> None:
    team_a = {"Authorization": "Bearer sk-team-a", "Accept": "application/json"}
    first = await start(capped, team_a)
    second = await capped.post(
        "/v1/messages", json={"model": "sim-small", "max_tokens": 5, **CHAT}, headers=team_a
    )
    other_key = await start(capped, {"x-api-key": "sk-plain"})
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert second.headers["retry-after"] == "1"
    assert (await first).status_code == 200
    assert (await other_key).status_code == 200
    again = await capped.post(
        "/v1/chat/completions", json={"model": "sim-small", **CHAT}, headers=team_a
    )
    assert again.status_code == 200


async def test_the_global_cap_holds_for_every_route_and_every_lease_is_released(
    capped: httpx.AsyncClient,
) -> None:
    plain = {"Authorization": "Bearer sk-plain", "Accept": "application/json"}
    held = [await start(capped, plain), await start(capped, plain)]
    over = [
        await capped.post(path, json=body, headers=plain)
        for _, path, body in GUARDED[:5]
        if path != "/v1/embeddings"
    ]
    assert [r.status_code for r in over] == [429, 429, 429, 429]
    assert over[0].json()["error"]["code"] == "too_many_concurrent_requests"
    assert over[0].headers["retry-after-ms"] == "1000"
    assert [(await t).status_code for t in held] == [200, 200]
    # A refused admission (the context is too long) gives its lease back too.
    too_long = {"model": "sim-small", **CHAT, "max_tokens": 1_000_000}
    for _ in range(3):
        refused = await capped.post("/v1/chat/completions", json=too_long, headers=plain)
        assert refused.status_code == 400
    after = [await start(capped, plain), await start(capped, plain)]
    assert [(await t).status_code for t in after] == [200, 200]
    metrics = samples((await capped.get("/metrics")).text)
    refusals = frozenset(
        {("type", "rate_limit_error"), ("code", "too_many_concurrent_requests"),
         ("where", "before_stream")}
    )  # fmt: skip
    assert metrics[("streamapi_errors_total", refusals)] == 4


async def test_a_full_cap_refuses_before_the_body_is_read(capped: httpx.AsyncClient) -> None:
    # Under overload a refusal must cost no parsing or validation: a body that
    # would get 400 gets the cap's 429, and embeddings (no lease) still answer.
    plain = {"Authorization": "Bearer sk-plain", "Accept": "application/json"}
    held = [await start(capped, plain), await start(capped, plain)]
    garbled = await capped.post("/v1/chat/completions", content=b'{"messages": [', headers=plain)
    assert garbled.status_code == 429
    assert garbled.json()["error"]["code"] == "too_many_concurrent_requests"
    embedded = await capped.post(
        "/v1/embeddings", json={"model": "sim-small", "input": "hi"}, headers=plain
    )
    assert embedded.status_code == 200
    assert [(await t).status_code for t in held] == [200, 200]
    again = await capped.post("/v1/chat/completions", content=b'{"messages": [', headers=plain)
    assert again.status_code == 400


# --- CORS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [Settings(api_keys=["sk-plain"], cors_allow_origins=["https://app.example"])],
)
async def test_cors_preflight_needs_no_key_and_a_401_carries_cors_headers(
    client: httpx.AsyncClient,
) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = await client.options(
        "/v1/chat/completions",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=origin)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://app.example"


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers
