"""The coroutine frames an open stream's request keeps alive, layer by layer.

A streamed response's frames are sent from a task of their own, but the request's
task awaits that task through every layer of the server's app (FastAPI's, Starlette's,
our middleware, the route): each layer's coroutine frame, and what its locals hold,
stay alive for the stream's whole life. This script runs the app in-process (no
server, no network), opens one paced chat-completion stream, and once its first
frame is out walks the request task's await chain: one line per coroutine, outermost
first, with its frame's size (``sys.getsizeof``), then the count and the total. The
figures do not depend on the machine's load.

    python bench/request_frames.py
    python bench/request_frames.py --cors-allow-origins https://app.example
    python bench/request_frames.py --bare
    PYTHONPATH=<another tree>/src python bench/request_frames.py   # another commit's app
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import MutableMapping
from typing import Any

from asgi_scope import http_scope, receiver

from streamapi.app import create_app
from streamapi.middleware import ServeLaterLayer
from streamapi.settings import Settings

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


def await_chain(task: asyncio.Task[Any]) -> list[tuple[str, int]]:
    """(qualified name, frame bytes) of each coroutine ``task`` awaits through, outermost first."""
    chain = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        frame = coro.cr_frame
        module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
        size = sys.getsizeof(frame) if frame is not None else 0
        chain.append((f"{module}.{coro.__qualname__}", size))
        coro = coro.cr_await
    return chain


async def main(cors_allow_origins: list[str], *, bare: bool) -> None:
    settings = Settings(
        served_model_names=["sim"],
        time_to_first_token_ms=0,
        inter_token_latency_ms=60_000,
        cors_allow_origins=cors_allow_origins,
    )
    app = create_app(settings)
    served = app if bare else ServeLaterLayer(app)  # as cli.serve runs it
    first_frame = asyncio.Event()
    leave = asyncio.Event()
    receive = receiver(json.dumps(CHAT).encode(), leave)

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            first_frame.set()

    async with app.router.lifespan_context(app) as state:
        request = asyncio.create_task(
            served(http_scope("POST", "/v1/chat/completions", state or {}), receive, send)
        )
        await asyncio.wait_for(first_frame.wait(), timeout=10)
        chain = await_chain(request)
        leave.set()
        await asyncio.wait_for(request, timeout=10)
    for name, size in chain:
        print(f"{size:6,} B  {name}")
    total = sum(size for _, size in chain)
    print(f"{len(chain)} coroutine frames, {total:,} bytes of frames, in the request's task")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cors-allow-origins", nargs="*", default=[])
    parser.add_argument("--bare", action="store_true", help="the app alone, not as served")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.cors_allow_origins, bare=arguments.bare))
