"""EventStreamResponse over the bare ASGI interface: each promise its docstring makes.

The response is driven directly, with a client made of a ``receive`` and a
``send`` that the test controls: it decides when the client stops reading or
goes away, and sees every message the response sends, in order.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from starlette.types import Message, Receive, Scope, Send

from streamapi import scope_keys, sse
from streamapi.app import create_app
from streamapi.lifecycle import Lifecycle
from streamapi.middleware import ServeLaterLayer
from streamapi.settings import Settings
from tests.asgi_driver import post_scope

# Generous bounds for a loaded machine: a test fails on a hang, never on a slow run.
DEADLINE_S = 5.0


class Client:
    """One HTTP client: it reads until told to stall, and leaves when told to."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.gone = asyncio.Event()
        self.streaming = asyncio.Event()
        """Set once two frames have come: the stream is under way."""
        self.stall_after_bodies: int | None = None
        self._never = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if len(self.bodies()) >= 2:
            self.streaming.set()
        if self.stall_after_bodies is not None and len(self.bodies()) > self.stall_after_bodies:
            await self._never.wait()  # a reader that never drains its socket

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    def ended(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and last.get("more_body") is False


class Frames:
    """A frames generator that records whether it ran to its end and released what it held."""

    def __init__(self, frames: list[bytes], *, wait_s: float = 0.0) -> None:
        self.frames = frames
        self.wait_s = wait_s
        self.started = False
        self.released = False

    async def __call__(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for frame in self.frames:
                await asyncio.sleep(self.wait_s)
                yield frame
        finally:
            self.released = True


class Hooks:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_start(self) -> None:
        self.calls.append("start")

    def on_complete(self) -> None:
        self.calls.append("complete")

    async def on_finish(self) -> None:
        self.calls.append("finish")


def response(
    frames: AsyncIterator[bytes],
    hooks: Hooks,
    *,
    ping_interval_s: float = 0,
    send_timeout_s: float | None = 30.0,
) -> sse.EventStreamResponse:
    return sse.EventStreamResponse(
        frames,
        ping_interval_s=ping_interval_s,
        send_timeout_s=send_timeout_s,
        on_start=hooks.on_start,
        on_complete=hooks.on_complete,
        on_finish=hooks.on_finish,
    )


def scope(method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/v1/chat/completions"}


FRAMES = [sse.encode_data({"n": 1}), sse.encode_data({"n": 2}), sse.DONE]


@pytest.mark.parametrize(
    ("frames", "bodies"),
    [
        # [DONE] goes out with the body's end: one write, not two.
        (FRAMES, FRAMES),
        # A stream with no [DONE] (Anthropic's) ends with an empty write of its own.
        (FRAMES[:2], [*FRAMES[:2], b""]),
        # A frame after [DONE], which no protocol sends, still goes out, after it.
        ([FRAMES[0], sse.DONE, FRAMES[1]], [FRAMES[0], sse.DONE + FRAMES[1], b""]),
    ],
)
async def test_the_body_ends_in_the_write_of_done(frames: list[bytes], bodies: list[bytes]) -> None:
    client, hooks = Client(), Hooks()
    await response(Frames(frames)(), hooks)(scope(), client.receive, client.send)
    assert client.bodies() == bodies
    assert client.ended()
    assert hooks.calls == ["start", "complete", "finish"]


async def test_frames_go_out_byte_for_byte_with_the_stream_headers() -> None:
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES)
    await response(frames(), hooks)(scope(), client.receive, client.send)

    start = client.messages[0]
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers == {
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        "connection": "keep-alive",
        "content-type": "text/event-stream; charset=utf-8",
    }
    assert client.bodies() == FRAMES
    assert client.ended()
    assert hooks.calls == ["start", "complete", "finish"]
    assert frames.released


async def test_a_body_served_later_skips_the_layers_its_start_went_through() -> None:
    # The start goes through every layer (it gets the request id) at once; the body is
    # left in the ServeLater, served with the server's own send once the layers have
    # returned, then the ends they left.
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES)
    layered: list[Message] = []
    seen: dict[str, Any] = {}
    ended: list[list[str]] = []

    async def through_middleware(message: Message) -> None:
        layered.append(message)
        await client.send(message)

    async def end() -> None:
        ended.append(list(hooks.calls))

    async def layer(asgi_scope: Scope, receive: Receive, send: Send) -> None:
        await response(frames(), hooks)(asgi_scope, receive, through_middleware)
        later = asgi_scope[scope_keys.SERVE_LATER]
        seen.update(bodies=client.bodies(), started=frames.started, calls=list(hooks.calls))
        later.ends.append(end)

    await asyncio.wait_for(ServeLaterLayer(layer)(scope(), client.receive, client.send), DEADLINE_S)

    assert seen == {"bodies": [], "started": False, "calls": ["start"]}
    assert [m["type"] for m in layered] == ["http.response.start"]
    assert client.bodies() == FRAMES
    assert ended == [["start", "complete", "finish"]]  # after the stream's own end
    assert frames.released


async def test_a_body_served_later_ends_its_layers_however_it_ended() -> None:
    client, hooks = Client(), Hooks()
    ended: list[str] = []

    async def failing() -> AsyncIterator[bytes]:
        yield FRAMES[0]
        raise RuntimeError("the engine broke")

    async def end(name: str) -> None:
        ended.append(name)
        if name == "inner":
            raise OSError("the journal's disk is full")

    async def layer(asgi_scope: Scope, receive: Receive, send: Send) -> None:
        await response(failing(), hooks)(asgi_scope, receive, send)
        ends = asgi_scope[scope_keys.SERVE_LATER].ends
        ends.extend([lambda: end("inner"), lambda: end("outer")])

    with pytest.raises(OSError, match="disk is full") as raised:
        await asyncio.wait_for(
            ServeLaterLayer(layer)(scope(), client.receive, client.send), DEADLINE_S
        )
    # As nested ``finally`` blocks: each end runs, the last error goes on, with the first.
    assert isinstance(raised.value.__context__, RuntimeError)
    assert ended == ["inner", "outer"]
    assert hooks.calls == ["start", "finish"]


async def test_a_client_that_stops_reading_is_dropped_and_its_generator_closed() -> None:
    client, hooks, frames = Client(), Hooks(), Frames([b"data: x\n\n"] * 1_000)
    client.stall_after_bodies = 2
    loop = asyncio.get_running_loop()
    began = loop.time()
    stream = response(frames(), hooks, send_timeout_s=0.2)  # held: only it may close frames

    await asyncio.wait_for(stream(scope(), client.receive, client.send), DEADLINE_S)

    assert loop.time() - began >= 0.2, "cut before one send had waited send_timeout_s"
    assert frames.released, "the generator's cleanup (the engine's slot) ran"
    assert hooks.calls == ["start", "finish"], "a dropped stream is not complete"
    assert not client.ended(), "the body is left unfinished: the server closes the socket"


async def test_waiting_for_frames_longer_than_the_send_timeout_is_not_a_stalled_client() -> None:
    # The first token (or any next one) may take longer than the send timeout:
    # only time inside one send counts.
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES, wait_s=0.3)
    await asyncio.wait_for(
        response(frames(), hooks, send_timeout_s=0.1)(scope(), client.receive, client.send),
        DEADLINE_S,
    )
    assert client.bodies() == FRAMES
    assert hooks.calls == ["start", "complete", "finish"]


