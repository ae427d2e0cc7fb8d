"""``streamapi bench``'s command line: options in, a run, the report out."""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
from pathlib import Path
from typing import Any

import orjson

from streamapi.bench.config import BenchConfig, parse_length, resolve_target
from streamapi.bench.html import render_html
from streamapi.bench.report import format_report
from streamapi.bench.runner import run
from streamapi.cassettes import CassetteError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamapi bench",
        description="Load-test any OpenAI-compatible streaming endpoint (streamapi, vLLM, "
        "Ollama, ...) and report TTFT, inter-event gaps, end-to-end latency and throughput. "
        "Every run is bounded: by --requests, by --duration, by the cassettes of --replay, "
        "or by 100 requests.",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="server root, /v1 base or full endpoint URL (default: %(default)s)",
    )
    target.add_argument("--route", choices=("chat", "completions"), default="chat")
    target.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    target.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency", type=int, help="streams kept open (closed loop); a cap with --rate"
    )
    load.add_argument("--rate", type=float, help="new requests per second (open loop)")
    load.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson")
    load.add_argument("--requests", type=int, help="stop after this many requests")
    load.add_argument("--duration", type=float, help="stop starting requests after S seconds")
    load.add_argument(
        "--prompt-tokens",
        default="32",
        help="prompt length in words: N, or LOW-HIGH uniform (default: %(default)s)",
    )
    load.add_argument(
        "--max-tokens",
        "--output-tokens",
        dest="max_tokens",
        default="64",
        help="max_tokens of each request: N, or LOW-HIGH uniform (default: %(default)s)",
    )
    load.add_argument(
        "--ignore-eos", action="store_true", help="send ignore_eos: true (exactly max_tokens)"
    )
    load.add_argument(
        "--no-usage", action="store_true", help="do not ask for stream_options.include_usage"
    )
    load.add_argument("--extra-body", help="JSON object merged into every request body")
    load.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    load.add_argument("--ramp-up", type=float, default=0.0, help="spread stream starts over S s")
    load.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="leave requests started in the first S seconds out of the latency statistics",
    )
    load.add_argument("--seed", type=int, default=0, help="seed for prompts and arrivals")
    replay = parser.add_argument_group("replay")
    replay.add_argument(
        "--replay",
        metavar="DIR|FILE",
        help="send the requests recorded in these cassettes (streamapi serve --record-dir) at "
        "their recorded arrival times, each once, instead of generated ones",
    )
    replay.add_argument(
        "--replay-speed",
        type=float,
        default=1.0,
        help="divide the recorded spacing by X: 2 twice as fast, 0 all at once "
        "(default: %(default)s)",
    )
    output = parser.add_argument_group("output and process")
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report to FILE as one self-contained HTML page with plots",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    output.add_argument("--cpu", type=int, help="pin this process to CPU N")
    output.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    return parser


def _config(args: argparse.Namespace) -> BenchConfig:
    for name in ("concurrency", "requests"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1")
    for name in ("rate", "duration", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive")
    extra: dict[str, Any] = {}
    if args.extra_body:
        extra = orjson.loads(args.extra_body)
        if not isinstance(extra, dict):
            raise ValueError("--extra-body must be a JSON object")
    if args.replay_speed < 0:
        raise ValueError("--replay-speed must be 0 or more")
    if args.replay is not None and args.rate is not None:
        raise ValueError("--replay sends at the recorded times: it takes no --rate")
    requests = args.requests
    if requests is None and args.duration is None and args.replay is None:
        requests = 100
    return BenchConfig(
        url=args.url,
        route=args.route,
        model=args.model,
        concurrency=args.concurrency,
        rate=args.rate,
        arrival=args.arrival,
        requests=requests,
        duration_s=args.duration,
        prompt_tokens=parse_length(args.prompt_tokens),
        max_tokens=parse_length(args.max_tokens),
        ignore_eos=args.ignore_eos,
        include_usage=not args.no_usage,
        api_key=args.api_key,
        extra_body=extra,
        timeout_s=args.timeout,
        ramp_up_s=args.ramp_up,
        warmup_s=args.warmup,
        seed=args.seed,
        progress=not args.no_progress,
        replay=args.replay,
        replay_speed=args.replay_speed,
    )


def _raise_file_limit() -> None:
    # Every stream is a socket; the usual soft limit of 1024 would cap the load.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``streamapi bench``: 0 when every request succeeded, 1 otherwise."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        resolve_target(config.url, config.route)
    except (ValueError, orjson.JSONDecodeError) as exc:
        parser.error(str(exc))
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as exc:
            parser.error(f"--cpu {args.cpu}: {exc}")
    _raise_file_limit()
    try:
        report = run(config, loop=args.loop)
    except CassetteError as exc:
        sys.stderr.write(f"streamapi bench: {exc}\n")
        return 2
    if args.html:
        page = render_html([(report["url"], report)], title="streamapi bench")
        Path(args.html).write_text(page, encoding="utf-8")
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_report(report))
    return 0 if report["requests"]["failed"] == 0 else 1
