"""Memory per open stream: RSS per stream, idle RSS, and what each stream holds by owner.

Starts `streamapi serve` on 127.0.0.1 paced at one token a second (so streams stay
open), warms it with 8 short requests, reads its idle RSS (`VmRSS` of
`/proc/PID/status`), then opens N chat-completion streams over one second, each on a
connection of its own (a raw HTTP/1.1 request, `Connection: close`). Once every
stream has its first event, it reads the RSS again: (open - idle) / N is the RSS per
open stream; the peak, sampled every 100 ms, is printed too. Then it closes the
connections and stops the server. One fresh server per N, since freed memory stays
in the process.

With `--trace N` (default 500) it also runs a server with `--tracemalloc-frames 25`
and takes a tracemalloc snapshot over SIGUSR1 (the server writes it to
`$TMPDIR/streamapi-PID-K.tracemalloc`; without that setting it installs no handler)
once idle and once with N streams open.
The difference, divided by N, is what each open stream holds, grouped by owner: the
package of the innermost frame that made the allocation, looking through the
standard library's generic modules (contextlib, dataclasses, functools, typing...) to
their caller, with asyncio kept as an owner of its own. Tracing slows the server and
inflates its RSS, so RSS figures come only from the untraced runs.

    python bench/stream_memory.py                       # 500 and 1,000 streams, traced at 500
    python bench/stream_memory.py --streams 1000 --trace 0
    python bench/stream_memory.py --streams 200 --trace 200 --sites 30 --json out.json
    python bench/stream_memory.py --streams 500 --trace 0 --prompt-chars 20000   # long prompts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from launch import HOST, start_streamapi, stop

SERVER_OPTIONS = (
    *("--time-to-first-token-ms", "0", "--inter-token-latency-ms", "1000"),
    # Fixed pacing and no capacity limit: the server's memory, not a simulated GPU's queue.
    *("--load-factor", "0", "--max-num-seqs", "100000", "--max-waiting-requests", "100000"),
    *("--log-level", "warning"),
)
# 64 s at one token a second: long enough to outlast the measurement (the client closes
# them all before they end), and the token count of the streams.
STREAM_TOKENS = 64
OPEN_TIMEOUT_S = 120.0
SNAPSHOT_TIMEOUT_S = 300.0
TRACE_FRAMES = "25"

OWNERS = (
    ("streamapi", "/streamapi/"),
    ("fastapi", "/fastapi/"),
    ("starlette", "/starlette/"),
    ("uvicorn", "/uvicorn/"),
    ("h11/httptools", "/h11/"),
    ("h11/httptools", "/httptools/"),
    ("pydantic", "/pydantic/"),
    ("pydantic", "/pydantic_core/"),
    ("anyio", "/anyio/"),
    ("prometheus_client", "/prometheus_client/"),
)
_STDLIB = sysconfig.get_paths()["stdlib"] + "/"


# What a long prompt is padded with (``--prompt-chars``): an agent's context, say.
_CONTEXT = "The service reads its queue, retries failed jobs and logs each step. "


def _chat_request(max_tokens: int, prompt_chars: int = 0) -> bytes:
    context = (_CONTEXT * (prompt_chars // len(_CONTEXT) + 1))[:prompt_chars]
    body = json.dumps(
        {
            "model": "sim-small",
            "messages": [{"role": "user", "content": f"{context}Explain queues"}],
            "stream": True,
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/PID/status")


class PeakSampler:
    """The highest RSS of a process, sampled every 100 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the client --------------------------------------------------------------------


async def _stream(port: int, payload: bytes, opened: asyncio.Queue[bool]) -> None:
    """One stream: its head and first event, reported, then read until cancelled."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        opened.put_nowait(False)
        return
    try:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        ok = head.split(b" ", 2)[1] == b"200"
        if ok:
            await reader.readuntil(b"\n\n")
        opened.put_nowait(ok)
        while await reader.read(65536):
            pass
    except (OSError, asyncio.IncompleteReadError):
        opened.put_nowait(False)
    finally:
        writer.close()


async def _open_streams(
    port: int, count: int, ramp_s: float, prompt_chars: int
) -> tuple[list[asyncio.Task[None]], int]:
    """Open ``count`` streams spread over ``ramp_s``; the tasks and how many got a first event."""
    payload = _chat_request(STREAM_TOKENS, prompt_chars)
    opened: asyncio.Queue[bool] = asyncio.Queue()
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i in range(count):
        delay = start + ramp_s * i / count - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_stream(port, payload, opened)))
    good = 0
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    for _ in range(count):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            good += await asyncio.wait_for(opened.get(), timeout=remaining)
        except TimeoutError:
            break
    return tasks, good


async def _running(port: int) -> int:
    """Requests the server's engine is running, from its /metrics: the streams it holds open."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode(errors="replace")
    writer.close()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:num_requests_running")
        )
    )


