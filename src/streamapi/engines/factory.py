"""Building the app's engine from its settings: where the engines are wired together."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from streamapi.engines.protocol import Engine
from streamapi.engines.simulator import SimulatorEngine
from streamapi.metrics import Metrics
from streamapi.settings import Settings

if TYPE_CHECKING:
    import httpx

    from streamapi.cassettes import Redactor


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
    # Imported only for a routes file with upstreams: httpx (and what it pulls in),
    # the upstream, replay and cassette code are megabytes a simulator never uses.
    from streamapi.cassettes import Matcher, Recorder
    from streamapi.engines.dispatch import ModelDispatchEngine
    from streamapi.engines.replay import ReplayEngine
    from streamapi.engines.upstream import UpstreamEngine
    from streamapi.replay_keys import parse_match_keys

    transports = transports or {}
    redactor = _redactor(settings)
    recorder = None if settings.record_dir is None else Recorder(settings.record_dir, redactor)
    upstreams = {
        name: UpstreamEngine(
            name, config, metrics=metrics, transport=transports.get(name), recorder=recorder
        )
        for name, config in table.upstreams.items()
    }
    served: dict[str, Engine] = dict(upstreams)
    if settings.replay_dir is not None:
        # One matcher for all: ordered replay counts turns across upstreams alike.
        matcher = Matcher(
            settings.recordings,
            parse_match_keys(settings.replay_match),
            ordered=settings.replay_ordered,
            redactor=redactor,
        )
        served = {
            name: ReplayEngine(
                engine,
                matcher,
                speed=settings.replay_speed,
                miss=settings.replay_miss,
                fallback=simulator,
            )
            for name, engine in upstreams.items()
        }
    routes: dict[str, tuple[Engine, str]] = {}
    for model in table.models:
        target = table.upstream_of(model)
        if target is not None:
            name, _, upstream_model = target
            routes[model] = (served[name], upstream_model)
    return ModelDispatchEngine(simulator, routes, owned=[simulator, *upstreams.values()])


def _redactor(settings: Settings) -> Redactor:
    """The built-in redactions, the settings' own, and as secrets every upstream key and the
    server's own keys (its clients' API keys and the admin key), wherever they appear: a
    client may paste its key into a prompt, which then goes upstream."""
    from streamapi.cassettes import Redactor

    keys = [config.key(os.environ) for config in settings.routes.upstreams.values()]
    own = [*settings.keys.known, *([settings.admin_key] if settings.admin_key else [])]
    return Redactor.with_extra(
        settings.record_redact_headers,
        settings.record_redact_paths,
        [key.get_secret_value() for key in [*keys, *own] if key is not None],
    )
