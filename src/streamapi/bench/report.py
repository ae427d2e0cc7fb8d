"""The run's report: the ``--json`` document, and its few lines for a terminal."""

from __future__ import annotations

import os
import resource
from typing import Any, Protocol

from streamapi.bench.config import BenchConfig, Target
from streamapi.bench.stats import Stats, cdf, summarize


class FinishedRun(Protocol):
    """What the report reads of a finished run (``runner.Runner``)."""

    config: BenchConfig
    target: Target
    stats: Stats
    max_open: int
    started: float
    ended: float
    timeline: list[tuple[float, int, int, int, int]]

    @property
    def issued(self) -> int: ...


def build_report(
    runner: FinishedRun, model: str | None, user_s: float, system_s: float, loop: str
) -> dict[str, Any]:
    config, stats = runner.config, runner.stats
    cpu_s = user_s + system_s
    wall = max(runner.ended - runner.started, 1e-9)
    return {
        "url": runner.target.url,
        "route": config.route,
        "model": model,
        "load": {
            "concurrency": config.concurrency,
            "rate": config.rate,
            "arrival": config.arrival if config.rate is not None else None,
            "requests": config.requests,
            "duration_s": config.duration_s,
            "prompt_tokens": list(config.prompt_tokens),
            "max_tokens": list(config.max_tokens),
            "ignore_eos": config.ignore_eos,
            "ramp_up_s": config.ramp_up_s,
            "warmup_s": config.warmup_s,
            "replay": config.replay,
            "replay_speed": config.replay_speed if config.replay is not None else None,
        },
        "requests": {
            "issued": runner.issued,
            "ok": stats.ok,
            "failed": stats.failed,
            "errors": dict(sorted(stats.errors.items())),
            "error_samples": stats.error_samples,
        },
        "duration_s": wall,
        "output_tokens": stats.tokens,
        "output_tokens_per_s": stats.tokens / wall,
        "events": stats.events,
        "events_per_s": stats.events / wall,
        "sse_events": stats.sse_events,
        "max_open_streams": runner.max_open,
        "ttft_ms": summarize(stats.ttft),
        "itl_ms": summarize(stats.gaps),
        "tpot_ms": summarize(stats.tpot),
        "e2e_ms": summarize(stats.e2e),
        "failed_latency_ms": summarize(stats.failed_latency),
        # For plots (--html): the distributions as (ms, fraction at or below) points, and
        # per-second totals so far of token events, ok and failed requests, open streams.
        "cdf": {"ttft_ms": cdf(stats.ttft), "itl_ms": cdf(stats.gaps)},
        "timeline": {
            key: [sample[index] for sample in runner.timeline]
            for index, key in enumerate(("t_s", "events", "ok", "failed", "open_streams"))
        },
        "client": {
            "cpu_s": cpu_s,
            "user_s": user_s,
            "system_s": system_s,
            "cpu_percent": cpu_s / wall * 100,
            "cpu_us_per_event": cpu_s / stats.events * 1e6 if stats.events else None,
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "loop": loop,
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    requests = report["requests"]
    client = report["client"]
    errors = ", ".join(f"{kind} {count}" for kind, count in requests["errors"].items()) or "none"
    lines = [
        f"target    {report['url']}  model {_model(report)}",
        f"requests  ok {requests['ok']}  failed {requests['failed']}  (errors: {errors})",
    ]
    for kind, sample in requests["error_samples"].items():
        lines.append(f"          {kind}: {sample[:160]}")
    lines += [
        f"duration  {report['duration_s']:.2f} s   most streams open at once "
        f"{report['max_open_streams']}",
        f"output    {report['output_tokens']} tokens ({report['output_tokens_per_s']:,.1f}/s)   "
        f"{report['events']} token events ({report['events_per_s']:,.1f}/s)",
        f"{'(ms)':<22}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'count':>9}",
    ]
    for key, label in (
        ("ttft_ms", "time to first token"),
        ("itl_ms", "inter-event gap"),
        ("tpot_ms", "time per output token"),
        ("e2e_ms", "end to end"),
        ("failed_latency_ms", "failed requests"),
    ):
        summary = report[key]
        if not summary["count"]:
            continue
        cells = "".join(f"{summary[q]:>9.1f}" for q in ("p50", "p90", "p99", "max"))
        lines.append(f"{label:<22}{cells}{summary['count']:>9}")
    per_event = client["cpu_us_per_event"]
    lines.append(
        f"client    {client['cpu_percent']:.0f}% of one core, "
        + (f"{per_event:.1f} µs CPU per event" if per_event is not None else "no events")
        + f", {client['loop']}"
    )
    return "\n".join(lines) + "\n"


def _model(report: dict[str, Any]) -> str:
    if report["model"]:
        return str(report["model"])
    replay = report["load"].get("replay")
    return f"as recorded in {replay}" if replay else "(server default)"
