"""What every route shares: the lifespan state, body parsing, and response wrapping."""

from __future__ import annotations

import asyncio
import hmac
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any, Protocol, TypedDict, TypeVar

import orjson
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.responses import Response
from starlette.routing import request_response

from streamapi import scope_keys, sse
from streamapi.api.dashboard_feed import DashboardFeed
from streamapi.concurrency import ConcurrencyLimiter
from streamapi.control.hooks import Control
from streamapi.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
    from_validation_error,
    retry_after_headers,
)
from streamapi.keys import Principal
from streamapi.lifecycle import Lifecycle
from streamapi.metrics import Metrics
from streamapi.schemas.openai import ErrorResponse
from streamapi.serving.anthropic import MessageService
from streamapi.serving.chat import ChatService
from streamapi.serving.completions import CompletionService
from streamapi.serving.embeddings import EmbeddingService
from streamapi.serving.generation import Admission, Generation, Job, TestOverrides
from streamapi.serving.response_runs import BackgroundRuns
from streamapi.serving.responses import ResponseService
from streamapi.serving.schema_checks import validator_ready
from streamapi.settings import Settings
from streamapi.state.base import SharedState

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
R_contra = TypeVar("R_contra", contravariant=True)
J = TypeVar("J", bound="HasJob")

# Where the docs pages' and the dashboard's scripts and styles are served.
DOCS_ASSETS = "/docs-assets"
DASHBOARD_ASSETS = "/dashboard/assets"
# Open without a key (``middleware.EdgeMiddleware``): probes, scrapes, the docs (as
# vLLM leaves them) and the dashboard's page and files, which hold no data (its events
# need the key).
OPEN_PATHS = frozenset(
    {
        "/health",
        "/ping",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/dashboard",
    }
)
OPEN_PREFIXES = (f"{DOCS_ASSETS}/", f"{DASHBOARD_ASSETS}/")

# Per-request test overrides, honoured only with --enable-latency-headers.
TTFT_HEADER = "x-streamapi-ttft-ms"
ITL_HEADER = "x-streamapi-itl-ms"
OUTPUT_TOKENS_HEADER = "x-streamapi-output-tokens"


class HasJob(Protocol):
    @property
    def job(self) -> Job: ...


class GenerationService(Protocol[R_contra, J]):
    """What a generation route needs of its service (``serving.chat.ChatService``...)."""

    def prepare(self, request: R_contra) -> J: ...

    def stream(self, job: J, admission: Admission) -> AsyncIterator[bytes]: ...

    async def complete(self, job: J, admission: Admission) -> dict[str, Any]: ...


class AppState(TypedDict):
    """What the app's lifespan hands to every request."""

    settings: Settings
    lifecycle: Lifecycle
    generation: Generation
    metrics: Metrics
    limiter: ConcurrencyLimiter
    chat: ChatService
    completions: CompletionService
    embeddings: EmbeddingService
    responses: ResponseService
    background: BackgroundRuns
    messages: MessageService
    control: Control
    shared: SharedState
    dashboard: DashboardFeed
    started_at: int


def state_of(request: Request) -> AppState:
    """The lifespan's state, which Starlette copies into every request's scope.

    The generation routes call this rather than depend on ``AppStateDep``: a
    dependency costs FastAPI's resolver a pass per request, on the hot path.
    """
    state: AppState = request.scope["state"]
    return state


async def _state(request: Request) -> AppState:
    # async: FastAPI would run a plain function in its thread pool, per request.
    return state_of(request)


AppStateDep = Annotated[AppState, Depends(_state)]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request (malformed JSON, a bad field, context length exceeded).",
        401: "Missing or wrong API key (when keys are configured).",
        404: "Unknown model (when unlisted models are refused), or one the key may not use.",
        413: "Request body over the size limit.",
        429: "The engine's queue is full, or a concurrency cap is reached; retry after "
        "Retry-After seconds.",
        500: "Unexpected server error; the message is generic, details go to the log.",
        502: "An upstream engine is unreachable, failed, or broke its stream.",
        503: "The server is shutting down.",
        504: "An upstream engine timed out before answering.",
    }.items()
}


