"""Side by side: streamapi against the original spec's Flask design and a raw-ASGI ceiling.

Each server runs as a real process on 127.0.0.1 (a free port), pinned to the first
core; the load generator (``python -m streamapi.bench``, which imports nothing of
the server) runs pinned to the second. Every server streams 64 tokens per request,
one per SSE event, 20 ms apart after a 20 ms first token. Scenarios:

1. a concurrency sweep: N streams held open (closed loop, starts spread over one
   stream's length), N in 100, 250, 400, 500, 750, 1000, 1500, 2000, 3000, 4000;
   a server's sweep stops at the first N that is not clean (inter-event gap p99
   <= 40 ms and p50 <= 22 ms, TTFT p99 <= 100 ms for streams started after the
   ramp, no errors);
2. unpaced: no sleeps at all, the most events per second one core delivers;
3. memory: 1,000 slow streams open at once (one event a second), the growth of
   the server's RSS over its warm idle RSS, per stream;
4. server CPU per event: utime + stime from /proc/PID/stat over each run,
   divided by the token events the client received.

    python bench/run.py            # the full run (a few minutes)
    python bench/run.py --quick    # every scenario, tiny: a smoke test for CI
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamapi.bench.html import render_sections

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PACING_MS = 20.0
TOKENS = 64
GAP_P99_BOUND_MS = 40.0
TTFT_P99_BOUND_MS = 100.0
# A saturated server can keep its gaps under the p99 bound while every stream runs
# slow (median gaps of 26 ms for 20 ms pacing were seen): clean also means the pace
# is kept, the median gap within 10 % of it.
GAP_P50_BOUND_MS = PACING_MS * 1.1
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
CLIENT_BOUND_PERCENT = 90.0


@dataclass(frozen=True)
class Plan:
    """How big each scenario is."""

    levels: tuple[int, ...]
    sweep_s: float
    ramp_s: float
    unpaced_streams: int
    unpaced_s: float
    scale_streams: int
    idle_streams: int
    idle_itl_ms: float
    idle_tokens: int


FULL = Plan(
    levels=(100, 250, 400, 500, 750, 1000, 1500, 2000, 3000, 4000),
    sweep_s=8.0,
    # One stream's length, so that arrivals are spread out before measuring starts.
    ramp_s=(PACING_MS + TOKENS * PACING_MS) / 1000,
    unpaced_streams=50,
    unpaced_s=6.0,
    # Enough streams to keep two worker processes busy.
    scale_streams=100,
    idle_streams=1000,
    idle_itl_ms=1000.0,
    idle_tokens=6,
)
QUICK = Plan(
    levels=(100, 200),
    sweep_s=2.0,
    ramp_s=0.5,
    unpaced_streams=20,
    unpaced_s=1.5,
    scale_streams=40,
    idle_streams=200,
    idle_itl_ms=500.0,
    idle_tokens=3,
)


@dataclass(frozen=True)
class ServerSpec:
    """One design under test and how to start it."""

    name: str
    label: str
    command: Callable[[int, float, float], list[str]]
    requires: str | None = None


SERVERS = (
    ServerSpec(
        "flask",
        "flask (spec)",
        lambda port, ttft, itl: [
            sys.executable,
            str(HERE / "servers" / "flask_baseline.py"),
            *("--host", HOST, "--port", str(port), "--ttft-ms", str(ttft), "--itl-ms", str(itl)),
        ],
        requires="flask",
    ),
    ServerSpec(
        "streamapi",
        "streamapi",
        lambda port, ttft, itl: [
            *(sys.executable, "-m", "streamapi", "serve", "--host", HOST, "--port", str(port)),
            # The engine's steps pace every stream: a request's first token comes at
            # the end of the first step it joins (the ITL, plus 0 to 1 ITL of wait
            # for that step to start), so the closest to "first token after ttft" is
            # no extra first-token latency (ttft is ITL in every paced scenario).
            *("--time-to-first-token-ms", "0", "--inter-token-latency-ms", str(itl)),
            # Fixed pacing, as the other servers have: the engine model's batch
            # slowdown (ITL doubles at a full batch by default) and its capacity
            # limits would measure a simulated GPU, not the server.
            *("--load-factor", "0", "--max-num-seqs", "100000"),
            *("--max-waiting-requests", "100000", "--log-level", "warning"),
        ],
    ),
    ServerSpec(
        "ceiling",
        "ceiling",
        lambda port, ttft, itl: [
            sys.executable,
            str(HERE / "servers" / "ceiling.py"),
            *("--host", HOST, "--port", str(port), "--ttft-ms", str(ttft), "--itl-ms", str(itl)),
        ],
    ),
)


# --- processes -------------------------------------------------------------------


@dataclass
class Server:
    """A running server process and what /proc says about it."""

    spec: ServerSpec
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_s(self) -> float:
        """User + system CPU of the server and its live descendants (``--workers``)."""
        return sum(_stat_cpu_s(pid) for pid in [self.process.pid, *_descendants(self.process.pid)])

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc/PID/status")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The fields after the command name, which may itself hold spaces.
        return stat.read().rpartition(")")[2].split()


def _stat_cpu_s(pid: int) -> float:
    try:
        fields = _stat_fields(pid)
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


# Read before main() pins this process to the load generator's core: a server
# started "unpinned" would otherwise inherit that pin.
ALL_CORES = frozenset(os.sched_getaffinity(0))


def _pin(core: int | None) -> Callable[[], None]:
    cores = ALL_CORES if core is None else {core}
    return lambda: os.sched_setaffinity(0, cores)


def _clean_env() -> dict[str, str]:
    # The servers get their settings from the command line only, never from the shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPI_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def running(
    spec: ServerSpec, *, ttft_ms: float, itl_ms: float, core: int | None, log_dir: Path
) -> Iterator[Server]:
    """Start ``spec`` and yield it once ``GET /health`` answers; always stop it."""
    port = _free_port()
    log_path = log_dir / f"{spec.name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.command(port, ttft_ms, itl_ms),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_clean_env(),
            preexec_fn=_pin(core),
        )
    server = Server(spec, f"http://{HOST}:{port}", process, log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        _stop(process)


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.spec.name} exited with {server.process.returncode}:\n" + server.log_tail()
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(server.url + "/health", timeout=1.0) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.spec.name} was not healthy in time:\n" + server.log_tail())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class Measured:
    """One ``streamapi bench`` run and what the server spent on it."""

    report: dict[str, Any]
    server_cpu_s: float
    peak_rss_kib: int
    foreign_cpu_s: float = 0.0

    @property
    def events(self) -> int:
        events: int = self.report["events"]
        return events

    @property
    def server_us_per_event(self) -> float | None:
        return self.server_cpu_s / self.events * 1e6 if self.events else None

    @property
    def server_cpu_percent(self) -> float:
        duration_s: float = self.report["duration_s"]
        return self.server_cpu_s / max(duration_s, 1e-9) * 100

    @property
    def foreign_cpu_percent(self) -> float:
        """How much of the server's core other processes took during the run."""
        duration_s: float = self.report["duration_s"]
        return self.foreign_cpu_s / max(duration_s, 1e-9) * 100

    def p99(self, key: str) -> float | None:
        value: float | None = self.report[key]["p99"]
        return value

    def p50(self, key: str) -> float | None:
        value: float | None = self.report[key]["p50"]
        return value

    @property
    def clean(self) -> bool:
        gap, ttft, median = self.p99("itl_ms"), self.p99("ttft_ms"), self.p50("itl_ms")
        return (
            self.report["requests"]["failed"] == 0
            and gap is not None
            and ttft is not None
            and median is not None
            and gap <= GAP_P99_BOUND_MS
            and ttft <= TTFT_P99_BOUND_MS
            and median <= GAP_P50_BOUND_MS
        )


