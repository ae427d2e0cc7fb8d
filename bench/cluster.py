"""Unpaced events per second for 1, 2 and 3 replicas behind HAProxy, on this machine.

Starts each replica as ``streamapi serve`` (no pacing, fixed engine, as
``bench/run.py``'s unpaced scenario) on 127.0.0.1, HAProxy in front of them with
``deploy/haproxy/haproxy.cfg`` (the compose file's and the e2e tests', less the
server lines of replicas not started), and drives it with ``streamapi bench``.
One replica without HAProxy is measured too, for the proxy's own cost. Prints
a table on stdout; progress on stderr. No CPU is pinned: on a machine with
fewer cores than replicas + HAProxy + load generator, the figures show what
the machine gives, not what separate machines would.

``--state`` adds what shared state costs: ``local`` gives every replica a rate
limit, a concurrency cap (both too high to refuse anything) and the journal
(``--admin-key``), each its own; ``redis`` gives them the same, shared through
one ``redis-server`` this script starts (``--state-url``): per request, one
rate-limit script, a lease taken and given back, and two journal writes.

    python bench/cluster.py                # 10 s a configuration, 100 streams
    python bench/cluster.py --duration 3 --streams 50
    python bench/cluster.py --state redis    # and --state local, to compare
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from launch import HOST, free_port, start_redis, start_streamapi, stop

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
TOKENS = 64
REQUEST_TIMEOUT_S = 30.0
REPLICA_OPTIONS = (
    *("--time-to-first-token-ms", "0", "--inter-token-latency-ms", "0"),
    # Fixed pacing and no capacity limits: the server's cost, not a simulated GPU's.
    *("--load-factor", "0", "--max-num-seqs", "100000", "--max-waiting-requests", "100000"),
    *("--log-level", "warning"),
)
# --state: limits that count every request and refuse none, and the journal.
HIGH = "100000000"
STATE_OPTIONS = (
    *("--rate-limit-requests-per-minute", HIGH, "--rate-limit-tokens-per-minute", HIGH),
    *("--max-concurrent-requests", HIGH, "--admin-key", "bench-admin"),
)


STATE_LABELS = {
    "none": "no limits, no journal",
    "local": "rate limit, cap and journal in each replica",
    "redis": "rate limit, cap and journal shared on Redis (--state-url)",
}


@dataclass
class Row:
    label: str
    replicas: int
    report: dict[str, Any]


def haproxy_config(replicas: int) -> str:
    """The deploy config with only the first ``replicas`` server lines."""
    kept = []
    for line in HAPROXY_CONFIG.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["server"] and int(words[1].removeprefix("replica")) > replicas:
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def start_haproxy(replica_urls: list[str], workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    config = workdir / f"haproxy-{len(replica_urls)}.cfg"
    config.write_text(haproxy_config(len(replica_urls)), encoding="utf-8")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LB_BIND": f"{HOST}:{port}"}
    for i, url in enumerate(replica_urls, start=1):
        env[f"REPLICA_{i}"] = url.removeprefix("http://")
    log = (workdir / f"haproxy-{len(replica_urls)}.log").open("wb")
    with log:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"haproxy exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("haproxy did not answer within 10 s")


def bench(url: str, options: list[str], timeout_s: float) -> dict[str, Any]:
    """One ``streamapi bench`` run against ``url``; its JSON report."""
    command = [sys.executable, "-m", "streamapi", "bench", "--url", url]
    command += ["--json", "--no-progress", "--ignore-eos", *options]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise SystemExit(f"streamapi bench failed ({done.returncode}):\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def measure(url: str, streams: int, duration_s: float) -> dict[str, Any]:
    # First requests pay for lazy imports and caches; keep them out of the numbers.
    warm = ["--concurrency", "8", "--requests", "24", "--max-tokens", "4"]
    bench(url, warm, 60)
    options = ["--concurrency", str(streams), "--duration", f"{duration_s:g}"]
    options += ["--max-tokens", str(TOKENS), "--timeout", f"{REQUEST_TIMEOUT_S:g}"]
    options += ["--ramp-up", f"{duration_s / 8:g}"]
    return bench(url, options, duration_s + REQUEST_TIMEOUT_S + 60)


def run(streams: int, duration_s: float, counts: list[int], workdir: Path, state: str) -> list[Row]:
    options: tuple[str, ...] = REPLICA_OPTIONS
    if state != "none":
        options += STATE_OPTIONS
    rows = []
    plan: list[tuple[str, int, bool]] = [("1 replica, direct", 1, False)]
    plan += [(f"{n} replica{'s' if n > 1 else ''} behind HAProxy", n, True) for n in counts]
    for label, count, balanced in plan:
        with ExitStack() as stack:
            shared: tuple[str, ...] = ()
            if state == "redis":
                # A Redis of its own for each configuration: nothing left from the last.
                redis, state_url = start_redis(workdir)
                stack.callback(stop, redis)
                shared = ("--state-url", state_url)
            urls = []
            for i in range(count):
                log = workdir / f"replica-{label.split()[0]}-{i + 1}-{balanced}.log"
                process, url = start_streamapi((*options, *shared), log=log)
                stack.callback(stop, process)
                urls.append(url)
            target = urls[0]
            if balanced:
                haproxy, target = start_haproxy(urls, workdir)
                stack.callback(stop, haproxy)
            report = measure(target, streams, duration_s)
        rows.append(Row(label, count, report))
        sys.stderr.write(
            f"  {label}: {report['events_per_s']:,.0f} events/s, "
            f"client {report['client']['cpu_percent']:.0f}% CPU\n"
        )
    return rows


def table(rows: list[Row], streams: int, duration_s: float, state: str) -> str:
    direct = rows[0].report["events_per_s"]
    one = next((r.report["events_per_s"] for r in rows[1:] if r.replicas == 1), None)
    lines = [
        f"Unpaced, {streams} streams of {TOKENS} tokens, {duration_s:g} s each; "
        f"{os.cpu_count()} cores, nothing pinned; state: {STATE_LABELS[state]}.",
        "",
        "| configuration | events/s | ÷ 1 replica direct | ÷ 1 replica behind HAProxy "
        "| requests | failed | TTFT p99 ms | load generator CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        report = row.report
        events = report["events_per_s"]
        versus_one = f"{events / one:.2f}x" if one else ""
        lines.append(
            f"| {row.label} | {events:,.0f} | {events / direct:.2f}x | {versus_one} "
            f"| {report['requests']['ok']:,} | {report['requests']['failed']:,} "
            f"| {report['ttft_ms']['p99']:.1f} | {report['client']['cpu_percent']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds a configuration")
    parser.add_argument(
        "--replicas", default="1,2,3", help="replica counts behind HAProxy (at most 3)"
    )
    parser.add_argument(
        "--state",
        choices=tuple(STATE_LABELS),
        default="none",
        help="none: no limits; local: limits and journal in each replica; "
        "redis: the same shared through a redis-server (--state-url)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    if not all(1 <= n <= 3 for n in counts):
        parser.error("--replicas: each count is 1, 2 or 3 (the config names three servers)")
    with tempfile.TemporaryDirectory(prefix="streamapi-cluster-bench-") as workdir:
        rows = run(args.streams, args.duration, counts, Path(workdir), args.state)
    print(table(rows, args.streams, args.duration, args.state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
