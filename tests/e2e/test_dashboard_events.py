"""GET /dashboard/events over a real server: the key it needs and what its events carry."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import FAST_PACING, ServerFactory

pytestmark = pytest.mark.e2e


def _events(base_url: str, headers: dict[str, str], count: int) -> list[tuple[str, Any]]:
    """The first ``count`` events of the stream (it never ends by itself)."""
    events: list[tuple[str, Any]] = []
    with httpx.stream("GET", base_url + "/dashboard/events", headers=headers, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if len(events) == count:
                    break
    return events


def test_events_need_the_admin_key_and_carry_engine_histograms_and_journal(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--admin-key", "adm", *FAST_PACING)
    assert httpx.get(server.base_url + "/dashboard/events").status_code == 401
    assert httpx.get(server.base_url + "/dashboard").status_code == 200
    answer = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert answer.status_code == 200
    (hello_name, hello), (tick_name, tick) = _events(
        server.base_url, {"Authorization": "Bearer adm"}, 2
    )
    assert hello_name == "hello" and tick_name == "tick"
    assert hello["admin"] is True and hello["models"] == ["sim-small"]
    assert set(tick["engine"]) >= {"running", "waiting", "kv_cache_usage", "tokens_per_s"}
    # The same buckets as /metrics: the last one is +Inf (null) and counts the request.
    assert tick["histograms"]["ttft"][-1] == [None, 1.0]
    [entry] = tick["journal"]
    assert tick["journal_ids"] == [entry["id"]]
    assert (entry["endpoint"], entry["outcome"], entry["status"]) == ("chat", "completed", 200)


def test_without_an_admin_key_the_events_are_open_and_there_is_no_journal(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(*FAST_PACING)
    (_, hello), (_, tick) = _events(server.base_url, {}, 2)
    assert hello["admin"] is False
    assert tick["journal"] is None and tick["journal_ids"] is None


def test_no_dashboard_turns_it_off(server_factory: ServerFactory) -> None:
    server = server_factory("--no-dashboard", *FAST_PACING)
    assert httpx.get(server.base_url + "/dashboard").status_code == 404
    assert httpx.get(server.base_url + "/dashboard/events").status_code == 404
