"""Rate limits that count, through the app: token buckets per identity and model.

The in-process store runs on a clock the test moves (``create_app``'s ``state``);
the rules that need no moving clock run against a real Redis too (``--state-url``).
A chat request costs one request and its prompt tokens plus ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.settings import Settings
from streamapi.state.local import LocalState
from tests.redis_server import RedisServer

CHAT = "/v1/chat/completions"
# With API keys on, the admin API takes the admin key beside a key of the server's.
ADMIN = {"Authorization": "Bearer admin-key", "x-api-key": "sk-b"}
KEY_A = {"Authorization": "Bearer sk-a", "Accept": "application/json"}
KEY_B = {"Authorization": "Bearer sk-b", "Accept": "application/json"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serve(
    backend: str | RedisServer, clock: Clock | None = None, **limits: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with ``limits``, on the in-process store (``"local"``) or a real Redis."""
    values: dict[str, Any] = {
        "time_to_first_token_ms": 0,
        "inter_token_latency_ms": 0,
        "api_keys": ["sk-a", "sk-b"],
        "admin_key": "admin-key",
        "max_model_len": 8192,
        **limits,
    }
    state = None
    if isinstance(backend, RedisServer):
        # Generous for a loaded machine.
        values |= {"state_url": backend.url, "state_timeout_s": 2.0}
    else:
        state = LocalState(clock=clock or Clock())
    app = create_app(Settings(**values), state=state)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test", timeout=10
        ) as http,
    ):
        yield http


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> str | RedisServer:
    if request.param == "local":
        return "local"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


