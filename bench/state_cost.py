"""The cost of shared state per request: one server's limits in its process or on Redis.

One-worker ``streamapi serve`` processes (``--latency-profile instant``) answer
non-streamed chat completions of 4 tokens under limits high enough to refuse
nothing, kept either in the process (no ``--state-url``) or on a
``redis-server`` this script starts on 127.0.0.1 (``--state-url``). Two sets:

- rate limit: ``--rate-limit-requests-per-minute`` and ``-tokens-per-minute``,
  one Lua call to Redis per request;
- rate limit, cap, journal: also ``--max-concurrent-requests`` (a lease taken,
  then given back) and ``--admin-key`` (the journal: an entry written when the
  request arrives and again when it ends), five calls per request.

All four servers run at once, idle but for the one measured, and each round
measures each in turn with a bounded httpx loop in this process: one request at
a time for latency (client-side p50 and p99; Redis's minus in-process is the
added latency), then ``--concurrency`` at once for requests per second. Rounds
are pooled. A table on stdout, progress on stderr. Nothing is pinned: Redis,
the servers and this client share the machine's cores.

    python bench/state_cost.py                     # about 1.5 minutes
    python bench/state_cost.py --duration 2 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from launch import start_redis, start_streamapi, stop

BODY = {
    "model": "sim-small",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 4,
    "stream": False,
}
# High enough that nothing is refused: the cost of counting, not of refusing.
HIGH = "100000000"
RATE_LIMIT = ("--rate-limit-requests-per-minute", HIGH, "--rate-limit-tokens-per-minute", HIGH)
EVERYTHING = (*RATE_LIMIT, "--max-concurrent-requests", HIGH, "--admin-key", "bench-admin")
COMMON = ("--latency-profile", "instant", "--log-level", "warning")
WARM_UP_REQUESTS = 50
TIMEOUT_S = 10.0


@dataclass
class Config:
    limits: str
    state: str
    options: tuple[str, ...]
    url: str = ""
    latencies_s: list[float] = field(default_factory=list)
    served: int = 0
    failed: int = 0
    busy_s: float = 0.0


@dataclass
class Phase:
    latencies_s: list[float]
    failed: int
    elapsed_s: float


async def drive(url: str, concurrency: int, duration_s: float) -> Phase:
    """``concurrency`` loops sending ``BODY`` until ``duration_s`` is up (each call bounded)."""
    latencies: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=limits) as client:
        deadline = time.perf_counter() + duration_s

        async def loop() -> None:
            nonlocal failed
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/chat/completions", json=BODY)
                except httpx.TransportError:
                    failed += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Phase(latencies, failed, elapsed)


async def warm_up(url: str) -> None:
    # First requests pay for lazy imports, scripts loaded into Redis and new connections.
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as client:
        for _ in range(WARM_UP_REQUESTS):
            (await client.post("/v1/chat/completions", json=BODY)).raise_for_status()


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(configs: list[Config], rounds: int, concurrency: int, duration_s: float) -> None:
    for config in configs:
        await warm_up(config.url)
    for round_ in range(1, rounds + 1):
        for config in configs:
            alone = await drive(config.url, 1, duration_s)
            loaded = await drive(config.url, concurrency, duration_s)
            config.latencies_s += alone.latencies_s
            config.served += len(loaded.latencies_s)
            config.busy_s += loaded.elapsed_s
            config.failed += alone.failed + loaded.failed
            sys.stderr.write(
                f"  round {round_}, {config.limits}, {config.state}: "
                f"p99 {percentile(alone.latencies_s, 99) * 1000:.2f} ms, "
                f"{len(loaded.latencies_s) / loaded.elapsed_s:,.0f} requests/s\n"
            )


def table(configs: list[Config], concurrency: int, duration_s: float, rounds: int) -> str:
    lines = [
        f"Non-streamed chat, 4 tokens, --latency-profile instant; latency one request at a "
        f"time, requests/s {concurrency} at once; {rounds} round(s) of {duration_s:g} s each; "
        f"{os.cpu_count()} cores, nothing pinned.",
        "",
        "| limits | state | requests/s | ÷ in process | p50 ms | p99 ms | p50 added ms "
        "| p99 added ms | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    local: dict[str, Config] = {c.limits: c for c in configs if c.state == "in process"}
    for config in configs:
        base = local[config.limits]
        rate = config.served / config.busy_s
        p50, p99 = (percentile(config.latencies_s, q) * 1000 for q in (50, 99))
        base_p50, base_p99 = (percentile(base.latencies_s, q) * 1000 for q in (50, 99))
        lines.append(
            f"| {config.limits} | {config.state} | {rate:,.0f} "
            f"| {rate / (base.served / base.busy_s):.2f}x | {p50:.2f} | {p99:.2f} "
            f"| {p50 - base_p50:+.2f} | {p99 - base_p99:+.2f} | {config.failed} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds a phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the servers")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="streamapi-state-cost-") as workdir,
        ExitStack() as stack,
    ):
        redis, state_url = start_redis(Path(workdir))
        stack.callback(stop, redis)
        configs = []
        for limits, options in (
            ("rate limit", RATE_LIMIT),
            ("rate limit, cap, journal", EVERYTHING),
        ):
            configs.append(Config(limits, "in process", options))
            shared = ("--state-url", state_url, "--state-prefix", f"bench{len(configs)}:")
            configs.append(Config(limits, "Redis", (*options, *shared)))
        for i, config in enumerate(configs):
            log = Path(workdir) / f"server-{i}.log"
            process, config.url = start_streamapi((*COMMON, *config.options), log=log)
            stack.callback(stop, process)
        asyncio.run(measure(configs, args.rounds, args.concurrency, args.duration))
    print(table(configs, args.concurrency, args.duration, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