def _core_busy_s(core: int | None) -> float:
    """Seconds core ``core`` spent busy (steal included) since boot, from /proc/stat."""
    if core is None:
        return 0.0
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                    int, line.split()[1:9]
                )
                return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


def bench(
    server: Server,
    options: list[str],
    *,
    core: int | None,
    server_core: int | None,
    timeout_s: float,
    log_dir: Path,
) -> Measured:
    """Run the load generator against ``server``, sampling the server's RSS meanwhile."""
    command = [sys.executable, "-m", "streamapi.bench", "--url", server.url]
    command += ["--json", "--no-progress", "--ignore-eos", *options]
    if core is not None:
        command += ["--cpu", str(core)]
    out_path = log_dir / "bench.json"
    err_path = log_dir / "bench.err"
    cpu_before = server.cpu_s()
    core_before = _core_busy_s(server_core)
    peak_rss = server.rss_kib()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the load generator ran past {timeout_s:.0f} s")
                peak_rss = max(peak_rss, server.rss_kib())
                time.sleep(0.1)
        finally:
            _stop(process)
    cpu_s = server.cpu_s() - cpu_before
    # Whatever else ran on the server's core meanwhile: other processes, or the
    # hypervisor's steal.
    foreign_s = max(0.0, _core_busy_s(server_core) - core_before - cpu_s)
    if process.returncode not in (0, 1):
        raise RuntimeError(
            f"the load generator failed ({process.returncode}):\n"
            + err_path.read_text(errors="replace")[-2000:]
        )
    return Measured(json.loads(out_path.read_bytes()), cpu_s, peak_rss, foreign_s)


