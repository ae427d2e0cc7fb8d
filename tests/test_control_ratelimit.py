"""Rate limits that count: token buckets per identity and model, on a clock the test moves."""

from __future__ import annotations

import pytest

from streamapi.control.ratelimit import RateLimiter
from streamapi.errors import RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_requests_per_minute_refuse_the_one_too_many_and_say_when_to_retry(clock: Clock) -> None:
    limiter = RateLimiter(requests_per_minute=3, clock=clock)
    remaining = [limiter.admit("a", "m", 10)["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitError) as raised:
        limiter.admit("a", "m", 10)
    error = raised.value
    assert error.type == "requests"
    assert error.code == "rate_limit_exceeded"
    assert error.message == (
        "Rate limit reached for m on requests per min (RPM): Limit 3, Used 3, Requested 1. "
        "Please try again in 20s."
    )
    assert error.headers == {
        "Retry-After": "20",
        "retry-after-ms": "20000",
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }


def test_buckets_refill_continuously(clock: Clock) -> None:
    limiter = RateLimiter(requests_per_minute=60, clock=clock)
    for _ in range(60):
        limiter.admit("a", "m", 1)
    with pytest.raises(RateLimitError) as raised:
        limiter.admit("a", "m", 1)
    assert raised.value.headers["retry-after-ms"] == "1000"
    clock.now += 1.0
    headers = limiter.admit("a", "m", 1)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 30
    assert limiter.admit("a", "m", 1)["x-ratelimit-remaining-requests"] == "29"


def test_tokens_per_minute_count_prompt_and_max_tokens(clock: Clock) -> None:
    limiter = RateLimiter(tokens_per_minute=1000, clock=clock)
    headers = limiter.admit("a", "m", 600)
    assert headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "36s",
    }
    with pytest.raises(RateLimitError) as raised:
        limiter.admit("a", "m", 500)
    assert raised.value.type == "tokens"
    assert "on tokens per min (TPM): Limit 1000, Used 600, Requested 500" in raised.value.message
    assert raised.value.headers["retry-after-ms"] == "6000"
    assert limiter.admit("a", "m", 400)["x-ratelimit-remaining-tokens"] == "0"


def test_a_refused_request_takes_nothing(clock: Clock) -> None:
    limiter = RateLimiter(requests_per_minute=10, tokens_per_minute=100, clock=clock)
    with pytest.raises(RateLimitError):
        limiter.admit("a", "m", 101)
    headers = limiter.admit("a", "m", 100)
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-remaining-tokens"] == "0"


def test_a_request_over_the_whole_limit_is_told_not_to_retry(clock: Clock) -> None:
    limiter = RateLimiter(tokens_per_minute=100, clock=clock)
    with pytest.raises(RateLimitError) as raised:
        limiter.admit("a", "m", 150)
    assert raised.value.headers["x-should-retry"] == "false"
    assert raised.value.message.startswith("Request too large for m on tokens per min (TPM)")


def test_each_identity_and_model_has_its_own_buckets(clock: Clock) -> None:
    limiter = RateLimiter(requests_per_minute=1, clock=clock)
    limiter.admit("a", "m", 1)
    limiter.admit("b", "m", 1)
    limiter.admit("a", "other", 1)
    with pytest.raises(RateLimitError):
        limiter.admit("a", "m", 1)


def test_no_limit_no_headers_and_reset_refills(clock: Clock) -> None:
    assert not RateLimiter(clock=clock).enabled
    limiter = RateLimiter(requests_per_minute=1, clock=clock)
    assert "x-ratelimit-limit-tokens" not in limiter.admit("a", "m", 1)
    limiter.reset()
    limiter.admit("a", "m", 1)
    limiter.configure(requests_per_minute=0, tokens_per_minute=0)
    assert not limiter.enabled
