"""The shared state on Redis (or Valkey): every process pointed at one server shares it.

One ``redis.asyncio`` client (one connection pool) per ``RedisState``; every
call goes through ``_Client.run``, which bounds it by ``timeout_s`` and turns
any failure into ``StateUnavailableError`` (counted, logged once a minute).
The pool reconnects by itself on the next call once Redis is back.

Each decision that must be exact across processes is one Lua script, so it is
atomic on the server, and reads the server's ``TIME``, so replicas' clocks do
not matter. Keys (all under ``prefix``):

- ``epoch``: bumped by a cluster reset; bucket and counter keys include it,
  so a reset empties them all in one step.
- ``rl:<epoch>:<sha256 of identity and model>``: a hash of both buckets,
  expiring once it would be full again (61 s).
- ``cc:all`` and ``cc:key:<sha256 of the key's name>``: sorted sets of lease
  ids scored by expiry (ms); a heartbeat pushes the expiry of this process's
  leases ``lease_ttl_s`` ahead every third of it, so a dead process's leases
  lapse within ``lease_ttl_s``.
- ``cfg`` (``{"version", "document"}``) and ``cfg:version``: the admin
  API's configuration; every process polls the version every
  ``poll_interval_s`` and applies a new one.
- ``seq:<epoch>:<name>``: rule ``sequence`` counters (a day's expiry).
- ``journal`` (a stream capped at about twice the journal's size: an entry
  is written when it opens and again when it closes) and ``journal:id``.
- ``resp:<id>`` (with ``responses_ttl_s``) and ``resp:index``, a list
  capping them at ``capacity``.

Not for Redis Cluster: the scripts build some keys themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from streamapi.state.base import (
    Bucket,
    BucketVerdict,
    ConfigSnapshot,
    LeaseDecision,
    StateStoreError,
    StateUnavailableError,
    StoreHealth,
    process_id,
)
from streamapi.state.local import LocalLeases

logger = logging.getLogger("streamapi.state")
T = TypeVar("T")
_Arg = str | int | float | bytes

_BUCKET_TTL_MS = 61_000  # an untouched bucket is full after 60 s: then it may go
_COUNTER_TTL_MS = 86_400_000

_TAKE = """
local epoch = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. 'rl:' .. epoch .. ':' .. ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local costs = {1, tonumber(ARGV[5])}
local fields = {{'rl', 'rv', 'ru'}, {'tl', 'tv', 'tu'}}
local stored = redis.call('HMGET', key, 'rl', 'rv', 'ru', 'tl', 'tv', 'tu')
local levels = {0, 0}
local refused = ''
for i = 1, 2 do
  local limit = limits[i]
  if limit > 0 then
    local level = limit
    -- A bucket whose limit changed starts full.
    if tonumber(stored[i * 3 - 2]) == limit then
      local elapsed = math.max(0, now - tonumber(stored[i * 3]))
      level = math.min(limit, tonumber(stored[i * 3 - 1]) + elapsed * limit / 60)
    end
    levels[i] = level
    if refused == '' and costs[i] > level then
      refused = (i == 1) and 'requests' or 'tokens'
    end
  end
end
if refused == '' then
  for i = 1, 2 do
    if limits[i] > 0 then
      levels[i] = levels[i] - costs[i]
      redis.call('HSET', key, fields[i][1], limits[i],
        fields[i][2], string.format('%.17g', levels[i]),
        fields[i][3], string.format('%.17g', now))
    end
  end
  redis.call('PEXPIRE', key, ARGV[6])
end
return {refused, string.format('%.17g', levels[1]), string.format('%.17g', levels[2])}
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local caps = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local refusals = {'total', 'key'}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if caps[i] > 0 and redis.call('ZCARD', KEYS[i]) >= caps[i] then
    return refusals[i]
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return ''
"""

_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return #KEYS
"""

_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

_WRITE_CONFIG = """
local version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], '{"version":' .. version .. ',"document":' .. ARGV[1] .. '}')
return version
"""

_RESET = """
redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[4])
local version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], '{"version":' .. version .. ',"document":null}')
return version
"""

_INCREMENT = """
local epoch = redis.call('GET', KEYS[1]) or '0'
local counts = {}
for i = 3, #ARGV do
  local key = ARGV[1] .. 'seq:' .. epoch .. ':' .. ARGV[i]
  counts[i - 2] = redis.call('INCR', key)
  redis.call('PEXPIRE', key, ARGV[2])
end
return counts
"""

_OPEN_ENTRY = """
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', id, 'e', ARGV[2])
return id
"""

