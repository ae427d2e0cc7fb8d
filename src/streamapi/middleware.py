"""Pure-ASGI middleware: arrival time and request counts, request ids, browser origins, auth,
the body size limit.

Pure ASGI rather than ``BaseHTTPMiddleware`` so nothing sits between a stream
and the socket: the send wrapper only touches the response's start message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamapi import logs, scope_keys
from streamapi.errors import (
    APIError,
    AuthenticationError,
    ErrorDialects,
    PermissionDeniedError,
    RequestTooLargeError,
    render,
)
from streamapi.keys import KeyRing, Principal
from streamapi.metrics import Metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
# An id the client sent is echoed only if it cannot smuggle anything into a header.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class RequestMiddleware:
    """Every request's bookkeeping, in one layer: arrival, id, and count by route and status.

    ``scope_keys.ARRIVED_AT`` is the event loop's clock when the app got
    the request (its headers parsed, its body not yet read): the zero of the
    server-side latencies. ``scope_keys.REQUEST_ID`` is the client's
    ``X-Request-Id`` when it sent a sane one, else a new id; it goes back in the
    ``x-request-id`` header (where the OpenAI SDK reads it) and ``request-id``
    (Anthropic's). One layer rather than two because every event of a stream
    passes through each layer's ``send``.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            # CORS preflights are answered before the journal (or refused as any
            # method is): counted here, so that they show somewhere.
            self.metrics.unjournaled("preflight")
        state = scope.setdefault("state", {})
        state[scope_keys.ARRIVED_AT] = asyncio.get_running_loop().time()
        sent = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = sent if _SAFE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        state[scope_keys.REQUEST_ID] = request_id
        # For the log lines of this request's task and the tasks it starts; the
        # server runs each request in a task of its own, so nothing leaks.
        logs.request_id.set(request_id)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Encoded here, once: an open stream keeps only the id's string.
                sent_id = request_id.encode()
                ids = [(_REQUEST_ID_HEADER, sent_id), (b"request-id", sent_id)]
                message["headers"] = [*message.get("headers", []), *ids]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The server's send (``BodySendLayer``'s) holds the scope: a reference cycle,
            # left to the garbage collector (which serve runs rarely) unless broken here.
            scope.pop(scope_keys.BODY_SEND, None)
            route = scope.get("route")
            # Unmatched paths share one label: clients must not mint label values.
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request(template, scope["method"], status)


class BodySendLayer:
    """Leaves the server's own ``send`` in the scope (``scope_keys.BODY_SEND``) for a
    stream's body frames, which go to it directly.

    Every layer between the server and the route acts on a response's start only,
    or on an error status's body, which a stream's 200 never has: FastAPI's
    (``ServerErrorMiddleware``'s ``send`` wrapper, its exception telemetry and
    body limit), ours and Starlette's exception handling. ``bypass_layers``
    puts this outside all of them.
    """

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: the app's own is awaited in its place, so an open stream
        # keeps no frame of this layer. RequestMiddleware, inside, takes the key
        # out again when the request is over.
        if scope["type"] == "http":
            scope[scope_keys.BODY_SEND] = send
        return self.app(scope, receive, send)


