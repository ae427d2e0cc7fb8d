"""One error envelope, the right status, and the rendering each client expects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.engines.protocol import GenerationRequest, TokenDelta
from streamapi.engines.simulator import SimulatorEngine
from streamapi.errors import InvalidRequestError
from streamapi.settings import Settings
from tests.sse_helpers import events

URL = "/v1/chat/completions"
JSON = {"Accept": "application/json"}
CURL = {"Accept": "*/*"}


def envelope(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def sse_envelope(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    (payload,) = events(response.text)
    return envelope(json.loads(payload))


SEED_CASES = [
    pytest.param(b"", "No JSON body provided.", None, id="no-body"),
    pytest.param(b"{not json", "The body is not valid JSON", None, id="invalid-json"),
    pytest.param(b'{"prompt": "", "stream": true}', "Prompt cannot be empty", "prompt", id="empty"),
    pytest.param(
        b'{"prompt": "  \\n ", "stream": true}', "Prompt cannot be empty", "prompt", id="blank"
    ),
    pytest.param(
        json.dumps({"prompt": "x" * 5001, "stream": True}).encode(),
        "Prompt exceeds maximum length of 5000 characters",
        "prompt",
        id="too-long",
    ),
    pytest.param(
        b'{"prompt": "hi", "stream": false}',
        "stream parameter must be true",
        "stream",
        id="stream-false",
    ),
    pytest.param(
        b'{"prompt": "hi"}', "stream parameter must be true", "stream", id="stream-missing"
    ),
    pytest.param(
        b'{"prompt": 5, "stream": true}', "prompt must be a string.", "prompt", id="prompt-number"
    ),
    pytest.param(b"[1, 2]", "The body must be a JSON object.", None, id="not-an-object"),
]


@pytest.mark.parametrize(("body", "message", "param"), SEED_CASES)
async def test_seed_errors_are_sse_for_curl(
    client: httpx.AsyncClient, body: bytes, message: str, param: str | None
) -> None:
    response = await client.post(URL, content=body, headers=CURL)
    assert response.status_code == 400
    error = sse_envelope(response)
    assert error["message"].startswith(message)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "message", "param"), SEED_CASES)
async def test_seed_errors_are_json_for_sdks(
    client: httpx.AsyncClient, body: bytes, message: str, param: str | None
) -> None:
    response = await client.post(URL, content=body, headers=JSON)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = envelope(response.json())
    assert error["message"].startswith(message)
    assert error["param"] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"seed": 2**64}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stop": 5}, "stop"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
    ],
)
async def test_invalid_chat_requests_get_400_naming_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str | None
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    response = await client.post(URL, json=body, headers=JSON)
    assert response.status_code == 400
    error = envelope(response.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_context_length_exceeded_uses_openai_wording(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 140_000}
    response = await client.post(URL, json=body, headers=JSON)
    error = envelope(response.json())
    assert response.status_code == 400
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 131072 tokens.")


@pytest.mark.parametrize(
    "settings", [Settings(accept_unknown_models=False, served_model_names=["a", "b/c"])]
)
async def test_unknown_model_gets_404_when_unlisted_models_are_refused(
    client: httpx.AsyncClient,
) -> None:
    ok = await client.post(
        URL, json={"model": "b/c", "messages": [{"role": "user", "content": "x"}]}
    )
    missing = await client.post(
        URL, json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, headers=JSON
    )
    assert ok.status_code == 200
    assert missing.status_code == 404
    error = envelope(missing.json())
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert error["message"] == "The model `gpt-9` does not exist or you do not have access to it."


async def test_unknown_route_is_404_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert envelope(response.json())["code"] == "not_found"


async def test_wrong_method_is_405_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get(URL)
    assert response.status_code == 405
    assert envelope(response.json())["code"] == "method_not_allowed"


@pytest.mark.parametrize("settings", [Settings(max_request_body_bytes=2048)])
async def test_oversized_body_is_413_before_it_is_read(client: httpx.AsyncClient) -> None:
    declared = await client.post(URL, content=b"x" * 4096, headers=JSON)
    assert declared.status_code == 413
    assert envelope(declared.json())["code"] == "request_too_large"


@pytest.mark.parametrize("settings", [Settings(max_request_body_bytes=2048)])
async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 1024

    response = await client.post(URL, content=body(), headers=CURL)
    assert response.status_code == 413
    assert envelope(json.loads(events(response.text)[0]))["code"] == "request_too_large"


class _FailingEngine:
    """The simulator, failing after a few tokens the way a broken engine would."""

    def __init__(self, error: Exception, after: int) -> None:
        self._simulator = SimulatorEngine()
        self._error = error
        self._after = after

    @property
    def latency_control(self) -> None:
        return None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        sent = 0
        async for delta in self._simulator.stream(request):
            if sent == self._after:
                raise self._error
            sent += 1
            yield delta

    async def aclose(self) -> None:
        pass


async def _post_with_engine(engine: _FailingEngine, **fields: Any) -> httpx.Response:
    app = create_app(Settings(), engine=engine)
    body = {"messages": [{"role": "user", "content": "hi"}]} | fields
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, raise_app_exceptions=False),
            base_url="http://test",
        ) as client,
    ):
        return await client.post(URL, json=body, headers=JSON)


async def test_error_after_first_byte_is_an_error_event_then_done() -> None:
    engine = _FailingEngine(InvalidRequestError("bad luck", code="boom"), after=3)
    response = await _post_with_engine(engine, stream=True)
    payloads = events(response.text)
    assert response.status_code == 200
    assert payloads[-1] == "[DONE]"
    error = envelope(json.loads(payloads[-2]))
    assert error == {
        "message": "bad luck",
        "type": "invalid_request_error",
        "param": None,
        "code": "boom",
    }
    assert len(payloads) == 1 + 3 + 2  # role chunk, three tokens, error, [DONE]


async def test_unexpected_error_mid_stream_hides_internals() -> None:
    engine = _FailingEngine(RuntimeError("/secret/path.py exploded"), after=1)
    response = await _post_with_engine(engine, stream=True)
    payloads = events(response.text)
    error = envelope(json.loads(payloads[-2]))
    assert error["type"] == "server_error"
    assert "secret" not in response.text
    assert payloads[-1] == "[DONE]"


async def test_unexpected_error_before_first_byte_is_a_generic_500() -> None:
    engine = _FailingEngine(RuntimeError("/secret/path.py exploded"), after=0)
    response = await _post_with_engine(engine)
    assert response.status_code == 500
    error = envelope(response.json())
    assert error["type"] == "server_error"
    assert "secret" not in response.text
