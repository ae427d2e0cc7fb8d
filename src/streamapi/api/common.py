"""What every route shares: the lifespan state, body parsing, and response wrapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any, Protocol, TypedDict, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from streamapi import sse
from streamapi.errors import InvalidRequestError, ServiceUnavailableError, from_validation_error
from streamapi.lifecycle import Lifecycle
from streamapi.schemas.openai import ErrorResponse
from streamapi.serving.anthropic import MessageService
from streamapi.serving.chat import ChatService
from streamapi.serving.completions import CompletionService
from streamapi.serving.core import Generation
from streamapi.serving.embeddings import EmbeddingService
from streamapi.serving.responses import ResponseService
from streamapi.settings import Settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
R_contra = TypeVar("R_contra", contravariant=True)
J = TypeVar("J")


class GenerationService(Protocol[R_contra, J]):
    """What a generation route needs of its service (``serving.chat.ChatService``...)."""

    def prepare(self, request: R_contra) -> J: ...

    def stream(self, job: J) -> AsyncIterator[bytes]: ...

    async def complete(self, job: J) -> dict[str, Any]: ...


class State(TypedDict):
    """What the app's lifespan hands to every request."""

    settings: Settings
    lifecycle: Lifecycle
    generation: Generation
    chat: ChatService
    completions: CompletionService
    embeddings: EmbeddingService
    responses: ResponseService
    messages: MessageService
    started_at: int


def _state(request: Request) -> State:
    # Starlette copies the lifespan's state dict into every request's scope.
    state: State = request.scope["state"]
    return state


StateDep = Annotated[State, Depends(_state)]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request (malformed JSON, a bad field, context length exceeded).",
        404: "Unknown model (when unlisted models are refused).",
        413: "Request body over the size limit.",
        500: "Unexpected server error; the message is generic, details go to the log.",
        503: "The server is shutting down.",
    }.items()
}


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400."""
    body = await request.body()
    if not body.strip():
        raise InvalidRequestError("No JSON body provided.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    return payload


def validate(model: type[M], payload: dict[str, Any]) -> M:
    """``payload`` as ``model``, or 400 naming the first bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise from_validation_error(exc, payload) from None


def refuse_if_draining(lifecycle: Lifecycle) -> None:
    if lifecycle.draining:
        raise shutting_down()


def shutting_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The server is shutting down; retry on another instance.",
        code="server_shutting_down",
        headers={"Retry-After": "1"},
    )


async def respond(
    request: Request,
    state: State,
    service: GenerationService[M, J],
    parsed: M,
    *,
    streamed: bool,
) -> Response:
    """Prepare the job (every check before the first byte), then stream it or answer whole."""
    job = service.prepare(parsed)
    if streamed:
        return event_stream(state, service.stream(job))
    return await whole(request, state, service.complete(job))


def event_stream(state: State, frames: AsyncIterator[bytes]) -> Response:
    """A streamed response whose whole life counts as one request in flight."""
    settings, lifecycle = state["settings"], state["lifecycle"]
    return sse.EventStreamResponse(
        frames,
        ping_interval_s=settings.ping_interval_s,
        send_timeout_s=settings.send_timeout_s,
        on_start=lifecycle.request_started,
        on_finish=lifecycle.request_finished,
    )


async def whole(request: Request, state: State, work: Coroutine[Any, Any, Any]) -> Response:
    """A non-streamed answer: counted in flight, and cancelled if the client leaves."""
    lifecycle = state["lifecycle"]
    lifecycle.request_started()
    try:
        body = await _unless_disconnected(request, work)
    finally:
        lifecycle.request_finished()
    if body is None:
        return Response(status_code=499)  # nobody is listening; for the access log only
    return json_response(body)


def json_response(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` unless the client goes away first; then cancel it and return None."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()
