"""HTTP routes: parse, validate, dispatch to ``serving``, wrap in a response."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Annotated, Any, TypedDict, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response

from streamapi import __version__, sse
from streamapi.engines import Engine
from streamapi.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
    from_validation_error,
)
from streamapi.lifecycle import Lifecycle
from streamapi.metrics import CONTENT_TYPE_LATEST, Metrics
from streamapi.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    Health,
    Load,
    Model,
    ModelList,
    PromptRequest,
)
from streamapi.serving import Admission, ChatService, TestOverrides
from streamapi.settings import Settings

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
# Routes that stream, whose errors a non-JSON client receives as an SSE event.
SSE_PATHS = frozenset({CHAT_COMPLETIONS_PATH})
# Per-request test overrides, honoured only with --enable-latency-headers.
TTFT_HEADER = "x-streamapi-ttft-ms"
ITL_HEADER = "x-streamapi-itl-ms"
OUTPUT_TOKENS_HEADER = "x-streamapi-output-tokens"

T = TypeVar("T")


class State(TypedDict):
    """What the app's lifespan hands to every request."""

    settings: Settings
    engine: Engine
    lifecycle: Lifecycle
    chat: ChatService
    metrics: Metrics
    started_at: int


async def _state(request: Request) -> State:
    # async: FastAPI runs a sync dependency in its thread pool, a thread hop per request.
    state = request.state
    return State(
        settings=state.settings,
        engine=state.engine,
        lifecycle=state.lifecycle,
        chat=state.chat,
        metrics=state.metrics,
        started_at=state.started_at,
    )


StateDep = Annotated[State, Depends(_state)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request (malformed JSON, a bad field, context length exceeded).",
        404: "Unknown model (when unlisted models are refused).",
        413: "Request body over the size limit.",
        429: "The engine's queue is full; retry after Retry-After seconds.",
        500: "Unexpected server error; the message is generic, details go to the log.",
        503: "The server is shutting down.",
    }.items()
}

router = APIRouter()


@router.post(
    CHAT_COMPLETIONS_PATH,
    response_model=ChatCompletion,
    summary="Create a chat completion",
    description=(
        "OpenAI's chat completions. The body is OpenAI's form (`model`, `messages`, ...) "
        'or the original spec\'s `{"prompt": ..., "stream": true}`. With `stream` true '
        "the answer is a `text/event-stream` of `chat.completion.chunk` events ended by "
        "`data: [DONE]`; otherwise one `chat.completion` object. Errors found before the "
        "first byte have their HTTP status (JSON for clients that accept "
        "`application/json`, else one SSE `data:` event); errors after it arrive as a "
        '`data: {"error": ...}` event followed by `[DONE]`.'
    ),
    responses={
        200: {
            "description": "A chat completion, or its stream of chunks.",
            "content": {
                "text/event-stream": {
                    "schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}
                }
            },
        },
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/ChatCompletionRequest"},
                            {"$ref": "#/components/schemas/PromptRequest"},
                        ]
                    }
                }
            },
        }
    },
)
async def create_chat_completion(request: Request, state: StateDep) -> Response:
    settings, lifecycle, chat = state["settings"], state["lifecycle"], state["chat"]
    arrived_at = _arrived_at(request)
    if lifecycle.draining:
        raise _shutting_down()
    chat_request = _parse_chat_request(await request.body(), settings)
    job = chat.prepare(chat_request, _test_overrides(request, settings))
    # Admission happens here, before the response exists: a full engine is a 429.
    admission = await chat.admit(job, arrived_at=arrived_at)
    if chat_request.stream:
        try:
            return _event_stream(chat, admission, state)
        except BaseException:
            await admission.aclose()
            raise
    lifecycle.request_started()
    try:
        completion = await _unless_disconnected(request, chat.complete(admission))
    finally:
        await admission.aclose()
        lifecycle.request_finished()
    if completion is None:
        return Response(status_code=499)  # nobody is listening; for the access log only
    return Response(orjson.dumps(completion.model_dump(mode="json")), media_type="application/json")


