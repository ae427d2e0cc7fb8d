"""The HTTP side: keep-alive HTTP/1.1 connections that decode one stream at a time.

Raw HTTP/1.1 over ``asyncio.Protocol``: the bytes of each TCP read are decoded
(chunked transfer encoding, then SSE) in the ``data_received`` callback, so
there is no task switch per event, and one clock reading per read is shared
by the events it carries. ``discover_model`` asks the server which model to name.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any, cast

import orjson

from streamapi.bench.config import Target
from streamapi.bench.sse import SSEParser
from streamapi.bench.stats import RequestRecord, Stats

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _LENGTH, _UNTIL_EOF, _IDLE = range(8)
_MAX_HEAD_BYTES = 64 * 1024
_MAX_ERROR_BODY_BYTES = 4096


def _has_output(choices: Any) -> bool:
    # The role chunk ("content": "") and the finish chunk (empty delta) carry no token.
    for choice in choices:
        delta = choice.get("delta")
        if delta is not None:
            if (
                delta.get("content")
                or delta.get("reasoning_content")
                or delta.get("reasoning")
                or delta.get("tool_calls")
            ):
                return True
        elif choice.get("text"):
            return True
    return False


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that carries one streamed request at a time."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self._request: RequestRecord | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._state = _IDLE
        self._buffer = b""
        self._remaining = 0
        self._status = 0
        self._keep_alive = True
        self._sse: SSEParser | None = None
        self._error_body = b""
        self.served = 0
        """Responses this connection carried to their end."""
        self.stale = False
        """The server had closed this kept-alive connection before the request's answer
        began (llama.cpp's llama-server closes one after every stream): the request
        should be sent again on a new connection, and is not counted."""

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._request is not None:
            if self._closed_before_answer():
                return
            self._fail("disconnected", f"connection lost mid-response: {exc or 'closed'}")

    def _closed_before_answer(self) -> bool:
        """Whether a reused connection was closed before any byte of the answer (then
        the request is to be sent again, see ``stale``)."""
        if self.served == 0 or self._state != _HEAD or self._buffer:
            return False
        self.stale = True
        self.closed = True
        self._complete()
        return True

    def eof_received(self) -> bool | None:
        if self._request is not None:
            if self._closed_before_answer():
                return None
            if self._state == _UNTIL_EOF:
                self._finish()
            else:
                self._fail("disconnected", "server closed the connection mid-response")
        return None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self._state == _CHUNK_SIZE and not self._buffer and data.endswith(b"\r\n"):
            # The common case, kept short: a read that is exactly one whole chunk, as
            # servers that write each event as it is made deliver them.
            end = data.find(b"\r\n", 0, 10)
            if end > 0:
                try:
                    size = int(data[:end], 16)
                except ValueError:
                    size = 0
                if size and len(data) == end + size + 4:
                    self._body(data[end + 2 : -2], now)
                    return
        if self._request is None:
            # Bytes nobody asked for: the connection cannot be trusted for the next request.
            self.close()
            return
        if self._state == _HEAD:
            data = self._buffer + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                if len(data) > _MAX_HEAD_BYTES:
                    self.abort("bad_response", "response head too large")
                return
            self._buffer = b""
            if not self._parse_head(data[:end]):
                return
            data = data[end + 4 :]
            if self._state == _LENGTH and self._remaining == 0:
                self._finish()
                return
        if self._state == _UNTIL_EOF:
            self._body(data, now)
        elif self._state == _LENGTH:
            body = data[: self._remaining]
            self._remaining -= len(body)
            self._body(body, now)
            if self._remaining == 0:
                self._finish()
        elif self._state != _IDLE:
            self._chunked(data, now)

    # requests

    def send(self, payload: bytes, request: RequestRecord) -> asyncio.Future[None]:
        """Send one request; the future completes when its response has ended."""
        assert self._transport is not None and self._request is None
        self._request = request
        self._waiter = asyncio.get_running_loop().create_future()
        self._state = _HEAD
        self._buffer = b""
        self._status = 0
        self._sse = None
        self._error_body = b""
        request.start = time.perf_counter()
        self._transport.write(payload)
        return self._waiter

    def abort(self, kind: str, detail: str) -> None:
        """Fail the request in flight (if any) with ``kind`` and drop the connection."""
        if self._request is not None:
            self._fail(kind, detail)
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # parsing

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            self._status = int(parts[1])
        except (IndexError, ValueError):
            self.abort("bad_response", f"bad status line {lines[0][:80]!r}")
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get(b"connection", b"").lower()
        if parts[0] == b"HTTP/1.0":
            self._keep_alive = connection == b"keep-alive"
        else:
            self._keep_alive = connection != b"close"
        if self._status == 200:
            if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                self._sse = SSEParser()
            else:
                self._mark("not_sse", f"content-type {headers.get(b'content-type', b'')!r}")
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._state = _CHUNK_SIZE
        elif b"content-length" in headers:
            self._state = _LENGTH
            self._remaining = int(headers[b"content-length"])
        else:
            self._state = _UNTIL_EOF
            self._keep_alive = False
        return True

    def _chunked(self, data: bytes, now: float) -> None:
        buffer = self._buffer + data if self._buffer else data
        position = 0
        pieces: list[bytes] = []
        while True:
            if self._state == _CHUNK_DATA:
                piece = buffer[position : position + self._remaining]
                pieces.append(piece)
                position += len(piece)
                self._remaining -= len(piece)
                if self._remaining:
                    break
                self._state = _CHUNK_END
            if self._state == _CHUNK_END:
                if len(buffer) - position < 2:
                    break
                position += 2
                self._state = _CHUNK_SIZE
            if self._state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                try:
                    size = int(buffer[position:end].split(b";", 1)[0], 16)
                except ValueError:
                    self.abort("bad_response", "bad chunk size")
                    return
                position = end + 2
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._state = _CHUNK_DATA
                    self._remaining = size
                    continue
            if self._state == _TRAILERS:
                if buffer.startswith(b"\r\n", position):
                    position += 2
                else:
                    end = buffer.find(b"\r\n\r\n", position)
                    if end < 0:
                        break
                    position = end + 4
                self._buffer = b""
                if pieces:
                    self._body(b"".join(pieces), now)
                self._finish()
                return
        self._buffer = buffer[position:]
        if pieces:
            self._body(b"".join(pieces), now)

    def _body(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self._sse is None:
            if len(self._error_body) < _MAX_ERROR_BODY_BYTES:
                self._error_body += data[:_MAX_ERROR_BODY_BYTES]
            return
        events = self._sse.feed(data)
        if not events:
            return
        request = self._request
        assert request is not None
        stats = self._stats
        stats.sse_events += len(events)
        for _, payload in events:
            if payload == b"[DONE]":
                request.done = True
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self._mark("bad_event", payload[:200].decode(errors="replace"))
                continue
            if type(chunk) is not dict:
                continue
            if chunk.get("error") is not None:
                self._mark("stream_error", payload[:300].decode(errors="replace"))
                continue
            usage = chunk.get("usage")
            if usage:
                completion_tokens = usage.get("completion_tokens")
                if type(completion_tokens) is int:
                    request.usage_tokens = completion_tokens
            choices = chunk.get("choices")
            if choices and _has_output(choices):
                if request.events == 0:
                    request.first = now
                elif request.measured:
                    stats.gaps.append(now - request.last)
                request.last = now
                request.events += 1
                stats.events += 1

    def _mark(self, kind: str, detail: str) -> None:
        # The first error of a request names it; the response still runs to its end.
        assert self._request is not None
        if self._request.error is None:
            self._request.error = kind
            self._stats.note_error(kind, detail)

    def _finish(self) -> None:
        request = self._request
        assert request is not None
        self.served += 1
        if self._status != 200:
            self._mark(f"http_{self._status}", self._error_body.decode(errors="replace"))
        elif not request.done:
            self._mark("incomplete", "the stream ended without data: [DONE]")
        self._complete()
        if not self._keep_alive:
            self.close()

    def _fail(self, kind: str, detail: str) -> None:
        self._mark(kind, detail)
        self._complete()
        self.closed = True

    def _complete(self) -> None:
        request = self._request
        assert request is not None
        request.end = time.perf_counter()
        self._request = None
        self._state = _IDLE
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def discover_model(target: Target, api_key: str | None, timeout_s: float = 5.0) -> str | None:
    """The first model ``GET /v1/models`` lists, or None if the server lists none."""
    url = f"{target.scheme}://{target.host_header}{target.base_path}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        ) as response:
            models = orjson.loads(response.read()).get("data") or []
    except (OSError, ValueError, AttributeError):
        return None
    model = models[0].get("id") if models and isinstance(models[0], dict) else None
    return model if isinstance(model, str) else None
