"""Hostile requests beside a live stream: does any of them stall the server's event loop?

Starts `streamapi serve` on 127.0.0.1 (a rules file with the regex rule ``^(a+)+$``),
keeps one paced stream open from a separate watcher process (one event every
``--itl-ms``), and fires each hostile case of issue 26 in turn beside it, as a client
of a default server would: streamed at the server's pace and read up to its first
token (its checks and planning are done by then), or read whole for the embeddings
and log-probability cases (``--unpaced``: every answer whole, sent at once). For each
case it prints the status, the bytes read, the largest gap between two reads of the
concurrent stream while the case ran (the stall it caused; the stream's own pace is
the floor) and the server's resident memory after minus before.

    python bench/hostile.py            # every case, a table
    python bench/hostile.py --json     # the same as JSON
    python bench/hostile.py --only minitems-1e6 --only 2000-tools

It exits non-zero if a case gets no answer or a 5xx; timing is printed, never judged.

The server is pinned to core 0 and the watcher to core 1 when the machine has two.
Every request is bounded by ``--timeout-s``; a case that passes it is reported as such.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from launch import start_streamapi, stop

RULE_REGEX = "^(a+)+$"
CHAT = "/v1/chat/completions"
# With --unpaced, hostile requests are answered at once: each case then also pays for
# sending its whole answer, however long, in one burst.
INSTANT = {"x-streamapi-ttft-ms": "0", "x-streamapi-itl-ms": "0"}
# Cases whose answer is read whole; the others are streamed at the server's own pace and
# read up to their first token (admission, where a request's checks and planning happen,
# is over by then), unless --unpaced.
WHOLE = {"embeddings-2048x8192", "n16-top-logprobs-20"}
Case = tuple[str, str, dict[str, Any]]


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": "Plan a trip"}]} | fields


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def _one(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"value": prop}, "required": ["value"]}


def _fan_out(branching: int, depth: int) -> dict[str, Any]:
    """``depth`` levels of $defs, each requiring ``branching`` copies of the next."""
    defs: dict[str, Any] = {f"d{depth}": {"type": "string"}}
    for level in range(depth):
        props = {f"p{i}": {"$ref": f"#/$defs/d{level + 1}"} for i in range(branching)}
        defs[f"d{level}"] = {"type": "object", "properties": props, "required": list(props)}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def _tools(count: int, properties: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": f"Tool number {i}",
                "parameters": {
                    "type": "object",
                    "properties": {f"arg_{j}": {"type": "string"} for j in range(properties)},
                    "required": [f"arg_{j}" for j in range(properties)],
                },
            },
        }
        for i in range(count)
    ]


def cases() -> list[Case]:
    """Every hostile case of issue 26: (id, path, body)."""
    many = {f"p{i}": {"type": "string"} for i in range(20_000)}
    return [
        ("minitems-1e6", CHAT, _chat(response_format=_schema_format(
            _one({"type": "array", "items": {"type": "string"}, "minItems": 1_000_000})))),
        ("pattern-a{1000000}", CHAT, _chat(response_format=_schema_format(
            _one({"type": "string", "pattern": "a{1000000}"})))),
        ("minlength-1e7", CHAT, _chat(response_format=_schema_format(
            _one({"type": "string", "minLength": 10_000_000})))),
        ("multipleof-5e-6", CHAT, _chat(response_format=_schema_format(
            _one({"type": "number", "multipleOf": 5e-6})))),
        ("defs-fan-out-8^6", CHAT, _chat(response_format=_schema_format(_fan_out(8, 6)))),
        ("20k-properties", CHAT, _chat(response_format=_schema_format(
            {"type": "object", "properties": many}))),
        ("2000-tools", CHAT, _chat(tools=_tools(2000, 4))),
        ("ref-#-required", CHAT, _chat(response_format=_schema_format(
            {"type": "object", "properties": {"self": {"$ref": "#"}}, "required": ["self"]}))),
        ("rule-regex-25-chars", CHAT, _chat(messages=[
            {"role": "user", "content": "a" * 24 + "!"}])),
        ("embeddings-2048x8192", "/v1/embeddings",
         {"model": "sim-small", "input": [f"text {i}" for i in range(2048)], "dimensions": 8192}),
        ("n16-top-logprobs-20", CHAT, _chat(n=16, logprobs=True, top_logprobs=20)),
        # Not hostile: a plain answer of 130,000 tokens, for scale (its plan is made at once).
        ("(control) 130k-token answer", CHAT, _chat(max_tokens=130_000, ignore_eos=True)),
    ]  # fmt: skip


# --- the watcher: a separate process, so the client's own work never shows as a gap ----------


def watch(base: str, itl_ms: float) -> None:
    """Read paced streams one after another, printing ``time.monotonic()`` at every read."""
    url = httpx.URL(base)
    body = json.dumps(
        _chat(stream=True, max_tokens=20_000, ignore_eos=True, messages=[
            {"role": "user", "content": "Explain queues"}])
    ).encode()  # fmt: skip
    headers = {"x-streamapi-itl-ms": str(itl_ms), "x-streamapi-ttft-ms": "0"}
    # No read timeout: a stall of any length is what this measures.
    timeout = httpx.Timeout(10.0, read=None)
    with httpx.Client(base_url=str(url), timeout=timeout) as client:
        while True:
            try:
                with client.stream("POST", CHAT, content=body, headers=headers) as response:
                    for chunk in response.iter_raw():
                        if chunk:
                            print(f"{time.monotonic():.6f}", flush=True)
            except httpx.TransportError:
                time.sleep(0.1)  # the server is gone or restarting: the gap shows it


class Watcher:
    """The watcher process and the times of its reads."""

    def __init__(self, base: str, itl_ms: float, cpu: int | None) -> None:
        self.reads: list[float] = []
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--watch", base, "--itl-ms", str(itl_ms)],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})),
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.reads.append(float(line))

    def wait_for_reads(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.reads) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.reads) < count:
            raise SystemExit("the watcher's stream did not start")

    def largest_gap_ms(self, start: float, end: float) -> float:
        """The longest wait between two reads over [start, end] (and the first read after)."""
        times = list(self.reads)
        before = [t for t in times if t <= start]
        window = [before[-1]] if before else []
        window += [t for t in times if start < t <= end]
        window += [t for t in times if t > end][:1]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        return round(1000 * max(gaps, default=0.0), 1)

    def stop(self) -> None:
        self._process.kill()
        self._process.wait(timeout=10)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fire(
    client: httpx.Client, path: str, body: dict[str, Any], timeout_s: float, *, head: bool
) -> tuple[str, int]:
    try:
        if head:
            return _head(client, path, body | {"stream": True}, timeout_s)
        response = client.post(path, json=body, headers=INSTANT, timeout=timeout_s)
    except httpx.TimeoutException:
        return f"timeout>{timeout_s:g}s", 0
    except httpx.TransportError as exc:
        return type(exc).__name__, 0
    status = _status(response) if response.status_code >= 400 else str(response.status_code)
    return status, len(response.content)


def _head(
    client: httpx.Client, path: str, body: dict[str, Any], timeout_s: float
) -> tuple[str, int]:
    """Stream ``body`` at the server's pace: the status, and the bytes up to the first token."""
    with client.stream("POST", path, json=body, timeout=timeout_s) as response:
        if response.status_code != 200:
            response.read()
            return _status(response), len(response.content)
        read = b""
        for chunk in response.iter_raw():
            read += chunk
            if read.count(b"data: ") >= 2:  # the role chunk, then the first token
                break
        return "200 (streamed)", len(read)


