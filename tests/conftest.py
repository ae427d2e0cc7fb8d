"""In-process fixtures: the real app over ASGI, with instant pacing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.settings import Settings
from tests.redis_server import redis_server  # noqa: F401  (the shared-state tests' fixture)


@pytest.fixture
def settings() -> Settings:
    return Settings(time_to_first_token_ms=0, inter_token_latency_ms=0)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as c,
    ):
        yield c
