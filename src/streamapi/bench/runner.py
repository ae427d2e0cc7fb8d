"""The load itself: request bodies, the closed and open loops, connections and progress."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from streamapi.bench.client import Connection, discover_model
from streamapi.bench.config import BenchConfig, Target, resolve_target
from streamapi.bench.replay import Scheduled, schedule
from streamapi.bench.report import build_report
from streamapi.bench.stats import RequestRecord, Stats

_WORDS = (
    "stream token latency server client request answer model event queue batch cache "
    "network socket buffer python async thread schedule measure report budget memory core "
    "signal window pacing limit error retry prompt output input context length window"
).split()


class Payloads:
    """Each request's bytes: a fixed head, and a body with a prompt of random words."""

    def __init__(self, config: BenchConfig, target: Target, model: str | None) -> None:
        self._config = config
        self._target = target
        self._model = model
        self._random = random.Random(config.seed)
        self._head = self._head_for(target.path)

    def _head_for(self, path: str) -> bytes:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self._target.host_header}",
            "User-Agent: streamapi-bench",
            "Accept: text/event-stream",
            "Content-Type: application/json",
        ]
        if self._config.api_key:
            head.append(f"Authorization: Bearer {self._config.api_key}")
        return ("\r\n".join(head) + "\r\nContent-Length: ").encode()

    def recorded(self, request: Scheduled) -> bytes:
        """A recorded request's bytes: its endpoint under the target's base, its body."""
        head = self._head_for(self._target.base_path + request.endpoint)
        encoded = orjson.dumps({**request.body, **self._config.extra_body})
        return head + str(len(encoded)).encode() + b"\r\n\r\n" + encoded

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


class Runner:
    """Issues the requests, on a closed loop (``concurrency``) or an open one (``rate``)."""

    def __init__(
        self,
        config: BenchConfig,
        target: Target,
        model: str | None,
        replay: list[Scheduled] | None = None,
    ) -> None:
        self.config = config
        self.target = target
        self.stats = Stats()
        self._payloads = Payloads(config, target, model)
        self._replay = replay
        self._limit = config.requests if config.requests is not None else sys.maxsize
        self._issued = 0
        self._open = 0
        self.max_open = 0
        self._connections: set[Connection] = set()
        self._ssl = ssl.create_default_context() if target.scheme == "https" else None
        self.started = 0.0
        self.ended = 0.0
        self._stop_at = math.inf
        self._last_progress = (0.0, 0)
        self._progress_ticks = 0
        self._progress_handle: asyncio.TimerHandle | None = None
        # One sample a second (and one at the end): seconds since the start, then the
        # totals so far of token events, ok and failed requests, and the streams open.
        self.timeline: list[tuple[float, int, int, int, int]] = []

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
        if self._replay is not None and config.duration_s is None:
            # A replay is bounded by its cassette: its last arrival, then one request's time.
            last_s = self._replay[-1].at_s if self._replay else 0.0
            guard_s = last_s + config.timeout_s + 10
        self._sample(self.started)
        self._progress_handle = asyncio.get_running_loop().call_later(1.0, self._progress)
        try:
            if self._replay is not None:
                load = self._replay_loop(self._replay)
            elif config.rate is None:
                load = self._closed_loop()
            else:
                load = self._open_loop()
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
            self._sample(self.ended)
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
        connection: Connection | None = None
        try:
            while self._take():
                connection = await self._one(connection)
        finally:
            if connection is not None:
                connection.close()

    async def _open_loop(self) -> None:
        config = self.config
        rate = config.rate
        assert rate is not None
        rng = random.Random(config.seed + 1)

        def arrivals() -> Iterator[tuple[float, bytes | None]]:
            arrival = time.perf_counter()
            while True:
                arrival += rng.expovariate(rate) if config.arrival == "poisson" else 1 / rate
                yield arrival, None

        await self._arrivals(arrivals())

    async def _replay_loop(self, requests: list[Scheduled]) -> None:
        """Each recorded request at its (scaled) recorded time, whatever is still open."""
        await self._arrivals(
            (self.started + request.at_s, self._payloads.recorded(request)) for request in requests
        )

    async def _arrivals(self, arrivals: Iterator[tuple[float, bytes | None]]) -> None:
        """A request at each arrival (``perf_counter`` time, payload or None for a generated
        one), however many are still open: the open loop and a replay."""
        config = self.config
        idle: list[Connection] = []
        limit = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        tasks: set[asyncio.Task[None]] = set()
        try:
            for arrival, payload in arrivals:
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
                task = asyncio.ensure_future(self._pooled(idle, limit, payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for connection in idle:
                connection.close()

    async def _pooled(
        self, idle: list[Connection], limit: asyncio.Semaphore | None, payload: bytes | None = None
    ) -> None:
        try:
            connection = await self._one(idle.pop() if idle else None, payload)
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

    async def _one(
        self, connection: Connection | None, payload: bytes | None = None
    ) -> Connection | None:
        """One request (``payload``, else a generated one), on ``connection`` or a new one;
        the connection if reusable."""
        config = self.config
        request = RequestRecord(measured=time.perf_counter() - self.started >= config.warmup_s)
        if payload is None:
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
        if connection.stale:
            # Closed by the server while idle, before this request was answered: send it
            # again on a new connection (a new connection is never stale).
            self._connections.discard(connection)
            return await self._one(None, payload)
        self.stats.record(request)
        if connection.closed:
            self._connections.discard(connection)
            return None
        return connection

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        target = self.target
        async with asyncio.timeout(self.config.connect_timeout_s):
            _, connection = await loop.create_connection(
                lambda: Connection(self.stats),
                target.host,
                target.port,
                ssl=self._ssl,
                server_hostname=target.host if self._ssl else None,
            )
        self._connections.add(connection)
        return connection

    def _sample(self, now: float) -> None:
        stats = self.stats
        self.timeline.append((now - self.started, stats.events, stats.ok, stats.failed, self._open))

    def _progress(self) -> None:
        now = time.perf_counter()
        self._sample(now)
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


def run(config: BenchConfig, *, loop: str = "auto") -> dict[str, Any]:
    """Run the load ``config`` describes and return the report (``--json``'s document)."""
    target = resolve_target(config.url, config.route)
    replay = None
    if config.replay is not None:
        # Read first: a cassette that cannot be read fails before any load.
        replay = schedule(Path(config.replay), speed=config.replay_speed, model=config.model)
        model = config.model  # each request keeps its recorded model unless --model is given
    elif config.model is not None:
        model = config.model
    else:
        model = discover_model(target, config.api_key)
    runner = Runner(config, target, model, replay)
    loop_factory, loop_name = _loop_factory(loop)
    before = resource.getrusage(resource.RUSAGE_SELF)
    with asyncio.Runner(loop_factory=loop_factory) as asyncio_runner:
        asyncio_runner.run(runner.run())
    after = resource.getrusage(resource.RUSAGE_SELF)
    user_s, system_s = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return build_report(runner, model, user_s, system_s, loop_name)


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