# --- scenarios -------------------------------------------------------------------


@dataclass
class Results:
    """Everything measured for one server."""

    sweep: list[tuple[int, Measured]] = field(default_factory=list)
    unpaced: Measured | None = None
    idle_rss_kib: int | None = None
    idle: Measured | None = None
    scale: list[tuple[int, Measured]] = field(default_factory=list)
    skipped: str | None = None

    @property
    def clean_streams(self) -> int | None:
        clean = [level for level, measured in self.sweep if measured.clean]
        return max(clean) if clean else None

    @property
    def rss_per_stream_kib(self) -> float | None:
        if self.idle is None or self.idle_rss_kib is None:
            return None
        opened = self.idle.report["max_open_streams"]
        return (self.idle.peak_rss_kib - self.idle_rss_kib) / opened if opened else None


@dataclass
class Context:
    plan: Plan
    server_core: int | None
    load_core: int | None
    log_dir: Path
    foreign: list[float] = field(default_factory=list)

    def start(
        self, spec: ServerSpec, ttft_ms: float, itl_ms: float, *, pinned: bool = True
    ) -> contextlib.AbstractContextManager[Server]:
        core = self.server_core if pinned else None
        return running(spec, ttft_ms=ttft_ms, itl_ms=itl_ms, core=core, log_dir=self.log_dir)

    def bench(
        self, server: Server, options: list[str], timeout_s: float, *, record: bool = True
    ) -> Measured:
        measured = bench(
            server,
            options,
            core=self.load_core,
            server_core=self.server_core,
            timeout_s=timeout_s,
            log_dir=self.log_dir,
        )
        if record:
            self.foreign.append(measured.foreign_cpu_percent)
        return measured

    def warm(self, server: Server) -> None:
        # First requests pay for lazy imports and caches; keep them out of the numbers.
        options = ["--concurrency", "4", "--requests", "8", "--max-tokens", "4"]
        self.bench(server, options, 60, record=False)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def sweep(context: Context, spec: ServerSpec, results: Results) -> None:
    plan = context.plan
    ramp = f"{plan.ramp_s:g}"
    with context.start(spec, PACING_MS, PACING_MS) as server:
        context.warm(server)
        for level in plan.levels:
            options = ["--concurrency", str(level), "--duration", f"{plan.sweep_s:g}"]
            options += ["--ramp-up", ramp, "--warmup", ramp, "--max-tokens", str(TOKENS)]
            options += ["--timeout", f"{REQUEST_TIMEOUT_S:g}"]
            measured = context.bench(server, options, plan.sweep_s + REQUEST_TIMEOUT_S + 60)
            results.sweep.append((level, measured))
            _say(
                f"  {spec.name:<9} {level:>5} streams: gap p50 {_ms(measured.p50('itl_ms'))}, "
                f"p99 {_ms(measured.p99('itl_ms'))}, "
                f"TTFT p99 {_ms(measured.p99('ttft_ms'))}, failed "
                f"{measured.report['requests']['failed']}, "
                f"{_num(measured.server_us_per_event, 1)} µs/event, server "
                f"{measured.server_cpu_percent:.0f}% / client "
                f"{measured.report['client']['cpu_percent']:.0f}% / others "
                f"{measured.foreign_cpu_percent:.0f}% CPU"
                + ("" if measured.clean else "  -> not clean, sweep stops")
            )
            if not measured.clean:
                break