async def test_pings_are_comments_between_the_start_and_the_end() -> None:
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES, wait_s=0.12)
    await asyncio.wait_for(
        response(frames(), hooks, ping_interval_s=0.03)(scope(), client.receive, client.send),
        DEADLINE_S,
    )
    await asyncio.sleep(0.1)  # a ping task left behind would send after the end

    bodies = client.bodies()
    assert bodies.count(sse.PING) >= 3
    assert sse.PING == b": ping\n\n"
    assert [b for b in bodies if b != sse.PING] == FRAMES
    assert client.ended(), "nothing is sent after the body's end"
    assert client.messages[0]["type"] == "http.response.start"


async def test_a_ping_interval_of_zero_sends_no_pings() -> None:
    # With 0, a ping loop would spin (sse-starlette before 3.7 sent pings
    # back to back): no ping task at all.
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES, wait_s=0.1)
    tasks_before = len(asyncio.all_tasks())
    run = asyncio.create_task(
        response(frames(), hooks, ping_interval_s=0)(scope(), client.receive, client.send)
    )
    await asyncio.sleep(0.05)
    # This test, and the response's (the request's) task, which watches for the client
    # leaving while its stream's task sends: no ping task, no watcher task.
    assert len(asyncio.all_tasks()) == tasks_before + 2
    await asyncio.wait_for(run, DEADLINE_S)
    assert client.bodies() == FRAMES


