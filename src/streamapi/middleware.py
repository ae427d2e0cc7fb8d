"""Pure-ASGI middleware: request ids and the body size limit.

Pure ASGI rather than ``BaseHTTPMiddleware`` so nothing sits between a stream
and the socket: the send wrapper only touches the response's start message.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamapi.errors import ErrorDialects, RequestTooLargeError, render

REQUEST_ID_HEADER = "x-request-id"
# An id the client sent is echoed only if it cannot smuggle anything into a header.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class RequestIdMiddleware:
    """Gives every request an id (the client's ``X-Request-Id`` when it sent a sane one).

    The id is in ``request.state.request_id`` and in the response's
    ``x-request-id`` header, where the OpenAI SDK reads it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = sent if _SAFE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        # OpenAI's SDKs read x-request-id, Anthropic's request-id.
        headers = [
            (REQUEST_ID_HEADER.encode(), request_id.encode()),
            (b"request-id", request_id.encode()),
        ]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, before reading them when it can."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, dialects: ErrorDialects) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.dialects = dialects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            dialect = self.dialects.for_request(
                scope["method"], scope["path"], headers.get("accept", "")
            )
            response = render(self._error(), dialect, scope.get("state", {}).get("request_id"))
            await response(scope, receive, send)
            return
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, receive_with_limit, send)

    def _error(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"The request body is larger than the limit of {self.max_bytes} bytes.",
        )
