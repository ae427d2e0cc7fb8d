"""A fault-injecting OpenAI-compatible upstream for the gateway tests, on raw asyncio.

``python tests/e2e/fault_upstream.py PORT`` serves ``POST /v1/chat/completions``
on 127.0.0.1 and behaves as the request's ``model`` says (the gateway's routes
file sends each served name to one of them):

========================  ====================================================
``ok``                    five content chunks, ``\\r\\n`` separators, comments,
                          a finish chunk, no usage and no ``[DONE]``
``slow-first``            the same after a 0.4 s wait for the status line
``stall``                 reads the request, then says nothing for 30 s
``drop-before``           closes the connection without answering
``drop-mid``              three chunks, then the connection is cut
``status-400``            400 with OpenAI's error body
``status-500``            500 with a plain-text body
``always-429``            429 with ``Retry-After: 0``
``flaky-503``             503 (``Retry-After: 0``) twice per request id, then ``ok``
``error-mid``             two chunks, then ``data: {"error": ...}``
``llama-error-first``     200, then llama.cpp's ``error:`` field with code 400
``forever``               a chunk every 10 ms for up to 20 s
========================  ====================================================

It answers with chunked transfer-encoding and ``Connection: close``, so a cut
stream is a protocol error, not an end. ``GET /_stats`` returns what it saw:
attempts per model, each request's headers, and the ``time.monotonic()`` at
which it saw a client leave a ``forever`` stream (the clock is the machine's,
so a test in another process can compare it with its own).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

STATS: dict[str, Any] = {"attempts": Counter(), "headers": [], "disconnects": []}
_FLAKY: Counter[str] = Counter()


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fault",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"


WORDS = ["Hello", " from", " the", " fault", " upstream."]


class Exchange:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def head(self, status: int, headers: dict[str, str] | None = None) -> None:
        reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests"}.get(status, "Error")
        lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def stream_head(self) -> None:
        await self.head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})

    async def piece(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def whole(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.head(status, {"Content-Length": str(len(body)), **(headers or {})})
        self.writer.write(body)
        await self.writer.drain()


async def _ok(x: Exchange) -> None:
    await x.stream_head()
    await x.piece(b": keep-alive\r\n\r\n")
    for word in WORDS:
        await x.piece(_chunk(word))
    await x.piece(_chunk(finish="stop"))
    await x.end()


async def _forever(x: Exchange, reader: asyncio.StreamReader) -> None:
    await x.stream_head()

    async def watch() -> None:
        # The gateway sends nothing more on this connection: EOF means it left.
        await reader.read(1)
        STATS["disconnects"].append(time.monotonic())

    watcher = asyncio.ensure_future(watch())
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not watcher.done():
            await x.piece(_chunk("tick "))
            await asyncio.sleep(0.01)
    except (ConnectionError, OSError):
        pass
    finally:
        await asyncio.wait_for(asyncio.shield(watcher), timeout=5)


async def _answer(
    model: str, headers: dict[str, str], x: Exchange, reader: asyncio.StreamReader
) -> None:
    if model == "ok":
        await _ok(x)
    elif model == "slow-first":
        await asyncio.sleep(0.4)
        await _ok(x)
    elif model == "stall":
        await asyncio.sleep(30)
    elif model == "drop-before":
        return
    elif model == "drop-mid":
        await x.stream_head()
        for word in WORDS[:3]:
            await x.piece(_chunk(word))
    elif model == "status-400":
        error = {
            "error": {
                "message": "temperature must be at most 2",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": None,
            }
        }
        await x.whole(400, json.dumps(error).encode(), {"Content-Type": "application/json"})
    elif model == "status-500":
        await x.whole(500, b"upstream exploded", {"Content-Type": "text/plain"})
    elif model == "always-429":
        error = {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}
        await x.whole(429, json.dumps(error).encode(), {"Retry-After": "0"})
    elif model == "flaky-503":
        key = headers.get("x-request-id", "")
        _FLAKY[key] += 1
        if _FLAKY[key] <= 2:
            await x.whole(503, b'{"error": {"message": "warming up"}}', {"Retry-After": "0"})
        else:
            await _ok(x)
    elif model == "error-mid":
        await x.stream_head()
        for word in WORDS[:2]:
            await x.piece(_chunk(word))
        oom = {"error": {"message": "CUDA out of memory", "type": "server_error", "code": 500}}
        await x.piece(b"data: " + json.dumps(oom).encode() + b"\n\n")
        await x.end()
    elif model == "llama-error-first":
        await x.stream_head()
        llama = {"code": 400, "message": "the request exceeds the context size", "type": "x"}
        await x.piece(b"error: " + json.dumps(llama).encode() + b"\n\n")
        await x.end()
    elif model == "forever":
        await _forever(x, reader)
    else:
        await x.whole(404, b'{"error": {"message": "no such fault"}}')


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    x = Exchange(writer)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode().split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if request_line.startswith("GET /_stats"):
            stats = {**STATS, "attempts": dict(STATS["attempts"])}
            await x.whole(200, json.dumps(stats).encode(), {"Content-Type": "application/json"})
            return
        model = str(json.loads(body or b"{}").get("model", ""))
        STATS["attempts"][model] += 1
        STATS["headers"].append(headers)
        await _answer(model, headers, x, reader)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