def sse_event_schema(*payloads: str, named: bool = False, done: bool = False) -> dict[str, Any]:
    """An SSE event's schema: a ``data`` field carrying JSON (OpenAPI 3.2's way).

    ``payloads`` name the components its JSON may follow; ``named`` events
    have an ``event`` field too (Responses, Anthropic); ``done`` streams end
    with the non-JSON ``[DONE]``.
    """
    kinds: list[dict[str, Any]] = [
        {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": f"#/components/schemas/{payload}"},
        }
        for payload in payloads
    ] or [{"type": "string", "contentMediaType": "application/json"}]
    if done:
        kinds.append({"const": "[DONE]"})
    data = kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
    properties: dict[str, Any] = {"data": data}
    if named:
        properties["event"] = {"type": "string"}
    return {"type": "object", "required": ["data"], "properties": properties}


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400.

    Read from the request's stream, not ``request.body()``, which would keep the bytes
    on the request: a stream's response keeps the request alive to its end, and an
    agent's prompt is tens of kilobytes. Whether it is small enough to prepare on the
    event loop (``is_small``) is noted in the scope for ``prepared``.
    """
    body = b"".join([chunk async for chunk in request.stream()])
    request.scope.setdefault("state", {})[scope_keys.SMALL_BODY] = is_small(body)
    if not body.strip():
        raise InvalidRequestError("No JSON body provided.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    return payload


class RequestOnlyRoute(APIRoute):
    """An ``APIRoute`` whose endpoint, if it takes the request alone, is called with it directly.

    The generation endpoints read, parse and validate their own bodies (to give
    each protocol its own error messages) and return a ``Response``; for them
    FastAPI's request handler would only solve an empty set of parameters and
    look at the body's content type, about a tenth of a streamed request's CPU
    (docs/performance.md). Nor do they need what FastAPI's ``request_response``
    adds to Starlette's, of which it is a copy: two ``AsyncExitStack``s per request
    for dependencies with ``yield``, which such an endpoint has none of, and which
    a stream would keep alive to its end. Such a route's ASGI app is Starlette's
    ``request_response`` (the one a plain Starlette ``Route`` has), exceptions
    handled the same way. Any other endpoint gets FastAPI's handler and app. The
    route is declared and documented in OpenAPI like any other.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        handler = self._request_only_handler()
        # FastAPI's per-route body limit wraps its own app: kept for a route that sets one.
        if handler is not None and self.max_body_size is None:
            self.app = request_response(handler)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self._request_only_handler() or super().get_route_handler()

    def _request_only_handler(
        self,
    ) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
        """The endpoint called with the request alone, if that is all it takes, else None."""
        dependant = self.dependant
        name = dependant.request_param_name
        takes_more = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.dependencies,
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
        if name is None or any(takes_more) or not asyncio.iscoroutinefunction(self.endpoint):
            return None
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response = await endpoint(**{name: request})
            if not isinstance(response, Response):
                raise TypeError(f"{self.path} must return a Response, not {type(response)}")
            return response

        return handle