def _event_stream(chat: ChatService, admission: Admission, state: State) -> Response:
    settings, lifecycle, metrics = state["settings"], state["lifecycle"], state["metrics"]

    def on_start() -> None:
        lifecycle.request_started()
        metrics.streams_in_flight.inc()

    async def on_finish() -> None:
        try:
            await admission.aclose()
        finally:
            lifecycle.request_finished()
            metrics.streams_in_flight.dec()

    return sse.EventStreamResponse(
        chat.stream(admission),
        ping_interval_s=settings.ping_interval_s,
        send_timeout_s=settings.send_timeout_s,
        on_start=on_start,
        on_finish=on_finish,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="vLLM's engine metrics (`vllm:*`) for the simulated engine and the "
    "server's own (`streamapi_*`), in Prometheus' text format.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(state: StateDep) -> Response:
    return Response(state["metrics"].render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, summary="List the served models")
async def list_models(state: StateDep) -> ModelList:
    settings = state["settings"]
    return ModelList(data=[_model_card(name, state) for name in settings.served_model_names])


@router.get(
    "/v1/models/{model_id:path}",
    response_model=Model,
    summary="Retrieve a served model",
    responses={404: _ERRORS[404]},
)
async def retrieve_model(model_id: str, state: StateDep) -> Model:
    if model_id not in state["settings"].served_model_names:
        raise ModelNotFoundError(model_id)
    return _model_card(model_id, state)


@router.get(
    "/health",
    response_model=Health,
    summary="Liveness and readiness",
    responses={503: _ERRORS[503]},
)
async def health(state: StateDep) -> Health:
    if state["lifecycle"].draining:
        raise _shutting_down()
    return Health(status="healthy")


router.add_api_route(
    "/ping", health, methods=["GET"], response_model=Health, summary="Alias of /health"
)


@router.get("/load", response_model=Load, summary="Generation requests in flight")
async def load(state: StateDep) -> Load:
    return Load(server_load=state["lifecycle"].in_flight)


@router.get("/version", summary="Server version")
async def version() -> dict[str, str]:
    return {"version": __version__}


def _parse_chat_request(body: bytes, settings: Settings) -> ChatCompletionRequest:
    if not body.strip():
        raise InvalidRequestError("No JSON body provided.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    if "messages" not in payload and "prompt" in payload:
        return _from_prompt_form(payload, settings)
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _from_prompt_form(payload: dict[str, Any], settings: Settings) -> ChatCompletionRequest:
    """The original spec's ``{"prompt", "stream"}`` form, with its own rules and messages."""
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequestError("prompt must be a string.", param="prompt")
    if not prompt.strip():
        raise InvalidRequestError("Prompt cannot be empty", param="prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise InvalidRequestError(
            f"Prompt exceeds maximum length of {settings.max_prompt_chars} characters",
            param="prompt",
        )
    if payload.get("stream") is not True:
        raise InvalidRequestError("stream parameter must be true", param="stream")
    try:
        PromptRequest.model_validate(payload)
        rest = {k: v for k, v in payload.items() if k != "prompt"}
        return ChatCompletionRequest.model_validate(
            {**rest, "messages": [{"role": "user", "content": prompt}]}
        )
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _arrived_at(request: Request) -> float:
    """When the request reached the app (stamped by the outermost middleware)."""
    arrived_at = getattr(request.state, "arrived_at", None)
    if isinstance(arrived_at, float):
        return arrived_at
    return asyncio.get_running_loop().time()


def _test_overrides(request: Request, settings: Settings) -> TestOverrides | None:
    if not settings.enable_latency_headers:
        return None
    headers = request.headers
    ttft = _header_number(headers.get(TTFT_HEADER), TTFT_HEADER, 600_000)
    itl = _header_number(headers.get(ITL_HEADER), ITL_HEADER, 60_000)
    tokens = _header_number(headers.get(OUTPUT_TOKENS_HEADER), OUTPUT_TOKENS_HEADER, 1_000_000)
    if ttft is None and itl is None and tokens is None:
        return None
    if tokens is not None and not tokens.is_integer():
        raise InvalidRequestError(
            f"{OUTPUT_TOKENS_HEADER} must be a whole number.", param=OUTPUT_TOKENS_HEADER
        )
    return TestOverrides(
        time_to_first_token_ms=ttft,
        inter_token_latency_ms=itl,
        output_tokens=None if tokens is None else int(tokens),
    )


def _header_number(value: str | None, name: str, most: float) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= most:
        raise InvalidRequestError(
            f"{name} must be a number from 0 to {most:g}; got {value!r}.", param=name
        )
    return number


def _model_card(name: str, state: State) -> Model:
    return Model(
        id=name,
        created=state["started_at"],
        owned_by="streamapi",
        max_model_len=state["settings"].max_model_len,
    )


def _shutting_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The server is shutting down; retry on another instance.",
        code="server_shutting_down",
        headers={"Retry-After": "1"},
    )


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