async def ask(
    http: httpx.AsyncClient, cost: int = 8, *, key: dict[str, str] = KEY_A, model: str = "m"
) -> httpx.Response:
    """One chat request costing ``cost`` tokens (its prompt, 7, plus ``max_tokens``)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": cost - PROMPT_TOKENS,
    }
    return await http.post(CHAT, json=body, headers=key)


# What "hi" weighs as a chat prompt (checked by test_the_cost_is_the_prompt_and_max_tokens).
PROMPT_TOKENS = 7


async def test_the_cost_is_the_prompt_and_max_tokens(backend: str | RedisServer) -> None:
    async with serve(backend, rate_limit_tokens_per_minute=1000) as http:
        answer = await ask(http, 600)
    assert answer.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert answer.headers["x-ratelimit-remaining-tokens"] == "400"


async def test_without_limits_no_headers(backend: str | RedisServer) -> None:
    async with serve(backend) as http:
        answer = await ask(http)
    assert answer.status_code == 200
    assert not [name for name in answer.headers if name.startswith("x-ratelimit")]


async def test_requests_per_minute_refuse_the_one_too_many_and_say_when_to_retry() -> None:
    async with serve("local", rate_limit_requests_per_minute=3) as http:
        remaining = [(await ask(http)).headers["x-ratelimit-remaining-requests"] for _ in "abc"]
        refused = await ask(http)
    assert remaining == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "message": "Rate limit reached for m on requests per min (RPM): Limit 3, Used 3, "
        "Requested 1. Please try again in 20s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert {k: v for k, v in refused.headers.items() if "retry" in k or "ratelimit" in k} == {
        "retry-after": "20",
        "retry-after-ms": "20000",
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }


async def test_requests_per_minute_refuse_the_one_too_many(backend: str | RedisServer) -> None:
    # The same on Redis, whose clock the test cannot move: the wait is (almost) 20 s.
    async with serve(backend, rate_limit_requests_per_minute=3) as http:
        remaining = [(await ask(http)).headers["x-ratelimit-remaining-requests"] for _ in "abc"]
        refused = await ask(http)
    assert remaining == ["2", "1", "0"]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1." in error["message"]
    assert 19_000 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_buckets_refill_continuously() -> None:
    clock = Clock()
    async with serve("local", clock, rate_limit_requests_per_minute=60) as http:
        admitted = [(await ask(http)).status_code for _ in range(60)]
        refused = await ask(http)
        clock.now += 1.0
        refilled = await ask(http)
        clock.now += 30
        later = await ask(http)
    assert admitted == [200] * 60
    assert refused.status_code == 429 and refused.headers["retry-after-ms"] == "1000"
    assert refilled.status_code == 200
    assert refilled.headers["x-ratelimit-remaining-requests"] == "0"
    assert refilled.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert later.headers["x-ratelimit-remaining-requests"] == "29"


async def test_tokens_per_minute_count_prompt_and_max_tokens() -> None:
    async with serve("local", rate_limit_tokens_per_minute=1000) as http:
        first = await ask(http, 600)
        refused = await ask(http, 500)
        last = await ask(http, 400)
    assert {k: v for k, v in first.headers.items() if "ratelimit" in k} == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "36s",
    }
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert (
        "on tokens per min (TPM): Limit 1000, Used 600, Requested 500"
        in (refused.json()["error"]["message"])
    )
    assert refused.headers["retry-after-ms"] == "6000"
    assert last.status_code == 200
    assert last.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_refused_request_takes_nothing(backend: str | RedisServer) -> None:
    async with serve(
        backend, rate_limit_requests_per_minute=10, rate_limit_tokens_per_minute=100
    ) as http:
        refused = await ask(http, 101)
        admitted = await ask(http, 100)
    assert refused.status_code == 429
    assert admitted.status_code == 200
    assert admitted.headers["x-ratelimit-remaining-requests"] == "9"
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_request_over_the_whole_limit_is_told_not_to_retry(
    backend: str | RedisServer,
) -> None:
    async with serve(backend, rate_limit_tokens_per_minute=100) as http:
        refused = await ask(http, 150)
    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"]["message"].startswith(
        "Request too large for m on tokens per min (TPM): Limit 100, Requested 150."
    )


async def test_each_identity_and_model_has_its_own_buckets(backend: str | RedisServer) -> None:
    async with serve(backend, rate_limit_requests_per_minute=1) as http:
        own = [
            (await ask(http)).status_code,
            (await ask(http, key=KEY_B)).status_code,
            (await ask(http, model="other")).status_code,
        ]
        again = await ask(http)
    assert own == [200, 200, 200]
    assert again.status_code == 429


async def test_a_reset_or_new_limits_refill_and_no_limit_admits_all(
    backend: str | RedisServer,
) -> None:
    async with serve(backend, rate_limit_requests_per_minute=1) as http:
        first = await ask(http)
        refused = await ask(http)
        assert (await http.post("/admin/reset", headers=ADMIN)).status_code == 200
        after_reset = await ask(http)
        limits = {"rate_limits": {"requests_per_minute": 1}}
        assert (await http.patch("/admin/config", json=limits, headers=ADMIN)).is_success
        after_new_limits = await ask(http)
        limits = {"rate_limits": {"requests_per_minute": 0}}
        assert (await http.patch("/admin/config", json=limits, headers=ADMIN)).is_success
        unlimited = [await ask(http) for _ in range(3)]
    assert "x-ratelimit-limit-requests" in first.headers
    assert "x-ratelimit-limit-tokens" not in first.headers
    assert refused.status_code == 429
    assert after_reset.status_code == 200
    assert after_new_limits.status_code == 200
    # (Whether they carry no headers is not asked here: asgi_lifespan hands every request
    # the same scope state, so a header set for an earlier request would show again.)
    assert [r.status_code for r in unlimited] == [200] * 3


async def test_past_the_bucket_cap_the_least_recently_used_go_first() -> None:
    # The cap is 10,000 buckets (state.local.MAX_BUCKETS); here 3, each an (identity,
    # model) pair, and none full again: the least recently used goes first.
    clock = Clock()
    settings = Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        api_keys=["sk-a"],
        rate_limit_requests_per_minute=1,
    )
    app = create_app(settings, state=LocalState(clock=clock, max_buckets=3))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        oldest = await ask(c, model="oldest")
        recent = await ask(c, model="recent")
        await ask(c, model="new")
        # "recent" is used again (refused: its bucket is empty), so "oldest" is the first out.
        recent_again = await ask(c, model="recent")
        await ask(c, model="one-more")
        oldest_again = await ask(c, model="oldest")  # forgotten: a fresh bucket
        recent_last = await ask(c, model="recent")
    assert [oldest.status_code, recent.status_code, recent_again.status_code] == [200, 200, 429]
    assert oldest_again.status_code == 200
    assert recent_last.status_code == 429
