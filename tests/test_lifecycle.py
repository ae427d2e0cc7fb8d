"""Disconnects free everything at once; the drain lets streams finish, then ends them cleanly."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message

from streamapi.app import create_app
from streamapi.lifecycle import Lifecycle
from streamapi.settings import Settings
from tests.asgi_driver import post_scope
from tests.sse_helpers import chunks, events

URL = "/v1/chat/completions"


class _Client:
    """Drives the ASGI app directly, so a test decides when the client goes away."""

    def __init__(self, app: ASGIApp, body: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(body).encode()
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self.first_body = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_body.set()

    async def run(self) -> None:
        await self.app(post_scope(URL), self.receive, self.send)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}]} | fields


async def test_disconnect_mid_stream_ends_the_stream_at_once() -> None:
    lifecycle = Lifecycle()
    app = create_app(
        Settings(time_to_first_token_ms=0, inter_token_latency_ms=20), lifecycle=lifecycle
    )
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat(stream=True))
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.first_body.wait(), 5)
        assert lifecycle.in_flight == 1
        client.gone.set()
        await asyncio.wait_for(task, 1)
        assert lifecycle.in_flight == 0
        bodies = [m for m in client.sent if m["type"] == "http.response.body"]
        assert len(bodies) < 10, "the stream stopped instead of running to its end"


async def test_disconnect_before_the_first_token_frees_the_request() -> None:
    lifecycle = Lifecycle()
    app = create_app(Settings(time_to_first_token_ms=10_000), lifecycle=lifecycle)
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat(stream=True, n=3))
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.05)
        assert lifecycle.in_flight == 1
        client.gone.set()
        await asyncio.wait_for(task, 1)
        assert lifecycle.in_flight == 0


async def test_disconnect_during_a_non_streamed_request_cancels_it() -> None:
    lifecycle = Lifecycle()
    app = create_app(Settings(time_to_first_token_ms=10_000), lifecycle=lifecycle)
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat())
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.05)
        assert lifecycle.in_flight == 1
        client.gone.set()
        await asyncio.wait_for(task, 1)
        assert lifecycle.in_flight == 0


async def test_no_task_is_left_behind_after_streams_end() -> None:
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=1))
    async with LifespanManager(app) as manager:
        before = len(asyncio.all_tasks())
        clients = [_Client(manager.app, _chat(stream=True, n=2)) for _ in range(20)]
        runs = [asyncio.create_task(c.run()) for c in clients]
        await asyncio.wait_for(asyncio.gather(*(c.first_body.wait() for c in clients)), 5)
        for c in clients[::2]:
            c.gone.set()
        await asyncio.wait_for(asyncio.gather(*runs[::2]), 2)
        for c in clients[1::2]:
            c.gone.set()  # the finished half: the server stops listening once done
        await asyncio.wait_for(asyncio.gather(*runs[1::2]), 10)
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout() -> None:
    lifecycle = Lifecycle()
    settings = Settings(time_to_first_token_ms=0, inter_token_latency_ms=1, send_timeout_s=0.2)
    app = create_app(settings, lifecycle=lifecycle)
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat(stream=True))
        stalled = asyncio.Event()
        record = client.send

        async def send_then_stall(message: Message) -> None:
            await record(message)
            if client.first_body.is_set():
                await stalled.wait()  # a reader that never drains its socket

        client.send = send_then_stall  # type: ignore[method-assign]
        await asyncio.wait_for(client.run(), 2)
        assert lifecycle.in_flight == 0


@pytest.fixture
def draining_app() -> tuple[Lifecycle, Any]:
    lifecycle = Lifecycle()
    settings = Settings(time_to_first_token_ms=0, inter_token_latency_ms=5)
    return lifecycle, create_app(settings, lifecycle=lifecycle)


async def test_drain_refuses_new_work_and_reports_unhealthy(
    draining_app: tuple[Lifecycle, Any],
) -> None:
    lifecycle, app = draining_app
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        lifecycle.begin_drain(30)
        await asyncio.sleep(0)
        health = await c.get("/health")
        chat = await c.post(URL, json=_chat(), headers={"Accept": "application/json"})
    assert health.status_code == 503
    assert health.json()["error"]["code"] == "server_shutting_down"
    assert chat.status_code == 503
    assert chat.headers["retry-after"] == "1"


async def test_streams_open_when_the_drain_starts_run_to_completion(
    draining_app: tuple[Lifecycle, Any],
) -> None:
    lifecycle, app = draining_app
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat(stream=True, max_tokens=40))
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.first_body.wait(), 5)
        lifecycle.begin_drain(30)
        await asyncio.wait_for(task, 5)
    body = b"".join(m.get("body", b"") for m in client.sent if m["type"] == "http.response.body")
    assert chunks(body.decode())[-1]["choices"][0]["finish_reason"] == "length"


async def test_a_stream_left_mid_send_is_not_kept_for_the_drain() -> None:
    # A client that stops reading, then leaves: its stream's task is cancelled inside a
    # send, and the stream's frames are closed where they stood, never reaching the end
    # of the engine's stream. The drain, which holds the tasks it will end, must not
    # keep that one alive.
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=1))
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat(stream=True, max_tokens=1_000))
        stuck = asyncio.Event()
        forwarded = client.send

        async def send(message: Message) -> None:
            await forwarded(message)
            if message["type"] == "http.response.body":
                stuck.set()
                await asyncio.Event().wait()  # the client's window never opens again

        client.send = send  # type: ignore[method-assign]
        run = asyncio.create_task(client.run())
        await asyncio.wait_for(stuck.wait(), 5)
        [stream] = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "EventStreamResponse._stream"
        ]
        gone = weakref.ref(stream)
        del stream
        client.gone.set()
        await asyncio.wait_for(run, 5)
        await asyncio.sleep(0)
        gc.collect()
        assert gone() is None


async def test_streams_still_open_after_the_grace_period_end_with_an_error_event(
    draining_app: tuple[Lifecycle, Any],
) -> None:
    lifecycle, app = draining_app
    async with LifespanManager(app) as manager:
        client = _Client(manager.app, _chat(stream=True))
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.first_body.wait(), 5)
        lifecycle.begin_drain(0.05)
        await asyncio.wait_for(task, 5)
    body = b"".join(m.get("body", b"") for m in client.sent if m["type"] == "http.response.body")
    payloads = events(body.decode())
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "server_shutting_down"
    assert lifecycle.in_flight == 0


@pytest.mark.parametrize(
    "settings",
    [Settings(time_to_first_token_ms=250, inter_token_latency_ms=0, ping_interval_s=0.05)],
)
async def test_keep_alive_comments_fill_a_silent_wait_and_stop_with_the_stream(
    client: httpx.AsyncClient,
) -> None:
    # Pings come from their own task, beside the frames: comments while the first
    # token is awaited, never after [DONE], and the stream still parses.
    response = await client.post(URL, json=_chat(stream=True, max_tokens=3))
    text = response.text
    assert response.status_code == 200
    assert text.count(": ping\n\n") >= 2
    assert text.index(": ping") < text.index("data: ")
    assert text.endswith("data: [DONE]\n\n")
    assert len(chunks(text.replace(": ping\n\n", ""))) >= 4


@pytest.mark.parametrize(
    "settings",
    [Settings(time_to_first_token_ms=600, inter_token_latency_ms=0, send_timeout_s=0.2)],
)
async def test_a_first_token_slower_than_the_send_timeout_is_not_a_stalled_client(
    client: httpx.AsyncClient,
) -> None:
    # The send timeout measures time inside one write; waiting for the engine
    # between writes, however long, must not drop the stream.
    response = await client.post(URL, json=_chat(stream=True, max_tokens=3))
    assert response.status_code == 200
    assert len(chunks(response.text)) >= 4
