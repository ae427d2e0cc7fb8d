"""OpenAI's routes: chat and legacy completions, embeddings, models."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from streamapi.api.common import (
    ERRORS,
    AppState,
    AppStateDep,
    RequestOnlyRoute,
    check_model_access,
    principal_of,
    read_json,
    refuse_early,
    refuse_if_draining,
    respond,
    sse_event_schema,
    state_of,
    validate,
)
from streamapi.errors import JSON_ERRORS_KEY, InvalidRequestError, ModelNotFoundError
from streamapi.schemas.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    CreateEmbeddingResponse,
    EmbeddingRequest,
    Model,
    ModelList,
    PromptRequest,
)
from streamapi.settings import Settings

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
# Routes that stream OpenAI's data-only events; a client that does not accept
# JSON (curl, EventSource) gets its errors there as one SSE event it can read.
SSE_PATHS = frozenset({CHAT_COMPLETIONS_PATH, COMPLETIONS_PATH})

router = APIRouter(route_class=RequestOnlyRoute)


def _body(*alternatives: str) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in alternatives]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _streamed(chunk: str, description: str) -> dict[int | str, Any]:
    # After the first byte an error is an event too, before [DONE].
    stream = {"schema": sse_event_schema(chunk, "ErrorResponse", done=True)}
    responses: dict[int | str, Any] = {
        200: {"description": description, "content": {"text/event-stream": stream}}
    }
    # Before it, a client that does not accept JSON gets its error as one SSE event.
    error_content = {
        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}},
        "text/event-stream": {"schema": sse_event_schema("ErrorResponse")},
    }
    for status, doc in ERRORS.items():
        responses[status] = {**doc, "content": error_content}
    return responses


@router.post(
    CHAT_COMPLETIONS_PATH,
    response_model=ChatCompletion,
    summary="Create a chat completion",
    description=(
        "OpenAI's chat completions. The body is OpenAI's form (`model`, `messages`, ...) "
        'or the simple prompt form `{"prompt": ..., "stream": true}`. With `stream` true '
        "the answer is a `text/event-stream` of `chat.completion.chunk` events ended by "
        "`data: [DONE]`; otherwise one `chat.completion` object. Errors found before the "
        "first byte have their HTTP status (JSON for clients that accept "
        "`application/json` and for an OpenAI-form body without `stream: true`, else one "
        "SSE `data:` event); errors after it arrive as a "
        '`data: {"error": ...}` event followed by `[DONE]`.'
    ),
    responses=_streamed("ChatCompletionChunk", "A chat completion or its chunks."),
    openapi_extra=_body("ChatCompletionRequest", "PromptRequest"),
)
async def create_chat_completion(request: Request) -> Response:
    state = state_of(request)
    refuse_early(request, state)
    payload = await read_json(request)
    if "messages" not in payload and "prompt" in payload:
        chat_request = _from_prompt_form(payload, state["settings"])
    else:
        _expect_json_errors(request, payload)
        chat_request = validate(ChatCompletionRequest, payload)
    return await respond(
        request, state, state["chat"], chat_request, streamed=bool(chat_request.stream)
    )


@router.post(
    COMPLETIONS_PATH,
    response_model=Completion,
    summary="Create a (legacy) completion",
    description=(
        "OpenAI's legacy text completions: `prompt` as a string, strings or token ids; "
        "`echo`, `logprobs`, `n`, `stop`, `max_tokens` (16 when omitted). Streams "
        "`text_completion` events ended by `data: [DONE]`."
    ),
    responses=_streamed("Completion", "A completion or its stream events."),
    openapi_extra=_body("CompletionRequest"),
)
async def create_completion(request: Request) -> Response:
    state = state_of(request)
    refuse_early(request, state)
    payload = await read_json(request)
    _expect_json_errors(request, payload)
    parsed = validate(CompletionRequest, payload)
    return await respond(request, state, state["completions"], parsed, streamed=bool(parsed.stream))


def _expect_json_errors(request: Request, payload: dict[str, Any]) -> None:
    """An OpenAI-form body that does not ask to stream gets its errors as JSON.

    Its client waits for a JSON answer whatever it sent as ``Accept``; only a
    stream's client (and the simple prompt form's) reads an SSE error.
    """
    if payload.get("stream") is not True:
        request.scope["state"][JSON_ERRORS_KEY] = True


@router.post(
    "/v1/embeddings",
    response_model=CreateEmbeddingResponse,
    summary="Create embeddings",
    description="Deterministic unit vectors derived from each input: equal inputs, equal vectors.",
    responses=ERRORS,
    openapi_extra=_body("EmbeddingRequest"),
)
async def create_embedding(request: Request, state: AppStateDep) -> Response:
    refuse_if_draining(state["lifecycle"])  # embeddings take no concurrency lease
    embedding_request = validate(EmbeddingRequest, await read_json(request))
    model = state["generation"].resolve_model(embedding_request.model)
    check_model_access(request, model)
    service = state["embeddings"]
    service.check(embedding_request)  # its 400s, before any work
    # Thousands of vectors take seconds of CPU to draw and encode: not on the event loop.
    body = await asyncio.to_thread(lambda: orjson.dumps(service.create(embedding_request)))
    return Response(body, media_type="application/json")


@router.get("/v1/models", response_model=ModelList, summary="List the served models")
async def list_models(request: Request, state: AppStateDep) -> ModelList:
    principal = principal_of(request)
    names = [
        name
        for name in state["settings"].model_names
        if principal is None or principal.may_use(name)
    ]
    return ModelList(data=[_model_card(name, state) for name in names])


@router.get(
    "/v1/models/{model_id:path}",
    response_model=Model,
    summary="Retrieve a served model",
    responses={404: ERRORS[404]},
)
async def retrieve_model(request: Request, model_id: str, state: AppStateDep) -> Model:
    if model_id not in state["settings"].model_names:
        raise ModelNotFoundError(model_id)
    check_model_access(request, model_id)
    return _model_card(model_id, state)


def _from_prompt_form(payload: dict[str, Any], settings: Settings) -> ChatCompletionRequest:
    """The simple prompt form ``{"prompt", "stream"}``, with its own rules and messages."""
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
    validate(PromptRequest, payload)
    rest = {k: v for k, v in payload.items() if k != "prompt"}
    return validate(
        ChatCompletionRequest, {**rest, "messages": [{"role": "user", "content": prompt}]}
    ).from_prompt_form()


def _model_card(name: str, state: AppState) -> Model:
    settings = state["settings"]
    route = settings.routes.upstream_of(name)
    return Model(
        id=name,
        created=state["started_at"],
        # An upstream model is owned by its upstream, named as in the routes file.
        owned_by="streamapi" if route is None else route[0],
        max_model_len=settings.max_model_len_of(name),
    )
