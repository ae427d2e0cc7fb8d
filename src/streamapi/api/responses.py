"""OpenAI's Responses API routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from streamapi.api.common import (
    ERRORS,
    AppStateDep,
    RequestOnlyRoute,
    json_response,
    read_json,
    refuse_early,
    respond,
    sse_event_schema,
    state_of,
    validate,
)
from streamapi.errors import NotFoundError
from streamapi.schemas.responses import CompactRequest, ResponseRequest

router = APIRouter(route_class=RequestOnlyRoute)

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ResponseRequest"}}
        },
    }
}


@router.post(
    "/v1/responses",
    summary="Create a response",
    description=(
        "OpenAI's Responses API: `input` as a string or items (messages, function calls "
        "and their outputs), `instructions`, `tools`, `text.format`, `max_output_tokens`, "
        "`previous_response_id`. With `stream` true, named events from `response.created` "
        "to `response.completed` (or `response.incomplete`), each with a "
        "`sequence_number`, then `data: [DONE]`."
    ),
    responses={
        200: {
            "description": "A Response object, or its event stream.",
            "content": {
                "application/json": {},
                "text/event-stream": {"schema": sse_event_schema(named=True)},
            },
        },
        **ERRORS,
    },
    openapi_extra=_REQUEST_BODY,
)
async def create_response(request: Request) -> Response:
    state = state_of(request)
    refuse_early(request, state)
    parsed = validate(ResponseRequest, await read_json(request))
    return await respond(request, state, state["responses"], parsed, streamed=bool(parsed.stream))


@router.post(
    "/v1/responses/compact",
    summary="Compact a conversation",
    description=(
        "A conversation (`input` and/or `previous_response_id`) in; a window to start a new "
        "one from out: the user's messages and one `compaction` item to hand back as input."
    ),
    responses={200: {"description": "A `response.compaction` object."}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CompactRequest"}}
            },
        }
    },
)
async def compact_response(request: Request) -> Response:
    state = state_of(request)
    refuse_early(request, state)
    parsed = validate(CompactRequest, await read_json(request))
    return json_response(state["responses"].compact(parsed))


@router.get(
    "/v1/responses/{response_id}",
    summary="Retrieve a stored response",
    responses={404: ERRORS[404]},
)
async def retrieve_response(response_id: str, state: AppStateDep) -> Response:
    body = state["responses"].retrieve(response_id)
    if body is None:
        raise NotFoundError(f"No response with id '{response_id}' is stored.", param="response_id")
    return json_response(body)
