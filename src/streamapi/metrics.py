"""Prometheus metrics: vLLM's names for the simulated engine, ``streamapi_*`` for the server.

One ``Metrics`` per app, each with its own ``CollectorRegistry``, so that several
apps can live in one process (tests build many). The engine records what a real
engine knows (queue, prefill and decode times, tokens, running and waiting
sequences, KV usage); ``serving`` records what the client sees (time to first
token, inter-token latency, end-to-end latency), timed on the event loop's
monotonic clock from the request's arrival to the frame handed to the response.
Every ``vllm:*`` metric counts sequences, i.e. choices: a request with ``n`` > 1
counts ``n`` times, as in vLLM, whose engine splits such requests into ``n``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``serve --workers N`` sets it for its
workers), prometheus-client's multiprocess mode is on: every worker writes its
metrics to files there and ``/metrics`` on any worker renders the sum over all
of them. What is kept in memory only (the engine's gauges, read at scrape time,
and the lock-free per-token histograms) is then published to those files by
``Metrics.publish`` on the event loop, at least every ``PUBLISH_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "PUBLISH_INTERVAL_S", "Metrics", "multiprocess_mode"]

# How stale, at most, another worker's in-memory metrics are in a scrape.
PUBLISH_INTERVAL_S = 1.0


def multiprocess_mode() -> bool:
    """Whether prometheus-client's multiprocess mode is on in this process.

    The same test as prometheus-client's own, which it makes once, when it is
    imported: the variable must be set before the process starts.
    """
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


# vLLM's buckets, with finer ones below them: the simulator's fast profiles step
# in milliseconds, where vLLM's coarse low end would put everything in one bucket.
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_REQUEST_BUCKETS = (
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _SharedValue(Protocol):
    """What this module uses of a ``prometheus_client.values.ValueClass`` instance."""

    def set(self, value: float) -> None: ...


class LoopHistogram(Collector):
    """A histogram with one label value, observed from the event loop's thread only.

    The client-side latencies are observed once per token: prometheus_client's
    ``Histogram.observe`` takes two locks and scans the buckets, this a bisect
    and two additions (the measured difference is in docs/performance.md,
    "Later steps of 26 November"). ``/metrics`` renders it as the same
    ``_bucket``, ``_count`` and ``_sum`` series (no ``_created``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        *,
        label: tuple[str, str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._bounds = [*buckets, math.inf]
        self._les = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._shared: tuple[list[_SharedValue], _SharedValue] | None = None
        registry.register(self)

    def share(self) -> None:
        """Give each bucket and the sum a value in prometheus-client's multiprocess files.

        The same values, keyed the same way, as its own ``Histogram`` makes
        (through its public ``values.ValueClass``), so its
        ``MultiProcessCollector`` adds ours up like any histogram's.
        ``observe`` stays as cheap: ``publish`` copies the counts over.
        """
        name, (label, value) = self._name, self._label
        buckets = [
            values.ValueClass(
                "histogram", name, f"{name}_bucket", (label, "le"), (value, le), self._documentation
            )
            for le in self._les
        ]
        total = values.ValueClass(
            "histogram", name, f"{name}_sum", (label,), (value,), self._documentation
        )
        self._shared = (buckets, total)

    def publish(self) -> None:
        """Write the counts so far to the multiprocess files (after ``share``)."""
        if self._shared is None:
            return
        buckets, total = self._shared
        for shared, count in zip(buckets, self._counts, strict=True):
            shared.set(count)
        total.set(self._sum)

    def observe(self, amount: float) -> None:
        """Count one observation (in the first bucket whose bound is at least ``amount``)."""
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label[0]])
        cumulative, buckets = 0, []
        for le, count in zip(self._les, self._counts, strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        family.add_metric([self._label[1]], buckets, sum_value=self._sum)
        yield family


class Metrics:
    """The app's metrics and their registry; ``render`` is the ``/metrics`` body.

    ``model_name`` labels every ``vllm:*`` metric with the server's first served
    model, as vLLM labels them with its one model; request-chosen names would let
    clients create unbounded label values. ``multiprocess`` (default: whether
    ``PROMETHEUS_MULTIPROC_DIR`` is set) renders every process's metrics, summed.
    """

    def __init__(self, model_name: str, *, multiprocess: bool | None = None) -> None:
        self.registry = registry = CollectorRegistry()
        self.multiprocess = multiprocess_mode() if multiprocess is None else multiprocess
        model = ("model_name",)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, model, buckets=buckets, registry=registry).labels(
                model_name
            )

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, model, registry=registry).labels(model_name)

        # Across workers (multiprocess mode; ignored in one process), each
        # worker is an engine of its own: sequences add up over the live
        # workers, and the KV cache shows the fullest worker's, as no worker
        # can use another's.
        self._running = Gauge(
            "vllm:num_requests_running", "Sequences in the running batch.", model,
            registry=registry, multiprocess_mode="livesum",
        ).labels(model_name)  # fmt: skip
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Sequences waiting for a slot in the batch.", model,
            registry=registry, multiprocess_mode="livesum",
        ).labels(model_name)  # fmt: skip
        self._kv_usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction of the simulated KV-cache budget held by running sequences (0 to 1).",
            model,
            registry=registry,
            multiprocess_mode="livemax",
        ).labels(model_name)
        self._engine_state: tuple[Callable[[], float], ...] = ()
        self.time_to_first_token = LoopHistogram(
            "vllm:time_to_first_token_seconds",
            "From request arrival to the first content frame handed to the response.",
            _TTFT_BUCKETS,
            label=("model_name", model_name),
            registry=registry,
        )
        self.inter_token_latency = LoopHistogram(
            "vllm:inter_token_latency_seconds",
            "Between two content frames of one sequence, as handed to the response.",
            _ITL_BUCKETS,
            label=("model_name", model_name),
            registry=registry,
        )
        self.e2e_request_latency = LoopHistogram(
            "vllm:e2e_request_latency_seconds",
            "From request arrival to the sequence's last frame handed to the response.",
            _REQUEST_BUCKETS,
            label=("model_name", model_name),
            registry=registry,
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Time a finished sequence waited in the engine's queue.",
            _REQUEST_BUCKETS,
        )
        self.request_prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "From a finished sequence's admission to its first token.",
            _REQUEST_BUCKETS,
        )
        self.request_decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "From a finished sequence's first token to its last.",
            _REQUEST_BUCKETS,
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Prompt tokens of finished sequences.", _TOKEN_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens",
            "Generated tokens of finished sequences.",
            _TOKEN_BUCKETS,
        )
        self.prompt_tokens = counter(
            "vllm:prompt_tokens", "Prompt tokens of admitted sequences, cached ones included."
        )
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache."
        )
        self._success = Counter(
            "vllm:request_success",
            "Sequences that ran to their end, by finish reason.",
            ("model_name", "finished_reason"),
            registry=registry,
        )
        self._model_name = model_name
        # The labelled children counted once a request, by their label values:
        # prometheus-client's labels() takes a lock and builds a tuple of str each call,
        # which cost more than the count. Its own children dict bounds them as ours do.
        self._success_by_reason: dict[str, Counter] = {}
        self._requests_by_labels: dict[tuple[str, str, int], Counter] = {}
        self._loop_histograms = (
            self.time_to_first_token,
            self.inter_token_latency,
            self.e2e_request_latency,
        )
        if self.multiprocess:
            for loop_histogram in self._loop_histograms:
                loop_histogram.share()

        self.streams_in_flight = Gauge(
            "streamapi_streams_in_flight",
            "SSE responses open right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.client_disconnects = Counter(
            "streamapi_client_disconnects",
            "Generation requests whose client left (or stopped reading) before their end.",
            registry=registry,
        )
        self._errors = Counter(
            "streamapi_errors",
            "Errors answered, by error type and code; where is before_stream or in_stream.",
            ("type", "code", "where"),
            registry=registry,
        )
        self._requests = Counter(
            "streamapi_requests",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self._upstream_requests = Counter(
            "streamapi_upstream_requests",
            "Requests sent to an upstream engine (retries included), by the status it answered.",
            ("upstream", "status"),
            registry=registry,
        )
        self._upstream_errors = Counter(
            "streamapi_upstream_errors",
            "Upstream failures by upstream and reason: connect, connect_timeout, timeout, "
            "status_4xx, status_5xx, error_event, dropped, truncated.",
            ("upstream", "reason"),
            registry=registry,
        )
        self._state_errors = Counter(
            "streamapi_state_errors",
            "Calls to the shared state store (--state-url) that failed or timed out, by operation.",
            ("operation",),
            registry=registry,
        )
        self._unjournaled = Counter(
            "streamapi_unjournaled_requests",
            "Requests answered before the journal and any work, by reason: unauthenticated "
            "(no valid API key), preflight (OPTIONS), origin (a browser Origin that CORS does "
            "not allow).",
            ("reason",),
            registry=registry,
        )
        self._upstream_retries = Counter(
            "streamapi_upstream_retries",
            "Upstream requests retried before the first byte.",
            ("upstream",),
            registry=registry,
        )

    def state_error(self, operation: str) -> None:
        self._state_errors.labels(operation).inc()

    def bind_engine_state(
        self,
        *,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_cache_usage: Callable[[], float],
    ) -> None:
        """Read the engine's gauges from ``running``, ``waiting`` and ``kv_cache_usage`` at
        scrape time, so they are exact whenever they are read and cost nothing otherwise.

        In multiprocess mode a scrape reads files, not functions: ``publish``
        writes the three values there instead.
        """
        if self.multiprocess:
            self._engine_state = (running, waiting, kv_cache_usage)
            return
        self._running.set_function(running)
        self._waiting.set_function(waiting)
        self._kv_usage.set_function(kv_cache_usage)

    def request_success(self, finished_reason: str) -> None:
        """Count one sequence that ran to its end."""
        child = self._success_by_reason.get(finished_reason)
        if child is None:
            child = self._success.labels(self._model_name, finished_reason)
            self._success_by_reason[finished_reason] = child
        child.inc()

    def error(self, type_: str, code: str | None, *, in_stream: bool) -> None:
        """Count one error answered to a client."""
        where = "in_stream" if in_stream else "before_stream"
        self._errors.labels(type_, code or "", where).inc()

    def request(self, route: str, method: str, status: int) -> None:
        """Count one HTTP request by the route template that answered it."""
        key = (route, method, status)
        child = self._requests_by_labels.get(key)
        if child is None:
            child = self._requests.labels(route, method, str(status))
            self._requests_by_labels[key] = child
        child.inc()

    def unjournaled(self, reason: str) -> None:
        """Count one request answered before the journal: unauthenticated, preflight, origin."""
        self._unjournaled.labels(reason).inc()

    def upstream_request(self, upstream: str, status: int) -> None:
        """Count one answer of an upstream engine (upstream names come from the routes file)."""
        self._upstream_requests.labels(upstream, str(status)).inc()

    def upstream_error(self, upstream: str, reason: str) -> None:
        """Count one failure of an upstream engine."""
        self._upstream_errors.labels(upstream, reason).inc()

    def upstream_retry(self, upstream: str) -> None:
        """Count one retry of an upstream request."""
        self._upstream_retries.labels(upstream).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every process, summed,
        in multiprocess mode)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.publish()
        # A registry per scrape, as prometheus-client's documentation does it:
        # the collector reads the directory's files each time.
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)

    def publish(self) -> None:
        """Write this process's in-memory metrics to the multiprocess files (or do nothing)."""
        if not self.multiprocess:
            return
        for histogram in self._loop_histograms:
            histogram.publish()
        if self._engine_state:
            running, waiting, kv_cache_usage = self._engine_state
            self._running.set(running())
            self._waiting.set(waiting())
            self._kv_usage.set(kv_cache_usage())

    async def publish_forever(self, interval_s: float = PUBLISH_INTERVAL_S) -> None:
        """``publish`` every ``interval_s`` until cancelled, then once more (multiprocess mode).

        Run on the event loop that observes the histograms and drives the
        engine, so that what it reads is never half updated.
        """
        try:
            while True:
                self.publish()
                await asyncio.sleep(interval_s)
        finally:
            self.publish()
