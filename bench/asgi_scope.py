"""The ASGI scope and ``receive`` of a request to an app run in-process, for the bench scripts.

Standard library only: `idle_memory.py` imports it into the interpreter it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

HOST = "127.0.0.1"


def http_scope(
    method: str, path: str, state: Mapping[str, Any], *, body_bytes: int | None = None
) -> dict[str, Any]:
    """The ASGI scope of one JSON request to an app run in-process (no server): what
    uvicorn would pass, with ``state`` copied from the lifespan as a server does."""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    if body_bytes is not None:
        headers.append((b"content-length", str(body_bytes).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (HOST, 50000),
        "server": (HOST, 8000),
        "state": dict(state),
    }


def receiver(body: bytes, leave: asyncio.Event) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``receive`` for one request: its body, then, once ``leave`` is set, the client gone
    (what a server answers once the response is complete, or its client has left)."""
    pending = [{"type": "http.request", "body": body}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await leave.wait()
        return {"type": "http.disconnect"}

    return receive
