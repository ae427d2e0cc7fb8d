"""The one pure-ASGI middleware every request passes, and the checks it makes.

An HTTP request meets, in this order:

1. its arrival time and id (``scope_keys.ARRIVED_AT``, ``scope_keys.REQUEST_ID``; the
   id goes back in ``x-request-id`` and ``request-id``);
2. the browser-origin check: 403 before any work (a WebSocket: close 1008);
3. Starlette's ``CORSMiddleware``, only with ``--cors-allow-origins`` (see below);
4. auth: 401 in the route's error dialect, else the principal in ``scope_keys.PRINCIPAL``;
5. on the generation routes, the journal entry and the ``x-ratelimit-*`` headers;
6. the body limit: 413 by ``Content-Length`` before reading, and while reading;

then the app, and at its end the request's count by route and status.

One layer rather than one per concern: every layer's coroutine frame, closures and
``send`` wrapper would stay alive for a whole stream. The concerns are plain functions
below, called from one ``__call__``; the one ``send`` wrapper touches a response's
start only, and an error status's body (to journal why it failed). And a stream keeps
none of the app's layers alive: it sends its start through them and leaves its body
to ``ServeLaterLayer`` (below), outside them all, which serves it once they have
returned, with the server's own ``receive`` and ``send``; this middleware's own end
(the journal entry, the count) then runs after the stream's (``sse.ServeLater``).

CORS must answer preflights after the origin check and before auth, and add its
headers to every answer, 401s included. With ``--cors-allow-origins`` the middleware
therefore runs in two halves around Starlette's own ``CORSMiddleware``: the front half
(1 and 2, and the count) calls CORS, whose app is the back half (4 to 6). Without it
(the default) one half does everything and CORS costs nothing.

Pure ASGI rather than ``BaseHTTPMiddleware`` so nothing sits between a stream
and the socket.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamapi import logs, scope_keys
from streamapi.api.common import OPEN_PATHS, OPEN_PREFIXES
from streamapi.control.hooks import Control
from streamapi.control.journal import Journal, JournalEntry
from streamapi.control.rules import ENDPOINT_PATHS
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
from streamapi.sse import ServeLater

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
# An id the client sent is echoed only if it cannot smuggle anything into a header.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Enough of an error body to read its type, code and message.
_ERROR_BODY_BYTES = 65_536


class EdgeMiddleware:
    """Every request's bookkeeping and checks at the edge of the app, in one layer.

    ``allow_origins`` are ``--cors-allow-origins``: the origins the origin check lets
    through, and, when any are given, the origins Starlette's ``CORSMiddleware``
    answers for. ``on_error`` sees every error this middleware answers with.
    """

    __slots__ = (
        "_back",
        "_front",
        "allow_any_origin",
        "allow_origins",
        "app",
        "control",
        "dialects",
        "keys",
        "max_body_bytes",
        "metrics",
        "on_error",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        keys: KeyRing,
        control: Control,
        dialects: ErrorDialects,
        max_body_bytes: int,
        allow_origins: list[str],
        on_error: Callable[[APIError], None],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = keys
        self.control = control
        self.dialects = dialects
        self.max_body_bytes = max_body_bytes
        self.allow_any_origin = "*" in allow_origins
        self.allow_origins = frozenset(o.rstrip("/").lower() for o in allow_origins)
        self.on_error = on_error
        self._front = self._back = True
        if allow_origins:
            # Two halves around CORS (the module's docstring says why): a copy of this
            # middleware from auth on is CORS's app; this one stops at the origin check.
            back = copy.copy(self)
            back._front = False
            self._back = False
            self.app = CORSMiddleware(
                back,
                allow_origins=allow_origins,
                allow_methods=["*"],
                # Browser SDKs send Authorization, x-api-key and x-stainless-* headers.
                allow_headers=["*"],
                expose_headers=["x-request-id", "request-id", "retry-after", "retry-after-ms"],
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})
        front, back = self._front, self._back
        request_id = ""
        if front:
            if scope["method"] == "OPTIONS":
                # CORS preflights are answered before the journal (or refused as any
                # method is): counted here, so that they show somewhere.
                self.metrics.unjournaled("preflight")
            state[scope_keys.ARRIVED_AT] = asyncio.get_running_loop().time()
            request_id = request_id_of(headers)
            state[scope_keys.REQUEST_ID] = request_id
            # For the log lines of this request's task and the tasks it starts; the
            # server runs each request in a task of its own, so nothing leaks.
            logs.request_id.set(request_id)
        status = 0
        # Set on the generation routes (back half): the rate-limit headers' turn, and
        # the journal entry whose error body is kept.
        controlled = False
        entry: JournalEntry | None = None
        error_body = bytearray()

        async def send_at_edge(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if controlled:
                    add_ratelimit_headers(message, state.get(scope_keys.RATELIMIT_HEADERS))
                if request_id:
                    # Encoded here, once: an open stream keeps only the id's string.
                    sent_id = request_id.encode()
                    ids = [(_REQUEST_ID_HEADER, sent_id), (b"request-id", sent_id)]
                    message["headers"] = [*message.get("headers", []), *ids]
            elif status >= 400 and entry is not None and len(error_body) < _ERROR_BODY_BYTES:
                error_body.extend(message.get("body", b""))
            await send(message)

        journal: Journal | None = None
        try:
            if front:
                refusal = self._origin_refusal(scope, headers)
                if refusal is not None:
                    await self._answer(refusal, scope, receive, send_at_edge, headers)
                    return
                if not back:
                    await self.app(scope, receive, send_at_edge)  # CORS, then the back half
                    return
            if self._needs_key(scope):
                principal = authenticate(self.keys, headers)
                if principal is None:
                    error = self._unauthenticated(scope, headers)
                    await self._answer(error, scope, receive, send_at_edge, headers)
                    return
                state[scope_keys.PRINCIPAL] = principal
            journal = self.control.journal
            controlled, entry = await self._open_entry(scope, state, journal)
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._answer(self._too_large(), scope, receive, send_at_edge, headers)
                return
            await self.app(scope, self._limited(receive), send_at_edge)
        finally:
            # The start has gone out (or nothing will): the status is known.
            counted = self.metrics if front else None  # counted by the front half only
            end = _RequestEnd(counted, scope, entry, journal, status, error_body)
            later: ServeLater | None = scope.get(scope_keys.SERVE_LATER)
            if later is not None and later.serve is not None:
                # A stream, served once this has returned: its request ends with it.
                later.ends.append(end)
            else:
                await end()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The origin check, then auth: a refused handshake is closed (HTTP 403, close 1008)."""
        headers = Headers(scope=scope)
        refusal = self._origin_refusal(scope, headers) if self._front else None
        if refusal is not None:
            self.on_error(refusal)
            await send({"type": "websocket.close", "code": 1008, "reason": "Origin not allowed."})
            return
        if not self._back:
            await self.app(scope, receive, send)
            return
        if self.keys.enabled:
            principal = authenticate(self.keys, headers)
            if principal is None:
                logger.info("WEBSOCKET %s -> 403 (no valid key)", scope["path"])
                self.metrics.unjournaled("unauthenticated")
                self.on_error(AuthenticationError("Missing or incorrect API key."))
                await send({"type": "websocket.close", "code": 1008, "reason": "Invalid API key."})
                return
            scope.setdefault("state", {})[scope_keys.PRINCIPAL] = principal
        await self.app(scope, receive, send)

    async def _answer(
        self, error: APIError, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> None:
        """``error`` as the whole response, in the route's error dialect."""
        self.on_error(error)
        dialect = self.dialects.for_request(
            scope["method"], scope["path"], headers.get("accept", "")
        )
        response = render(error, dialect, scope_keys.state_of(scope).get(scope_keys.REQUEST_ID))
        await response(scope, receive, send)

    def _origin_refusal(self, scope: Scope, headers: Headers) -> PermissionDeniedError | None:
        """A browser's request from an origin CORS does not allow is refused, before any work.

        Browsers send ``Origin`` on cross-origin requests, ``text/plain`` "simple"
        POSTs included, which they send without a preflight: CORS only hides the
        answer from the page, after the server has done the work. So a page on any
        site could drive a keyless server on the user's machine. Here such a
        request is refused before auth, the journal or the body. The server's own
        pages (``Origin`` naming the ``Host`` it was reached at) and the origins of
        ``--cors-allow-origins`` pass; SDKs and curl send no ``Origin`` and are not
        affected.
        """
        if self.allow_any_origin:
            return None
        origin = headers.get("origin")
        if origin is None or origin_allowed(origin, headers, self.allow_origins):
            return None
        self.metrics.unjournaled("origin")
        logger.info(
            "%s %s -> 403 (origin not allowed)", scope.get("method", "WEBSOCKET"), scope["path"]
        )
        return PermissionDeniedError(
            "Requests from this origin are not allowed: a browser page may call this server "
            "only from an origin in --cors-allow-origins.",
            code="origin_not_allowed",
        )

    def _needs_key(self, scope: Scope) -> bool:
        """Every route but ``OPEN_PATHS``, ``OPEN_PREFIXES`` and CORS preflights, with keys on."""
        return (
            self.keys.enabled
            and scope["method"] != "OPTIONS"
            and scope["path"] not in OPEN_PATHS
            and not scope["path"].startswith(OPEN_PREFIXES)
        )

    def _unauthenticated(self, scope: Scope, headers: Headers) -> AuthenticationError:
        sent = bool(headers.get("authorization") or headers.get("x-api-key"))
        logger.info(
            "%s %s -> 401 (%s key)", scope["method"], scope["path"], "wrong" if sent else "no"
        )
        self.metrics.unjournaled("unauthenticated")
        return AuthenticationError(
            "Incorrect API key provided."
            if sent
            else "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _open_entry(
        self, scope: Scope, state: dict[str, Any], journal: Journal | None
    ) -> tuple[bool, JournalEntry | None]:
        """Whether the request is a generation route's under test control, and its journal entry.

        Without a journal or limits there is nothing to add. Preflights are not
        journaled (auth already keeps out requests without a valid key): the front
        half counts them.
        """
        endpoint = ENDPOINT_PATHS.get(scope["path"])
        if (
            endpoint is None
            or scope["method"] == "OPTIONS"
            or (journal is None and not self.control.limiter.enabled)
        ):
            return False, None
        if journal is None:
            return True, None
        entry = journal.open(
            method=scope["method"],
            path=scope["path"],
            endpoint=endpoint,
            arrived_at=scope_keys.arrival_time(scope),
        )
        entry.request_id = state.get(scope_keys.REQUEST_ID)
        state[scope_keys.JOURNAL_ENTRY] = entry
        await journal.opened(entry)
        return True, entry

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"The request body is larger than the limit of {self.max_body_bytes} bytes.",
        )

    def _limited(self, receive: Receive) -> Receive:
        """``receive``, raising 413 once the body read so far passes the limit."""
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        return receive_within_limit