def validate(model: type[M], payload: dict[str, Any]) -> M:
    """``payload`` as ``model``, or 400 naming the first bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise from_validation_error(exc, payload) from None


def refuse_early(request: Request, state: AppState) -> None:
    """503 while draining, 429 when a concurrency cap is full: before the body is read.

    Under overload most requests end here, so a refusal must cost no parsing,
    validation or planning, and the event loop stays free for the streams it
    serves and for ``/health``.
    """
    refuse_if_draining(state["lifecycle"])
    state["limiter"].check(principal_of(request))


def refuse_if_draining(lifecycle: Lifecycle) -> None:
    if lifecycle.draining:
        raise shutting_down()


def shutting_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The server is shutting down; retry on another instance.",
        code="server_shutting_down",
        headers=retry_after_headers(1),
    )


# Past this many JSON objects (or bytes) in a body, preparing it runs in a worker
# thread: checking a JSON Schema costs ~0.5 ms of CPU per property (and counting a
# long prompt's tokens adds up too), which must not hold up every stream on the event
# loop. Below it, the hop to a thread would cost more than the work.
_OBJECTS_ON_THE_LOOP = 64
_BYTES_ON_THE_LOOP = 256 * 1024


async def prepared(request: Request, service: GenerationService[M, J], parsed: M) -> J:
    """``service.prepare(parsed)``: on the event loop for a small body (``read_json`` read
    it), else in a thread."""
    if scope_keys.state_of(request.scope).get(scope_keys.SMALL_BODY, True):
        return service.prepare(parsed)
    return await asyncio.to_thread(service.prepare, parsed)


def is_small(body: bytes | str) -> bool:
    """Whether preparing a request of this body is cheap enough for the event loop."""
    if isinstance(body, str):  # a WebSocket message: the same test on its text
        objects, markers = body.count("{"), ("schema" in body or "parameters" in body)
    else:
        objects, markers = body.count(b"{"), (b"schema" in body or b"parameters" in body)
    if len(body) > _BYTES_ON_THE_LOOP or objects > _OBJECTS_ON_THE_LOOP:
        return False
    # Every schema a request can bring sits under a key naming "schema" or "parameters";
    # the first one a server sees imports the validator, which is for a thread too.
    return not markers or validator_ready()


async def respond(
    request: Request,
    state: AppState,
    service: GenerationService[M, J],
    parsed: M,
    *,
    streamed: bool,
) -> Response:
    """Prepare and admit the job (every refusal before the first byte), then stream or answer.

    The engine's sequences are open from admission on; however the request
    ends, they are closed exactly once (``Admission.aclose`` is idempotent).
    """
    job = await prepared(request, service, parsed)
    check_model_access(request, job.job.model)
    # Test control: rate limits, rules and faults (its refusals are APIErrors too).
    plan = await state["control"].plan(request, job.job, streamed=streamed)
    generation = state["generation"]
    # Admission releases the lease if it fails, and Admission.aclose once it ends.
    lease = await state["limiter"].take(principal_of(request))
    admission = await generation.admit(
        plan.job,
        arrived_at=scope_keys.arrival_time(request.scope),
        overrides=plan.overrides(_test_overrides(request, state["settings"])),
        request_id=scope_keys.state_of(request.scope).get(scope_keys.REQUEST_ID),
        lease=lease,
    )
    plan.arm(admission)
    if not streamed:
        try:
            return await plan.answer(
                whole(request, state, generation.whole(admission, service.complete(job, admission)))
            )
        finally:
            await admission.aclose()
    try:
        frames = plan.frames(service.stream(job, admission))
        return event_stream(state, frames, admission)
    except BaseException:
        await admission.aclose()
        raise


def principal_of(request: Request) -> Principal | None:
    """The caller's key (``middleware.EdgeMiddleware``), or None when auth is off."""
    principal = scope_keys.state_of(request.scope).get(scope_keys.PRINCIPAL)
    return principal if isinstance(principal, Principal) else None


def owner_of(principal: Principal | None) -> str | None:
    """The tenant a request acts for: its key's name; None (one tenant) with auth off."""
    return None if principal is None else principal.name


def check_model_access(request: Request, model: str) -> None:
    """404 ``model_not_found`` when the caller's key may not use ``model``.

    404 rather than 403, as OpenAI answers: "does not exist or you do not have
    access to it", so a key learns nothing of the models it may not use.
    """
    check_principal_access(principal_of(request), model)


def check_principal_access(principal: Principal | None, model: str) -> None:
    """``check_model_access`` for a caller already known (a WebSocket's handshake)."""
    if principal is not None and not principal.may_use(model):
        raise ModelNotFoundError(model)


def event_stream(state: AppState, frames: AsyncIterator[bytes], admission: Admission) -> Response:
    """A streamed response whose whole life counts as one request in flight.

    The admission is marked ended once every frame is out, and closed when the
    response is over however it ended (``Admission.aclose`` is idempotent).
    """
    settings = state["settings"]
    life = _StreamLife(state["lifecycle"], state["metrics"], admission)
    return sse.EventStreamResponse(
        frames,
        ping_interval_s=settings.ping_interval_s,
        send_timeout_s=settings.send_timeout_s,
        on_start=life.start,
        on_complete=life.complete,
        on_finish=life.finish,
    )


class _StreamLife:
    """A stream's hooks: one small object an open stream keeps, not three closures."""

    __slots__ = ("_admission", "_lifecycle", "_metrics")

    def __init__(self, lifecycle: Lifecycle, metrics: Metrics, admission: Admission) -> None:
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._admission = admission

    def start(self) -> None:
        self._lifecycle.request_started()
        self._metrics.streams_in_flight.inc()

    def complete(self) -> None:
        # Every frame went out: the request ended, it was not abandoned.
        self._admission.ended = True

    async def finish(self) -> None:
        try:
            await self._admission.aclose()
        finally:
            self._lifecycle.request_finished()
            self._metrics.streams_in_flight.dec()


async def whole(request: Request, state: AppState, work: Awaitable[Any]) -> Response:
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


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
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


def check_admin_key(key: SecretStr | None, given: str | None, *, what: str) -> None:
    """``AuthenticationError`` (401) unless ``given`` is the admin key (none set: never)."""
    if key is None or not hmac.compare_digest(
        (given or "").encode(), key.get_secret_value().encode()
    ):
        raise AuthenticationError(
            f"Missing or wrong admin key: {what} 'Authorization: Bearer <admin key>'.",
            code="invalid_admin_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
