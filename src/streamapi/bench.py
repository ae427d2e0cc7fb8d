"""``streamapi bench``: a load generator for any OpenAI-compatible streaming endpoint.

It imports nothing of the server it measures, so it can drive streamapi, vLLM,
Ollama or any other server that streams chat or legacy completions over SSE.

The client is deliberately lean so that one process can hold thousands of
streams without becoming the bottleneck:

- raw HTTP/1.1 over ``asyncio.Protocol`` (uvloop when installed): the bytes of
  each TCP read are decoded (chunked transfer encoding, then SSE) in the
  ``data_received`` callback, so there is no task switch per event;
- one clock reading per TCP read, shared by the events it carries: events
  that arrived together are timed together, as a client would see them;
- keep-alive connections reused request after request, so a long run does not
  exhaust ephemeral ports with ``TIME_WAIT`` sockets;
- samples kept in flat ``array('d')`` buffers and sorted once at the end.

It reports its own CPU time per event (``client.cpu_us_per_event``) so that a
run can show the client was not the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import resource
import ssl
import sys
import time
import urllib.request
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

# --- SSE -------------------------------------------------------------------------


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in, ``(event, data)`` pairs out.

    Follows the WHATWG rules that matter to a client: ``\\r\\n``, ``\\n`` and
    ``\\r`` line ends, comments, several ``data:`` lines joined by ``\\n``, one
    optional space after the colon, and no dispatch for blocks without data.
    ``event`` is ``b""`` when the block names none (the spec's "message").
    """

    __slots__ = ("_buffer", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """The events completed by ``chunk``; incomplete ones wait for more bytes."""
        if not self._buffer and not self._skip_lf and chunk.endswith(b"\n\n"):
            # One pass over the bytes for the common case: one data line, then a blank line.
            lines = chunk.splitlines()
            if len(lines) == 2 and not lines[1] and lines[0].startswith(b"data:"):
                data = lines[0][5:]
                return [(b"", data[1:] if data.startswith(b" ") else data)]
        if self._skip_lf or b"\r" in chunk:
            chunk = self._normalise(chunk)
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[tuple[bytes, bytes]] = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            event = _parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def _normalise(self, chunk: bytes) -> bytes:
        # A final \r ends its line now; if the next read starts with \n, that \n
        # was the second half of a \r\n and must not end another line.
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _parse_block(block: bytes) -> tuple[bytes, bytes] | None:
    if block.startswith(b"data:") and b"\n" not in block:
        data = block[5:]
        return b"", data[1:] if data.startswith(b" ") else data
    event = b""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value
    if not data_lines:
        return None
    return event, b"\n".join(data_lines)


# --- statistics ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ascending values, interpolating linearly
    between the closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    """Count, mean, p50, p90, p99 and max of ``values`` times ``scale`` (s to ms)."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": math.fsum(ordered) / len(ordered) * scale,
        "p50": percentile(ordered, 50) * scale,
        "p90": percentile(ordered, 90) * scale,
        "p99": percentile(ordered, 99) * scale,
        "max": ordered[-1] * scale,
    }


class _Request:
    __slots__ = (
        "done",
        "end",
        "error",
        "events",
        "first",
        "last",
        "measured",
        "start",
        "usage_tokens",
    )

    def __init__(self, measured: bool) -> None:
        self.measured = measured
        self.start = 0.0
        self.first = 0.0
        self.last = 0.0
        self.end = 0.0
        self.events = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error: str | None = None


class _Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}
        self.tokens = 0
        self.events = 0
        self.sse_events = 0
        self.ttft = array("d")
        self.gaps = array("d")
        self.tpot = array("d")
        self.e2e = array("d")
        self.failed_latency = array("d")

    def note_error(self, kind: str, detail: str) -> None:
        self.error_samples.setdefault(kind, detail[:300])

    def record(self, request: _Request) -> None:
        tokens = request.usage_tokens if request.usage_tokens is not None else request.events
        self.tokens += tokens
        if request.error is not None:
            self.failed += 1
            self.errors[request.error] = self.errors.get(request.error, 0) + 1
            self.failed_latency.append(request.end - request.start)
            return
        self.ok += 1
        if not request.measured:
            return
        self.e2e.append(request.end - request.start)
        if request.events:
            self.ttft.append(request.first - request.start)
        if tokens > 1 and request.events > 1:
            self.tpot.append((request.last - request.first) / (tokens - 1))


# --- HTTP ------------------------------------------------------------------------

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


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that carries one streamed request at a time."""

    def __init__(self, stats: _Stats) -> None:
        self._stats = stats
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self._request: _Request | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._state = _IDLE
        self._buffer = b""
        self._remaining = 0
        self._status = 0
        self._keep_alive = True
        self._sse: SSEParser | None = None
        self._error_body = b""

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._request is not None:
            self._fail("disconnected", f"connection lost mid-response: {exc or 'closed'}")

    def eof_received(self) -> bool | None:
        if self._request is not None:
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

    def send(self, payload: bytes, request: _Request) -> asyncio.Future[None]:
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


# --- the load --------------------------------------------------------------------

_WORDS = (
    "stream token latency server client request answer model event queue batch cache "
    "network socket buffer python async thread schedule measure report budget memory core "
    "signal window pacing limit error retry prompt output input context length window"
).split()


@dataclass(frozen=True)
class Target:
    """Where requests go: scheme, host, port and the route's path."""

    scheme: str
    host: str
    port: int
    path: str
    base_path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.path}"