def _unpaced_options(plan: Plan, streams: int) -> list[str]:
    options = ["--concurrency", str(streams), "--duration", f"{plan.unpaced_s:g}"]
    options += ["--max-tokens", str(TOKENS), "--timeout", f"{REQUEST_TIMEOUT_S:g}"]
    # Streams that start together finish together and leave the server idle
    # while the client sends the next requests; spread their starts.
    return [*options, "--ramp-up", f"{plan.unpaced_s / 8:g}"]


def unpaced(context: Context, spec: ServerSpec, results: Results) -> None:
    plan = context.plan
    with context.start(spec, 0.0, 0.0) as server:
        context.warm(server)
        results.unpaced = measured = context.bench(
            server,
            _unpaced_options(plan, plan.unpaced_streams),
            plan.unpaced_s + REQUEST_TIMEOUT_S + 60,
        )
        _say(
            f"  {spec.name:<9} unpaced: {measured.report['events_per_s']:,.0f} events/s, "
            f"{_num(measured.server_us_per_event, 1)} µs/event, server "
            f"{measured.server_cpu_percent:.0f}% / client "
            f"{measured.report['client']['cpu_percent']:.0f}% / others "
            f"{measured.foreign_cpu_percent:.0f}% CPU"
        )


WORKERS = (1, 2)


def _with_workers(spec: ServerSpec, workers: int, port: int, ttft: float, itl: float) -> list[str]:
    return [*spec.command(port, ttft, itl), "--workers", str(workers)]


def scale_out(context: Context, spec: ServerSpec, results: Results) -> None:
    """Unpaced events/s with ``--workers 1`` and ``--workers 2``, the server on every core.

    Nothing is pinned but the load generator, so on a 2-core machine two workers
    share the load generator's core: the ratio is what this machine gives, a
    lower bound of what separate cores would.
    """
    plan = context.plan
    for workers in WORKERS:
        scaled = ServerSpec(spec.name, spec.label, functools.partial(_with_workers, spec, workers))
        with context.start(scaled, 0.0, 0.0, pinned=False) as server:
            context.warm(server)
            measured = context.bench(
                server,
                _unpaced_options(plan, plan.scale_streams),
                plan.unpaced_s + REQUEST_TIMEOUT_S + 60,
                record=False,
            )
        results.scale.append((workers, measured))
        _say(
            f"  {spec.name:<9} --workers {workers}, unpinned: "
            f"{measured.report['events_per_s']:,.0f} events/s, server "
            f"{measured.server_cpu_percent:.0f}% / client "
            f"{measured.report['client']['cpu_percent']:.0f}% CPU"
        )


