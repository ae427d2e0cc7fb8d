"""The benchmark's ceiling: raw ASGI on uvicorn, one global ticker for every stream, orjson.

It is what plain Python can do on one core when nothing is spent on a framework:
no routing layer, no validation models, no per-stream timers. Every stream waits on
the same tick future, so one timer wakes them all, instead of one ``asyncio.sleep``
per stream per token. It speaks just enough OpenAI for ``streamapi bench`` and the
SDKs: chat completion chunks, ``max_tokens`` honoured exactly (as with
``ignore_eos``), the usage chunk when asked, and ``data: [DONE]``.

    python bench/servers/ceiling.py --port 8001 --ttft-ms 20 --itl-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TOKENS = [
    " " + word
    for word in (
        "Streaming answers token by token keeps a client busy with something to read "
        "while the rest is still being written, which is why every chat interface does it."
    ).split()
]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON_HEADERS = [(b"content-type", b"application/json")]
_DONE = b"data: [DONE]\n\n"


class Ticker:
    """One clock for every stream: each tick wakes every stream that waits for it.

    The ticker runs only while streams wait, so an idle server (or an unpaced one,
    whose interval is 0) does not spin.
    """

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._future: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting = 0

    def tick(self) -> asyncio.Future[None]:
        """A future that completes at the next tick."""
        loop = asyncio.get_running_loop()
        if self._future is None:
            self._future = loop.create_future()
        if self._task is None:
            self._task = loop.create_task(self._run())
        self._waiting += 1
        return self._future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += self._interval
            delay = deadline - loop.time()
            if delay < -self._interval:
                # Behind by more than a tick: skip the missed ticks rather than
                # firing them back to back, which would bunch every stream's tokens.
                deadline = loop.time()
            await asyncio.sleep(max(delay, 0.0))
            future, self._future = self._future, loop.create_future()
            waiting, self._waiting = self._waiting, 0
            if future is not None:
                future.set_result(None)
            if not waiting:
                self._task = None
                return


def create_app(
    *, ttft_ms: float, itl_ms: float
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app: ``POST /v1/chat/completions`` (streamed only) and ``GET /health``."""
    ticker = Ticker(itl_ms / 1000)
    first_ticks = max(1, round(ttft_ms / itl_ms)) if itl_ms > 0 else 1

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/chat/completions" and method == "POST":
            await _chat(receive, send, ticker, first_ticks)
        elif path == "/health" and method == "GET":
            await _json(send, 200, {"status": "healthy"})
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "not_found"}})

    return app


async def _json(send: Send, status: int, payload: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


async def _chat(receive: Receive, send: Send, ticker: Ticker, first_ticks: int) -> None:
    try:
        request = orjson.loads(await _read_body(receive))
        max_tokens = int(request.get("max_completion_tokens") or request.get("max_tokens") or 16)
        stream = request.get("stream") is True
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        await _json(send, 400, {"error": {"message": "bad request", "type": "invalid_request"}})
        return
    if not stream or max_tokens < 1:
        await _json(send, 400, {"error": {"message": "stream: true and max_tokens >= 1 only"}})
        return
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": str(request.get("model") or "ceiling"),
    }
    # The request body is read, so the next message can only be http.disconnect.
    disconnected = asyncio.ensure_future(receive())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for i in range(max_tokens):
            for _ in range(first_ticks if i == 0 else 1):
                await ticker.tick()
            if disconnected.done():
                return
            token = _TOKENS[i % len(_TOKENS)]
            delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            body = b"data: " + orjson.dumps(chunk) + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
        finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
        tail = b"data: " + orjson.dumps(finish) + b"\n\n"
        if include_usage:
            usage = {
                "prompt_tokens": 0,
                "completion_tokens": max_tokens,
                "total_tokens": max_tokens,
            }
            tail += b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        await send({"type": "http.response.body", "body": tail + _DONE, "more_body": False})
    finally:
        disconnected.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    args = parser.parse_args()
    uvicorn.run(
        create_app(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms),
        host=args.host,
        port=args.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
