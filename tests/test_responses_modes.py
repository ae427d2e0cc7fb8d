"""The Responses API beyond one request: Open Responses' fields, compaction, WebSocket mode."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from openai.types.responses import Response
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from streamapi.app import create_app
from streamapi.settings import Settings

RESPONSES = "/v1/responses"
# Fields Open Responses requires on every Response object, null where unset.
REQUIRED_NULLABLE = ("max_tool_calls", "safety_identifier", "prompt_cache_key")
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def sse_payloads(body: str) -> list[str]:
    return [line.removeprefix("data: ") for line in body.split("\n") if line.startswith("data: ")]


async def test_a_response_carries_every_open_responses_field(client: httpx.AsyncClient) -> None:
    body = (await client.post(RESPONSES, json={"input": "hi", "tools": [WEATHER_TOOL]})).json()
    assert isinstance(body["completed_at"], int) and body["completed_at"] >= body["created_at"]
    assert (body["presence_penalty"], body["frequency_penalty"], body["top_logprobs"]) == (0, 0, 0)
    assert (body["background"], body["service_tier"]) == (False, "default")
    assert all(body[name] is None for name in REQUIRED_NULLABLE)
    assert body["tools"] == [{**WEATHER_TOOL, "description": None, "strict": None}]
    Response.model_validate(body)


async def test_asked_fields_are_echoed(client: httpx.AsyncClient) -> None:
    asked = {
        "presence_penalty": 0.5,
        "frequency_penalty": -1,
        "top_logprobs": 3,
        "max_tool_calls": 2,
        "service_tier": "flex",
        "safety_identifier": "user-1",
        "prompt_cache_key": "k",
    }
    body = (await client.post(RESPONSES, json={"input": "hi", **asked})).json()
    assert {name: body[name] for name in asked} == asked


async def test_stream_lifecycle_events_carry_the_fields_and_end_with_done(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(RESPONSES, json={"input": "hi", "stream": True})
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    created, in_progress, completed = events[0], events[1], events[-1]
    assert [created["type"], in_progress["type"], completed["type"]] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    for event in (created, in_progress):
        assert event["response"]["completed_at"] is None
        assert event["response"]["status"] == "in_progress"
    assert isinstance(completed["response"]["completed_at"], int)
    for event in (created, in_progress, completed):
        assert all(name in event["response"] for name in REQUIRED_NULLABLE)


async def test_an_unknown_previous_response_has_its_own_code(client: httpx.AsyncClient) -> None:
    response = await client.post(RESPONSES, json={"input": "hi", "previous_response_id": "resp_x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "previous_response_not_found"


async def test_an_output_must_answer_a_call(client: httpx.AsyncClient) -> None:
    output = {"type": "function_call_output", "call_id": "call_nothing", "output": "3C"}
    response = await client.post(RESPONSES, json={"input": [output]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input[0].call_id"


async def test_compact_then_continue_from_the_window(client: httpx.AsyncClient) -> None:
    first = (
        await client.post(RESPONSES, json={"input": "Remember: cobalt.", "tools": [WEATHER_TOOL]})
    ).json()
    compacted = await client.post(
        f"{RESPONSES}/compact",
        json={
            "model": "sim-small",
            "previous_response_id": first["id"],
            "input": "Weather in Oslo?",
            "prompt_cache_key": "k",
        },
    )
    assert compacted.status_code == 200
    window = compacted.json()
    assert window["object"] == "response.compaction"
    users = [item for item in window["output"] if item["type"] == "message"]
    assert [u["content"][0]["text"] for u in users] == ["Remember: cobalt.", "Weather in Oslo?"]
    assert window["output"][-1]["type"] == "compaction"
    assert window["usage"]["total_tokens"] > 0
    # The window is a new chain's whole input; the compacted call can be answered.
    calls = [item for item in first["output"] if item["type"] == "function_call"]
    answers = [
        {"type": "function_call_output", "call_id": call["call_id"], "output": "3C"}
        for call in calls
    ]
    follow_up = await client.post(RESPONSES, json={"input": [*window["output"], *answers]})
    assert follow_up.status_code == 200, follow_up.text


async def test_compact_needs_a_model_and_our_own_items(client: httpx.AsyncClient) -> None:
    missing = await client.post(f"{RESPONSES}/compact", json={"input": "hi"})
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "model")
    foreign = {"type": "compaction", "encrypted_content": "gAAAA-someone-else"}
    response = await client.post(RESPONSES, json={"input": [foreign]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input[0].encrypted_content"


# --- WebSocket mode -----------------------------------------------------------


def turn(socket: Any, **body: Any) -> list[dict[str, Any]]:
    """Send one response.create and read its messages up to a terminal one."""
    socket.send_text(json.dumps({"type": "response.create", **body}))
    messages: list[dict[str, Any]] = []
    for _ in range(10_000):
        message = json.loads(socket.receive_text())
        messages.append(message)
        if message["type"] in {"error", "response.completed", "response.failed"}:
            return messages
    raise AssertionError("no terminal message")


@pytest.fixture
def ws_app(settings: Settings) -> Any:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_websocket_turns_continue_store_false_responses_on_the_same_socket(ws_app: Any) -> None:
    with ws_app.websocket_connect(RESPONSES) as socket:
        first = turn(socket, model="sim-small", store=False, input="Remember: cobalt.")
        assert [m["sequence_number"] for m in first] == list(range(len(first)))
        done = first[-1]["response"]
        assert (first[0]["type"], done["status"]) == ("response.created", "completed")
        second = turn(socket, store=False, previous_response_id=done["id"], input="The word?")
        assert second[-1]["type"] == "response.completed"
    # store false: another connection cannot continue it, nor can HTTP.
    with ws_app.websocket_connect(RESPONSES) as socket:
        (error,) = turn(socket, store=False, previous_response_id=done["id"], input="again")
    assert error == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "previous_response_not_found",
            "message": f"Previous response with id '{done['id']}' not found.",
            "param": "previous_response_id",
        },
    }


def test_a_failed_websocket_turn_forgets_the_response_it_continued(ws_app: Any) -> None:
    with ws_app.websocket_connect(RESPONSES) as socket:
        first = turn(socket, store=False, input="Remember: ember.")[-1]["response"]["id"]
        orphan = {"type": "function_call_output", "call_id": "call_none", "output": "x"}
        failed = turn(socket, store=False, previous_response_id=first, input=[orphan])
        assert failed[-1]["type"] == "error"
        retry = turn(socket, store=False, previous_response_id=first, input="stale?")
        assert retry[-1]["error"]["code"] == "previous_response_not_found"


def test_websocket_refuses_http_only_fields_and_other_messages(ws_app: Any) -> None:
    with ws_app.websocket_connect(RESPONSES) as socket:
        (error,) = turn(socket, input="hi", stream=True)
        assert (error["status"], error["error"]["param"]) == (400, "stream")
        socket.send_text(json.dumps({"type": "session.update"}))
        assert json.loads(socket.receive_text())["error"]["param"] == "type"
        socket.send_text("not json")
        assert json.loads(socket.receive_text())["status"] == 400
        # The connection is still usable.
        assert turn(socket, input="hi")[-1]["type"] == "response.completed"


def test_websocket_handshake_needs_the_api_key() -> None:
    settings = Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, api_keys=["sk-1"])
    with TestClient(create_app(settings)) as test_client:
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            test_client.websocket_connect(RESPONSES),
        ):
            pass
        assert refused.value.code == 1008
        headers = {"Authorization": "Bearer sk-1"}
        with test_client.websocket_connect(RESPONSES, headers=headers) as socket:
            assert turn(socket, input="hi")[-1]["type"] == "response.completed"


# --- background responses -------------------------------------------------------


async def poll(client: httpx.AsyncClient, response_id: str) -> dict[str, Any]:
    """GET the response until it has ended (bounded)."""
    for _ in range(2_000):
        body: dict[str, Any] = (await client.get(f"{RESPONSES}/{response_id}")).json()
        if body["status"] not in {"queued", "in_progress"}:
            return body
        await asyncio.sleep(0.005)
    raise AssertionError("the background response never ended")


async def test_background_response_is_queued_then_polled_to_completion(
    client: httpx.AsyncClient,
) -> None:
    created = (await client.post(RESPONSES, json={"input": "hi", "background": True})).json()
    assert (created["status"], created["background"], created["output"]) == ("queued", True, [])
    done = await poll(client, created["id"])
    assert done["status"] == "completed" and done["output"][0]["type"] == "message"
    Response.model_validate(done)
    # It was stored: a follow-up continues it.
    follow_up = {"input": "more", "previous_response_id": created["id"]}
    assert (await client.post(RESPONSES, json=follow_up)).status_code == 200


async def test_background_stream_is_resumed_after_a_sequence_number(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        RESPONSES, json={"input": "hi", "background": True, "stream": True}
    )
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    assert [e["type"] for e in events[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert events[0]["response"]["status"] == "queued"
    assert events[-1]["type"] == "response.completed"
    response_id = events[0]["response"]["id"]
    resumed = await client.get(f"{RESPONSES}/{response_id}?stream=true&starting_after=4")
    again = [json.loads(p) for p in sse_payloads(resumed.text)[:-1]]
    assert again == events[5:]


async def test_background_needs_store_and_only_background_is_cancelled(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.post(RESPONSES, json={"input": "hi", "background": True, "store": False})
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "background")
    plain = (await client.post(RESPONSES, json={"input": "hi"})).json()
    assert (await client.post(f"{RESPONSES}/{plain['id']}/cancel")).status_code == 400
    assert (await client.get(f"{RESPONSES}/{plain['id']}?stream=true")).status_code == 400
    assert (await client.post(f"{RESPONSES}/resp_none/cancel")).status_code == 404


@pytest.mark.parametrize("settings", [Settings(inter_token_latency_ms=50)])
async def test_cancelling_a_background_response_stops_it(client: httpx.AsyncClient) -> None:
    created = (await client.post(RESPONSES, json={"input": "hi", "background": True})).json()
    cancelled = (await client.post(f"{RESPONSES}/{created['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    again = (await client.post(f"{RESPONSES}/{created['id']}/cancel")).json()
    assert again["status"] == "cancelled"
    assert (await client.get(f"{RESPONSES}/{created['id']}")).json()["status"] == "cancelled"


async def test_shutdown_cancels_background_runs() -> None:
    app = create_app(Settings(inter_token_latency_ms=50))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"input": "hi", "background": True}
            created = (await client.post(RESPONSES, json=body)).json()
        tasks_before = {t for t in asyncio.all_tasks() if t.get_name().startswith("background")}
        assert [t.get_name() for t in tasks_before] == [f"background {created['id']}"]
    assert not {t for t in asyncio.all_tasks() if t.get_name().startswith("background")}