def idle(context: Context, spec: ServerSpec, results: Results) -> None:
    plan = context.plan
    with context.start(spec, PACING_MS, plan.idle_itl_ms) as server:
        context.warm(server)
        time.sleep(0.5)
        results.idle_rss_kib = server.rss_kib()
        streams = str(plan.idle_streams)
        options = ["--concurrency", streams, "--requests", streams, "--ramp-up", "1"]
        options += ["--max-tokens", str(plan.idle_tokens), "--timeout", "120"]
        stream_s = plan.idle_tokens * plan.idle_itl_ms / 1000
        results.idle = measured = context.bench(server, options, stream_s + 180)
        _say(
            f"  {spec.name:<9} {measured.report['max_open_streams']} open streams: RSS "
            f"{results.idle_rss_kib / 1024:.1f} -> {measured.peak_rss_kib / 1024:.1f} MiB, "
            f"{_num(results.rss_per_stream_kib, 1)} KiB per stream"
        )


# --- the table -------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _ratio(ours: float | None, other: float | None) -> str:
    if ours is None or other is None or other == 0:
        return ""
    return f"{ours / other:.2f}x"


def table(results: dict[str, Results], plan: Plan) -> str:
    """One Markdown table: every server side by side, streamapi's ratios to the others."""
    specs = [spec for spec in SERVERS if spec.name in results]
    ours = results.get("streamapi")
    others = [name for name in ("flask", "ceiling") if name in results and ours is not None]
    header = ["metric", *(spec.label for spec in specs)]
    header += [f"streamapi ÷ {name}" for name in others]
    rows: list[list[str]] = []

    def row(
        label: str,
        value: Callable[[Results], float | None],
        digits: int = 0,
        *,
        ratios: bool = True,
        mark: Callable[[Results], str] = lambda _: "",
    ) -> None:
        cells = [label]
        cells += [
            _num(value(results[spec.name]), digits) + mark(results[spec.name]) for spec in specs
        ]
        if ours is not None:
            cells += [
                _ratio(value(ours), value(results[name])) if ratios else "" for name in others
            ]
        rows.append(cells)

    top = plan.levels[-1]

    def clean_cell(result: Results) -> str:
        if result.skipped:
            return "skipped"
        level = result.clean_streams
        if level is None:
            return f"< {plan.levels[0]}"
        return f"≥ {level:,}" if level == top else f"{level:,}"

    def clean_value(result: Results) -> float | None:
        return float(result.clean_streams) if result.clean_streams else None

    cells = ["clean streams per core (↑)", *(clean_cell(results[spec.name]) for spec in specs)]
    cells += [_ratio(clean_value(ours), clean_value(results[name])) for name in others if ours]
    rows.append(cells)
    row(
        f"unpaced events/s, {plan.unpaced_streams} streams (↑)",
        lambda r: r.unpaced.report["events_per_s"] if r.unpaced else None,
        mark=lambda r: _client_mark(r.unpaced),
    )
    row(
        "server CPU per event, unpaced, µs (↓)",
        lambda r: r.unpaced.server_us_per_event if r.unpaced else None,
        1,
    )
    row(
        f"server CPU per event, {plan.levels[0]:,} paced streams, µs (↓)",
        functools.partial(_at, level=plan.levels[0], value=_server_us_per_event),
        1,
    )
    row(
        f"RSS per open stream, {plan.idle_streams:,} streams, KiB (↓)",
        lambda r: r.rss_per_stream_kib,
        1,
    )
    row("RSS idle (warm), MiB (↓)", lambda r: r.idle_rss_kib / 1024 if r.idle_rss_kib else None, 1)
    for level in plan.levels:
        cells = [f"{level:,} streams: gap p50 / p99, TTFT p99 ms; µs per event"]
        for spec in specs:
            measured = _measured_at(results[spec.name], level)
            cells.append("" if measured is None else _sweep_cell(measured))
        cells += [""] * (len(header) - len(cells))
        rows.append(cells)
    row(
        "load generator CPU per event, unpaced, µs",
        lambda r: r.unpaced.report["client"]["cpu_us_per_event"] if r.unpaced else None,
        1,
        ratios=False,
    )
    row(
        "load generator core use, unpaced, %",
        lambda r: r.unpaced.report["client"]["cpu_percent"] if r.unpaced else None,
        ratios=False,
    )
    if ours is not None and ours.scale:
        scale = dict(ours.scale)
        one, two = scale.get(1), scale.get(2)
        for workers, measured in ours.scale:
            cells = [
                f"streamapi --workers {workers}, unpaced events/s, "
                f"{plan.scale_streams} streams, server unpinned"
            ]
            cells += [
                _num(measured.report["events_per_s"]) if spec.name == "streamapi" else ""
                for spec in specs
            ]
            cells += [""] * (len(header) - len(cells))
            rows.append(cells)
        if one is not None and two is not None:
            cells = ["scale-out: --workers 2 ÷ --workers 1 (↑)"]
            cells += [
                _ratio(two.report["events_per_s"], one.report["events_per_s"])
                if spec.name == "streamapi"
                else ""
                for spec in specs
            ]
            cells += [""] * (len(header) - len(cells))
            rows.append(cells)
    notes = (
        "\n✗ not clean (the sweep stops there). † the load generator used "
        f"≥ {CLIENT_BOUND_PERCENT:g}% of its core: a bound of the pair, not of the server alone.\n"
    )
    return _markdown(header, rows) + notes


