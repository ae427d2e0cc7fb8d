"""The one error hierarchy, its wire envelope and the handlers that render it.

    APIError                         500 server_error
    ├── InvalidRequestError          400 invalid_request_error
    │   ├── ContextLengthExceededError   code context_length_exceeded
    │   ├── AuthenticationError      401 code invalid_api_key
    │   ├── NotFoundError            404
    │   │   └── ModelNotFoundError   code model_not_found
    │   ├── MethodNotAllowedError    405
    │   └── RequestTooLargeError     413 code request_too_large
    ├── PermissionDeniedError        403 permission_error
    ├── RequestTimeoutError          408 timeout_error
    ├── RateLimitError               429 rate_limit_error, code rate_limit_exceeded, Retry-After
    ├── BadGatewayError              502 server_error, code bad_gateway (an injected fault)
    │   └── UpstreamError            code upstream_error (an upstream engine failed)
    ├── ServiceUnavailableError      503 service_unavailable_error
    ├── GatewayTimeoutError          504 timeout_error (an injected fault)
    │   └── UpstreamTimeoutError     code upstream_timeout
    └── OverloadedError              529 overloaded_error (Anthropic's "overloaded"), Retry-After

An upstream's own 4xx keeps its status, type and message (``UpstreamError.from_status``).

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``.
Before the first byte it is an HTTP status with that body: JSON for clients that
accept ``application/json`` (the OpenAI SDKs) and for an OpenAI-form request
that does not ask to stream (``JSON_ERRORS_KEY``), otherwise, on the generation
routes, one SSE ``data:`` event with the same status (what a curl or
EventSource client reads). After the first byte it is an in-stream event followed by
``[DONE]`` (see ``serving``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException
from starlette.responses import Response

from streamapi import scope_keys, sse

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Root of every error the server reports to a client."""

    status_code: int = HTTPStatus.INTERNAL_SERVER_ERROR
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The wire envelope ``{"error": {...}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_anthropic(self, request_id: str | None = None) -> dict[str, Any]:
        """Anthropic's envelope: ``{"type": "error", "error": {"type", "message"}}``."""
        kind = _ANTHROPIC_TYPES.get(int(self.status_code), "api_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": self.message}}
        if request_id is not None:
            body["request_id"] = request_id
        return body


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class InvalidRequestError(APIError):
    status_code = HTTPStatus.BAD_REQUEST
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"

    def __init__(self, *, max_model_len: int, prompt_tokens: int, max_tokens: int) -> None:
        # Clients classify errors by this exact opening sentence (wire contract R7).
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion.",
            param="messages",
        )


class AuthenticationError(InvalidRequestError):
    """401: OpenAI answers a bad key with ``invalid_request_error`` / ``invalid_api_key``."""

    status_code = HTTPStatus.UNAUTHORIZED
    code = "invalid_api_key"


class NotFoundError(InvalidRequestError):
    status_code = HTTPStatus.NOT_FOUND
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


class MethodNotAllowedError(InvalidRequestError):
    status_code = HTTPStatus.METHOD_NOT_ALLOWED
    code = "method_not_allowed"


class RequestTooLargeError(InvalidRequestError):
    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (HTTP allows no fraction, so rounded up) and
    ``retry-after-ms``, the estimate itself, which the OpenAI SDKs read first."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it: 20ms, 1.5s, 6m0s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class RateLimitError(APIError):
    """Too much work right now; the client should retry after ``retry_after_s``.

    ``Retry-After`` carries whole seconds (HTTP allows no fraction) and
    ``retry-after-ms`` the estimate itself, which the OpenAI SDKs read first.
    """

    status_code = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        self.retry_after_s = max(0.0, retry_after_s)
        super().__init__(
            message,
            code=code,
            headers=retry_after_headers(self.retry_after_s),
        )


class ServiceUnavailableError(APIError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable_error"


class PermissionDeniedError(APIError):
    status_code = HTTPStatus.FORBIDDEN
    type = "permission_error"
    code = "permission_denied"


class RequestTimeoutError(APIError):
    status_code = HTTPStatus.REQUEST_TIMEOUT
    type = "timeout_error"
    code = "request_timeout"


class BadGatewayError(APIError):
    status_code = HTTPStatus.BAD_GATEWAY
    code = "bad_gateway"


class GatewayTimeoutError(APIError):
    status_code = HTTPStatus.GATEWAY_TIMEOUT
    type = "timeout_error"
    code = "gateway_timeout"


class UpstreamError(BadGatewayError):
    """An upstream engine failed: refused, unreachable, a 5xx, or a broken stream."""

    code = "upstream_error"

    @classmethod
    def from_status(
        cls,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> APIError:
        """An upstream's 4xx as the same status and message; anything else as a 502."""
        if 400 <= status < 500:
            error = APIError(message, param=param, code=code, headers=headers)
            error.status_code = status
            error.type = type_ or (
                "rate_limit_error"
                if status == HTTPStatus.TOO_MANY_REQUESTS
                else "invalid_request_error"
            )
            return error
        return cls(message)


class UpstreamTimeoutError(GatewayTimeoutError):
    code = "upstream_timeout"


class OverloadedError(APIError):
    """529, Anthropic's "overloaded": the SDKs retry it like any status of 500 or more."""

    status_code = 529
    type = "overloaded_error"
    code = "overloaded"


def from_validation_error(exc: ValidationError, payload: Any = None) -> InvalidRequestError:
    """The first problem Pydantic found, named by its field path in ``payload``."""
    # The deepest error is the most specific: a union reports one error per branch.
    errors = exc.errors(include_url=False, include_context=False)
    first = max(errors, key=lambda error: len(error["loc"]))
    param = _param_path(first, payload)
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}" if param else message, param=param or None
    )


