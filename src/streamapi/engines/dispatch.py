"""Model routing as an engine: each request goes to the engine that serves its model.

``serving`` sees one ``Engine`` whatever the routes: the ``ModelDispatchEngine``
sends a request for a routed model to its upstream under the upstream's own
model name, and every other request to the default engine (the simulator).
The response still names the model the client asked for: serving takes it
from the job, not from the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace

from streamapi.engines.protocol import Engine, GenerationRequest, LatencyControl, TokenDelta


class ModelDispatchEngine:
    """Dispatches by ``request.model``: routed models to their engine, the rest to ``default``."""

    def __init__(
        self,
        default: Engine,
        routes: Mapping[str, tuple[Engine, str]],
        *,
        owned: Sequence[Engine] = (),
    ) -> None:
        self._default = default
        self._routes = dict(routes)
        self._owned = list(owned)

    @property
    def latency_control(self) -> LatencyControl | None:
        """The default engine's (the simulator's): the routed upstreams have none."""
        return self._default.latency_control

    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """The routed engine's stream for ``request``, under that engine's model name."""
        target = self._routes.get(request.model)
        if target is None:
            return self._default.stream(request)
        engine, model = target
        return engine.stream(replace(request, model=model))

    async def aclose(self) -> None:
        """Close every engine this router owns (each once, all of them even if one fails)."""
        errors: list[BaseException] = []
        for engine in self._owned:
            try:
                await engine.aclose()
            except Exception as exc:  # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]