@pytest.mark.parametrize("ping_interval_s", [0, 0.02])
async def test_disconnect_ends_the_stream_at_once_and_releases_the_generator(
    ping_interval_s: float,
) -> None:
    client, hooks, frames = Client(), Hooks(), Frames([b"data: x\n\n"] * 100, wait_s=0.05)
    tasks_before = len(asyncio.all_tasks())
    stream = response(frames(), hooks, ping_interval_s=ping_interval_s)
    run = asyncio.create_task(stream(scope(), client.receive, client.send))
    await asyncio.wait_for(client.streaming.wait(), DEADLINE_S)
    client.gone.set()
    await asyncio.wait_for(run, DEADLINE_S)
    await asyncio.sleep(0)

    assert frames.released
    assert hooks.calls == ["start", "finish"]
    assert len(client.bodies()) < 50, "the stream stopped instead of running to its end"
    assert not client.ended()
    assert len(asyncio.all_tasks()) == tasks_before, "no watcher or pinger left behind"


async def test_disconnect_while_a_send_is_stalled_ends_the_stream() -> None:
    client, hooks, frames = Client(), Hooks(), Frames([b"data: x\n\n"] * 100)
    client.stall_after_bodies = 1
    # Held here, so that only the response can close the generator, not the GC.
    stream = response(frames(), hooks)
    run = asyncio.create_task(stream(scope(), client.receive, client.send))
    await asyncio.sleep(0.05)
    client.gone.set()
    await asyncio.wait_for(run, 1)
    assert frames.released
    assert hooks.calls == ["start", "finish"]


async def test_a_client_gone_before_the_first_frame_still_runs_on_finish() -> None:
    # The generator never started, so its finally never runs: on_finish does.
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES)
    client.gone.set()
    await asyncio.wait_for(
        response(frames(), hooks)(scope(), client.receive, client.send), DEADLINE_S
    )
    assert not frames.started
    assert client.bodies() == []
    assert hooks.calls == ["start", "finish"]


async def test_a_start_the_client_never_takes_is_dropped_after_the_send_timeout() -> None:
    # A server takes a response's start at once (uvicorn writes it to the socket's
    # buffer); one whose send waits is bounded by send_timeout_s, as any send is.
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES)
    client.stall_after_bodies = -1  # not even the response's start is taken
    await asyncio.wait_for(
        response(frames(), hooks, send_timeout_s=0.1)(scope(), client.receive, client.send),
        DEADLINE_S,
    )
    assert not frames.started
    assert hooks.calls == ["start", "finish"]


