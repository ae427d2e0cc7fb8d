"""Hostile bodies get 400 or 413 in the error envelope: never a 500, never a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from streamapi.settings import Settings

URL = "/v1/chat/completions"
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields


HOSTILE_BODIES = [
    pytest.param(b'{"model": "m", "messages": [', id="truncated-json"),
    pytest.param(b"\xff\xfe{}", id="invalid-utf8"),
    pytest.param(b'{"messages": [{"role": "user", "content": "\\ud800"}]}', id="lone-surrogate"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', id="nan"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', id="infinity"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "seed": 12345678901234567890123456789}',
        id="huge-int",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
        id="float-overflow",
    ),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-5000-arrays"),
    pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, id="nested-5000-objects"),
    pytest.param(json.dumps({"messages": None}).encode(), id="null-messages"),
    pytest.param(json.dumps({"messages": [None]}).encode(), id="null-message"),
    pytest.param(json.dumps(chat(n=10**9)).encode(), id="huge-n"),
    pytest.param(json.dumps(chat(max_tokens=10**12)).encode(), id="huge-max-tokens"),
    pytest.param(json.dumps(chat(stop=["x"] * 100_000)).encode(), id="many-stops"),
    pytest.param(
        # 4 tokens each: over the default context of 131072 tokens.
        json.dumps(chat(messages=[{"role": "user", "content": "hi"}] * 40_000)).encode(),
        id="40000-messages",
    ),
    pytest.param(
        json.dumps(
            chat(
                tools=[
                    {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}
                ]
            )
        ).encode(),
        id="dangling-ref",
    ),
    pytest.param(b"null", id="json-null"),
    pytest.param(b'"a string"', id="json-string"),
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
async def test_hostile_body_gets_a_clear_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(URL, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("settings", [Settings(latency_profile="instant")])
async def test_a_huge_string_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    body = json.dumps(chat(messages=[{"role": "user", "content": "x" * (8 * 1024 * 1024)}]))
    response = await client.post(URL, content=body, headers=JSON_HEADERS)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_a_long_prompt_within_the_body_limit_hits_the_context_length(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps(chat(messages=[{"role": "user", "content": "word " * 200_000}]))
    response = await client.post(URL, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "path",
    ["/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"],
)
@pytest.mark.parametrize("body", HOSTILE_BODIES[:10])
async def test_every_route_refuses_hostile_bodies(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await client.post(path, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    assert "Traceback" not in response.text
