"""Three replicas behind a real HAProxy sharing one real ``redis-server`` (``--state-url``).

The proof that a cluster behaves as one server: each test starts its own Redis
(``tests/redis_server.py``) and its own three ``streamapi serve`` replicas behind
``deploy/haproxy/haproxy.cfg`` (``cluster_factory``), with a prefix of its own,
and drives them through the load balancer with the official SDKs. HAProxy
balances round robin, so three requests in a row reach the three replicas.
Every client call has a timeout and no retries: a hang fails the test.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import FAST_PACING

if TYPE_CHECKING:
    from tests.e2e.cluster import Cluster, Replica
    from tests.e2e.conftest import ClusterFactory
    from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ADMIN_KEY = "cluster-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT_TIMEOUT_S = 10.0
T = TypeVar("T")


def start(
    cluster_factory: ClusterFactory,
    redis: RedisServer,
    request: pytest.FixtureRequest,
    *options: str,
) -> Cluster:
    """Three replicas on ``redis`` under a prefix of this test's own."""
    prefix = "test:" + re.sub(r"\W+", "-", request.node.name) + ":"
    return cluster_factory(
        *FAST_PACING,
        *("--state-url", redis.url, "--state-prefix", prefix),
        # Generous for a machine shared with other test runs; the tests of a lost
        # Redis stop it outright (connections refused at once).
        *("--state-timeout-s", "2"),
        *("--admin-key", ADMIN_KEY),
        *options,
    )


def openai_client(url: str, key: str = "sk-unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def anthropic_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url, api_key="sk-unused", max_retries=0, timeout=CLIENT_TIMEOUT_S
    )


def chat(client: openai.OpenAI, text: str, **extra: Any) -> str:
    answer = client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": text}], max_tokens=8, **extra
    )
    return answer.choices[0].message.content or ""