class _RequestEnd:
    """A request's end at the edge: its journal entry closed, then its count by route and
    status (by the front half only). A stream's, left in its ``ServeLater`` until the
    stream is over, as these few slots rather than a closure and the cells it would keep."""

    __slots__ = ("_entry", "_error_body", "_journal", "_metrics", "_scope", "_status")

    def __init__(
        self,
        metrics: Metrics | None,
        scope: Scope,
        entry: JournalEntry | None,
        journal: Journal | None,
        status: int,
        error_body: bytearray,
    ) -> None:
        self._metrics = metrics
        self._scope = scope
        self._entry = entry
        self._journal = journal
        self._status = status
        self._error_body = bytes(error_body)

    async def __call__(self) -> None:
        scope, status = self._scope, self._status
        try:
            entry, journal = self._entry, self._journal
            if entry is not None and journal is not None:
                entry.close(status, self._error_body, asyncio.get_running_loop().time())
                await journal.closed(entry)
        finally:
            if self._metrics is not None:
                route = scope.get("route")
                # Unmatched paths share one label: clients must not mint label values.
                template = getattr(route, "path", None) or "unmatched"
                self._metrics.request(template, scope["method"], status)


class ServeLaterLayer:
    """Serves a stream's body once every layer inside it has returned (``sse.ServeLater``).

    Each layer of the app (FastAPI's ``ServerErrorMiddleware``, its exception
    telemetry and body limit, ours, CORS, Starlette's exception handling, the
    router, the route) is a coroutine its request's task awaits through: for a
    stream, each frame, its ``send`` wrapper and what its locals hold (the
    request, its parsed body) would stay alive as long as the stream. They all
    act on a response's start only, or on an error status's body, which a
    stream's 200 never has. So a streamed response sends its start through them,
    leaves its body here and returns, and this serves it with the server's own
    ``receive`` and ``send``; then the ends the layers inside left (the journal
    entry, the request's count). ``bypass_layers`` puts this outside all of them.

    Layers stack: one inside leaves the stream to one outside it (``streamapi
    serve`` wraps the whole app in one, outside FastAPI's and Starlette's own
    calls), unless FastAPI's native telemetry records this request (its
    ``"fastapi.telemetry"`` in the scope): then the stream is served inside, so
    that the request's span and duration cover the whole stream.

    An error from a stream's body, after its start, reaches the server from here
    rather than through FastAPI's layers: they would have re-raised it (a started
    response gets no 500), and the server logs it as before; FastAPI's own
    OpenTelemetry exception event is not recorded for it.
    """

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope_keys.SERVE_LATER in scope and scope.get(_FASTAPI_TELEMETRY) is None
        ):
            await self.app(scope, receive, send)  # not a stream, or served outside
            return
        later = ServeLater()
        scope[scope_keys.SERVE_LATER] = later
        try:
            await self.app(scope, receive, send)
        finally:
            # However the layers inside returned: a stream alone ends what its request
            # holds (its admission, the in-flight count, the journal entry). Out of the
            # scope first: the ends hold the scope, the scope would hold them. (Popped:
            # a layer outside, which left the stream to this one, pops it too.)
            scope.pop(scope_keys.SERVE_LATER, None)
            if later.serve is not None:
                for key in _RETURNED_LAYERS_KEYS:
                    scope.pop(key, None)
                try:
                    await later.serve(receive, send)
                finally:
                    await later.end()


