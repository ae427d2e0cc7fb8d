"""Anthropic's Messages route. Errors here use Anthropic's envelope."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from streamapi.api.common import (
    RequestOnlyRoute,
    read_json,
    refuse_early,
    respond,
    sse_event_schema,
    state_of,
    validate,
)
from streamapi.schemas.anthropic import MessageCreateRequest

MESSAGES_PATH = "/v1/messages"
PATHS = frozenset({MESSAGES_PATH})

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
