"""Overload: far more streams than the engine takes; refusals must be fast and /health must answer.

Starts `streamapi serve` on 127.0.0.1 with a small engine (`--max-num-seqs`,
`--max-waiting-requests`), opens many streams at once, and reports how many got
200 and how many 429, how long a 429 took to arrive (with its Retry-After), and
the latency of GET /health probed four times a second while the server is
saturated.

    python bench/overload.py                       # 1,000 streams against 64 + 64 places
    python bench/overload.py --streams 2000 --max-num-seqs 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
from launch import HOST, start_streamapi, stop


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2) if ordered else 0.0


async def _stream(port: int, outcomes: list[tuple[int, float, str]]) -> None:
    """One streamed request over a raw connection: httpx's pool, not the server, is the
    bottleneck at a thousand concurrent requests (1,000 GET /health take ~6 s through
    one httpx client and ~0.4 s this way on the same machine)."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Explain queues"}],
            "stream": True,
            "max_tokens": 64,
            "ignore_eos": True,
        }
    ).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Accept: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    answered_ms = (time.perf_counter() - start) * 1000
    await reader.read()  # the rest of the stream, until the server closes
    writer.close()
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    outcomes.append((status, answered_ms, headers.get("retry-after", "")))


async def _probe(base: str, stop: asyncio.Event, latencies: list[float], errors: list[str]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await client.get("/health")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                latencies.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.25)


async def _run(base: str, port: int, streams: int) -> dict[str, object]:
    outcomes: list[tuple[int, float, str]] = []
    health: list[float] = []
    health_errors: list[str] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(base, stop, health, health_errors))
    started = time.perf_counter()
    await asyncio.gather(*(_stream(port, outcomes) for _ in range(streams)))
    elapsed = time.perf_counter() - started
    stop.set()
    await probe
    refused = [ms for status, ms, _ in outcomes if status == 429]
    accepted = [ms for status, ms, _ in outcomes if status == 200]
    return {
        "streams": streams,
        "ok_200": len(accepted),
        "refused_429": len(refused),
        "other": len(outcomes) - len(accepted) - len(refused),
        "retry_after_s": sorted({r for s, _, r in outcomes if s == 429}),
        "429_answer_ms": {"p50": _pct(refused, 0.5), "p99": _pct(refused, 0.99)},
        "200_headers_ms": {"p50": _pct(accepted, 0.5), "p99": _pct(accepted, 0.99)},
        "health_ms": {
            "probes": len(health),
            "p50": round(statistics.median(health), 2) if health else 0.0,
            "p99": _pct(health, 0.99),
            "max": round(max(health), 2) if health else 0.0,
            "errors": health_errors[:3],
        },
        "wall_s": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-waiting-requests", type=int, default=64)
    args = parser.parse_args(argv)
    server, base = start_streamapi(
        [
            "--max-num-seqs", str(args.max_num_seqs),
            "--max-waiting-requests", str(args.max_waiting_requests),
            "--time-to-first-token-ms", "50", "--inter-token-latency-ms", "20",
            "--log-level", "warning",
        ]
    )  # fmt: skip
    port = int(base.rsplit(":", 1)[1])
    try:
        result = asyncio.run(_run(base, port, args.streams))
    finally:
        stop(server)
    print(json.dumps(result, indent=2))
    return 0 if result["other"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
