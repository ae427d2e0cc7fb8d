"""Building the app's engine from its settings: where the engines are wired together."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from streamapi.engines.dispatch import ModelDispatchEngine
from streamapi.engines.protocol import Engine
from streamapi.engines.simulator import SimulatorEngine
from streamapi.engines.upstream import UpstreamEngine
from streamapi.metrics import Metrics
from streamapi.settings import Settings


async def start_engine(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> Engine:
    """The engine for ``settings``, started on the running event loop.

    Without upstreams in the routes file that is the simulator; with them, a
    ``ModelDispatchEngine`` that sends each upstream model to its ``UpstreamEngine``
    (one pooled HTTP client each) and every other model to the simulator.
    ``transports`` replaces an upstream's network transport by name (tests
    use ``httpx.ASGITransport``). It records into ``metrics`` if given; the
    caller closes it with ``aclose``.
    """
    simulator = SimulatorEngine.from_settings(settings, metrics=metrics)
    await simulator.start()
    table = settings.routes
    if not table.upstreams:
        return simulator
    transports = transports or {}
    upstreams = {
        name: UpstreamEngine(name, config, metrics=metrics, transport=transports.get(name))
        for name, config in table.upstreams.items()
    }
    routes: dict[str, tuple[Engine, str]] = {}
    for model in table.models:
        target = table.upstream_of(model)
        if target is not None:
            name, _, upstream_model = target
            routes[model] = (upstreams[name], upstream_model)
    return ModelDispatchEngine(simulator, routes, owned=[simulator, *upstreams.values()])
