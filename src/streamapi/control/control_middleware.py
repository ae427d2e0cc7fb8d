"""Pure-ASGI middleware for the generation routes: journal entries and rate-limit headers.

It opens each request's journal entry before the route runs and closes it when
the response has ended (whatever ended it), and adds the rate-limit headers
that ``Control.plan`` computed to the response's start, errors included. Only
the start message is changed; body messages pass through untouched (an error
body is also read, to journal why the request failed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamapi import scope_keys
from streamapi.control.hooks import Control
from streamapi.control.rules import ENDPOINT_PATHS

# Enough of an error body to read its type, code and message.
_ERROR_BODY_BYTES = 65_536


class ControlMiddleware:
    """Journals requests to the generation routes and adds their ``x-ratelimit-*`` headers."""

    def __init__(self, app: ASGIApp, *, control: Control) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINT_PATHS.get(scope.get("path", ""))
        journal = self.control.journal
        # Without a journal or limits there is nothing to add: stay out of every send.
        # Preflights are not journaled (auth, outside this layer, already keeps out
        # requests without a valid key): RequestMiddleware counts them.
        if (
            scope["type"] != "http"
            or endpoint is None
            or scope["method"] == "OPTIONS"
            or (journal is None and not self.control.limiter.enabled)
        ):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        loop = asyncio.get_running_loop()
        entry = None
        if journal is not None:
            entry = journal.open(
                method=scope["method"],
                path=scope["path"],
                endpoint=endpoint,
                arrived_at=scope_keys.arrival_time(scope),
            )
            entry.request_id = state.get(scope_keys.REQUEST_ID)
            state[scope_keys.JOURNAL_ENTRY] = entry
            await journal.opened(entry)
        status = 0
        error_body = bytearray()

        async def send_with_control(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra: dict[str, str] | None = state.get(scope_keys.RATELIMIT_HEADERS)
                if extra:
                    headers = list(message.get("headers", []))
                    present = {bytes(name).lower() for name, _ in headers}
                    headers += [
                        (name.encode(), value.encode())
                        for name, value in extra.items()
                        if name.encode() not in present
                    ]
                    message["headers"] = headers
            elif status >= 400 and entry is not None and len(error_body) < _ERROR_BODY_BYTES:
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_control)
        finally:
            if entry is not None and journal is not None:
                entry.close(status, bytes(error_body), loop.time())
                await journal.closed(entry)
