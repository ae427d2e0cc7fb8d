"""What the in-process state costs a request: rate limits, a concurrency cap, stored Responses.

The app runs in this process (no server, no sockets): each request is one ASGI call
with a scope of its own, its lifespan state copied as uvicorn copies it, at the
``instant`` latency. Three workloads, each ``--requests`` requests a round, over
``--rounds`` rounds:

- ``chat``: non-streamed chat completions of 4 tokens, with no limits (the baseline);
- ``chat, limits``: the same under a rate limit (requests and tokens) and a
  concurrency cap, high enough to refuse nothing: a bucket take and a lease per request;
- ``responses``: non-streamed Responses of 4 tokens, each continuing the first
  (``previous_response_id``): one stored Response read and one written per request.

It prints, per request, the CPU time (the process's, the least of the rounds: noise
only adds) and the Python function calls (counted by ``cProfile`` in a pass of its
own: the same on a loaded machine as on a quiet one), and what ``chat, limits``
adds to ``chat``. It imports nothing but ``create_app`` and ``Settings``, so the
same file measures any build:

    python bench/local_state_cost.py
    python bench/local_state_cost.py --requests 500 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streamapi.app import create_app
from streamapi.settings import Settings

HIGH = 100_000_000
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}


def _settings(limits: bool) -> Settings:
    values: dict[str, Any] = {"latency_profile": "instant", "seed": 1}
    if limits:
        values |= {
            "rate_limit_requests_per_minute": HIGH,
            "rate_limit_tokens_per_minute": HIGH,
            "max_concurrent_requests": HIGH,
        }
    return Settings(**values)


Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _workload(
    limits: bool, run: Callable[[Call, int], Awaitable[None]], n: int, *, calls: bool = False
) -> float:
    """CPU seconds per request for ``n`` requests made by ``run`` (with ``calls``, Python
    function calls per request instead)."""
    app = create_app(_settings(limits))
    async with app.router.lifespan_context(app) as state:

        async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            raw = json.dumps(body).encode()
            sent: list[bytes] = []
            status = 0
            done = False

            async def receive() -> dict[str, Any]:
                nonlocal done
                if not done:
                    done = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                await asyncio.Event().wait()  # never: the answer is whole before this
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                else:
                    sent.append(message.get("body", b""))

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [
                    (b"host", b"bench"),
                    (b"content-type", b"application/json"),
                    (b"accept", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                ],
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
                "state": dict(state or {}),
            }
            await app(scope, receive, send)  # type: ignore[arg-type]
            if status != 200:
                raise RuntimeError(f"{path} answered {status}: {b''.join(sent)[:200]!r}")
            answer: dict[str, Any] = json.loads(b"".join(sent))
            return answer

        await run(call, 50)  # warm up: imports, caches, first allocations
        if calls:
            profile = cProfile.Profile()
            profile.enable()
            await run(call, n)
            profile.disable()
            return pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined,no-any-return]
        started = time.process_time()
        await run(call, n)
        return (time.process_time() - started) / n


async def _chats(call: Call, n: int) -> None:
    for _ in range(n):
        await call("/v1/chat/completions", CHAT)


async def _responses(call: Call, n: int) -> None:
    body: dict[str, Any] = {"model": "sim-small", "input": "Say hi", "max_output_tokens": 4}
    # Each continues the first: a conversation of one size, however many requests.
    first = (await call("/v1/responses", body))["id"]
    for _ in range(n):
        await call("/v1/responses", {**body, "previous_response_id": first})


async def _main(requests: int, rounds: int) -> None:
    workloads = {
        "chat": (False, _chats),
        "chat, limits": (True, _chats),
        "responses": (False, _responses),
    }
    best: dict[str, float] = {}
    for number in range(rounds):
        for name, (limits, run) in workloads.items():
            cost = await _workload(limits, run, requests)
            best[name] = min(best.get(name, cost), cost)
        print(f"round {number + 1} of {rounds} done", flush=True)
    calls = {
        name: await _workload(limits, run, requests, calls=True)
        for name, (limits, run) in workloads.items()
    }
    print(f"{'workload':<14} {'CPU µs per request':>20} {'Python calls per request':>26}")
    for name, cost in best.items():
        print(f"{name:<14} {1e6 * cost:>20.1f} {calls[name]:>26.1f}")
    added = 1e6 * (best["chat, limits"] - best["chat"])
    print(
        f"a rate limit and a cap add {added:.1f} µs and "
        f"{calls['chat, limits'] - calls['chat']:.1f} calls per request "
        f"({requests} requests a round, {rounds} rounds)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(_main(args.requests, args.rounds))


if __name__ == "__main__":
    main()