# Where FastAPI keeps the telemetry of a request it records (None when its
# ``exclude`` excludes the request): set before the layers inside run.
_FASTAPI_TELEMETRY = "fastapi.telemetry"

# What FastAPI leaves in a request's scope for the layers that have returned by the
# time a stream is served: its closed AsyncExitStacks and its route context.
_RETURNED_LAYERS_KEYS = (
    "fastapi_middleware_astack",
    "fastapi_inner_astack",
    "fastapi_function_astack",
    "fastapi",
)


def bypass_layers(app: Starlette) -> None:
    """Put ``ServeLaterLayer`` outside the middleware stack ``app`` builds (FastAPI's
    exception layers included), inside whatever the app itself does first."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return ServeLaterLayer(build())

    # Starlette builds its stack on the first request, by this method.
    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def request_id_of(headers: Headers) -> str:
    """The client's ``X-Request-Id`` when it sent a sane one, else a new id."""
    sent = headers.get(REQUEST_ID_HEADER, "")
    # 32 random hex digits, as uuid4().hex gives, without making a UUID object.
    return sent if _SAFE_REQUEST_ID.fullmatch(sent) else secrets.token_hex(16)


def origin_allowed(origin: str, headers: Headers, allow_origins: frozenset[str]) -> bool:
    """``origin`` is in ``--cors-allow-origins``, or the server's own (the ``Host`` it was
    reached at: the dashboard and ``/docs`` call it)."""
    origin = origin.rstrip("/").lower()
    if origin in allow_origins:
        return True
    _, _, host = origin.partition("://")
    return bool(host) and host == headers.get("host", "").lower()


def authenticate(keys: KeyRing, headers: Headers) -> Principal | None:
    """The principal of the first valid key in ``Authorization: Bearer <key>`` (OpenAI's
    SDKs) or ``x-api-key`` (Anthropic's), or None. Keys are never logged."""
    candidates = []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        candidates.append(token.strip())
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        candidates.append(api_key)
    for candidate in candidates:
        principal = keys.authenticate(candidate)
        if principal is not None:
            return principal
    return None


def add_ratelimit_headers(message: Message, extra: dict[str, str] | None) -> None:
    """The ``x-ratelimit-*`` headers ``Control.plan`` computed, on a response's start
    (errors included), unless the response set them itself."""
    if not extra:
        return
    headers = list(message.get("headers", []))
    present = {bytes(name).lower() for name, _ in headers}
    headers += [
        (name.encode(), value.encode())
        for name, value in extra.items()
        if name.encode() not in present
    ]
    message["headers"] = headers
