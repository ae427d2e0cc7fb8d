"""Operational routes: health, load, metrics and version."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from starlette.responses import Response

from streamapi import __version__
from streamapi.api.common import ERRORS, AppStateDep, shutting_down
from streamapi.metrics import CONTENT_TYPE_LATEST
from streamapi.schemas.openai import Health, Load

router = APIRouter()


@router.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    summary="Liveness and readiness",
    responses={503: ERRORS[503]},
)
async def health(state: AppStateDep) -> Health:
    if state["lifecycle"].draining:
        raise shutting_down()
    shared = state["shared"]
    if shared.kind == "local":
        return Health(status="healthy")
    # Liveness does not depend on Redis: a process without it still serves (failing open).
    return Health(status="healthy", state={"backend": shared.kind, **shared.health.describe()})


router.add_api_route(
    "/ping",
    health,
    methods=["GET"],
    response_model=Health,
    response_model_exclude_none=True,
    summary="Alias of /health",
)


@router.get("/load", response_model=Load, summary="Generation requests in flight")
async def load(state: AppStateDep) -> Load:
    # The task count lets soak runs and tests see that nothing is left behind.
    return Load(server_load=state["lifecycle"].in_flight, tasks=len(asyncio.all_tasks()))


@router.get("/version", summary="Server version and process id")
async def version() -> dict[str, str | int]:
    # The pid tells which worker answered when the server runs several (--workers).
    return {"version": __version__, "pid": os.getpid()}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="vLLM's engine metrics (`vllm:*`) for the simulated engine and the "
    "server's own (`streamapi_*`), in Prometheus' text format.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(state: AppStateDep) -> Response:
    return Response(state["metrics"].render(), media_type=CONTENT_TYPE_LATEST)