def _client_mark(measured: Measured | None) -> str:
    if measured is None:
        return ""
    return " †" if measured.report["client"]["cpu_percent"] >= CLIENT_BOUND_PERCENT else ""


def _sweep_cell(measured: Measured) -> str:
    failed = measured.report["requests"]["failed"]
    return (
        f"{_num(measured.p50('itl_ms'), 1)} / {_num(measured.p99('itl_ms'), 1)}, "
        f"{_num(measured.p99('ttft_ms'), 1)}; {_num(measured.server_us_per_event)}"
        + (f", {failed} failed" if failed else "")
        + ("" if measured.clean else " ✗")
        + _client_mark(measured)
    )


def _measured_at(result: Results, level: int) -> Measured | None:
    return next((measured for lvl, measured in result.sweep if lvl == level), None)


def _server_us_per_event(measured: Measured) -> float | None:
    return measured.server_us_per_event


def _at(result: Results, level: int, value: Callable[[Measured], float | None]) -> float | None:
    measured = _measured_at(result, level)
    return value(measured) if measured is not None else None


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    separator = (
        "|"
        + "|".join("-" * (width + 1) + (":" if i else "-") for i, width in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), separator, *(line(row) for row in rows)]) + "\n"


def machine(server_core: int | None, load_core: int | None) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for text in cpuinfo:
            if text.startswith("model name"):
                model = text.partition(":")[2].strip()
                break
    pinning = (
        f"server on core {server_core}, load generator on core {load_core}"
        if server_core is not None
        else "one core: server and load generator share it (numbers are not comparable)"
    )
    return (
        f"{os.cpu_count()} x {model}; Python {platform.python_version()}; "
        f"Linux {platform.release()}; {pinning}"
    )


def _spread(percents: list[float]) -> str:
    if not percents:
        return "n/a"
    ordered = sorted(percents)
    return f"{ordered[len(ordered) // 2]:.0f}% (median), {ordered[-1]:.0f}% (max)"


def _load_average() -> str:
    # Other work on the machine skews every number; say how busy it was.
    with contextlib.suppress(OSError), open("/proc/loadavg", encoding="ascii") as loadavg:
        return loadavg.read().split()[0]
    return "n/a"


