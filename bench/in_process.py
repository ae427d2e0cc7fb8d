"""Python's CPU per paced event and per request, in process, beside the ceiling's.

A server's CPU per event mixes the kernel's socket writes, uvicorn's HTTP, the load
generator's pull on the same machine, and the app. This script runs the app alone:
N paced chat streams (one token every ``--itl-ms``, a new 32-word prompt each, usage
asked for) through the ASGI app in this process, with a ``send`` that only counts, on
uvloop and inside a ``middleware.ServeLaterLayer`` as ``streamapi serve`` runs. The same
load runs against the raw-ASGI ceiling (``bench/servers/ceiling.py``) for a baseline taken
the same way.

Each run's CPU (process time over the measured window, after a ramp-up) is divided
by the events sent. Runs at two stream lengths (``--tokens``, 16 and 64 by default)
split it into what each event costs and what each request costs, spread over its
events: per event = e + r / n for n events a request, solved from the two lengths.
The runs alternate (lengths, apps) for ``--rounds`` rounds; medians are printed,
with every run.

    python bench/in_process.py
    python bench/in_process.py --streams 400 --rounds 5
    PYTHONPATH=<another tree>/src python bench/in_process.py --apps streamapi

Pin it to one core (``taskset -c 0``) on a quiet machine; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvloop
from asgi_scope import http_scope, receiver

from streamapi.app import create_app
from streamapi.bench.runner import _WORDS as WORDS  # the bench's prompts: 32 of these words
from streamapi.middleware import ServeLaterLayer
from streamapi.settings import Settings

sys.path.insert(0, str(Path(__file__).parent / "servers"))
import ceiling  # a script of its own, beside this one

App = Callable[..., Any]
RAMP_S = 1.3  # arrivals spread over this, then as long again before measuring


@contextlib.asynccontextmanager
async def _streamapi(itl_ms: float) -> AsyncIterator[tuple[App, dict[str, Any]]]:
    settings = Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=itl_ms,
        load_factor=0,
        max_num_seqs=100_000,
        max_waiting_requests=100_000,
        log_level="warning",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        # As `streamapi serve` does once started: the start-up heap out of the collector's way.
        gc.collect()
        gc.freeze()
        yield ServeLaterLayer(app), dict(state or {})  # as cli.serve runs it


@contextlib.asynccontextmanager
async def _ceiling(itl_ms: float) -> AsyncIterator[tuple[App, dict[str, Any]]]:
    # Its first token a tick after the request, as ours with no time to first token.
    yield ceiling.create_app(ttft_ms=itl_ms, itl_ms=itl_ms), {}


APPS = {"streamapi": _streamapi, "ceiling": _ceiling}


async def _run(
    app: App, state: dict[str, Any], streams: int, tokens: int, seconds: float, seed: int
) -> tuple[float, int, int]:
    """(CPU seconds, events, requests) over the window after the ramp."""
    rng = random.Random(seed)
    counts = {"events": 0, "requests": 0}
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        prompt = " ".join(rng.choices(WORDS, k=32))
        body = json.dumps(
            {
                "model": "sim",
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
                "max_tokens": tokens,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        done = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                counts["events"] += 1
                if not message.get("more_body", False):
                    done.set()

        scope = http_scope("POST", "/v1/chat/completions", state, body_bytes=len(body))
        await app(scope, receiver(body, done), send)
        counts["requests"] += 1

    async def client(delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        while time.monotonic() < stop_at:
            await one()

    clients = [asyncio.create_task(client(RAMP_S * i / streams)) for i in range(streams)]
    await asyncio.sleep(2 * RAMP_S)
    events, requests, cpu = counts["events"], counts["requests"], time.process_time()
    await asyncio.sleep(seconds - 3 * RAMP_S)
    cpu = time.process_time() - cpu
    events, requests = counts["events"] - events, counts["requests"] - requests
    await asyncio.wait_for(asyncio.gather(*clients), timeout=seconds + 60)
    return cpu, events, requests


def _split(runs: dict[int, list[tuple[float, int, int]]]) -> tuple[float, float]:
    """(µs per event, µs per request) from the medians at two lengths: c = e + r / n."""
    (_, runs1), (_, runs2) = sorted(runs.items())[:2]
    c1 = statistics.median(cpu / events for cpu, events, _ in runs1) * 1e6
    c2 = statistics.median(cpu / events for cpu, events, _ in runs2) * 1e6
    # Events a request, as measured (a request's frames go out in as many events).
    e1 = statistics.median(events / requests for _, events, requests in runs1)
    e2 = statistics.median(events / requests for _, events, requests in runs2)
    per_request = (c1 - c2) / (1 / e1 - 1 / e2)
    return c2 - per_request / e2, per_request


async def main(args: argparse.Namespace) -> None:
    results: dict[str, dict[int, list[tuple[float, int, int]]]] = {}
    for round_ in range(args.rounds):
        apps = args.apps if round_ % 2 == 0 else args.apps[::-1]
        for name in apps:
            async with APPS[name](args.itl_ms) as (app, state):
                for tokens in args.tokens if round_ % 2 == 0 else args.tokens[::-1]:
                    cpu, events, requests = await _run(
                        app, state, args.streams, tokens, args.seconds, seed=round_
                    )
                    results.setdefault(name, {}).setdefault(tokens, []).append(
                        (cpu, events, requests)
                    )
                    print(
                        f"  {name:<9} {tokens:>4} tokens: {cpu / events * 1e6:6.2f} µs an event"
                        f" ({events:,} events, {requests:,} requests, {cpu:.2f} s CPU)",
                        file=sys.stderr,
                        flush=True,
                    )
    print(f"{args.streams} paced streams, one token every {args.itl_ms:g} ms, in process")
    print(
        f"{'app':<10} {'µs an event (median), by length':<34} {'per event':>10} {'per request':>12}"
    )
    split = {}
    for name, runs in results.items():
        medians = ", ".join(
            f"{n}: {statistics.median(c / e for c, e, _ in rs) * 1e6:.2f}" for n, rs in runs.items()
        )
        split[name] = per_event, per_request = _split(runs)
        print(f"{name:<10} {medians:<34} {per_event:8.2f} µs {per_request:9.1f} µs")
    if "streamapi" in split and "ceiling" in split:
        ours, base = split["streamapi"], split["ceiling"]
        print(f"streamapi per event: {ours[0] / base[0]:.2f}x the ceiling's")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--tokens", type=int, nargs=2, default=[16, 64])
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="each run's length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--apps", nargs="+", choices=sorted(APPS), default=["streamapi", "ceiling"])
    arguments = parser.parse_args()
    if len(set(arguments.tokens)) != 2 or min(arguments.tokens) < 1:
        parser.error("--tokens takes two different lengths (the split needs both)")
    if arguments.seconds <= 3 * RAMP_S:
        parser.error(f"--seconds must be over {3 * RAMP_S:g} (the ramp, then the window)")
    uvloop.run(main(arguments))
