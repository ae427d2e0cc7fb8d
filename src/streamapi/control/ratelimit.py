"""Rate limits that count: requests and tokens per minute, per client and model, as token buckets.

Each (identity, model) pair has a requests bucket and a tokens bucket, each
holding up to its per-minute limit and refilled continuously at limit/60 a
second, as OpenAI's limits behave. A request costs one request and its prompt
tokens plus the most it may generate (``max_tokens``, or what the context
leaves); it is admitted only if both buckets hold enough, and then takes from
both. Every answer reports the buckets in OpenAI's ``x-ratelimit-*`` headers.

The buckets live in the state store (``state.base.RateBuckets``): this process's
memory by default, Redis with ``--state-url``. This module renders what the store
decided: the headers and OpenAI's 429.
"""

from __future__ import annotations

import math

from streamapi.errors import RateLimitError, format_duration
from streamapi.state.base import Bucket, RateBuckets


def wait_s(bucket: Bucket, cost: int) -> float:
    """Seconds until ``cost`` can be spent (infinite if it exceeds the limit)."""
    if cost > bucket.limit:
        return math.inf
    return max(0.0, (cost - bucket.level) * 60 / bucket.limit)


def headers(bucket: Bucket, dimension: str) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for one bucket (``requests`` or ``tokens``)."""
    # Reset: seconds until the bucket is full again.
    full_in_s = (bucket.limit - bucket.level) * 60 / bucket.limit
    return {
        f"x-ratelimit-limit-{dimension}": str(bucket.limit),
        f"x-ratelimit-remaining-{dimension}": str(max(0, math.floor(bucket.level))),
        f"x-ratelimit-reset-{dimension}": format_duration(full_in_s),
    }


class RateLimiter:
    """Requests and tokens per minute per (identity, model), counted in ``buckets``;
    a limit of 0 is no limit."""

    def __init__(
        self, buckets: RateBuckets, requests_per_minute: int = 0, tokens_per_minute: int = 0
    ) -> None:
        self.buckets = buckets
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute

    @property
    def enabled(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    async def admit(self, identity: str, model: str, tokens: int) -> dict[str, str]:
        """Take one request and ``tokens`` from the buckets, and return the headers to send.

        Raises ``RateLimitError`` (with the headers, ``Retry-After`` and, for a
        request larger than the whole token limit, ``x-should-retry: false``)
        without taking anything if either bucket is short. When the store could
        not count it (Redis failing open), the request goes through with no
        ``x-ratelimit-*`` headers.
        """
        verdict = await self.buckets.take(
            identity,
            model,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            tokens=tokens,
        )
        if verdict is None:
            return {}
        sent: dict[str, str] = {}
        if verdict.requests is not None:
            sent.update(headers(verdict.requests, "requests"))
        if verdict.tokens is not None:
            sent.update(headers(verdict.tokens, "tokens"))
        if verdict.refused == "requests" and verdict.requests is not None:
            raise _refusal(verdict.requests, "requests", 1, model, sent)
        if verdict.refused == "tokens" and verdict.tokens is not None:
            raise _refusal(verdict.tokens, "tokens", tokens, model, sent)
        return sent


def _refusal(
    bucket: Bucket, dimension: str, cost: int, model: str, sent: dict[str, str]
) -> RateLimitError:
    unit = "RPM" if dimension == "requests" else "TPM"
    wait = wait_s(bucket, cost)
    if math.isinf(wait):
        # Waiting cannot help: the request alone is over the limit.
        error = RateLimitError(
            f"Request too large for {model} on tokens per min (TPM): Limit {bucket.limit}, "
            f"Requested {cost}. The input or output tokens must be reduced in order to run "
            "successfully.",
            retry_after_s=60,
        )
        error.headers = {**sent, "x-should-retry": "false"}
    else:
        used = bucket.limit - max(0, math.floor(bucket.level))
        error = RateLimitError(
            f"Rate limit reached for {model} on {dimension} per min ({unit}): Limit "
            f"{bucket.limit}, Used {used}, Requested {cost}. Please try again in "
            f"{format_duration(wait)}.",
            retry_after_s=wait,
        )
        error.headers.update(sent)
    error.type = dimension  # as OpenAI names the exhausted limit
    return error