def resolve_target(url: str, route: str) -> Target:
    """The endpoint for ``route`` under ``url`` (a server root, a ``/v1`` base or a full path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http:// or https:// URL, got {url!r}")
    path = parts.path.rstrip("/")
    suffix = "/chat/completions" if route == "chat" else "/completions"
    if path.endswith("/completions"):
        base = path.removesuffix("/chat/completions").removesuffix("/completions")
    elif path.endswith("/v1"):
        base, path = path, path + suffix
    else:
        base, path = path + "/v1", path + "/v1" + suffix
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, parts.hostname, port, path, base)


def parse_length(spec: str) -> tuple[int, int]:
    """``"64"`` (fixed) or ``"32-128"`` (uniform, inclusive) as ``(low, high)``."""
    low_text, _, high_text = spec.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if high_text else low
    except ValueError:
        raise ValueError(f"expected N or LOW-HIGH, got {spec!r}") from None
    if low < 0 or high < low:
        raise ValueError(f"expected 0 <= LOW <= HIGH, got {spec!r}")
    return low, high


@dataclass
class BenchConfig:
    """One run's parameters, as ``streamapi bench`` options give them."""

    url: str = "http://127.0.0.1:8080"
    route: str = "chat"
    model: str | None = None
    concurrency: int | None = None
    rate: float | None = None
    arrival: str = "poisson"
    requests: int | None = None
    duration_s: float | None = None
    prompt_tokens: tuple[int, int] = (32, 32)
    max_tokens: tuple[int, int] = (64, 64)
    ignore_eos: bool = False
    include_usage: bool = True
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    ramp_up_s: float = 0.0
    warmup_s: float = 0.0
    seed: int = 0
    progress: bool = True


class _Payloads:
    def __init__(self, config: BenchConfig, target: Target, model: str | None) -> None:
        self._config = config
        self._target = target
        self._model = model
        self._random = random.Random(config.seed)
        head = [
            f"POST {target.path} HTTP/1.1",
            f"Host: {target.host_header}",
            "User-Agent: streamapi-bench",
            "Accept: text/event-stream",
            "Content-Type: application/json",
        ]
        if config.api_key:
            head.append(f"Authorization: Bearer {config.api_key}")
        self._head = ("\r\n".join(head) + "\r\nContent-Length: ").encode()

    def next(self) -> bytes:
        config, rng = self._config, self._random
        prompt = " ".join(rng.choices(_WORDS, k=rng.randint(*config.prompt_tokens)))
        body: dict[str, Any] = {}
        if self._model is not None:
            body["model"] = self._model
        if self._config.route == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body["stream"] = True
        body["max_tokens"] = rng.randint(*config.max_tokens)
        if config.include_usage:
            body["stream_options"] = {"include_usage": True}
        if config.ignore_eos:
            body["ignore_eos"] = True
        body.update(config.extra_body)
        encoded = orjson.dumps(body)
        return self._head + str(len(encoded)).encode() + b"\r\n\r\n" + encoded


