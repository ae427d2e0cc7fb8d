"""Soak: mixed traffic against a real `streamapi serve` for a while, watching for leaks.

Starts a server on 127.0.0.1 (a free port), then keeps a bounded number of
clients busy with a mix of requests: streams read to the end, streams dropped at
a random point (before the first token too), whole completions, Responses and
Anthropic streams, embeddings, and bad requests. Every few seconds it samples
the server process's resident memory and open file descriptors (from /proc),
its asyncio task count and requests in flight (GET /load), and the latency of
GET /health, and it prints one line per sample, then a summary. After the load
it waits for the server to settle and checks that nothing was left behind.

    python bench/soak.py --duration 60          # what CI runs
    python bench/soak.py --duration 1800        # the documented run (docs/reliability.md)

It measures; it asserts only that no request got a 5xx or a broken stream, and
exits 1 if one did or if something was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from launch import start_streamapi, stop


@dataclass
class Tally:
    """What the clients saw."""

    kinds: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)

    def count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def _proc(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open file descriptors of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


CHAT = "/v1/chat/completions"


def _chat(stream: bool, rng: random.Random) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": f"Explain topic {rng.randrange(1000)}"}],
        "max_tokens": rng.choice([16, 64, 200]),
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _stream_to_end(client: httpx.AsyncClient, path: str, body: object, tally: Tally) -> None:
    async with client.stream("POST", path, json=body) as response:
        text = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
    ended = (
        text.endswith("data: [DONE]\n\n")
        or "event: message_stop" in text
        or "event: response.completed" in text
    )
    errored = 'data: {"error"' in text or "event: error" in text
    if response.status_code != 200 or not ended or errored:
        tally.failures.append(f"{path} {response.status_code} {text[-200:]!r}")


async def _stream_and_drop(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    events = rng.randrange(0, 20)
    async with client.stream("POST", CHAT, json=_chat(True, rng)) as response:
        seen = 0
        async for _ in response.aiter_lines():
            seen += 1
            if seen > events:
                break  # leaving the block closes the connection mid-stream


async def _one(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    roll = rng.random()
    if roll < 0.40:
        tally.count("stream")
        await _stream_to_end(client, CHAT, _chat(True, rng), tally)
    elif roll < 0.60:
        tally.count("dropped stream")
        await _stream_and_drop(client, rng, tally)
    elif roll < 0.70:
        tally.count("whole")
        response = await client.post(CHAT, json=_chat(False, rng))
        if response.status_code != 200:
            tally.failures.append(f"whole {response.status_code}")
    elif roll < 0.77:
        tally.count("responses stream")
        body = {"input": "Explain DNS", "stream": True, "max_output_tokens": 2000}
        await _stream_to_end(client, "/v1/responses", body, tally)
    elif roll < 0.84:
        tally.count("anthropic stream")
        body = {
            "model": "sim-small",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "Explain TCP"}],
        }
        await _stream_to_end(client, "/v1/messages", body, tally)
    elif roll < 0.90:
        tally.count("embeddings")
        response = await client.post("/v1/embeddings", json={"input": ["a", "b"]})
        if response.status_code != 200:
            tally.failures.append(f"embeddings {response.status_code}")
    else:
        tally.count("bad request")
        response = await client.post(
            CHAT, content=b'{"messages": [', headers={"Accept": "application/json"}
        )
        if response.status_code != 400:
            tally.failures.append(f"bad request got {response.status_code}")


async def _worker(base: str, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while time.monotonic() < deadline:
            try:
                await _one(client, rng, tally)
            except httpx.HTTPError as exc:
                tally.failures.append(f"{type(exc).__name__}: {exc}")


async def _probe_health(base: str, start: float, deadline: float, tally: Tally) -> None:
    """GET /health four times a second, after a two-second warm-up, while the load runs."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        await asyncio.sleep(max(0.0, start + 2 - time.monotonic()))
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            await client.get("/health")
            tally.health_ms.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.25)


async def _sampler(
    base: str,
    pid: int,
    start: float,
    deadline: float,
    every_s: float,
    rows: list[dict[str, float]],
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while True:
            load = (await client.get("/load")).json()
            rss, fds = _proc(pid)
            row = {
                "t_s": round(time.monotonic() - start, 1),
                "rss_mib": round(rss / 1024, 1),
                "fds": fds,
                "tasks": load["tasks"],
                "in_flight": load["server_load"],
            }
            rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(every_s)


async def _soak(
    base: str, pid: int, duration_s: float, clients: int, every_s: float
) -> tuple[Tally, list[dict[str, float]]]:
    tally = Tally()
    rows: list[dict[str, float]] = []
    start = time.monotonic()
    deadline = start + duration_s
    await asyncio.gather(
        _sampler(base, pid, start, deadline, every_s, rows),
        _probe_health(base, start, deadline, tally),
        *(_worker(base, seed, deadline, tally) for seed in range(clients)),
    )
    return tally, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    log = Path(tempfile.mkdtemp()) / "soak-server.log"
    server, base = start_streamapi(
        [
            "--time-to-first-token-ms",
            "20",
            "--inter-token-latency-ms",
            "2",
            "--log-level",
            "warning",
        ],
        log=log,
    )
    try:
        warm_rss, warm_fds = _proc(server.pid)
        tally, rows = asyncio.run(
            _soak(base, server.pid, args.duration, args.clients, args.sample_every)
        )
        time.sleep(2)  # let dropped connections finish closing
        load = httpx.get(f"{base}/load", timeout=5).json()
        end_rss, end_fds = _proc(server.pid)
    finally:
        stop(server)
    errors = log.read_text(errors="replace")
    tracebacks = errors.count("Traceback")
    peak_rss = max(row["rss_mib"] for row in rows)
    health = sorted(tally.health_ms)
    result = {
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": tally.kinds,
        "total_requests": sum(tally.kinds.values()),
        "failures": len(tally.failures),
        "failure_examples": tally.failures[:5],
        "rss_mib": {
            "warm": round(warm_rss / 1024, 1),
            "peak": peak_rss,
            "after": round(end_rss / 1024, 1),
        },
        "open_fds": {"warm": warm_fds, "after": end_fds},
        "after_load": load,
        "health_ms": {
            "p50": round(statistics.median(health), 2),
            "p99": round(health[min(len(health) - 1, int(len(health) * 0.99))], 2),
            "max": round(health[-1], 2),
        },
        "server_tracebacks": tracebacks,
        "exit_code": server.returncode,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\nsummary")
        for key, value in result.items():
            print(f"  {key}: {value}")
    leaked = load["server_load"] != 0 or end_fds > warm_fds + 2
    return 1 if tally.failures or tracebacks or leaked or server.returncode != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
