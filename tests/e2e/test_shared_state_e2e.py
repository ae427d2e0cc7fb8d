"""``--state-url`` from the outside: real servers, the official SDK, a real redis-server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import openai
import pytest

from streamapi.pytest_plugin import StreamapiServer
from tests.e2e.conftest import ServerFactory, free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e


def test_two_plugin_servers_on_one_state_url_share_a_limit_and_the_journal(
    streamapi_factory: Callable[..., StreamapiServer], redis_server: RedisServer
) -> None:
    servers = [
        streamapi_factory(state_url=redis_server.url, rate_limits={"requests_per_minute": 3})
        for _ in range(2)
    ]
    admitted = 0
    for n in range(8):
        server = servers[n % 2]
        with openai.OpenAI(
            base_url=server.openai_base_url, api_key="sk-user", max_retries=0
        ) as client:
            try:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"request {n}"}]
                )
                admitted += 1
            except openai.RateLimitError:
                pass
    assert admitted == 3
    entries = servers[1].journal()
    assert [e["user"] for e in entries] == [f"request {n}" for n in range(8)]
    assert all(e["process"] for e in entries)


def test_an_unreachable_state_url_stops_serve_with_a_clear_message() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [sys.executable, "-m", "streamapi", "serve", "--state-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "state store" in done.stderr and "unreachable" in done.stderr
    assert "hunter2" not in done.stderr


def test_workers_without_a_state_url_say_once_what_is_per_worker(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--workers", "2")
    assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
    assert server.log().count("Without --state-url each worker keeps its own") == 1


def test_the_dashboard_of_one_server_shows_the_other_s_requests(
    streamapi_factory: Callable[..., StreamapiServer], redis_server: RedisServer
) -> None:
    from tests.e2e.test_dashboard_events import _events

    first, second = (streamapi_factory(state_url=redis_server.url) for _ in range(2))
    with openai.OpenAI(base_url=first.openai_base_url, api_key="sk-user", max_retries=0) as client:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "served by the first"}]
        )
    headers = {"Authorization": f"Bearer {second.admin_key}"}
    (_, _hello), (_, tick) = _events(second.base_url, headers, 2)
    assert [entry["user"] for entry in tick["journal"]] == ["served by the first"]
