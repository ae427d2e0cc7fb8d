"""The one error hierarchy, its wire envelope and the handlers that render it.

    APIError                         500 server_error
    ├── InvalidRequestError          400 invalid_request_error
    │   ├── ContextLengthExceededError   code context_length_exceeded
    │   ├── NotFoundError            404
    │   │   └── ModelNotFoundError   code model_not_found
    │   ├── MethodNotAllowedError    405
    │   └── RequestTooLargeError     413 code request_too_large
    ├── RateLimitError               429 rate_limit_error, code rate_limit_exceeded, Retry-After
    └── ServiceUnavailableError      503 service_unavailable_error

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``.
Before the first byte it is an HTTP status with that body: JSON for clients that
accept ``application/json`` (the OpenAI SDKs), otherwise, on the generation
routes, one SSE ``data:`` event with the same status (the original spec's
curl contract). After the first byte it is an in-stream event followed by
``[DONE]`` (see ``serving``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException
from starlette.responses import Response

from streamapi import sse

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
            headers={
                "Retry-After": str(max(1, math.ceil(self.retry_after_s))),
                "retry-after-ms": str(max(1, math.ceil(self.retry_after_s * 1000))),
            },
        )


class ServiceUnavailableError(APIError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable_error"


def from_validation_error(exc: ValidationError) -> InvalidRequestError:
    """The first problem Pydantic found, named by its dotted field path."""
    first = exc.errors(include_url=False, include_context=False)[0]
    param = _param_path(first)
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}" if param else message, param=param or None
    )


def _param_path(error: ErrorDetails) -> str:
    path = ""
    for part in error["loc"]:
        if part in ("body",):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_type_name(part):
            # Pydantic names union branches and validators in `loc`
            # ('str', 'list[str]', 'TextContentPart'); they are not fields.
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _is_type_name(part: str) -> bool:
    return part[:1].isupper() or "[" in part or "-" in part or part in _SCALAR_TYPES


_SCALAR_TYPES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def render(error: APIError, *, as_event_stream: bool) -> Response:
    """The error as an HTTP response: JSON, or one SSE event with the same status."""
    body = error.to_dict()
    if as_event_stream:
        return Response(
            sse.encode_data(body),
            status_code=error.status_code,
            media_type=sse.MEDIA_TYPE,
            headers={**sse.HEADERS, **error.headers},
        )
    return Response(
        orjson.dumps(body),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def wants_event_stream(request: Request, sse_paths: Collection[str]) -> bool:
    """Whether a failed request is answered in SSE rather than JSON.

    Only generation routes stream; there a client that does not accept JSON
    (curl sends ``*/*``) gets its error in the stream's own format.
    """
    if request.method != "POST" or request.url.path not in sse_paths:
        return False
    accept = request.headers.get("accept", "")
    return "application/json" not in accept


def install_error_handlers(
    app: FastAPI,
    *,
    sse_paths: Collection[str],
    on_error: Callable[[APIError], None] | None = None,
) -> None:
    """Route every exception to the one envelope, with the right status.

    ``on_error`` sees every error answered this way (for the error counters).
    """

    def respond(request: Request, error: APIError) -> Response:
        if on_error is not None:
            on_error(error)
        return render(error, as_event_stream=wants_event_stream(request, sse_paths))

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