_PUT_RESPONSE = """
local key = ARGV[1] .. 'resp:' .. ARGV[2]
redis.call('SET', key, ARGV[3], 'PX', ARGV[5])
redis.call('RPUSH', KEYS[1], ARGV[2])
local capacity = tonumber(ARGV[4])
while redis.call('LLEN', KEYS[1]) > capacity do
  redis.call('DEL', ARGV[1] .. 'resp:' .. redis.call('LPOP', KEYS[1]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def hashed(text: str) -> str:
    """What a key holds instead of a name or identity: never the text itself."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Client:
    """One client (one pool), and the guard every call goes through."""

    def __init__(self, url: str, *, prefix: str, timeout_s: float, health: StoreHealth) -> None:
        try:
            # No retries: a call that fails is failed fast, and the next one reconnects.
            self.redis: Redis = Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise StateStoreError(f"Invalid state URL {url!r}: {exc}") from None
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.health = health

    def key(self, name: str) -> str:
        return self.prefix + name

    async def run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, within the timeout, or ``StateUnavailableError`` (counted)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.health.failed(operation, exc)
            raise StateUnavailableError(
                f"The shared state store is unavailable ({operation}); retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        self.health.succeeded()
        return result


class RedisBuckets:
    def __init__(self, client: _Client, *, fail_closed: bool) -> None:
        self._client = client
        self._fail_closed = fail_closed
        self._take = client.redis.register_script(_TAKE)

    async def take(
        self,
        identity: str,
        model: str,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        tokens: int,
    ) -> BucketVerdict | None:
        client = self._client
        args: list[_Arg] = [
            client.prefix,
            hashed(f"{identity}\n{model}"),
            requests_per_minute,
            tokens_per_minute,
            tokens,
            _BUCKET_TTL_MS,
        ]
        try:
            refused, requests, token_level = await client.run(
                "ratelimit", lambda: self._take(keys=[client.key("epoch")], args=args)
            )
        except StateUnavailableError:
            if self._fail_closed:
                raise
            return None
        return BucketVerdict(
            Bucket(requests_per_minute, float(requests)) if requests_per_minute else None,
            Bucket(tokens_per_minute, float(token_level)) if tokens_per_minute else None,
            refused or None,
        )

    async def reset(self) -> None:
        client = self._client
        await client.run("ratelimit.reset", lambda: client.redis.incr(client.key("epoch")))


class RedisLeases:
    """Leases in sorted sets, kept alive by this process's heartbeat while held.

    This process's own leases are counted in memory too (a ``LocalLeases``): ``held``
    reads them without a round trip, and while Redis does not answer (failing open)
    they still cap this process alone.
    """

    def __init__(self, client: _Client, *, ttl_s: float, fail_closed: bool) -> None:
        self._client = client
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._fail_closed = fail_closed
        self._held: dict[str, list[str]] = {}
        self._own = LocalLeases()
        self._releasing: set[asyncio.Task[None]] = set()
        self._acquire = client.redis.register_script(_ACQUIRE)
        self._refresh = client.redis.register_script(_REFRESH)
        self._count = client.redis.register_script(_COUNT)

    @property
    def heartbeat_s(self) -> float:
        return self._ttl_ms / 3000

    async def acquire(self, key: str | None, *, total: int, per_key: int) -> LeaseDecision:
        # This process's own count first: a lower bound of Redis's, so a cap it fills
        # is full everywhere.
        refused_here = self._own.refusal(key, total=total, per_key=per_key)
        if refused_here is not None:
            return LeaseDecision(None, refused_here)
        client = self._client
        keys = [client.key("cc:all")]
        if key is not None:
            keys.append(client.key("cc:key:" + hashed(key)))
        lease_id = uuid.uuid4().hex
        args: list[_Arg] = [lease_id, self._ttl_ms, total, per_key]
        # Counted here before the round trip, so that the requests awaiting Redis count too.
        self._own.hold(lease_id, key)
        try:
            refused = await client.run("lease", lambda: self._acquire(keys=keys, args=args))
        except StateUnavailableError:
            if self._fail_closed:
                self._own.release_soon(lease_id)
                raise
            # Uncounted in Redis: held in this process alone, until released.
            return LeaseDecision(lease_id)
        except BaseException:
            self._own.release_soon(lease_id)
            raise
        if refused:
            self._own.release_soon(lease_id)
            return LeaseDecision(None, refused)
        self._held[lease_id] = keys
        return LeaseDecision(lease_id)

    def held(self, key: str | None = None) -> int:
        return self._own.held(key)

    async def release(self, lease_id: str) -> None:
        self._own.release_soon(lease_id)
        keys = self._held.pop(lease_id, None)
        if keys is None:
            return
        redis = self._client.redis

        async def remove() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, lease_id)
                await pipe.execute()

        # If this fails the lease lapses by itself within the TTL.
        with contextlib.suppress(StateUnavailableError):
            await self._client.run("lease.release", remove)

    def release_soon(self, lease_id: str) -> None:
        # This process's count at once (its next request may take the place); Redis's
        # in the background.
        self._own.release_soon(lease_id)
        if lease_id not in self._held:
            return
        task = asyncio.get_running_loop().create_task(self.release(lease_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def settle(self) -> None:
        """Wait for the releases under way (each bounded by the call timeout)."""
        await asyncio.gather(*self._releasing, return_exceptions=True)

    async def count(self, key: str | None = None) -> int:
        client = self._client
        name = client.key("cc:all" if key is None else "cc:key:" + hashed(key))
        count = await client.run("lease.count", lambda: self._count(keys=[name]))
        return int(count)

    async def heartbeat(self) -> None:
        """Push every held lease's expiry one TTL ahead."""
        if not self._held:
            return
        keys: list[str] = []
        args: list[_Arg] = [self._ttl_ms]
        for lease_id, held in self._held.items():
            keys += held
            args += [lease_id] * len(held)
        await self._client.run("lease.heartbeat", lambda: self._refresh(keys=keys, args=args))

    def forget(self) -> None:
        """Drop the leases held (at close: they lapse by themselves)."""
        self._held.clear()


class RedisConfig:
    """The configuration document, versioned; other processes' versions arrive by polling."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._write = client.redis.register_script(_WRITE_CONFIG)
        self._appliers: list[Callable[[ConfigSnapshot], None]] = []
        self.seen: int | None = None

    async def read(self) -> ConfigSnapshot:
        client = self._client
        raw = await client.run("config.read", lambda: client.redis.get(client.key("cfg")))
        if raw is None:
            return ConfigSnapshot(0, None)
        data = orjson.loads(raw)
        return ConfigSnapshot(int(data["version"]), data["document"])

    async def write(self, document: dict[str, Any] | None) -> ConfigSnapshot:
        client = self._client
        keys = [client.key("cfg"), client.key("cfg:version")]
        text = orjson.dumps(document).decode()
        version = int(await client.run("config.write", lambda: self._write(keys=keys, args=[text])))
        # The writer applies its own change; the poller need not apply it again.
        self.seen = version
        return ConfigSnapshot(version, document)

    def watch(self, apply: Callable[[ConfigSnapshot], None]) -> None:
        self._appliers.append(apply)

    async def poll(self) -> None:
        """Apply the stored configuration if its version is not the one last seen."""
        client = self._client
        raw = await client.run("config.poll", lambda: client.redis.get(client.key("cfg:version")))
        version = 0 if raw is None else int(raw)
        if version == self.seen:
            return
        snapshot = await self.read()
        self.seen = snapshot.version
        self.applied(snapshot)

    def applied(self, snapshot: ConfigSnapshot) -> None:
        self.seen = snapshot.version
        for apply in self._appliers:
            try:
                apply(snapshot)
            except Exception:
                # One bad document must not stop the poller; the next version may be fine.
                logger.exception("Could not apply the shared configuration %d", snapshot.version)


class RedisCounters:
    def __init__(self, client: _Client) -> None:
        self._client = client
        self._increment = client.redis.register_script(_INCREMENT)

    async def increment(self, names: Sequence[str]) -> list[int]:
        if not names:
            return []
        client = self._client
        keys = [client.key("epoch")]
        args: list[_Arg] = [client.prefix, _COUNTER_TTL_MS, *(hashed(name) for name in names)]
        counts = await client.run("counters", lambda: self._increment(keys=keys, args=args))
        return [int(count) for count in counts]


class RedisJournal:
    def __init__(self, client: _Client, size: int) -> None:
        self._client = client
        self._size = size
        self._process = process_id()
        self._open = client.redis.register_script(_OPEN_ENTRY)

    async def open(self, record: dict[str, Any]) -> int:
        client = self._client
        text = orjson.dumps({**record, "process": self._process}).decode()
        keys = [client.key("journal:id"), client.key("journal")]
        return int(
            await client.run(
                "journal.open", lambda: self._open(keys=keys, args=[self._size * 2, text])
            )
        )

    async def update(self, record: dict[str, Any]) -> None:
        client = self._client
        fields: dict[Any, Any] = {  # redis-py types the fields invariantly
            "id": int(record["id"]),
            "e": orjson.dumps({**record, "process": self._process}),
        }
        await client.run(
            "journal.update",
            lambda: client.redis.xadd(
                client.key("journal"), fields, maxlen=self._size * 2, approximate=True
            ),
        )

    async def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        client = self._client
        stream = await client.run(
            "journal.read",
            lambda: client.redis.xrevrange(client.key("journal"), count=self._size * 2),
        )
        latest: dict[int, dict[str, Any]] = {}
        for _, fields in stream or ():
            if fields is None:
                continue  # newest first: the first of an id is its last state
            entry_id = int(fields["id"])
            if entry_id not in latest:
                latest[entry_id] = {**orjson.loads(fields["e"]), "id": entry_id}
        kept = min(self._size, limit) if limit is not None else self._size
        return [latest[i] for i in sorted(latest)[-kept:]]

    async def clear(self) -> None:
        client = self._client
        await client.run("journal.clear", lambda: client.redis.delete(client.key("journal")))


class RedisResponses:
    def __init__(self, client: _Client, capacity: int, *, ttl_s: float) -> None:
        self._client = client
        self._capacity = capacity
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._put = client.redis.register_script(_PUT_RESPONSE)

    async def get(self, response_id: str) -> dict[str, Any] | None:
        client = self._client
        raw = await client.run(
            "responses.get", lambda: client.redis.get(client.key("resp:" + response_id))
        )
        return None if raw is None else dict(orjson.loads(raw))

    async def put(self, response_id: str, stored: dict[str, Any]) -> None:
        if self._capacity == 0:
            return
        client = self._client
        text = orjson.dumps(stored)
        args: list[_Arg] = [client.prefix, response_id, text, self._capacity, self._ttl_ms]
        await client.run(
            "responses.put", lambda: self._put(keys=[client.key("resp:index")], args=args)
        )


class RedisState:
    """Every store on one Redis, with the process's two background tasks.

    ``start`` checks Redis answers (``StateStoreError`` if not) and starts the
    configuration poller and the lease heartbeat; ``aclose`` stops them.
    """

    kind: Literal["local", "redis"] = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "streamapi:",
        timeout_s: float = 0.25,
        fail_closed: bool = False,
        lease_ttl_s: float = 10.0,
        poll_interval_s: float = 0.25,
        journal_size: int = 1000,
        responses_capacity: int = 1000,
        responses_ttl_s: float = 86_400.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.health = StoreHealth(on_error, fail_closed=fail_closed)
        self._client = client = _Client(url, prefix=prefix, timeout_s=timeout_s, health=self.health)
        self.buckets = RedisBuckets(client, fail_closed=fail_closed)
        self.leases = RedisLeases(client, ttl_s=lease_ttl_s, fail_closed=fail_closed)
        self.config = RedisConfig(client)
        self.counters = RedisCounters(client)
        self.journal = RedisJournal(client, journal_size)
        self.responses = RedisResponses(client, responses_capacity, ttl_s=responses_ttl_s)
        self._poll_interval_s = poll_interval_s
        self._reset = client.redis.register_script(_RESET)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        client = self._client
        try:
            await client.run("ping", client.redis.ping)
        except StateUnavailableError as exc:
            await client.redis.aclose()
            raise StateStoreError(
                f"The state store at {_redacted(self.url)} is unreachable "
                f"({exc.__cause__ or exc}); start Redis or fix --state-url."
            ) from None
        # Apply what is stored before serving: a new replica joins the cluster's configuration.
        with contextlib.suppress(StateUnavailableError):
            self.config.applied(await self.config.read())
        self._tasks = [
            asyncio.create_task(self._every(self._poll_interval_s, self.config.poll)),
            asyncio.create_task(self._every(self.leases.heartbeat_s, self.leases.heartbeat)),
        ]

    async def reset(self) -> ConfigSnapshot:
        client = self._client
        keys = [client.key(name) for name in ("cfg", "cfg:version", "epoch", "journal")]
        version = int(await client.run("reset", lambda: self._reset(keys=keys)))
        self.config.seen = version
        return ConfigSnapshot(version, None)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.leases.settle()
        self.leases.forget()
        # Bounded too: closing must not wait on a server that is gone.
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            async with asyncio.timeout(max(1.0, self._client.timeout_s)):
                await self._client.redis.aclose()

    @staticmethod
    async def _every(interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        # Runs until aclose cancels it; a failed round is counted by the guard, then retried.
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(StateUnavailableError):
                await work()


def _redacted(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"
