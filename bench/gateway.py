"""The gateway's overhead: the same upstream, direct and through a gateway, in one run.

Starts a streamapi simulator as the upstream and a second streamapi in front
of it (a routes file sending ``gw-model`` to the upstream's ``up-model``),
both as real processes on 127.0.0.1, then streams the same requests to both,
alternating, and prints client-side time to first token and tokens/s with the
ratios gateway / direct. Two upstream profiles: ``instant`` (no simulated
latency, so the ratios show the gateway's own cost at its largest) and the
default pacing (100 ms TTFT, 5 ms a token, like a real engine).

    python bench/gateway.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from launch import start_streamapi, stop

QUESTION = [{"role": "user", "content": "Explain how DNS caching works"}]


def start(options: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_streamapi(["--log-level", "warning", *options], log=log)


@dataclass
class Sample:
    ttft_s: float
    decode_s: float
    tokens: int
    e2e_s: float


async def one(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> Sample:
    body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}  # fmt: skip
    sent = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return Sample(first - sent, last - first, tokens, last - sent)


@dataclass
class Summary:
    ttft_ms: float
    tokens_per_s: float
    aggregate_tokens_per_s: float


async def run(url: str, model: str, *, concurrency: int, rounds: int, max_tokens: int) -> Summary:
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await one(client, url, model, 4)  # warm the connections up
        started = time.perf_counter()
        for _ in range(rounds):
            batch = [one(client, url, model, max_tokens) for _ in range(concurrency)]
            samples += await asyncio.gather(*batch)
        wall = time.perf_counter() - started
    return Summary(
        ttft_ms=statistics.median(s.ttft_s for s in samples) * 1000,
        tokens_per_s=statistics.median((s.tokens - 1) / s.decode_s for s in samples),
        aggregate_tokens_per_s=sum(s.tokens for s in samples) / wall,
    )


SCENARIOS = [
    # (upstream profile, concurrent streams, rounds, max_tokens)
    ("instant", 1, 40, 200),
    ("instant", 16, 4, 200),
    ("default", 1, 6, 100),
    ("default", 16, 2, 100),
]


async def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="streamapi-bench-"))
    print(f"{'upstream':<9} {'streams':>7}  {'TTFT ms direct':>14} {'gateway':>8} {'ratio':>6}"
          f"  {'tok/s direct':>12} {'gateway':>8} {'ratio':>6}"
          f"  {'agg tok/s direct':>16} {'gateway':>8} {'ratio':>6}")  # fmt: skip
    for profile in ("instant", "default"):
        upstream, up_url = start(
            ["--latency-profile", profile, "--served-model-names", "up-model"],
            folder / f"upstream-{profile}.log",
        )
        routes = folder / f"routes-{profile}.yaml"
        routes.write_text(
            json.dumps(
                {
                    "upstreams": {"up": {"base_url": up_url + "/v1"}},
                    "models": {"gw-model": {"upstream": "up", "upstream_model": "up-model"}},
                }
            )
        )
        gateway, gw_url = start(["--routes-file", str(routes)], folder / f"gw-{profile}.log")
        try:
            for name, concurrency, rounds, max_tokens in SCENARIOS:
                if name != profile:
                    continue
                direct = gated = None
                # Alternate so that drift on a shared machine hits both sides alike.
                for _ in range(2):
                    d = await run(up_url, "up-model", concurrency=concurrency,
                                  rounds=rounds // 2, max_tokens=max_tokens)  # fmt: skip
                    g = await run(gw_url, "gw-model", concurrency=concurrency,
                                  rounds=rounds // 2, max_tokens=max_tokens)  # fmt: skip
                    direct = d if direct is None else _mean(direct, d)
                    gated = g if gated is None else _mean(gated, g)
                assert direct is not None and gated is not None
                print(
                    f"{profile:<9} {concurrency:>7}  {direct.ttft_ms:>14.2f} "
                    f"{gated.ttft_ms:>8.2f} {gated.ttft_ms / direct.ttft_ms:>6.2f}"
                    f"  {direct.tokens_per_s:>12.0f} {gated.tokens_per_s:>8.0f} "
                    f"{gated.tokens_per_s / direct.tokens_per_s:>6.2f}"
                    f"  {direct.aggregate_tokens_per_s:>16.0f} "
                    f"{gated.aggregate_tokens_per_s:>8.0f} "
                    f"{gated.aggregate_tokens_per_s / direct.aggregate_tokens_per_s:>6.2f}"
                )
        finally:
            stop(gateway)
            stop(upstream)


def _mean(a: Summary, b: Summary) -> Summary:
    return Summary(
        (a.ttft_ms + b.ttft_ms) / 2,
        (a.tokens_per_s + b.tokens_per_s) / 2,
        (a.aggregate_tokens_per_s + b.aggregate_tokens_per_s) / 2,
    )


if __name__ == "__main__":
    asyncio.run(main())