def bypass_layers(app: Starlette) -> None:
    """Put ``BodySendLayer`` outside the middleware stack ``app`` builds (FastAPI's
    exception layers included), inside whatever the app itself does first."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return BodySendLayer(build())

    # Starlette builds its stack on the first request, by this method.
    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, before reading them when it can."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        dialects: ErrorDialects,
        on_error: Callable[[APIError], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.dialects = dialects
        self.on_error = on_error

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
            error = self._error()
            if self.on_error is not None:
                self.on_error(error)
            response = render(error, dialect, scope_keys.state_of(scope).get(scope_keys.REQUEST_ID))
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


# Where the docs pages' and the dashboard's scripts and styles are served.
DOCS_ASSETS = "/docs-assets"
DASHBOARD_ASSETS = "/dashboard/assets"
# Open without a key: probes, scrapes, the docs (as vLLM leaves them) and the
# dashboard's page and files, which hold no data (its events need the key).
OPEN_PATHS = frozenset(
    {
        "/health",
        "/ping",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/dashboard",
    }
)
OPEN_PREFIXES = (f"{DOCS_ASSETS}/", f"{DASHBOARD_ASSETS}/")


class OriginMiddleware:
    """Refuses a browser's request from an origin CORS does not allow: 403, before any work.

    Browsers send ``Origin`` on cross-origin requests, ``text/plain`` "simple"
    POSTs included, which they send without a preflight: CORS only hides the
    answer from the page, after the server has done the work. So a page on any
    site could drive a keyless server on the user's machine. Here such a
    request is refused before auth, the journal or the body. The server's own
    pages (``Origin`` naming the ``Host`` it was reached at) and the origins of
    ``--cors-allow-origins`` pass; SDKs and curl send no ``Origin`` and are not
    affected. A WebSocket handshake from a refused origin is closed (HTTP 403).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allow_origins: list[str],
        dialects: ErrorDialects,
        metrics: Metrics,
        on_error: Callable[[APIError], None] | None = None,
    ) -> None:
        self.app = app
        self.allow_any = "*" in allow_origins
        self.allow_origins = frozenset(o.rstrip("/").lower() for o in allow_origins)
        self.dialects = dialects
        self.metrics = metrics
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allow_any:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or self._allowed(origin.rstrip("/").lower(), headers):
            await self.app(scope, receive, send)
            return
        self.metrics.unjournaled("origin")
        logger.info(
            "%s %s -> 403 (origin not allowed)", scope.get("method", "WEBSOCKET"), scope["path"]
        )
        error = PermissionDeniedError(
            "Requests from this origin are not allowed: a browser page may call this server "
            "only from an origin in --cors-allow-origins.",
            code="origin_not_allowed",
        )
        if self.on_error is not None:
            self.on_error(error)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "Origin not allowed."})
            return
        dialect = self.dialects.for_request(
            scope["method"], scope["path"], headers.get("accept", "")
        )
        response = render(error, dialect, scope_keys.state_of(scope).get(scope_keys.REQUEST_ID))
        await response(scope, receive, send)

    def _allowed(self, origin: str, headers: Headers) -> bool:
        if origin in self.allow_origins:
            return True
        # Same origin: the server's own pages (the dashboard, /docs) call it.
        _, _, host = origin.partition("://")
        return bool(host) and host == headers.get("host", "").lower()


class AuthMiddleware:
    """Checks the API key on every route but ``OPEN_PATHS``, ``OPEN_PREFIXES`` and CORS
    preflights.

    The key is read from ``Authorization: Bearer <key>`` (OpenAI's SDKs) or
    ``x-api-key`` (Anthropic's). Without keys configured every request passes
    and whatever key a client sends is ignored (SDKs insist on sending one).
    A request without a valid key gets 401 in its route's error dialect; one
    with a valid key carries its ``Principal`` in ``scope_keys.PRINCIPAL``.
    Keys are never logged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        dialects: ErrorDialects,
        metrics: Metrics | None = None,
        on_error: Callable[[APIError], None] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.dialects = dialects
        self.metrics = metrics
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.keys.enabled:
            await self._websocket(scope, receive, send)
            return
        if (
            scope["type"] != "http"
            or not self.keys.enabled
            or scope["method"] == "OPTIONS"
            or scope["path"] in OPEN_PATHS
            or scope["path"].startswith(OPEN_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        principal = self._principal(headers)
        if principal is None:
            sent = bool(headers.get("authorization") or headers.get("x-api-key"))
            error = AuthenticationError(
                "Incorrect API key provided."
                if sent
                else "Missing API key: send it as "
                "'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
            logger.info(
                "%s %s -> 401 (%s key)", scope["method"], scope["path"], "wrong" if sent else "no"
            )
            if self.metrics is not None:
                self.metrics.unjournaled("unauthenticated")
            if self.on_error is not None:
                self.on_error(error)
            dialect = self.dialects.for_request(
                scope["method"], scope["path"], headers.get("accept", "")
            )
            response = render(error, dialect, scope_keys.state_of(scope).get(scope_keys.REQUEST_ID))
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[scope_keys.PRINCIPAL] = principal
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake without a valid key is refused (HTTP 403, close 1008)."""
        principal = self._principal(Headers(scope=scope))
        if principal is None:
            logger.info("WEBSOCKET %s -> 403 (no valid key)", scope["path"])
            if self.metrics is not None:
                self.metrics.unjournaled("unauthenticated")
            if self.on_error is not None:
                self.on_error(AuthenticationError("Missing or incorrect API key."))
            await send({"type": "websocket.close", "code": 1008, "reason": "Invalid API key."})
            return
        scope.setdefault("state", {})[scope_keys.PRINCIPAL] = principal
        await self.app(scope, receive, send)

    def _principal(self, headers: Headers) -> Principal | None:
        candidates = []
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            candidates.append(token.strip())
        api_key = headers.get("x-api-key", "").strip()
        if api_key:
            candidates.append(api_key)
        for candidate in candidates:
            principal = self.keys.authenticate(candidate)
            if principal is not None:
                return principal
        return None
