"""Rate limits that count: requests and tokens per minute, per client and model, as token buckets.

Each (identity, model) pair has a requests bucket and a tokens bucket, each
holding up to its per-minute limit and refilled continuously at limit/60 a
second, as OpenAI's limits behave. A request costs one request and its prompt
tokens plus the most it may generate (``max_tokens``, or what the context
leaves); it is admitted only if both buckets hold enough, and then takes from
both. Every answer reports the buckets in OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from streamapi.errors import RateLimitError, format_duration
from streamapi.state.base import Bucket, RateBuckets

# Past this many buckets the least recently used are forgotten: full ones first (a
# full bucket is a fresh one), and past the cap the oldest anyway, so memory is bounded.
_MAX_BUCKETS = 10_000


@dataclass(slots=True)
class TokenBucket:
    """``limit`` per minute; ``level`` is what may be spent now."""

    limit: int
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.updated) * self.limit / 60)
        self.updated = now

    def wait_s(self, cost: int) -> float:
        """Seconds until ``cost`` can be spent (infinite if it exceeds the limit)."""
        if cost > self.limit:
            return math.inf
        return max(0.0, (cost - self.level) * 60 / self.limit)

    def full_in_s(self) -> float:
        """Seconds until the bucket is full again: OpenAI's ``x-ratelimit-reset-*``."""
        return (self.limit - self.level) * 60 / self.limit

    def headers(self, dimension: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{dimension}": str(self.limit),
            f"x-ratelimit-remaining-{dimension}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{dimension}": format_duration(self.full_in_s()),
        }


class RateLimiter:
    """Requests and tokens per minute per (identity, model); a limit of 0 is no limit.

    ``clock`` (monotonic seconds) is injectable so tests can move time.
    """

    def __init__(
        self,
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: RateBuckets | None = None,
    ) -> None:
        self._clock = clock
        self.shared = shared
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        # Least recently used first: expiry looks at the front only.
        self._buckets: OrderedDict[
            tuple[str, str], tuple[TokenBucket | None, TokenBucket | None]
        ] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    def configure(self, *, requests_per_minute: int, tokens_per_minute: int) -> None:
        """New limits, with every bucket starting full."""
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.reset()

    def reset(self) -> None:
        """Forget all usage: every bucket full."""
        self._buckets.clear()

    def admit(self, identity: str, model: str, tokens: int) -> dict[str, str]:
        """Take one request and ``tokens`` from the buckets, and return the headers to send.

        Raises ``RateLimitError`` (with the headers, ``Retry-After`` and, for a
        request larger than the whole token limit, ``x-should-retry: false``)
        without taking anything if either bucket is short.
        """
        now = self._clock()
        requests, token_bucket = self._pair(identity, model, now)
        headers: dict[str, str] = {}
        for bucket, dimension in ((requests, "requests"), (token_bucket, "tokens")):
            if bucket is not None:
                bucket.refill(now)
                headers.update(bucket.headers(dimension))
        if requests is not None and requests.wait_s(1) > 0:
            raise self._refusal(requests, "requests", 1, model, headers)
        if token_bucket is not None and token_bucket.wait_s(tokens) > 0:
            raise self._refusal(token_bucket, "tokens", tokens, model, headers)
        for bucket, cost, dimension in (
            (requests, 1, "requests"),
            (token_bucket, tokens, "tokens"),
        ):
            if bucket is not None:
                bucket.level -= cost
                headers.update(bucket.headers(dimension))
        return headers

    async def admit_shared(self, identity: str, model: str, tokens: int) -> dict[str, str]:
        """``admit``, counted in the shared store (``shared``): one atomic call.

        When the store could not count it (failing open), the request goes
        through with no ``x-ratelimit-*`` headers.
        """
        assert self.shared is not None
        verdict = await self.shared.take(
            identity,
            model,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            tokens=tokens,
        )
        if verdict is None:
            return {}
        now = self._clock()
        buckets = {
            dimension: None if bucket is None else _as_token_bucket(bucket, now)
            for dimension, bucket in (("requests", verdict.requests), ("tokens", verdict.tokens))
        }
        headers: dict[str, str] = {}
        for dimension, bucket in buckets.items():
            if bucket is not None:
                headers.update(bucket.headers(dimension))
        refused = None if verdict.refused is None else buckets[verdict.refused]
        if refused is not None:
            cost = 1 if verdict.refused == "requests" else tokens
            raise self._refusal(refused, verdict.refused or "", cost, model, headers)
        return headers

    def _pair(
        self, identity: str, model: str, now: float
    ) -> tuple[TokenBucket | None, TokenBucket | None]:
        key = (identity, model)
        pair = self._buckets.get(key)
        if pair is not None:
            self._buckets.move_to_end(key)
            return pair
        self._expire(now)
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        pair = (
            TokenBucket(rpm, float(rpm), now) if rpm else None,
            TokenBucket(tpm, float(tpm), now) if tpm else None,
        )
        self._buckets[key] = pair
        return pair

    def _expire(self, now: float) -> None:
        """Forget the least recently used buckets that are full again, and past the cap
        the least recently used whatever their level: each bucket is dropped at most
        once, so a new identity costs O(1) amortised, never a sweep of them all."""
        while self._buckets:
            key, pair = next(iter(self._buckets.items()))
            full = all(
                b is None or b.level + (now - b.updated) * b.limit / 60 >= b.limit for b in pair
            )
            if not full and len(self._buckets) < _MAX_BUCKETS:
                return
            del self._buckets[key]

    @staticmethod
    def _refusal(
        bucket: TokenBucket, dimension: str, cost: int, model: str, headers: dict[str, str]
    ) -> RateLimitError:
        unit = "RPM" if dimension == "requests" else "TPM"
        wait = bucket.wait_s(cost)
        if math.isinf(wait):
            # Waiting cannot help: the request alone is over the limit.
            error = RateLimitError(
                f"Request too large for {model} on tokens per min (TPM): Limit {bucket.limit}, "
                f"Requested {cost}. The input or output tokens must be reduced in order to run "
                "successfully.",
                retry_after_s=60,
            )
            error.headers = {**headers, "x-should-retry": "false"}
        else:
            used = bucket.limit - max(0, math.floor(bucket.level))
            error = RateLimitError(
                f"Rate limit reached for {model} on {dimension} per min ({unit}): Limit "
                f"{bucket.limit}, Used {used}, Requested {cost}. Please try again in "
                f"{format_duration(wait)}.",
                retry_after_s=wait,
            )
            error.headers.update(headers)
        error.type = dimension  # as OpenAI names the exhausted limit
        return error


def _as_token_bucket(bucket: Bucket, now: float) -> TokenBucket:
    return TokenBucket(bucket.limit, bucket.level, now)
