"""Overload: refusals past the stream cap must be fast, and /health must answer.

Starts `streamapi serve` on 127.0.0.1 with a per-worker stream cap
(`--max-concurrent-requests`), fills the cap with long paced streams, then:

1. steady overload: for `--duration` seconds, new stream requests arrive at
   `--rate` per second (open loop, one connection each) on top of the full cap;
   every one should get 429 with Retry-After. Reports how long each refusal took
   and `GET /health` latency, probed every 50 ms, while this goes on;
2. a burst: `--burst` stream requests at the same instant (a thundering herd),
   reporting the same figures. A burst is served one connection at a time by one
   event loop, so its last refusal waits for all before it: this is the worst case.

The server is pinned to core 0 and this client to core 1 when the machine has two.

    python bench/overload.py        # cap 128, 500 extra requests/s for 10 s, burst 1,000
    python bench/overload.py --cap 350 --rate 1000 --duration 30 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from launch import HOST, start_streamapi, stop

ITL_MS = 20


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2) if ordered else 0.0


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": _pct(values, 0.5),
        "p99": _pct(values, 0.99),
        "max": round(max(values), 2) if values else 0.0,
    }


def _chat_request(max_tokens: int) -> bytes:
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Explain queues"}],
            "stream": True,
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Accept: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class Outcomes:
    """Statuses and answer times of the extra (over-cap) requests of one phase."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.refused_ms: list[float] = []
        self.retry_after: set[str] = set()
        self.errors: list[str] = []

    def report(self) -> dict[str, object]:
        return {
            "statuses": dict(sorted(self.by_status.items())),
            "429_answer_ms": _summary(self.refused_ms),
            "retry_after_s": sorted(self.retry_after),
            "errors": self.errors[:3],
        }


async def _request(port: int, payload: bytes, outcomes: Outcomes) -> None:
    """One request over its own raw connection: httpx's pool, not the server, is the
    bottleneck at a thousand concurrent requests (1,000 GET /health take ~6 s through
    one httpx client and ~0.4 s this way on the same machine)."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        answered_ms = (time.perf_counter() - start) * 1000
        await reader.read()  # the rest, until the server closes
        writer.close()
    except (OSError, asyncio.IncompleteReadError) as exc:
        outcomes.errors.append(f"{type(exc).__name__}: {exc}")
        return
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    outcomes.by_status[status] = outcomes.by_status.get(status, 0) + 1
    if status == 429:
        outcomes.refused_ms.append(answered_ms)
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        outcomes.retry_after.add(headers.get("retry-after", ""))


async def _hold(port: int, payload: bytes, opened: asyncio.Queue[int]) -> None:
    """One of the streams that fill the cap: report its status once the head arrives,
    then read until the run cancels it (it is planned to outlast the run)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    opened.put_nowait(int(head.split(b" ", 2)[1]))
    try:
        await reader.read()
    finally:
        writer.close()


async def _probe_health(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    """GET /health every 50 ms over one keep-alive connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    request = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
    while not stop.is_set():
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        latencies.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.05)
    writer.close()


def _cpu_s(pid: int) -> float:
    """The process's user + system CPU time so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(pid: int, port: int, extra: asyncio.Task[None]) -> dict[str, object]:
    stop_probe = asyncio.Event()
    health: list[float] = []
    probe = asyncio.create_task(_probe_health(port, stop_probe, health))
    cpu_before, started = _cpu_s(pid), time.perf_counter()
    await extra
    wall_s, cpu_s = time.perf_counter() - started, _cpu_s(pid) - cpu_before
    stop_probe.set()
    await probe
    return {
        "health_ms": _summary(health),
        "wall_s": round(wall_s, 2),
        "server_cpu_pct": round(100 * cpu_s / wall_s, 1),
        "server_cpu_s": round(cpu_s, 2),
    }


async def _steady(port: int, rate: float, duration_s: float, outcomes: Outcomes) -> None:
    payload = _chat_request(16)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    count = int(rate * duration_s)
    for i in range(count):
        # Open loop: arrivals on a fixed schedule, whatever the answers take.
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_request(port, payload, outcomes)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


async def _burst(port: int, count: int, outcomes: Outcomes) -> None:
    payload = _chat_request(16)
    await asyncio.wait_for(
        asyncio.gather(*(_request(port, payload, outcomes) for _ in range(count))), timeout=60
    )


async def _run(
    pid: int, port: int, cap: int, rate: float, duration_s: float, burst: int
) -> dict[str, object]:
    # The cap's streams last the whole run: both phases, plus margin.
    hold_s = duration_s + 15
    hold_payload = _chat_request(int(hold_s * 1000 / ITL_MS))
    opened: asyncio.Queue[int] = asyncio.Queue()
    holders = [asyncio.create_task(_hold(port, hold_payload, opened)) for _ in range(cap)]
    held = [await asyncio.wait_for(opened.get(), timeout=30) for _ in range(cap)]
    steady = Outcomes()
    steady_phase = await _phase(
        pid, port, asyncio.create_task(_steady(port, rate, duration_s, steady))
    )
    burst_outcomes = Outcomes()
    burst_phase = await _phase(pid, port, asyncio.create_task(_burst(port, burst, burst_outcomes)))
    # Planned to outlast both phases: one that ended already was cut short.
    cut_short = sum(holder.done() for holder in holders)
    for holder in holders:
        holder.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    return {
        "cap": cap,
        "cap_streams_accepted": held.count(200),
        "cap_streams_cut_short": cut_short,
        "steady": {
            "rate_per_s": rate,
            "duration_s": duration_s,
            **steady.report(),
            **steady_phase,
        },
        "burst": {
            "requests": burst,
            **burst_outcomes.report(),
            **burst_phase,
        },
    }


def _pin_self_to_second_core() -> bool:
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {1})
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=int, default=128, help="--max-concurrent-requests")
    parser.add_argument("--rate", type=float, default=500.0, help="extra requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of steady overload")
    parser.add_argument("--burst", type=int, default=1000, help="extra requests at one instant")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    options = [
        "--max-concurrent-requests", str(args.cap),
        "--time-to-first-token-ms", "20", "--inter-token-latency-ms", str(ITL_MS),
        # Every held stream paced at ITL_MS, as in bench/run.py: the engine model's
        # batch slowdown and slot limit would leave the server half idle.
        "--load-factor", "0", "--max-num-seqs", "100000",
        "--log-level", "warning",
    ]  # fmt: skip
    pinned = _pin_self_to_second_core()
    server, base = start_streamapi(options, cpu=0 if pinned else None)
    port = int(base.rsplit(":", 1)[1])
    try:
        result = asyncio.run(_run(server.pid, port, args.cap, args.rate, args.duration, args.burst))
    finally:
        code = stop(server)
    result["server_exit_code"] = code
    result["pinned"] = pinned
    if not args.json:
        print(f"streamapi serve {' '.join(options)}  (server core 0, client core 1: {pinned})")
    print(json.dumps(result, indent=2))
    steady, burst = result["steady"], result["burst"]
    assert isinstance(steady, dict) and isinstance(burst, dict)
    failed = steady["errors"] or burst["errors"] or set(steady["statuses"]) - {429}
    held_ok = result["cap_streams_accepted"] == args.cap and result["cap_streams_cut_short"] == 0
    return 1 if failed or code != 0 or not held_ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
