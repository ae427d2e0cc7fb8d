"""The Responses API's WebSocket mode: ``ws://.../v1/responses``.

One connection carries a sequence of turns. The client sends
``{"type": "response.create", ...}`` with a Responses body (no ``stream``,
``stream_options`` or ``background``: the socket is the stream), and gets every
event of that response, one JSON message each, up to its terminal event; then
it may send the next. A turn the server refuses gets one message
``{"type": "error", "status": <HTTP status>, "error": {...}}`` and the
connection stays open.

The connection keeps its own ``store: false`` responses, so a later turn on the
same socket continues one with ``previous_response_id`` while a new connection
cannot (``previous_response_not_found``). A turn that fails forgets the response
it tried to continue, so a client that retries starts a clean chain.

Each message is held to ``--max-request-body-bytes`` as an HTTP body is (an
``error`` with status 413, the connection kept); a connection with no turn
running and no message for ``--websocket-idle-timeout-s`` gets an ``error``
(``websocket_idle_timeout``, status 408) and is closed.

The API key is checked at the handshake (``middleware.EdgeMiddleware``). Each
turn counts against the rate limits and the concurrency caps as an HTTP request
does; the rest of test control (rules, faults, the journal) applies to HTTP
requests only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from streamapi import scope_keys
from streamapi.api.common import (
    AppState,
    check_principal_access,
    is_small,
    owner_of,
    refuse_if_draining,
    validate,
)
from streamapi.control.hooks import identify
from streamapi.errors import (
    APIError,
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from streamapi.keys import Principal
from streamapi.schemas.responses import ResponseRequest
from streamapi.serving.responses import json_event
from streamapi.state.local import LocalResponses

logger = logging.getLogger(__name__)

router = APIRouter()

# A connection's store: false responses it may continue (least recently used dropped
# first), by count and by bytes.
SESSION_CAPACITY = 64
SESSION_MAX_BYTES = 16 * 1024 * 1024
# HTTP-only fields: the socket is the stream, and a turn runs while it is open.
_FORBIDDEN = ("stream", "stream_options", "background")


@router.websocket("/v1/responses")
async def responses_websocket(websocket: WebSocket) -> None:
    state: AppState = websocket.scope["state"]
    principal = scope_keys.state_of(websocket.scope).get(scope_keys.PRINCIPAL)
    await websocket.accept()
    session = LocalResponses(SESSION_CAPACITY, max_bytes=SESSION_MAX_BYTES)
    settings = state["settings"]
    idle_s = settings.websocket_idle_timeout_s or None
    try:
        # Ends when the client closes the socket (or the server drains, or it idles).
        while not state["lifecycle"].draining:
            try:
                message = await asyncio.wait_for(websocket.receive_text(), idle_s)
            except TimeoutError:
                await websocket.send_text(_error_message(_idle(settings.websocket_idle_timeout_s)))
                await websocket.close(code=1000, reason="Idle for too long.")
                return
            if len(message.encode()) > settings.max_request_body_bytes:
                # HTTP's 413, per message; the connection stays usable.
                await websocket.send_text(
                    _error_message(
                        RequestTooLargeError(
                            "The message is larger than the limit of "
                            f"{settings.max_request_body_bytes} bytes."
                        )
                    )
                )
                continue
            await _turn(
                websocket,
                state,
                message,
                session,
                principal if isinstance(principal, Principal) else None,
            )
    except WebSocketDisconnect:
        return
    await websocket.close(code=1001, reason="The server is shutting down.")


async def _turn(
    websocket: WebSocket,
    state: AppState,
    message: str,
    session: LocalResponses,
    principal: Principal | None,
) -> None:
    """One ``response.create``: its events, or one error message."""
    previous_id: str | None = None
    try:
        body = _create_event(message)
        previous = body.get("previous_response_id")
        previous_id = previous if isinstance(previous, str) else None
        refuse_if_draining(state["lifecycle"])
        parsed = validate(ResponseRequest, body)
        service = await (
            state["responses"]
            .for_owner(owner_of(principal))
            .load(parsed.previous_response_id, session)
        )
        if is_small(message):
            response = service.prepare(parsed)
        else:  # checking its schemas may take seconds of CPU: not on the event loop
            response = await asyncio.to_thread(service.prepare, parsed)
        check_principal_access(principal, response.job.model)
        # Each turn counts against the rate limits as an HTTP request does (429 error).
        await state["control"].count(identify(websocket.scope), response.job)
        lease = await state["limiter"].take(principal)
        admission = await state["generation"].admit(
            response.job, arrived_at=asyncio.get_running_loop().time(), lease=lease
        )
    except APIError as error:
        if previous_id is not None:
            session.discard(previous_id)
        await websocket.send_text(_error_message(error))
        return
    lifecycle, metrics = state["lifecycle"], state["metrics"]
    lifecycle.request_started()
    metrics.streams_in_flight.inc()
    try:
        async for frame in service.events(
            response, admission, json_event, session=session, websocket=True
        ):
            await websocket.send_text(frame.decode())
        admission.ended = True
    finally:
        try:
            await admission.aclose()
        finally:
            lifecycle.request_finished()
            metrics.streams_in_flight.dec()


def _idle(timeout_s: float) -> APIError:
    return RequestTimeoutError(
        f"No message for {timeout_s:g} s: the connection is closed; open a new one to continue.",
        code="websocket_idle_timeout",
    )


def _create_event(message: str) -> dict[str, Any]:
    """The Responses body of a ``response.create`` message, or 400."""
    try:
        payload = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The message is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The message must be a JSON object.")
    kind = payload.pop("type", None)
    if kind != "response.create":
        raise InvalidRequestError(
            f"Unknown message type {kind!r}: send 'response.create'.", param="type"
        )
    for name in _FORBIDDEN:
        if name in payload:
            raise InvalidRequestError(
                f"'{name}' is not sent over a WebSocket: every turn streams its events on it.",
                param=name,
            )
    return payload


def _error_message(error: APIError) -> str:
    """The WebSocket mode's error envelope; its ``code`` is always a string."""
    return orjson.dumps(
        {
            "type": "error",
            "status": int(error.status_code),
            "error": {
                "type": error.type,
                "code": error.code or error.type,
                "message": error.message,
                "param": error.param,
            },
        }
    ).decode()
