"""The per-request values the middleware and the body reader leave for the layers inside them.

Each is set once, by one layer, in the ASGI scope's ``state`` dict (``SERVE_LATER``
in the scope itself), and read by plain dict look-ups: ``request.state`` builds a
wrapper object on first use, on every request's hot path. Every key is
namespaced, so none can collide with what another ASGI layer keeps there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

ARRIVED_AT: Final = "streamapi.arrived_at"
"""The event loop's clock when the app got the request (``middleware.EdgeMiddleware``)."""
REQUEST_ID: Final = "streamapi.request_id"
"""The request's id, sent back as ``x-request-id`` (``middleware.EdgeMiddleware``)."""
PRINCIPAL: Final = "streamapi.principal"
"""The caller's ``keys.Principal`` when auth is on (``middleware.EdgeMiddleware``)."""
JOURNAL_ENTRY: Final = "streamapi.journal_entry"
"""The request's admin-journal entry (``middleware.EdgeMiddleware``, filled by ``Control.plan``)."""
RATELIMIT_HEADERS: Final = "streamapi.ratelimit_headers"
"""The ``x-ratelimit-*`` headers ``Control.plan`` computed (``middleware.EdgeMiddleware`` adds
them)."""
SMALL_BODY: Final = "streamapi.small_body"
"""Whether the request's JSON body is small enough to prepare on the event loop
(``api.common.read_json``, which reads the body without keeping it)."""
SERVE_LATER: Final = "streamapi.serve_later"
"""In the scope itself: the ``sse.ServeLater`` in which a streamed response leaves its
body, for ``middleware.ServeLaterLayer`` to serve once the layers inside it have
returned."""


def state_of(scope: Mapping[str, Any]) -> Mapping[str, Any]:
    """The scope's per-request state (empty if no middleware set any)."""
    state: Mapping[str, Any] = scope.get("state", {})
    return state


def arrival_time(scope: Mapping[str, Any]) -> float:
    """When the request reached the app; now, for a scope no middleware stamped."""
    arrived_at = state_of(scope).get(ARRIVED_AT)
    if isinstance(arrived_at, float):
        return arrived_at
    return asyncio.get_running_loop().time()