async def _close(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _warm(port: int) -> None:
    payload = _chat_request(4)
    opened: asyncio.Queue[bool] = asyncio.Queue()
    # Short streams, run to their end: lazy imports and first-request caches.
    await asyncio.wait_for(
        asyncio.gather(*(_stream(port, payload, opened) for _ in range(8))), timeout=60
    )


# --- tracemalloc -------------------------------------------------------------------


def _snapshot(process: subprocess.Popen[bytes], directory: Path) -> tracemalloc.Snapshot:
    """Ask the server for a snapshot (SIGUSR1) and load it once written."""
    before = set(directory.glob(f"streamapi-{process.pid}-*.tracemalloc"))
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
    while time.monotonic() < deadline:
        new = set(directory.glob(f"streamapi-{process.pid}-*.tracemalloc")) - before
        if new:
            return tracemalloc.Snapshot.load(str(new.pop()))
        time.sleep(0.2)
    raise SystemExit("the server wrote no tracemalloc snapshot")


def _owner(filename: str) -> str | None:
    for owner, marker in OWNERS:
        if marker in filename:
            return owner
    if "/asyncio/" in filename or "uvloop" in filename:
        return "asyncio/uvloop"
    return None


def _transparent(filename: str) -> bool:
    """Generic code, whose allocations belong to its caller (contextlib, dataclasses...)."""
    return filename.startswith(("<", _STDLIB)) and "site-packages" not in filename


def _attribute(traceback: tracemalloc.Traceback) -> tuple[str, str]:
    """The owner of one allocation and its site (the line that made it), innermost frame first."""
    frames = list(traceback)[::-1]  # tracemalloc lists the oldest frame first
    for frame in frames:
        owner = _owner(frame.filename)
        if owner is not None:
            return owner, _site(frame)
        if not _transparent(frame.filename):
            return "other", _site(frame)
    return "other", _site(frames[0]) if frames else "?"


def _site(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for marker in ("site-packages/", "/src/", _STDLIB):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{frame.lineno}"


def _by_owner(snapshot: tracemalloc.Snapshot) -> tuple[Counter[str], Counter[str], Counter[str]]:
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    sites: Counter[str] = Counter()
    for trace in snapshot.traces:
        owner, site = _attribute(trace.traceback)
        sizes[owner] += trace.size
        counts[owner] += 1
        sites[f"{owner}  {site}"] += trace.size
    return sizes, counts, sites


def _table(
    idle: tracemalloc.Snapshot, busy: tracemalloc.Snapshot, streams: int, sites_shown: int
) -> dict[str, object]:
    idle_sizes, idle_counts, idle_sites = _by_owner(idle)
    busy_sizes, busy_counts, busy_sites = _by_owner(busy)
    owners = sorted(
        set(idle_sizes) | set(busy_sizes),
        key=lambda o: busy_sizes[o] - idle_sizes[o],
        reverse=True,
    )
    total = sum(busy_sizes.values()) - sum(idle_sizes.values())
    rows = []
    print(f"\nwhat each open stream holds (tracemalloc, {streams} streams open, live objects):")
    print(f"  {'owner':<18} {'bytes/stream':>12} {'blocks/stream':>13} {'share':>6}")
    for owner in owners:
        per = (busy_sizes[owner] - idle_sizes[owner]) / streams
        blocks = (busy_counts[owner] - idle_counts[owner]) / streams
        share = 100 * per * streams / total if total else 0.0
        print(f"  {owner:<18} {per:>12,.0f} {blocks:>13.1f} {share:>5.1f}%")
        rows.append(
            {
                "owner": owner,
                "bytes_per_stream": round(per),
                "blocks_per_stream": round(blocks, 1),
            }
        )
    print(f"  {'total':<18} {total / streams:>12,.0f}")
    site_rows = sorted(
        ((site, busy_sites[site] - idle_sites[site]) for site in busy_sites),
        key=lambda item: item[1],
        reverse=True,
    )[:sites_shown]
    print(f"\nthe {sites_shown} largest allocation sites per open stream:")
    for site, size in site_rows:
        print(f"  {size / streams:>8,.0f} B  {site}")
    return {
        "streams": streams,
        "bytes_per_stream": round(total / streams),
        "by_owner": rows,
        "sites": [{"site": s, "bytes_per_stream": round(n / streams)} for s, n in site_rows],
    }


# --- runs --------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def measure_rss(
    streams: int, options: Sequence[str], log: Path, prompt_chars: int = 0
) -> dict[str, object]:
    """Idle and open-stream RSS of one fresh server."""
    process, url = start_streamapi([*SERVER_OPTIONS, *options], log=log, timeout_s=120)
    try:
        port = _port(url)
        asyncio.run(_warm(port))
        time.sleep(0.5)
        idle = rss_kib(process.pid)

        async def hold() -> tuple[int, int]:
            tasks, good = await _open_streams(port, streams, 1.0, prompt_chars)
            await asyncio.sleep(1.0)
            steady = rss_kib(process.pid)
            running = await _running(port)
            await _close(tasks)
            if running != good:
                print(f"  the server runs {running} streams, not {good}", flush=True)
            return good, steady

        with PeakSampler(process.pid) as sampler:
            good, open_rss = asyncio.run(hold())
        peak = sampler.peak
    finally:
        code = stop(process)
    result: dict[str, object] = {
        "streams": streams,
        "opened": good,
        "idle_rss_mib": round(idle / 1024, 1),
        "open_rss_mib": round(open_rss / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_per_stream_kib": round((open_rss - idle) / max(good, 1), 1),
        "peak_rss_per_stream_kib": round((peak - idle) / max(good, 1), 1),
        "server_exit": code,
    }
    print(
        f"{streams} streams ({good} opened): idle RSS {result['idle_rss_mib']} MiB, "
        f"open {result['open_rss_mib']} MiB (peak {result['peak_rss_mib']}): "
        f"{result['rss_per_stream_kib']} KiB per open stream "
        f"({result['peak_rss_per_stream_kib']} at the peak)",
        flush=True,
    )
    return result


def measure_heap(
    streams: int,
    options: Sequence[str],
    log: Path,
    directory: Path,
    sites: int,
    prompt_chars: int = 0,
) -> dict[str, object]:
    """The tracemalloc table of one fresh, traced server with ``streams`` open."""
    traced = [*SERVER_OPTIONS, "--tracemalloc-frames", TRACE_FRAMES, *options]
    process, url = start_streamapi(traced, log=log, timeout_s=120, env={"TMPDIR": str(directory)})
    try:
        port = _port(url)
        asyncio.run(_warm(port))
        time.sleep(0.5)
        idle = _snapshot(process, directory)

        async def hold() -> tuple[tracemalloc.Snapshot, int]:
            tasks, good = await _open_streams(port, streams, 1.0, prompt_chars)
            await asyncio.sleep(1.0)
            running = await _running(port)
            busy = await asyncio.to_thread(_snapshot, process, directory)
            await _close(tasks)
            print(f"traced run: {good} of {streams} streams opened, {running} running", flush=True)
            return busy, good

        busy, good = asyncio.run(hold())
    finally:
        stop(process)
    return _table(idle, busy, max(good, 1), sites)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--streams", type=int, nargs="*", default=[500, 1000], help="RSS runs; none: no RSS run"
    )
    parser.add_argument("--trace", type=int, default=500, help="streams traced; 0: none")
    parser.add_argument("--sites", type=int, default=20, help="allocation sites to list")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    parser.add_argument(
        "--prompt-chars",
        type=int,
        default=0,
        help="pad each stream's prompt with this many characters (a long context)",
    )
    parser.add_argument("server_options", nargs="*", help="more `streamapi serve` options")
    args = parser.parse_args()
    if max([*args.streams, args.trace]) > 5000:
        parser.error("at most 5,000 streams")
    if sys.platform != "linux":
        parser.error("reads /proc: Linux only")
    results: dict[str, object] = {"rss": [], "heap": None}
    with tempfile.TemporaryDirectory(prefix="stream-memory-") as scratch:
        directory = Path(scratch)
        for count in args.streams:
            results["rss"].append(  # type: ignore[attr-defined]
                measure_rss(
                    count, args.server_options, directory / f"rss-{count}.log", args.prompt_chars
                )
            )
        if args.trace:
            results["heap"] = measure_heap(
                args.trace,
                args.server_options,
                directory / "traced.log",
                directory,
                args.sites,
                args.prompt_chars,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
