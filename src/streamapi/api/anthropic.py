"""Anthropic's Messages routes. Errors here, and on any path under ``/v1/messages/``,
use Anthropic's envelope."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from streamapi.api.common import (
    RequestOnlyRoute,
    check_model_access,
    json_response,
    prepared,
    read_json,
    refuse_early,
    refuse_if_draining,
    respond,
    sse_event_schema,
    state_of,
    validate,
)
from streamapi.schemas.anthropic import MessageCreateRequest, MessageTokensCount

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
PATHS = frozenset({MESSAGES_PATH, COUNT_TOKENS_PATH})
# Anthropic's clients call more routes under it (batches...): their 404 is Anthropic's.
PREFIXES = (MESSAGES_PATH + "/",)

router = APIRouter(route_class=RequestOnlyRoute)

_ANTHROPIC_ERROR = {
    "description": 'Anthropic\'s envelope: {"type": "error", "error": {"type", "message"}}.',
    "content": {"application/json": {}},
}


@router.post(
    MESSAGES_PATH,
    summary="Create a message (Anthropic)",
    description=(
        "Anthropic's Messages API: `model`, `max_tokens` (required), `messages`, `system`, "
        "`stop_sequences`, `tools`, `tool_choice`, `thinking`. With `stream` true, named "
        "events from `message_start` to `message_stop`. `x-api-key` and "
        "`anthropic-version` headers are accepted."
    ),
    responses={
        200: {
            "description": "A Message, or its event stream.",
            "content": {
                "application/json": {},
                "text/event-stream": {"schema": sse_event_schema(named=True)},
            },
        },
        **{status: _ANTHROPIC_ERROR for status in (400, 404, 413, 500, 503)},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/MessageCreateRequest"}
                }
            },
        }
    },
)
async def create_message(request: Request) -> Response:
    state = state_of(request)
    refuse_early(request, state)
    parsed = validate(MessageCreateRequest, await read_json(request))
    return await respond(request, state, state["messages"], parsed, streamed=bool(parsed.stream))


@router.post(
    COUNT_TOKENS_PATH,
    response_model=MessageTokensCount,
    summary="Count a message's input tokens (Anthropic)",
    description="The body of a Messages request (`max_tokens` not needed): the "
    "`input_tokens` that request would use, counted as its usage counts them (cached "
    "and uncached alike).",
    responses={status: _ANTHROPIC_ERROR for status in (400, 404, 413, 500, 503)},
)
async def count_message_tokens(request: Request) -> Response:
    state = state_of(request)
    refuse_if_draining(state["lifecycle"])  # counting takes no concurrency lease
    payload = await read_json(request)
    # Anthropic's count takes no max_tokens: one leaves the whole context to the prompt.
    parsed = validate(MessageCreateRequest, {**payload, "max_tokens": 1, "stream": False})
    job = (await prepared(request, state["messages"], parsed)).job
    check_model_access(request, job.model)
    return json_response({"input_tokens": job.prompt_tokens})
