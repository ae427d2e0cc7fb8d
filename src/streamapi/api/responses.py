"""OpenAI's Responses API routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from streamapi import scope_keys, sse
from streamapi.api.common import (
    ERRORS,
    AppState,
    AppStateDep,
    RequestOnlyRoute,
    check_model_access,
    json_response,
    owner_of,
    prepared,
    principal_of,
    read_json,
    refuse_early,
    respond,
    sse_event_schema,
    state_of,
    validate,
)
from streamapi.errors import InvalidRequestError, NotFoundError
from streamapi.schemas.responses import CompactRequest, ResponseRequest
from streamapi.serving.response_runs import Run
from streamapi.serving.responses import ResponseService

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
    service = await _service(request, state).load(parsed.previous_response_id)
    if parsed.background:
        return await _start_background(request, state, service, parsed)
    return await respond(request, state, service, parsed, streamed=bool(parsed.stream))


def _service(request: Request, state: AppState) -> ResponseService:
    """The Responses service as the caller's key sees it: its own stored responses only."""
    return state["responses"].for_owner(owner_of(principal_of(request)))


async def _start_background(
    request: Request, state: AppState, service: ResponseService, parsed: ResponseRequest
) -> Response:
    """Admit the job now (refusals are statuses), run it on its own, answer at once."""
    response = await prepared(request, service, parsed)
    check_model_access(request, response.job.model)
    plan = await state["control"].plan(request, response.job, streamed=True)
    lease = await state["limiter"].take(principal_of(request))
    admission = await state["generation"].admit(
        plan.job,
        arrived_at=scope_keys.arrival_time(request.scope),
        overrides=plan.overrides(None),
        request_id=scope_keys.state_of(request.scope).get(scope_keys.REQUEST_ID),
        lease=lease,
    )
    plan.arm(admission)
    run = state["background"].start(response, admission)
    if parsed.stream:
        return _follow(state, run, -1)
    return json_response(run.body)


def _follow(state: AppState, run: Run, starting_after: int) -> Response:
    """A background run's events as SSE; leaving this stream leaves the run going."""
    settings = state["settings"]
    return sse.EventStreamResponse(
        run.follow(starting_after),
        ping_interval_s=settings.ping_interval_s,
        send_timeout_s=settings.send_timeout_s,
    )


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
    service = await _service(request, state).load(parsed.previous_response_id)
    return json_response(service.compact(parsed))


@router.get(
    "/v1/responses/{response_id}",
    summary="Retrieve a stored response",
    description=(
        "A stored Response object; a background one as it stands (`queued`, `in_progress`, "
        "then its final status). With `stream=true`, a background response's events after "
        "sequence number `starting_after` (all of them without it), then the rest as they come."
    ),
    responses={404: ERRORS[404], 400: ERRORS[400]},
)
async def retrieve_response(
    request: Request,
    response_id: str,
    state: AppStateDep,
    stream: bool = False,
    starting_after: int | None = None,
) -> Response:
    service = _service(request, state)
    run = _run(state, service, response_id)
    if stream:
        if run is None:
            await _stored(service, response_id)  # 404 if unknown
            raise InvalidRequestError(
                "Only background responses can be streamed again.", param="stream"
            )
        return _follow(state, run, -1 if starting_after is None else starting_after)
    return json_response(run.body if run is not None else await _stored(service, response_id))


@router.post(
    "/v1/responses/{response_id}/cancel",
    summary="Cancel a background response",
    description=(
        "Stops a background response that is queued or in progress; its status becomes "
        "`cancelled`. Cancelling one that has ended returns it as it is."
    ),
    responses={404: ERRORS[404], 400: ERRORS[400]},
)
async def cancel_response(request: Request, response_id: str, state: AppStateDep) -> Response:
    service = _service(request, state)
    run = _run(state, service, response_id)
    if run is None:
        await _stored(service, response_id)  # 404 if unknown
        raise InvalidRequestError(
            "Only background responses can be cancelled.", param="response_id"
        )
    return json_response(await state["background"].cancel(run))


def _run(state: AppState, service: ResponseService, response_id: str) -> Run | None:
    """The caller's background run ``response_id``; another key's is unknown to it."""
    run = state["background"].get(response_id)
    return run if run is not None and service.owns(run.response.owner) else None


async def _stored(service: ResponseService, response_id: str) -> dict[str, Any]:
    body = await service.retrieve(response_id)
    if body is None:
        raise NotFoundError(f"No response with id '{response_id}' is stored.", param="response_id")
    return body