def _available(spec: ServerSpec) -> str | None:
    if spec.requires is None:
        return None
    try:
        __import__(spec.requires)
    except ImportError:
        return f"{spec.requires} is not installed (pip install -e '.[bench]')"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every scenario, tiny (CI smoke)")
    parser.add_argument(
        "--servers",
        default=",".join(spec.name for spec in SERVERS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument("--json-out", type=Path, help="also write every bench report here")
    parser.add_argument(
        "--html",
        type=Path,
        help="also write one self-contained HTML page with the servers' plots side by side",
    )
    args = parser.parse_args(argv)
    # SIGTERM (CI's timeout) must unwind through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    plan = QUICK if args.quick else FULL
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(names) - {spec.name for spec in SERVERS}
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")

    cores = sorted(os.sched_getaffinity(0))
    server_core, load_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    if load_core is not None:
        # This process only samples /proc, but keep it off the server's core too.
        os.sched_setaffinity(0, {load_core})
    started = time.monotonic()
    load_before = _load_average()
    results: dict[str, Results] = {}
    with tempfile.TemporaryDirectory(prefix="streamapi-bench-") as tmp:
        context = Context(plan, server_core, load_core, Path(tmp))
        for spec in SERVERS:
            if spec.name not in names:
                continue
            results[spec.name] = result = Results()
            reason = _available(spec)
            if reason is not None:
                result.skipped = reason
                _say(f"{spec.name}: skipped, {reason}")
                continue
            _say(f"{spec.name}:")
            sweep(context, spec, result)
            unpaced(context, spec, result)
            idle(context, spec, result)
            if spec.name == "streamapi":
                scale_out(context, spec, result)
    elapsed = time.monotonic() - started
    sys.stdout.write(
        f"\nstreamapi benchmark ({'quick' if args.quick else 'full'} run, {elapsed:.0f} s): "
        f"{TOKENS} tokens per stream, one per event, {PACING_MS:g} ms apart; clean = gap p99 "
        f"<= {GAP_P99_BOUND_MS:g} ms and p50 <= {GAP_P50_BOUND_MS:g} ms, TTFT p99 <= "
        f"{TTFT_P99_BOUND_MS:g} ms, no errors\n"
        f"machine: {machine(server_core, load_core)}\n"
        f"other load: 1-minute load average {load_before} before the run; other processes "
        f"took {_spread(context.foreign)} of the server's core during the measured runs\n\n"
    )
    sys.stdout.write(table(results, plan))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(_dump(results), indent=2) + "\n")
    if args.html is not None:
        args.html.write_text(html_page(results), encoding="utf-8")
    return 0


def html_page(results: dict[str, Results]) -> str:
    """The unpaced run and every paced level, each with the servers that ran it side by side."""
    sections: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
    unpaced_runs = [(name, r.unpaced.report) for name, r in results.items() if r.unpaced]
    if unpaced_runs:
        sections.append(("Unpaced: as fast as each server can", unpaced_runs))
    levels = sorted({level for r in results.values() for level, _ in r.sweep})
    for level in levels:
        runs = [
            (name, measured.report)
            for name, r in results.items()
            for at, measured in r.sweep
            if at == level
        ]
        sections.append((f"Paced: {level} streams, {PACING_MS:g} ms per token", runs))
    return render_sections(sections, "streamapi benchmark: servers side by side")


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _dump(results: dict[str, Results]) -> dict[str, Any]:
    def measured(m: Measured | None) -> dict[str, Any] | None:
        if m is None:
            return None
        return {
            "server_cpu_s": m.server_cpu_s,
            "server_us_per_event": m.server_us_per_event,
            "peak_rss_kib": m.peak_rss_kib,
            "clean": m.clean,
            "report": m.report,
        }

    return {
        name: {
            "skipped": result.skipped,
            "clean_streams": result.clean_streams,
            "sweep": {str(level): measured(m) for level, m in result.sweep},
            "unpaced": measured(result.unpaced),
            "idle_rss_kib": result.idle_rss_kib,
            "rss_per_stream_kib": result.rss_per_stream_kib,
            "idle": measured(result.idle),
            "scale_out": {str(workers): measured(m) for workers, m in result.scale},
        }
        for name, result in results.items()
    }


if __name__ == "__main__":
    sys.exit(main())
