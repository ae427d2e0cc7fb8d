"""The dashboard (``/dashboard``): a page, its files, and the live events it draws from.

The page and its script and style (``streamapi/static/dashboard/``) hold no
data and are open like ``/docs``. What it shows comes from
``GET /dashboard/events``, Server-Sent Events sent by our own
``EventStreamResponse``: every ``dashboard_feed.TICK_S`` the engine's numbers and the latency
histograms, read from the same rendering as ``/metrics`` (so with ``--workers
N`` they are the sum over workers, like a scrape), and the journal's entries
that changed since the last event (read through ``Control.journal``, so a
shared journal is shown as it is), read once per tick for all open pages
(``api.dashboard_feed``). The events need the admin key when one is set, and
with API keys on they need one set; the page's controls call the admin API itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from streamapi import sse
from streamapi.api.common import DASHBOARD_ASSETS, AppState, AppStateDep, check_admin_key
from streamapi.api.dashboard_feed import DashboardFeed, tick_events
from streamapi.errors import PermissionDeniedError

_STATIC = resources.files("streamapi") / "static" / "dashboard"
_bearer = HTTPBearer(auto_error=False, description="The server's --admin-key, when set.")


async def _authorize(
    state: AppStateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    settings = state["settings"]
    key = settings.admin_key
    if key is not None:
        given = None if credentials is None else credentials.credentials
        check_admin_key(key, given, what="the dashboard's events need")
    elif settings.keys.enabled:
        # Every tenant's numbers (and with a journal, requests): not for any one key.
        raise PermissionDeniedError(
            "With API keys on, the dashboard's events need the admin key: start the server "
            "with --admin-key.",
            code="admin_key_required",
        )


router = APIRouter(tags=["dashboard"])
router.mount(DASHBOARD_ASSETS, StaticFiles(directory=str(_STATIC)), name="dashboard-assets")


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    return FileResponse(str(_STATIC / "index.html"), media_type="text/html")


# Not in the OpenAPI document: the page's own feed, whose events may change with the
# page (docs/dashboard.md describes them), and a stream that never ends by itself.
@router.get("/dashboard/events", dependencies=[Depends(_authorize)], include_in_schema=False)
async def dashboard_events(state: AppStateDep) -> Response:
    feed: DashboardFeed = state["dashboard"]
    feed.reserve()  # 429 past --dashboard-max-subscribers
    return sse.EventStreamResponse(
        _events(state, feed),
        ping_interval_s=0,
        send_timeout_s=state["settings"].send_timeout_s,
        on_finish=feed.release,
    )


async def _events(state: AppState, feed: DashboardFeed) -> AsyncIterator[bytes]:
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
    # Ends when the server drains; a client that leaves closes it sooner.
    async for event in tick_events(feed):
        yield event
