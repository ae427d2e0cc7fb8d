"""The dashboard (``/dashboard``): a page, its files, and the live events it draws from.

The page and its script and style (``streamapi/static/dashboard/``) hold no
data and are open like ``/docs``. What it shows comes from
``GET /dashboard/events``, Server-Sent Events sent by our own
``EventStreamResponse``: every ``TICK_S`` the engine's numbers and the latency
histograms, read from the same rendering as ``/metrics`` (so with ``--workers
N`` they are the sum over workers, like a scrape), and the journal's entries
that changed since the last event (read through ``Control.journal``, so a
shared journal is shown as it is). The events need the admin key when one is
set; the page's controls call the admin API itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from streamapi import sse
from streamapi.api.common import AppState, AppStateDep, check_admin_key
from streamapi.control.rules import ENDPOINT_PATHS
from streamapi.middleware import DASHBOARD_ASSETS
from streamapi.state import StateUnavailableError

# How often the page is sent fresh numbers: live to the eye, cheap to render.
TICK_S = 0.5
_STATIC = resources.files("streamapi") / "static" / "dashboard"
_bearer = HTTPBearer(auto_error=False, description="The server's --admin-key, when set.")


async def _authorize(
    state: AppStateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    key = state["settings"].admin_key
    if key is not None:
        given = None if credentials is None else credentials.credentials
        check_admin_key(key, given, what="the dashboard's events need")


router = APIRouter(tags=["dashboard"])
router.mount(DASHBOARD_ASSETS, StaticFiles(directory=str(_STATIC)), name="dashboard-assets")


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    return FileResponse(str(_STATIC / "index.html"), media_type="text/html")


# Not in the OpenAPI document: the page's own feed, whose events may change with the
# page (docs/dashboard.md describes them), and a stream that never ends by itself.
@router.get("/dashboard/events", dependencies=[Depends(_authorize)], include_in_schema=False)
async def dashboard_events(state: AppStateDep) -> Response:
    return sse.EventStreamResponse(
        _events(state),
        ping_interval_s=0,
        send_timeout_s=state["settings"].send_timeout_s,
    )


async def _events(state: AppState) -> AsyncIterator[bytes]:
    settings = state["settings"]
    yield sse.encode_event(
        "hello",
        {
            "models": settings.served_model_names,
            "admin": settings.admin_key is not None,
            "fault_headers": settings.enable_fault_headers,
            "latency_headers": settings.enable_latency_headers,
            "api_keys": state["settings"].keys.enabled,
        },
    )
    rates = _Rates()
    sent: dict[int, dict[str, Any]] = {}
    # Ends when the server drains; a client that leaves closes it sooner.
    while not state["lifecycle"].draining:
        numbers = _read_metrics(state["metrics"].render().decode())
        journal = state["control"].journal
        changed: list[dict[str, Any]] | None = None
        if journal is not None:
            try:  # with --state-url, every process's requests
                entries = await journal.read()
            except StateUnavailableError:  # Redis lost: this process's own meanwhile
                entries = journal.entries()
            changed = [entry for entry in entries if sent.get(entry["id"]) != entry]
            sent = {entry["id"]: entry for entry in entries}
        yield sse.encode_event(
            "tick",
            {
                "now": time.time(),
                "engine": rates.engine(numbers),
                "histograms": {
                    "ttft": numbers.buckets.get("vllm:time_to_first_token_seconds", []),
                    "itl": numbers.buckets.get("vllm:inter_token_latency_seconds", []),
                },
                # Which ids the journal still holds, so the page drops the rest.
                "journal_ids": None if journal is None else sorted(sent),
                "journal": changed,
            },
        )
        await asyncio.sleep(TICK_S)


class _Numbers:
    """What the page needs of one ``/metrics`` rendering."""

    def __init__(self) -> None:
        self.gauges: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.buckets: dict[str, list[tuple[float | None, float]]] = {}


def _read_metrics(text: str) -> _Numbers:
    numbers = _Numbers()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.type == "gauge":
                numbers.gauges[family.name] = numbers.gauges.get(family.name, 0) + sample.value
            elif family.type == "counter" and sample.name.endswith("_total"):
                if family.name == "streamapi_requests" and not _is_generation(sample.labels):
                    continue
                numbers.counters[family.name] = numbers.counters.get(family.name, 0) + sample.value
            elif family.type == "histogram" and sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                numbers.buckets.setdefault(family.name, []).append(
                    # JSON has no infinity: the last bucket's bound is sent as null.
                    (bound if math.isfinite(bound) else None, sample.value)
                )
    return numbers


def _is_generation(labels: dict[str, str]) -> bool:
    return labels.get("route") in ENDPOINT_PATHS


class _Rates:
    """Requests and tokens per second, from the counters' growth between two ticks."""

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def engine(self, numbers: _Numbers) -> dict[str, float]:
        now = time.monotonic()
        requests = numbers.counters.get("streamapi_requests", 0.0)
        tokens = numbers.counters.get("vllm:generation_tokens", 0.0)
        per_s = (0.0, 0.0)
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            per_s = ((requests - self._last[1]) / elapsed, (tokens - self._last[2]) / elapsed)
        self._last = (now, requests, tokens)
        gauges = numbers.gauges
        return {
            "running": gauges.get("vllm:num_requests_running", 0.0),
            "waiting": gauges.get("vllm:num_requests_waiting", 0.0),
            "kv_cache_usage": gauges.get("vllm:kv_cache_usage_perc", 0.0),
            "streams": gauges.get("streamapi_streams_in_flight", 0.0),
            "requests_per_s": max(per_s[0], 0.0),
            "tokens_per_s": max(per_s[1], 0.0),
        }
