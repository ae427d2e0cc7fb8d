"""Drive the ASGI app as one client would, timing every frame on the event loop's clock.

httpx's ASGITransport buffers whole responses; these tests need to know when
each frame was handed over, and to decide when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message

URL = "/v1/chat/completions"


@dataclass
class Frame:
    at: float
    payload: str

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.payload)
        return parsed

    def content(self) -> str:
        if self.payload == "[DONE]":
            return ""
        choices = self.json().get("choices") or []
        return "".join(c["delta"].get("content") or "" for c in choices if "delta" in c)


@dataclass
class Exchange:
    """One request: what came back, when, relative to when it was sent."""

    app: ASGIApp
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    leave_after_content: int | None = None
    leave_at_once: bool = False
    path: str = URL
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    raw: bytes = b""
    writes: int = 0
    """Body messages that carried bytes: what the server wrote, one by one."""
    sent_at: float = 0.0

    async def run(self) -> Exchange:
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        if self.leave_at_once:
            gone.set()
        body_sent = False
        contents = 0

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": json.dumps(self.body).encode()}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal contents
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.response_headers = {
                    k.decode(): v.decode() for k, v in message.get("headers", [])
                }
                return
            chunk = message.get("body", b"")
            self.raw += chunk
            self.writes += bool(chunk)
            for frame in chunk.decode().split("\n\n"):
                if frame.startswith("data: "):
                    self.frames.append(Frame(loop.time() - self.sent_at, frame[6:]))
                    if self.frames[-1].content():
                        contents += 1
            if self.leave_after_content is not None and contents >= self.leave_after_content:
                gone.set()
            if not message.get("more_body", False):
                gone.set()

        self.sent_at = loop.time()
        await self.app(post_scope(self.path, self.headers), receive, send)
        return self

    def content_times(self) -> list[float]:
        return [f.at for f in self.frames if f.content()]

    def ttft(self) -> float:
        return self.content_times()[0]

    def chunks(self) -> list[dict[str, Any]]:
        return [f.json() for f in self.frames if f.payload != "[DONE]"]


def post_scope(path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The ASGI scope of a JSON POST to ``path`` from a loopback client."""
    sent = {"content-type": "application/json", "host": "test", **(headers or {})}
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in sent.items()],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }


class OpenStream:
    """One streamed request held open: entered once its first body frame is out; on exit
    the client leaves, and the request (the stream with it) ends.

    ``app`` must be running (its lifespan entered). ``task`` is the request's task
    while it is open, ``statuses`` the response starts' statuses.
    """

    def __init__(self, app: ASGIApp, scope: dict[str, Any], body: dict[str, Any]) -> None:
        self.app, self.scope = app, scope
        self._body = [{"type": "http.request", "body": json.dumps(body).encode()}]
        self._first_frame, self._leave = asyncio.Event(), asyncio.Event()
        self.statuses: list[int] = []
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        if self._body:
            return self._body.pop()
        await self._leave.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.statuses.append(message["status"])
        elif message.get("body"):
            self._first_frame.set()

    async def _serve(self) -> None:
        await self.app(self.scope, self._receive, self._send)

    async def __aenter__(self) -> OpenStream:
        self.task = asyncio.create_task(self._serve())
        await asyncio.wait_for(self._first_frame.wait(), timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._leave.set()  # the client leaves
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=10)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value; ``model_name`` defaults to the test model."""
    if name.startswith("vllm:"):
        labels.setdefault("model_name", "sim-small")
    return metrics.get((name, frozenset(labels.items())), 0.0)