class _Runner:
    def __init__(self, config: BenchConfig, target: Target, model: str | None) -> None:
        self.config = config
        self.target = target
        self.stats = _Stats()
        self._payloads = _Payloads(config, target, model)
        self._limit = config.requests if config.requests is not None else sys.maxsize
        self._issued = 0
        self._open = 0
        self.max_open = 0
        self._connections: set[_Connection] = set()
        self._ssl = ssl.create_default_context() if target.scheme == "https" else None
        self.started = 0.0
        self.ended = 0.0
        self._stop_at = math.inf
        self._last_progress = (0.0, 0)
        self._progress_ticks = 0
        self._progress_handle: asyncio.TimerHandle | None = None

    @property
    def issued(self) -> int:
        return self._issued

    async def run(self) -> None:
        config = self.config
        self.started = time.perf_counter()
        if config.duration_s is not None:
            self._stop_at = self.started + config.duration_s
        # Each request is bounded by its own timeout; this guard only catches a bug.
        guard_s = (config.duration_s or 0) + config.ramp_up_s + config.timeout_s + 10
        if config.requests is not None and config.duration_s is None:
            guard_s = math.inf
        self._progress_handle = asyncio.get_running_loop().call_later(1.0, self._progress)
        try:
            load = self._closed_loop() if config.rate is None else self._open_loop()
            task = asyncio.ensure_future(load)
            done, _ = await asyncio.wait([task], timeout=None if guard_s == math.inf else guard_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                task.result()
        finally:
            if self._progress_handle is not None:
                self._progress_handle.cancel()
            self.ended = time.perf_counter()
            for connection in self._connections:
                if not connection.closed:
                    connection.abort("timeout", "the run's time guard expired")
            # Let the transports' close callbacks run before the loop goes away.
            await asyncio.sleep(0)
            if config.progress and sys.stderr.isatty():
                sys.stderr.write("\n")

    async def _closed_loop(self) -> None:
        count = self.config.concurrency or 1
        ramp = self.config.ramp_up_s
        workers = [asyncio.ensure_future(self._worker(ramp * i / count)) for i in range(count)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _worker(self, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        connection: _Connection | None = None
        try:
            while self._take():
                connection = await self._one(connection)
        finally:
            if connection is not None:
                connection.close()

    async def _open_loop(self) -> None:
        config = self.config
        assert config.rate is not None
        rng = random.Random(config.seed + 1)
        idle: list[_Connection] = []
        limit = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        tasks: set[asyncio.Task[None]] = set()
        arrival = time.perf_counter()
        try:
            while True:
                if config.arrival == "poisson":
                    arrival += rng.expovariate(config.rate)
                else:
                    arrival += 1 / config.rate
                # A long gap between arrivals must not outlast --duration.
                delay = min(arrival, self._stop_at) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if limit is not None:
                    await limit.acquire()
                if not self._take():
                    if limit is not None:
                        limit.release()
                    break
                task = asyncio.ensure_future(self._pooled(idle, limit))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for connection in idle:
                connection.close()

    async def _pooled(self, idle: list[_Connection], limit: asyncio.Semaphore | None) -> None:
        try:
            connection = await self._one(idle.pop() if idle else None)
            if connection is not None:
                idle.append(connection)
        finally:
            if limit is not None:
                limit.release()

    def _take(self) -> bool:
        if self._issued >= self._limit or time.perf_counter() >= self._stop_at:
            return False
        self._issued += 1
        return True

    async def _one(self, connection: _Connection | None) -> _Connection | None:
        """One request, on ``connection`` or a new one; the connection if reusable."""
        config = self.config
        request = _Request(measured=time.perf_counter() - self.started >= config.warmup_s)
        payload = self._payloads.next()
        if connection is None or connection.closed:
            try:
                connection = await self._connect()
            except (OSError, TimeoutError) as exc:
                request.start = request.end = time.perf_counter()
                request.error = "connect"
                self.stats.note_error("connect", f"{type(exc).__name__}: {exc}")
                self.stats.record(request)
                # Refused connections fail in microseconds; do not spin on a dead server.
                await asyncio.sleep(0.05)
                return None
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        loop = asyncio.get_running_loop()
        try:
            done = connection.send(payload, request)
            timer = loop.call_later(
                config.timeout_s, connection.abort, "timeout", f"no end after {config.timeout_s} s"
            )
            try:
                await done
            finally:
                timer.cancel()
        finally:
            self._open -= 1
        self.stats.record(request)
        if connection.closed:
            self._connections.discard(connection)
            return None
        return connection

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        target = self.target
        async with asyncio.timeout(self.config.connect_timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Connection(self.stats),
                target.host,
                target.port,
                ssl=self._ssl,
                server_hostname=target.host if self._ssl else None,
            )
        self._connections.add(connection)
        return connection

    def _progress(self) -> None:
        now = time.perf_counter()
        elapsed = now - self.started
        last_time, last_events = self._last_progress
        events = self.stats.events
        rate = (events - last_events) / (now - last_time) if last_time else events / elapsed
        self._last_progress = (now, events)
        if self.config.progress:
            line = (
                f"[bench] {elapsed:6.1f} s  ok {self.stats.ok}  failed {self.stats.failed}  "
                f"open {self._open}  events/s {rate:,.0f}"
            )
            if sys.stderr.isatty():
                sys.stderr.write("\r" + line + "\x1b[K")
            elif self._progress_ticks % 5 == 4:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        self._progress_ticks += 1
        self._progress_handle = asyncio.get_running_loop().call_later(1.0, self._progress)


# --- entry points ---------------------------------------------------------------


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


def run(config: BenchConfig, *, loop: str = "auto") -> dict[str, Any]:
    """Run the load ``config`` describes and return the report (``--json``'s document)."""
    target = resolve_target(config.url, config.route)
    model = config.model if config.model is not None else discover_model(target, config.api_key)
    runner = _Runner(config, target, model)
    loop_factory, loop_name = _loop_factory(loop)
    before = resource.getrusage(resource.RUSAGE_SELF)
    with asyncio.Runner(loop_factory=loop_factory) as asyncio_runner:
        asyncio_runner.run(runner.run())
    after = resource.getrusage(resource.RUSAGE_SELF)
    user_s, system_s = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return _report(runner, model, user_s, system_s, loop_name)


def _loop_factory(name: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop, "uvloop"
    return None, "asyncio"


def _report(
    runner: _Runner, model: str | None, user_s: float, system_s: float, loop: str
) -> dict[str, Any]:
    config, stats = runner.config, runner.stats
    cpu_s = user_s + system_s
    wall = max(runner.ended - runner.started, 1e-9)
    return {
        "url": runner.target.url,
        "route": config.route,
        "model": model,
        "load": {
            "concurrency": config.concurrency,
            "rate": config.rate,
            "arrival": config.arrival if config.rate is not None else None,
            "requests": config.requests,
            "duration_s": config.duration_s,
            "prompt_tokens": list(config.prompt_tokens),
            "max_tokens": list(config.max_tokens),
            "ignore_eos": config.ignore_eos,
            "ramp_up_s": config.ramp_up_s,
            "warmup_s": config.warmup_s,
        },
        "requests": {
            "issued": runner.issued,
            "ok": stats.ok,
            "failed": stats.failed,
            "errors": dict(sorted(stats.errors.items())),
            "error_samples": stats.error_samples,
        },
        "duration_s": wall,
        "output_tokens": stats.tokens,
        "output_tokens_per_s": stats.tokens / wall,
        "events": stats.events,
        "events_per_s": stats.events / wall,
        "sse_events": stats.sse_events,
        "max_open_streams": runner.max_open,
        "ttft_ms": summarize(stats.ttft),
        "itl_ms": summarize(stats.gaps),
        "tpot_ms": summarize(stats.tpot),
        "e2e_ms": summarize(stats.e2e),
        "failed_latency_ms": summarize(stats.failed_latency),
        "client": {
            "cpu_s": cpu_s,
            "user_s": user_s,
            "system_s": system_s,
            "cpu_percent": cpu_s / wall * 100,
            "cpu_us_per_event": cpu_s / stats.events * 1e6 if stats.events else None,
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "loop": loop,
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    requests = report["requests"]
    client = report["client"]
    errors = ", ".join(f"{kind} {count}" for kind, count in requests["errors"].items()) or "none"
    lines = [
        f"target    {report['url']}  model {report['model'] or '(server default)'}",
        f"requests  ok {requests['ok']}  failed {requests['failed']}  (errors: {errors})",
    ]
    for kind, sample in requests["error_samples"].items():
        lines.append(f"          {kind}: {sample[:160]}")
    lines += [
        f"duration  {report['duration_s']:.2f} s   most streams open at once "
        f"{report['max_open_streams']}",
        f"output    {report['output_tokens']} tokens ({report['output_tokens_per_s']:,.1f}/s)   "
        f"{report['events']} token events ({report['events_per_s']:,.1f}/s)",
        f"{'(ms)':<22}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'count':>9}",
    ]
    for key, label in (
        ("ttft_ms", "time to first token"),
        ("itl_ms", "inter-event gap"),
        ("tpot_ms", "time per output token"),
        ("e2e_ms", "end to end"),
        ("failed_latency_ms", "failed requests"),
    ):
        summary = report[key]
        if not summary["count"]:
            continue
        cells = "".join(f"{summary[q]:>9.1f}" for q in ("p50", "p90", "p99", "max"))
        lines.append(f"{label:<22}{cells}{summary['count']:>9}")
    per_event = client["cpu_us_per_event"]
    lines.append(
        f"client    {client['cpu_percent']:.0f}% of one core, "
        + (f"{per_event:.1f} µs CPU per event" if per_event is not None else "no events")
        + f", {client['loop']}"
    )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamapi bench",
        description="Load-test any OpenAI-compatible streaming endpoint (streamapi, vLLM, "
        "Ollama, ...) and report TTFT, inter-event gaps, end-to-end latency and throughput. "
        "Every run is bounded: by --requests, by --duration, or by 100 requests.",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="server root, /v1 base or full endpoint URL (default: %(default)s)",
    )
    target.add_argument("--route", choices=("chat", "completions"), default="chat")
    target.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    target.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency", type=int, help="streams kept open (closed loop); a cap with --rate"
    )
    load.add_argument("--rate", type=float, help="new requests per second (open loop)")
    load.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson")
    load.add_argument("--requests", type=int, help="stop after this many requests")
    load.add_argument("--duration", type=float, help="stop starting requests after S seconds")
    load.add_argument(
        "--prompt-tokens",
        default="32",
        help="prompt length in words: N, or LOW-HIGH uniform (default: %(default)s)",
    )
    load.add_argument(
        "--max-tokens",
        "--output-tokens",
        dest="max_tokens",
        default="64",
        help="max_tokens of each request: N, or LOW-HIGH uniform (default: %(default)s)",
    )
    load.add_argument(
        "--ignore-eos", action="store_true", help="send ignore_eos: true (exactly max_tokens)"
    )
    load.add_argument(
        "--no-usage", action="store_true", help="do not ask for stream_options.include_usage"
    )
    load.add_argument("--extra-body", help="JSON object merged into every request body")
    load.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    load.add_argument("--ramp-up", type=float, default=0.0, help="spread stream starts over S s")
    load.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="leave requests started in the first S seconds out of the latency statistics",
    )
    load.add_argument("--seed", type=int, default=0, help="seed for prompts and arrivals")
    output = parser.add_argument_group("output and process")
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    output.add_argument("--cpu", type=int, help="pin this process to CPU N")
    output.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    return parser


def _config(args: argparse.Namespace) -> BenchConfig:
    for name in ("concurrency", "requests"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1")
    for name in ("rate", "duration", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive")
    extra: dict[str, Any] = {}
    if args.extra_body:
        extra = orjson.loads(args.extra_body)
        if not isinstance(extra, dict):
            raise ValueError("--extra-body must be a JSON object")
    requests = args.requests
    if requests is None and args.duration is None:
        requests = 100
    return BenchConfig(
        url=args.url,
        route=args.route,
        model=args.model,
        concurrency=args.concurrency,
        rate=args.rate,
        arrival=args.arrival,
        requests=requests,
        duration_s=args.duration,
        prompt_tokens=parse_length(args.prompt_tokens),
        max_tokens=parse_length(args.max_tokens),
        ignore_eos=args.ignore_eos,
        include_usage=not args.no_usage,
        api_key=args.api_key,
        extra_body=extra,
        timeout_s=args.timeout,
        ramp_up_s=args.ramp_up,
        warmup_s=args.warmup,
        seed=args.seed,
        progress=not args.no_progress,
    )


def _raise_file_limit() -> None:
    # Every stream is a socket; the usual soft limit of 1024 would cap the load.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``streamapi bench``: 0 when every request succeeded, 1 otherwise."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        resolve_target(config.url, config.route)
    except (ValueError, orjson.JSONDecodeError) as exc:
        parser.error(str(exc))
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as exc:
            parser.error(f"--cpu {args.cpu}: {exc}")
    _raise_file_limit()
    report = run(config, loop=args.loop)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_report(report))
    return 0 if report["requests"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