async def test_the_drain_deadline_ends_a_stream_stuck_on_a_client_that_does_not_read() -> None:
    # A stream waiting for its next token ends with an error event (the
    # generator's work, tests/test_lifecycle.py); one stuck in a send to a
    # client that does not read cannot deliver anything: it ends at the
    # deadline, not send_timeout_s later.
    lifecycle = Lifecycle()
    lifecycle.bind(asyncio.get_running_loop())

    async def frames() -> AsyncIterator[bytes]:
        with lifecycle.interruptible():
            for _ in range(1_000):
                yield b"data: x\n\n"

    client, hooks = Client(), Hooks()
    client.stall_after_bodies = 1
    run = asyncio.create_task(
        response(frames(), hooks, send_timeout_s=30)(scope(), client.receive, client.send)
    )
    await asyncio.sleep(0.05)
    lifecycle.begin_drain(0.05)
    await asyncio.wait_for(run, DEADLINE_S)
    assert hooks.calls == ["start", "finish"]
    assert not client.ended()


async def test_abort_connection_leaves_the_body_unfinished() -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"
        raise sse.AbortConnection

    client, hooks = Client(), Hooks()
    await asyncio.wait_for(
        response(frames(), hooks)(scope(), client.receive, client.send), DEADLINE_S
    )
    assert client.bodies() == [b"data: x\n\n"]
    assert not client.ended()
    assert hooks.calls == ["start", "finish"]


async def test_an_error_from_the_frames_goes_on_after_on_finish() -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"
        raise RuntimeError("a bug in a stream")

    client, hooks = Client(), Hooks()
    with pytest.raises(RuntimeError, match="a bug in a stream"):
        await response(frames(), hooks)(scope(), client.receive, client.send)
    assert hooks.calls == ["start", "finish"]


async def test_head_gets_the_headers_and_no_stream() -> None:
    client, hooks, frames = Client(), Hooks(), Frames(FRAMES)
    await asyncio.wait_for(
        response(frames(), hooks)(scope("HEAD"), client.receive, client.send), DEADLINE_S
    )
    assert client.messages[0]["type"] == "http.response.start"
    assert client.bodies() == [b""]
    assert client.ended()
    assert not frames.started


@pytest.mark.parametrize(
    ("ping_interval_s", "send_timeout_s"), [(-1.0, 1.0), (0.0, 0.0), (0.0, -2.0)]
)
def test_bad_intervals_are_refused(ping_interval_s: float, send_timeout_s: float) -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield b""

    with pytest.raises(ValueError, match="must be"):
        sse.EventStreamResponse(
            frames(), ping_interval_s=ping_interval_s, send_timeout_s=send_timeout_s
        )


async def test_the_app_sends_a_streams_body_frames_to_the_servers_own_send() -> None:
    # Every layer between the server and the route (FastAPI's exception layers, ours)
    # acts on a response's start only: the body is served from outside them all, past
    # their send wrappers, and none of them is on the stack while it is.
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=0))
    asgi_scope = post_scope("/v1/chat/completions")
    asked = {"role": "user", "content": "Hi"}
    body = json.dumps({"model": "sim-small", "stream": True, "max_tokens": 3, "messages": [asked]})
    received = False
    messages: list[tuple[str, list[str]]] = []
    wrappers = {"send_at_edge", "_send", "sender", "send_response", "send_wrapper"}

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body.encode()}
        await asyncio.sleep(DEADLINE_S)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        caller: FrameType | None = sys._getframe(1)
        through = []
        while caller is not None:
            if caller.f_code.co_name in wrappers:
                through.append(caller.f_code.co_name)
            caller = caller.f_back
        messages.append((message["type"], through))

    async with LifespanManager(app) as manager:
        await asyncio.wait_for(manager.app(asgi_scope, receive, send), DEADLINE_S)

    kind, through = messages[0]
    assert kind == "http.response.start"
    assert "send_at_edge" in through  # the start went through the layers
    assert len(messages) >= 2  # the start, then the body in one write or more
    assert all(through == [] for kind, through in messages[1:])
    assert scope_keys.SERVE_LATER not in asgi_scope  # the reference cycle is broken