def _status(response: httpx.Response) -> str:
    status = str(response.status_code)
    try:
        # A stream's refusal is one SSE event (its status says what it is).
        error = json.loads(response.text.removeprefix("data: "))["error"]
        status += f" {error.get('code') or error.get('type')}"
    except (ValueError, KeyError, TypeError):
        pass
    return status


def run(options: argparse.Namespace) -> list[dict[str, Any]]:
    two_cores = (os.cpu_count() or 1) >= 2
    wanted = set(options.only or ())
    chosen = [case for case in cases() if not wanted or case[0] in wanted]
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(
            json.dumps([{"match": {"user": {"regex": RULE_REGEX}}, "respond": {"text": "as"}}])
        )
        process, base = start_streamapi(
            ["--rules-file", str(rules), "--enable-latency-headers", *options.server_option],
            log=Path(tmp) / "server.log",
            cpu=0 if two_cores else None,
        )
        watcher = Watcher(base, options.itl_ms, 1 if two_cores else None)
        results: list[dict[str, Any]] = []
        try:
            watcher.wait_for_reads(20)
            with httpx.Client(base_url=base) as client:
                # The stream's own pace, with nothing else going on: the floor of every gap.
                idle_start = time.monotonic()
                time.sleep(1.0)
                idle_gap = watcher.largest_gap_ms(idle_start, time.monotonic())
                results.append(_row("(idle stream)", "-", 0, idle_gap, 0, 0))
                for name, path, body in chosen:
                    rss = _rss_mb(process.pid)
                    start = time.monotonic()
                    head = not options.unpaced and name not in WHOLE
                    status, size = _fire(client, path, body, options.timeout_s, head=head)
                    end = time.monotonic()
                    time.sleep(0.2)  # the first read after the answer closes the window
                    gap = watcher.largest_gap_ms(start, end)
                    results.append(_row(name, status, size, gap, rss, _rss_mb(process.pid)))
        finally:
            watcher.stop()
            stop(process)
    return results


def _row(
    name: str, status: str, size: int, gap_ms: float, rss_before: float, rss_after: float
) -> dict[str, Any]:
    return {
        "case": name,
        "status": status,
        "response_bytes": size,
        "largest_gap_ms": gap_ms,
        "rss_before_mb": round(rss_before, 1),
        "rss_delta_mb": round(rss_after - rss_before, 1),
    }


def table(results: list[dict[str, Any]], fmt: Callable[[Any], str] = str) -> str:
    """A Markdown table of the results."""
    head = "| case | status | response bytes | largest gap on the stream (ms) | RSS delta (MB) |"
    lines = [head, "|---|---|--:|--:|--:|"]
    for r in results:
        lines.append(
            f"| {r['case']} | {r['status']} | {r['response_bytes']:,} | "
            f"{r['largest_gap_ms']:g} | {r['rss_delta_mb']:+g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    parser.add_argument("--itl-ms", type=float, default=5.0, help="the stream's pace")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="longest wait per case")
    parser.add_argument("--only", action="append", help="run only this case (repeatable)")
    parser.add_argument(
        "--server-option", action="append", default=[], help="an extra `serve` option"
    )
    parser.add_argument(
        "--unpaced", action="store_true", help="read every answer whole, sent at once"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    options = parser.parse_args()
    if options.watch:
        watch(options.watch, options.itl_ms)
        return
    results = run(options)
    print(json.dumps(results, indent=2) if options.json else table(results))
    # Every case must get an answer, and never a server error: a stall is printed, not judged.
    failed = [
        r["case"] for r in results[1:] if not r["status"][:1].isdigit() or r["status"][0] == "5"
    ]
    if failed:
        raise SystemExit(f"no answer, or a server error, for: {', '.join(failed)}")


if __name__ == "__main__":
    main()