def admin(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = httpx.request(
        method, f"{url}{path}", headers=ADMIN, timeout=CLIENT_TIMEOUT_S, **kwargs
    )
    assert response.status_code == 200, response.text
    return response


def process_of(replica: Replica) -> str:
    """What the journal names a replica by (``pid@host``)."""
    return f"{replica.pid}@{socket.gethostname()}"


def until(check: Callable[[], T | None], timeout_s: float, every_s: float = 0.05) -> T:
    """``check()``'s first truthy result, polled for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s")
        time.sleep(every_s)


def state_ok(replica: Replica) -> bool:
    """Whether the replica's /health says its state store answers."""
    health = httpx.get(f"{replica.url}/health", timeout=CLIENT_TIMEOUT_S)
    assert health.status_code == 200  # liveness holds with or without Redis
    ok: bool = health.json()["state"]["ok"]
    return ok


def rules_from_admin(replica: Replica) -> bool:
    """Whether the replica applies rules put through the admin API."""
    return bool(admin(replica.url, "GET", "/admin/rules").json()["source"] == "admin")


def state_errors(replica: Replica) -> float:
    """``streamapi_state_errors_total`` summed over operations, from the replica's /metrics."""
    text = httpx.get(f"{replica.url}/metrics", timeout=CLIENT_TIMEOUT_S).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamapi_state_errors_total{")
    )


def test_a_10_rpm_limit_admits_exactly_10_of_30_and_every_journal_lists_all_30(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    cluster = start(
        cluster_factory, redis_server, request, "--rate-limit-requests-per-minute", "10"
    )
    statuses = []
    # 30 in a row take well under the 6 s in which the bucket would refill by one.
    with openai_client(cluster.url, "sk-one-user") as client:
        for n in range(30):
            try:
                chat(client, f"request {n}")
                statuses.append(200)
            except openai.RateLimitError as error:
                assert error.response.headers["x-ratelimit-limit-requests"] == "10"
                statuses.append(429)
    assert statuses.count(200) == 10
    assert statuses[:10] == [200] * 10

    processes = {process_of(replica) for replica in cluster.replicas}
    for replica in cluster.replicas:
        entries = admin(replica.url, "GET", "/admin/journal").json()["entries"]
        assert [e["user"] for e in entries] == [f"request {n}" for n in range(30)]
        assert [e["status"] for e in entries] == statuses
        # All three served some, admitted and refused alike (round robin: 10 each).
        served = [e["process"] for e in entries]
        assert {p: served.count(p) for p in processes} == dict.fromkeys(processes, 10)


def test_a_rule_put_on_one_replica_answers_on_all_within_a_second(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    cluster = start(cluster_factory, redis_server, request)
    first, *others = cluster.replicas
    rules = {"rules": [{"match": {"user": "ping"}, "respond": {"text": "pong"}}]}
    admin(first.url, "PUT", "/admin/rules", json=rules)
    put_at = time.monotonic()
    with openai_client(cluster.url) as client:
        # Through the load balancer: three pongs in a row are all three replicas.
        run: list[float] = []
        for _ in range(200):  # bounded by the time check below too
            if chat(client, "ping") == "pong":
                run.append(time.monotonic())
            else:
                run.clear()
            if len(run) == 3 or time.monotonic() - put_at > 5:
                break
        assert len(run) == 3, "the rule did not reach every replica within 5 s"
        assert run[0] - put_at < 1.0
    # And straight at each replica, openai and anthropic alike.
    for replica in cluster.replicas:
        with openai_client(replica.url) as direct:
            assert chat(direct, "ping") == "pong"
        with anthropic_client(replica.url) as claude:
            message = claude.messages.create(
                model="claude-sim", max_tokens=8, messages=[{"role": "user", "content": "ping"}]
            )
            assert message.content[0].type == "text" and message.content[0].text == "pong"
        assert admin(replica.url, "GET", "/admin/rules").json()["source"] == "admin"
    # Deleting them on another replica reverts every replica.
    admin(others[-1].url, "DELETE", "/admin/rules")
    with openai_client(cluster.url) as client:
        until(lambda: all(chat(client, "ping") != "pong" for _ in range(3)), 5)


def test_a_sequence_1_rule_fires_once_across_the_cluster(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    cluster = start(cluster_factory, redis_server, request)
    rules = [{"match": {"sequence": 1}, "respond": {"text": "first"}}]
    admin(cluster.replicas[1].url, "PUT", "/admin/rules", json=rules)
    for replica in cluster.replicas:
        until(partial(rules_from_admin, replica), 5)
    said = []
    with openai_client(cluster.url) as client, anthropic_client(cluster.url) as claude:
        for n in range(9):  # three on each replica, the two SDKs taking turns
            if n % 2:
                message = claude.messages.create(
                    model="claude-sim", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                )
                assert message.content[0].type == "text"
                said.append(message.content[0].text)
            else:
                said.append(chat(client, "hi"))
    assert said.count("first") == 1
    assert said[0] == "first"


def test_previous_response_id_works_when_the_follow_up_lands_on_another_replica(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    cluster = start(cluster_factory, redis_server, request)
    one, two, three = cluster.replicas
    with openai_client(one.url) as on_one:
        first = on_one.responses.create(
            model="sim-small", input="My name is Ada.", max_output_tokens=8
        )
    # Straight at another replica: certain to be another process.
    with openai_client(two.url) as on_two:
        follow = on_two.responses.create(
            model="sim-small",
            input="What is my name?",
            previous_response_id=first.id,
            max_output_tokens=8,
        )
        fresh = on_two.responses.create(
            model="sim-small", input="What is my name?", max_output_tokens=8
        )
    assert follow.previous_response_id == first.id
    assert follow.usage is not None and fresh.usage is not None
    # The earlier turn was read from the store: it counts in the prompt.
    assert follow.usage.input_tokens > fresh.usage.input_tokens
    # Through the load balancer: a chain of turns, each on the next replica.
    with openai_client(cluster.url) as client:
        previous = follow
        for n in range(3):
            previous = client.responses.create(
                model="sim-small",
                input=f"turn {n}",
                previous_response_id=previous.id,
                max_output_tokens=8,
            )
        assert previous.usage is not None
        assert previous.usage.input_tokens > follow.usage.input_tokens
    with openai_client(three.url) as on_three:
        stored = on_three.responses.retrieve(first.id)
    assert stored.id == first.id and stored.output_text == first.output_text


def test_a_per_key_concurrency_cap_holds_across_replicas_with_streams_held_open(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    cluster = start(
        cluster_factory,
        redis_server,
        request,
        *("--api-keys", "sk-capped,sk-other", "--max-concurrent-requests-per-key", "2"),
        "--enable-latency-headers",
    )
    slow = {"x-streamapi-ttft-ms": "0", "x-streamapi-itl-ms": "500"}
    with ExitStack() as held, openai_client(cluster.url, "sk-capped") as client:
        streams = []
        for _ in range(2):  # on two replicas (round robin)
            stream = client.chat.completions.create(
                model="sim-small",
                messages=[{"role": "user", "content": "hold on"}],
                stream=True,
                max_tokens=100,
                extra_headers=slow,
            )
            held.callback(stream.close)
            next(iter(stream))  # the stream is open and its lease taken
            streams.append(stream)
        # The third replica, and each of the others again: every one knows the key is full.
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as refused:
                chat(client, "one more")
            assert refused.value.code == "too_many_concurrent_requests"
        # The cap is the key's: another key is served meanwhile.
        with openai_client(cluster.url, "sk-other") as other:
            assert chat(other, "another key")
        streams[0].close()

        def admitted() -> bool:
            try:
                return bool(chat(client, "now there is room"))
            except openai.RateLimitError:
                return False  # the lease is given back in the background

        until(admitted, 5)


def test_redis_stopped_mid_run_serves_on_without_a_hang_then_counts_again_once_back(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    cluster = start(cluster_factory, redis_server, request, "--rate-limit-requests-per-minute", "3")

    def admitted_of(count: int) -> int:
        admitted = 0
        with openai_client(cluster.url, "sk-one-user") as client:
            for n in range(count):
                try:
                    chat(client, f"request {n}")
                    admitted += 1
                except openai.RateLimitError:
                    pass
        return admitted

    assert admitted_of(6) == 3
    errors_before = sum(state_errors(replica) for replica in cluster.replicas)
    redis_server.stop()
    started = time.monotonic()
    # Failing open: all served, uncounted, each within the client's timeout.
    assert admitted_of(9) == 9
    assert time.monotonic() - started < CLIENT_TIMEOUT_S
    # Each replica counted its failures (every one of them served three requests).
    after = [state_errors(replica) for replica in cluster.replicas]
    assert sum(after) > errors_before
    assert all(errors > 0 for errors in after)
    assert not any(state_ok(replica) for replica in cluster.replicas)

    redis_server.start()  # the same port, empty: every bucket full again
    for replica in cluster.replicas:
        # Each reconnects by itself (its configuration poller calls Redis every 0.25 s).
        until(partial(state_ok, replica), 5)
    assert admitted_of(6) == 3


def test_a_sigkilled_replica_s_leases_come_back_within_the_ttl(
    cluster_factory: ClusterFactory, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    ttl_s = 2.0
    cluster = start(
        cluster_factory,
        redis_server,
        request,
        *("--max-concurrent-requests", "2", "--state-lease-ttl-s", f"{ttl_s:g}"),
        "--enable-latency-headers",
    )
    victim = cluster.replicas[0]
    slow = {"x-streamapi-ttft-ms": "0", "x-streamapi-itl-ms": "500"}
    with ExitStack() as held, openai_client(victim.url) as on_victim:
        for _ in range(2):
            stream = on_victim.chat.completions.create(
                model="sim-small",
                messages=[{"role": "user", "content": "hold on"}],
                stream=True,
                max_tokens=100,
                extra_headers=slow,
            )
            held.callback(stream.close)
            next(iter(stream))
        with openai_client(cluster.url) as client:
            # The victim's two slots are the cluster's two: the others refuse.
            for replica in cluster.replicas[1:]:
                with openai_client(replica.url) as direct, pytest.raises(openai.RateLimitError):
                    chat(direct, "full")
            # The heartbeat keeps them past the TTL while the victim lives.
            time.sleep(ttl_s * 1.5)
            with (
                openai_client(cluster.replicas[1].url) as direct,
                pytest.raises(openai.RateLimitError),
            ):
                chat(direct, "still full")
            victim.kill()
            killed_at = time.monotonic()

            def admitted() -> float | None:
                try:
                    chat(client, "room again?")
                except openai.RateLimitError:
                    return None
                return time.monotonic() - killed_at

            # Polled through the load balancer, which routes around the dead replica.
            freed_after = until(admitted, ttl_s + 3)
        assert freed_after < ttl_s + 1.0
