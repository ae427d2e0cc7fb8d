"""The app factory: settings in, a wired FastAPI app out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.responses import HTMLResponse
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from streamapi import __version__, api
from streamapi.api.common import DOCS_ASSETS, AppState
from streamapi.api.dashboard_feed import DashboardFeed
from streamapi.concurrency import ConcurrencyLimiter
from streamapi.control.hooks import Control
from streamapi.control.rules import RulesFile
from streamapi.engines.factory import start_engine
from streamapi.engines.protocol import Engine
from streamapi.errors import APIError, install_error_handlers
from streamapi.lifecycle import Lifecycle
from streamapi.metrics import Metrics
from streamapi.middleware import EdgeMiddleware, bypass_layers
from streamapi.schemas import anthropic, openai, responses
from streamapi.serving.anthropic import MessageService
from streamapi.serving.chat import ChatService
from streamapi.serving.completions import CompletionService
from streamapi.serving.embeddings import EmbeddingService
from streamapi.serving.generation import Generation
from streamapi.serving.response_runs import BackgroundRuns
from streamapi.serving.responses import ResponseService
from streamapi.settings import Settings
from streamapi.state import SharedState, create_state

if TYPE_CHECKING:
    import httpx

# Documented in the OpenAPI schema although no route declares them as a body
# or response model: routes parse their bodies themselves (to give each
# protocol's own error messages) and stream their chunks.
_EXTRA_SCHEMAS: tuple[type[BaseModel], ...] = (
    openai.ChatCompletionRequest,
    openai.PromptRequest,
    openai.ChatCompletionChunk,
    openai.CompletionRequest,
    openai.EmbeddingRequest,
    responses.ResponseRequest,
    responses.CompactRequest,
    anthropic.MessageCreateRequest,
    RulesFile,
)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    lifecycle: Lifecycle | None = None,
    upstream_transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    state: SharedState | None = None,
) -> FastAPI:
    """Build the streamapi ASGI app.

    ``settings`` defaults to ``Settings()`` (the environment). ``engine``
    replaces the one the settings name (the caller then owns its closing, and
    the engine's own metrics are its business); ``lifecycle`` lets the process
    that runs the app start the shutdown drain; ``upstream_transports``
    replaces the network transport of the routes file's upstreams, by name
    (tests put an in-process app there); ``state`` replaces the store the
    settings name (tests give a ``LocalState`` a clock they move). Every app
    has its own metrics registry, served at ``GET /metrics``.
    """
    settings = settings or Settings()
    lifecycle = lifecycle or Lifecycle()
    metrics = Metrics(settings.default_model)
    # In-process stores, or with --state-url the Redis ones (reached at start-up): the
    # one home of rate-limit buckets, concurrency leases and stored Responses.
    shared = state or create_state(
        settings.state_url,
        prefix=settings.state_prefix,
        timeout_s=settings.state_timeout_s,
        fail_closed=settings.state_fail_closed,
        lease_ttl_s=settings.state_lease_ttl_s,
        journal_size=settings.journal_size,
        responses_capacity=settings.responses_store_size,
        responses_max_bytes=settings.responses_store_max_bytes,
        on_error=metrics.state_error,
    )
    control = Control(settings, shared)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        lifecycle.bind(asyncio.get_running_loop())
        await shared.start()  # StateStoreError (start-up fails) if Redis is unreachable
        own_engine = engine is None
        active = (
            engine
            if engine is not None
            else await start_engine(settings, metrics=metrics, transports=upstream_transports)
        )
        generation = Generation(settings, active, lifecycle, metrics)
        control.bind_engine(active)
        per_event = settings.tokens_per_event
        # With several workers, what a scrape of another worker shows of this one.
        publisher = asyncio.create_task(metrics.publish_forever()) if metrics.multiprocess else None
        response_service = ResponseService(generation, shared.responses)
        background = BackgroundRuns(
            response_service,
            lifecycle,
            settings.responses_store_size,
            max_event_bytes=settings.background_events_max_bytes,
        )
        feed = DashboardFeed(
            metrics=metrics,
            control=control,
            lifecycle=lifecycle,
            max_subscribers=settings.dashboard_max_subscribers,
        )
        try:
            yield AppState(
                settings=settings,
                lifecycle=lifecycle,
                generation=generation,
                metrics=metrics,
                limiter=ConcurrencyLimiter(
                    shared.leases,
                    total=settings.max_concurrent_requests,
                    per_key=settings.max_concurrent_requests_per_key,
                    retry_after_s=settings.concurrency_retry_after_s,
                ),
                chat=ChatService(generation, tokens_per_event=per_event),
                completions=CompletionService(generation, tokens_per_event=per_event),
                embeddings=EmbeddingService(generation),
                responses=response_service,
                background=background,
                messages=MessageService(generation),
                control=control,
                shared=shared,
                dashboard=feed,
                started_at=int(time.time()),
            )
        finally:
            await feed.aclose()
            # Before the engine closes: a background run must not outlive the app.
            await background.aclose()
            if publisher is not None:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            if own_engine:
                await active.aclose()
            await shared.aclose()

    # /docs and /redoc from the Swagger UI and ReDoc files that fastapi-offline
    # ships (under DOCS_ASSETS), not from a CDN: streamapi runs with no network.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        redoc_url=None,
        title="streamapi",
        version=__version__,
        summary="OpenAI-compatible streaming LLM API server with an embedded simulator.",
        lifespan=lifespan,
    )
    routers = api.ROUTERS
    if settings.admin_key is not None:
        # Imported only when on, as the dashboard below: the admin API's routes and models.
        from streamapi.api import admin

        routers = (*routers, admin.router)
    if settings.dashboard:
        # Imported only when on: its static files and the metrics parser it reads with.
        from streamapi.api import dashboard

        routers = (*routers, dashboard.router)
    # Added flat rather than with include_router: FastAPI matches an included
    # router by walking it again for every request, which cost /health a third
    # of its CPU (docs/performance.md). The routers hold routes only, their
    # prefixes and dependencies already applied to each route.
    for router in routers:
        app.router.routes.extend(router.routes)

    def count_error(error: APIError) -> None:
        metrics.error(error.type, error.code, in_stream=False)

    install_error_handlers(app, api.ERROR_DIALECTS, on_error=count_error)
    # One layer of ours (middleware.py says what it does, in which order, and how CORS
    # fits in), inside uvicorn's proxy headers when they are trusted and FastAPI's own
    # outer layers. A stream's body skips every layer of the app (it is served from
    # outside them, by bypass_layers below), so a layer added that must see it
    # (compression, say) would silently miss it: tests/test_edge_middleware.py pins this stack.
    app.add_middleware(
        EdgeMiddleware,
        metrics=metrics,
        keys=settings.keys,
        control=control,
        dialects=api.ERROR_DIALECTS,
        max_body_bytes=settings.max_request_body_bytes,
        allow_origins=settings.cors_allow_origins,
        on_error=count_error,
    )
    if settings.forwarded_allow_ips:
        # uvicorn's own, applied here rather than by uvicorn (serve turns its copy off)
        # so that every way of running the app trusts the same proxies, and no others:
        # uvicorn's default trusts loopback, where any local process can forge the header.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    # A stream's body is served from outside every layer above, once they have
    # returned: they act on a response's start.
    bypass_layers(app)
    _document_extra_schemas(app)
    _add_redoc(app)
    return app


# ReDoc's bundle shows an attribution logo from its makers' CDN: the policy keeps
# the page from fetching it (or anything else not ours), so the page makes no
# request off the server, as the browser tests check.
_REDOC_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def _add_redoc(app: FastAPI) -> None:
    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = _REDOC_POLICY
        return page


def _document_extra_schemas(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for model in _EXTRA_SCHEMAS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
