"""Models, health, load, request ids and the OpenAPI document."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from openai.types import Model
from starlette.responses import PlainTextResponse, Response

from streamapi.api.common import RequestOnlyRoute
from streamapi.logs import RequestIdFilter
from streamapi.settings import Settings


@pytest.mark.parametrize("settings", [Settings(served_model_names=["alpha", "org/beta"])])
async def test_models_lists_the_served_names(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [Model.model_validate(m).id for m in body["data"]] == ["alpha", "org/beta"]


@pytest.mark.parametrize("settings", [Settings(served_model_names=["alpha", "org/beta"])])
async def test_model_retrieve_by_id_including_slashes(client: httpx.AsyncClient) -> None:
    found = await client.get("/v1/models/org/beta")
    missing = await client.get("/v1/models/nope")
    assert found.json()["id"] == "org/beta"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_health_and_its_ping_alias(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/ping"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "healthy"}


async def test_load_counts_nothing_when_idle(client: httpx.AsyncClient) -> None:
    body = (await client.get("/load")).json()
    assert body["server_load"] == 0
    assert body["tasks"] >= 1


async def test_request_id_is_echoed_when_sane_and_made_up_otherwise(
    client: httpx.AsyncClient,
) -> None:
    echoed = await client.get("/health", headers={"X-Request-Id": "abc-123"})
    replaced = await client.get("/health", headers={"X-Request-Id": "bad id <script>"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert replaced.headers["x-request-id"] != "bad id <script>"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_openapi_documents_every_route_body_and_error(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    assert {
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model_id}",
        "/health",
        "/load",
    } <= set(paths)
    chat = paths["/v1/chat/completions"]["post"]
    body_refs = {
        s["$ref"] for s in chat["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    }
    assert body_refs == {
        "#/components/schemas/ChatCompletionRequest",
        "#/components/schemas/PromptRequest",
    }
    assert set(chat["responses"]) >= {"200", "400", "404", "413", "500", "503"}
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    schemas = document["components"]["schemas"]
    for name in (
        "ChatCompletionRequest",
        "PromptRequest",
        "ChatCompletionChunk",
        "ErrorResponse",
        "ChatMessage",
    ):
        assert name in schemas
    docs = await client.get("/docs")
    assert docs.status_code == 200


async def test_log_lines_of_a_request_carry_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="streamapi"):
        await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "n": 99},
            headers={"X-Request-Id": "req-42"},
        )
    ours = [r for r in caplog.records if r.name.startswith("streamapi")]
    assert ours
    assert {getattr(r, "request_id", None) for r in ours} == {"req-42"}


async def test_request_only_routes_call_their_endpoint_directly_and_others_keep_fastapi() -> None:
    # RequestOnlyRoute skips FastAPI's parameter handling only for an endpoint
    # that takes the request alone; one with parameters still gets them parsed
    # and checked, and an endpoint that breaks the contract fails loudly.
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.post("/echo")
    async def echo(request: Request) -> Response:
        return PlainTextResponse(await request.body())

    @router.get("/add")
    async def add(request: Request, a: int, b: int) -> Response:
        return PlainTextResponse(str(a + b))

    @router.get("/bad")
    async def bad(request: Request) -> Response:
        return {"not": "a response"}  # type: ignore[return-value]

    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/echo", content=b"raw body")).text == "raw body"
        assert (await client.get("/add", params={"a": 2, "b": 3})).text == "5"
        assert (await client.get("/add", params={"a": "x", "b": 3})).status_code == 422
        assert (await client.get("/bad")).status_code == 500
    assert "/echo" in app.openapi()["paths"]