def _param_path(error: ErrorDetails, payload: Any = None) -> str:
    """``messages[0].role`` from Pydantic's ``loc``.

    ``loc`` also names union branches and discriminator tags (``str``,
    ``json_schema``); walking the client's own payload alongside keeps only
    what the client sent, plus a missing field at the end.
    """
    path = ""
    node = payload
    parts = [p for p in error["loc"] if p != "body"]
    for position, part in enumerate(parts):
        if isinstance(part, int):
            if isinstance(node, list) and part < len(node):
                node = node[part]
            path += f"[{part}]"
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (payload is not None and position < len(parts) - 1) or _is_type_name(part):
            continue
        path += f".{part}" if path else part
    return path


def _is_type_name(part: str) -> bool:
    return part[:1].isupper() or "[" in part or "-" in part or part in _SCALAR_TYPES


_SCALAR_TYPES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


Dialect = Literal["json", "sse", "anthropic"]

JSON_ERRORS_KEY = "json_errors"
"""Set true in ``scope["state"]`` by a route whose request, once read, asks for a JSON
answer (an OpenAI-form body without ``stream: true``): its errors are JSON whatever
its ``Accept``, since such a client (Node's fetch, Python's requests) waits for JSON."""


@dataclass(frozen=True, slots=True)
class ErrorDialects:
    """Which routes answer errors other than in OpenAI's JSON envelope."""

    sse_paths: Collection[str] = ()
    """Generation routes: a client that does not accept JSON (curl) gets one SSE event."""
    anthropic_paths: Collection[str] = ()
    """Anthropic's routes: Anthropic's envelope."""
    anthropic_prefixes: tuple[str, ...] = ()
    """Paths under these (known or not, e.g. ``/v1/messages/batches``) are Anthropic's too."""

    def for_request(self, method: str, path: str, accept: str) -> Dialect:
        if path in self.anthropic_paths or path.startswith(self.anthropic_prefixes):
            return "anthropic"
        if method == "POST" and path in self.sse_paths and "application/json" not in accept:
            return "sse"
        return "json"


def render(error: APIError, dialect: Dialect, request_id: str | None = None) -> Response:
    """The error as an HTTP response in the client's dialect, with the error's status."""
    if dialect == "sse":
        return Response(
            sse.encode_data(error.to_dict()),
            status_code=error.status_code,
            media_type=sse.MEDIA_TYPE,
            headers={**sse.HEADERS, **error.headers},
        )
    body = error.to_anthropic(request_id) if dialect == "anthropic" else error.to_dict()
    return Response(
        orjson.dumps(body),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def install_error_handlers(
    app: FastAPI,
    dialects: ErrorDialects,
    *,
    on_error: Callable[[APIError], None] | None = None,
) -> None:
    """Route every exception to the one envelope, with the right status.

    ``on_error`` sees every error answered this way (for the error counters).
    """

    def respond(request: Request, error: APIError) -> Response:
        if on_error is not None:
            on_error(error)
        accept = request.headers.get("accept", "")
        dialect = dialects.for_request(request.method, request.url.path, accept)
        if dialect == "sse" and scope_keys.state_of(request.scope).get(JSON_ERRORS_KEY):
            dialect = "json"
        return render(error, dialect, scope_keys.state_of(request.scope).get(scope_keys.REQUEST_ID))

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        logger.info("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc)
        return respond(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first: Any = errors[0] if errors else {"loc": (), "msg": "Invalid request."}
        param = _param_path(first)
        error = InvalidRequestError(
            f"Invalid value for '{param}': {first['msg']}" if param else str(first["msg"]),
            param=param or None,
        )
        return respond(request, error)

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: APIError
        if exc.status_code == HTTPStatus.NOT_FOUND:
            error = NotFoundError(f"Unknown route: {request.method} {request.url.path}")
        elif exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            error = MethodNotAllowedError(
                f"Method {request.method} is not allowed on {request.url.path}."
            )
        elif exc.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            error = RequestTooLargeError("The request body is too large.")
        else:
            error = APIError(str(exc.detail))
            error.status_code = exc.status_code
            error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.headers.update(exc.headers or {})
        return respond(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # The traceback goes to the log only; the client learns nothing internal.
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return respond(request, APIError("The server had an error while processing the request."))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
