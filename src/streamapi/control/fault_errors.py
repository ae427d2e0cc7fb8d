"""Faked errors: the error a provider answers with a given status, worded as it words it.

A ``status=`` fault, a ``mid_stream_error`` and a rule's ``respond.error`` all
end here; the route renders the ``APIError`` in its own dialect.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamapi.errors import (
    APIError,
    AuthenticationError,
    BadGatewayError,
    ContextLengthExceededError,
    GatewayTimeoutError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
    format_duration,
    retry_after_headers,
)


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """What a faked error may say about the request it refuses."""

    model: str
    prompt_tokens: int
    max_tokens: int
    max_model_len: int


def status_error(
    status: int,
    context: ErrorContext,
    *,
    retry_after_s: float | None = None,
    message: str | None = None,
    type_: str | None = None,
    code: str | None = None,
) -> APIError:
    """The error a provider answers with ``status``, worded as OpenAI words it.

    400 without a ``message`` is OpenAI's context-length error, exactly (clients
    classify it by its opening sentence); 429, 503 and 529 carry ``Retry-After``.
    The route renders it in its own dialect (Anthropic's envelope on /v1/messages).
    """
    error: APIError
    if status == 400 and message is None:
        room = context.max_model_len - context.prompt_tokens + 1
        error = ContextLengthExceededError(
            max_model_len=context.max_model_len,
            prompt_tokens=context.prompt_tokens,
            max_tokens=max(context.max_tokens, room),
        )
    elif status == 401:
        error = AuthenticationError(
            message
            or "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    elif status == 403:
        error = PermissionDeniedError(message or "You are not allowed to make this request.")
    elif status == 404:
        error = ModelNotFoundError(context.model) if message is None else NotFoundError(message)
    elif status == 408:
        error = RequestTimeoutError(message or "Request timed out.")
    elif status == 429:
        wait = 1.0 if retry_after_s is None else retry_after_s
        error = RateLimitError(
            message
            or f"Rate limit reached for {context.model} on requests per min (RPM): "
            f"Please try again in {format_duration(wait)}.",
            retry_after_s=wait,
        )
        error.type = "requests"  # OpenAI names the exhausted limit here
        error.headers.update(
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": format_duration(wait),
            }
        )
    elif status == 500:
        error = APIError(
            message or "The server had an error while processing your request. Sorry about that!"
        )
    elif status == 502:
        error = BadGatewayError(message or "Bad gateway.")
    elif status == 503:
        error = ServiceUnavailableError(
            message or "The engine is currently overloaded, please try again later.",
            code="server_is_overloaded",
        )
    elif status == 504:
        error = GatewayTimeoutError(message or "Gateway timeout.")
    elif status == 529:
        error = OverloadedError(message or "Overloaded")
    elif status < 500:
        error = APIError(message or f"The request was refused with status {status}.")
        error.status_code, error.type = status, "invalid_request_error"
    else:
        error = APIError(message or f"The server failed with status {status}.")
        error.status_code = status
    if type_ is not None:
        error.type = type_
    if code is not None:
        error.code = code
    if retry_after_s is not None and status in (503, 529):
        error.headers.update(retry_after_headers(retry_after_s))
    return error
