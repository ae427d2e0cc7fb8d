"""Idle memory: where an idle streamapi's MiB go, by owner, step by step.

Builds the app in a fresh interpreter as `streamapi serve` does, one step at a time,
and reads its RSS (`VmRSS` of `/proc/self/status`) after each:

1. `import fastapi, uvicorn` (the floor: what any FastAPI app on uvicorn costs);
2. `import streamapi.app`;
3. `create_app(Settings())` (the default settings: the dashboard is on);
4. the lifespan's start (the engine, the services), over the ASGI lifespan protocol;
5. the first request of each generation route, streamed, in-process over ASGI: chat,
   completions, Responses, Messages, then embeddings;
6. the first `GET /openapi.json` (built once, then kept: the first look at `/docs`).

Each step is split by owner. Every module loaded during a step is charged what its own
loading cost (its code, and what its top level builds: routes, pydantic models, tables),
less the modules it imports, which are charged themselves; a module's owner is its
package (`pydantic.v1` apart: FastAPI imports it for response models) or its part of
streamapi (`streamapi.api`, `streamapi.schemas`, ...). What the step itself built, beyond
the modules it loaded, is its `(built)` row. The hook is the standard library's
`importlib._bootstrap._load_unlocked`, wrapped in the measuring interpreter only.

A second interpreter repeats the steps with tracemalloc on (1 frame; 8 with `--sites`):
its traced MiB are what Python objects hold; RSS beyond them is C memory
(pydantic-core's validators and serializers are Rust, invisible to tracemalloc; an
extension module's library) and the allocator's pages. RSS comes only from the
untraced runs (the median of `--runs`). `--sites N` shows where each `(built)` row's
traced bytes were allocated; `--modules N` the N dearest modules.

It imports only `streamapi.app`'s `create_app` and `streamapi.settings`' `Settings`, so
`--src OTHER/src` measures another tree (a `git worktree` of main, say) the same way.

    python bench/idle_memory.py
    python bench/idle_memory.py --modules 25 --sites 6
    python bench/idle_memory.py --src /tmp/main/src --json before.json
    python bench/idle_memory.py --serve              # and a real `streamapi serve`'s RSS,
                                                     # beside its floors' (FLOORS)
    python bench/idle_memory.py --kinds              # code objects, pydantic, other objects
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from asgi_scope import http_scope, receiver

STEPS = (
    "import streamapi.app",
    "create_app",
    "lifespan start",
    "chat",
    "completions",
    "responses",
    "messages",
    "embeddings",
    "GET /openapi.json",
)
PROMPT = "Explain queues"
REQUESTS = (
    (
        "chat",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8},
    ),
    ("completions", "/v1/completions", {"prompt": PROMPT, "max_tokens": 8}),
    ("responses", "/v1/responses", {"input": PROMPT, "max_output_tokens": 16}),
    (
        "messages",
        "/v1/messages",
        {"model": "sim-small", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8},
    ),
)
_STDLIB = sysconfig.get_paths()["stdlib"] + "/"
_GENERIC = ("<frozen", "<string>", _STDLIB)


_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def status_kib(pid: int | str = "self") -> tuple[int, int, int]:
    """RSS, and its anonymous and file-backed parts (KiB), from ``/proc/PID/status``."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name = line.split(":", 1)[0]
            if name in _FIELDS:
                found[name] = int(line.split()[1])
    return found["VmRSS"], found["RssAnon"], found["RssFile"]


def rss_kib() -> int:
    return status_kib()[0]


def owner_of(module: str) -> str:
    """The row a module's cost goes in: its package, or its part of streamapi."""
    parts = module.split(".")
    if parts[0] == "streamapi":
        return ".".join(parts[:2])
    if parts[:2] == ["pydantic", "v1"]:
        return "pydantic.v1"
    return parts[0]


# What each reading holds, in KiB: RSS, its anonymous and file-backed parts, and
# tracemalloc's traced bytes (0 when it is not tracing).
KEYS = ("rss_kib", "anon_kib", "file_kib", "traced_kib")


class Meter:
    """The readings, the rows, and each module's own cost, charged as it loads."""

    def __init__(self, sites: int) -> None:
        self.sites = sites
        self.rows: list[dict[str, Any]] = []
        self.modules: list[dict[str, Any]] = []
        self.step_modules: dict[str, list[float]] = {}
        self.last = self.reading()
        self.snapshot: tracemalloc.Snapshot | None = None
        self._stack: list[list[float]] = []
        self._thread = threading.get_ident()

    @staticmethod
    def reading() -> list[float]:
        traced = tracemalloc.get_traced_memory()[0] / 1024 if tracemalloc.is_tracing() else 0.0
        return [*map(float, status_kib()), traced]

    def hook(self) -> None:
        """Charge every module loaded from now on its own cost (less its imports')."""
        bootstrap: Any = sys.modules["_frozen_importlib"]
        load: Callable[[importlib.machinery.ModuleSpec], ModuleType] = bootstrap._load_unlocked

        def charged(spec: importlib.machinery.ModuleSpec) -> ModuleType:
            if threading.get_ident() != self._thread:  # a worker thread's: left to its step
                return load(spec)
            before = self.reading()
            self._stack.append([0.0] * len(KEYS))
            try:
                return load(spec)
            finally:
                inner = self._stack.pop()
                spent = [now - then for now, then in zip(self.reading(), before, strict=True)]
                if self._stack:
                    self._stack[-1] = [a + b for a, b in zip(self._stack[-1], spent, strict=True)]
                own = [a - b for a, b in zip(spent, inner, strict=True)]
                self.step_modules[spec.name] = own

        bootstrap._load_unlocked = charged

    def measure(self, step: str) -> None:
        """Close a step: a row per owner of the modules it loaded, then its `(built)` row."""
        gc.collect()
        now = self.reading()
        owners: dict[str, list[float]] = {}
        for name, own in self.step_modules.items():
            self.modules.append({"step": step, "module": name, **dict(zip(KEYS, own, strict=True))})
            cost = owners.setdefault(owner_of(name), [0.0] * (len(KEYS) + 1))
            cost[:] = [*(a + b for a, b in zip(cost, own, strict=False)), cost[-1] + 1]
        for owner, cost in owners.items():
            row = {"step": step, "owner": owner, "modules": int(cost[-1])}
            self.rows.append(row | dict(zip(KEYS, cost, strict=False)))
        built: dict[str, Any] = {"step": step, "owner": "(built)", "modules": 0}
        for index, key in enumerate(KEYS):
            loaded = sum(cost[index] for cost in owners.values())
            built[key] = now[index] - self.last[index] - loaded
        if self.sites and tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot()
            if self.snapshot is not None:
                built["sites"] = self._sites(snapshot, self.snapshot)
            self.snapshot = snapshot
        self.rows.append(built)
        self.step_modules = {}
        self.last = self.reading()

    def _sites(
        self, snapshot: tracemalloc.Snapshot, before: tracemalloc.Snapshot
    ) -> list[tuple[str, float]]:
        # Module loads are charged to their modules: only the step's own allocations here.
        sites: dict[str, float] = defaultdict(float)
        for stat in snapshot.compare_to(before, "traceback"):
            frames = [f for f in stat.traceback if not f.filename.startswith(_GENERIC)]
            frame = frames[0] if frames else stat.traceback[0]
            name = frame.filename
            for marker in ("/site-packages/", "/src/"):
                name = name.split(marker, 1)[-1]
            sites[f"{name.replace(_STDLIB, '')}:{frame.lineno}"] += stat.size_diff / 1024
        return sorted(sites.items(), key=lambda item: -item[1])[: self.sites]


async def _request(app: Any, state: dict[str, Any], method: str, path: str, body: Any) -> bytes:
    raw = json.dumps(body).encode() if body is not None else b""
    scope = http_scope(method, path, state, body_bytes=len(raw))
    done = asyncio.Event()
    status, chunks = [0], []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        else:
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receiver(raw, done), send)
    if status[0] != 200:
        raise SystemExit(f"{path}: {status[0]} {b''.join(chunks)[:300]!r}")
    return b"".join(chunks)


async def _serve(app: Any, meter: Meter) -> str:
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, received.get, sent.put))
    await received.put({"type": "lifespan.startup"})
    started = await sent.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the lifespan did not start: {started}")
    await asyncio.sleep(0.05)  # what the lifespan starts, started
    meter.measure("lifespan start")
    for step, path, body in REQUESTS:
        await _request(app, scope["state"], "POST", path, {**body, "stream": True})
        await asyncio.sleep(0.05)  # the request's tasks, done
        meter.measure(step)
    await _request(app, scope["state"], "POST", "/v1/embeddings", {"input": PROMPT})
    meter.measure("embeddings")
    document = await _request(app, scope["state"], "GET", "/openapi.json", None)
    meter.measure("GET /openapi.json")
    await received.put({"type": "lifespan.shutdown"})
    await sent.get()
    await lifespan
    return hashlib.sha256(document).hexdigest()


def child(trace: bool, sites: int) -> None:
    """One measured interpreter: print its rows as JSON."""
    bare = Meter.reading()
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401

    floor_rows = [("python", "(interpreter)", bare), ("fastapi, uvicorn", "(floor)", None)]
    now = Meter.reading()
    floor = [
        {"step": step, "owner": owner, "modules": 0}
        | dict(zip(KEYS, kib or [a - b for a, b in zip(now, bare, strict=True)], strict=True))
        for step, owner, kib in floor_rows
    ]
    if trace:
        tracemalloc.start(8 if sites else 1)
    meter = Meter(sites)
    meter.hook()
    from streamapi.app import create_app
    from streamapi.settings import Settings

    meter.measure("import streamapi.app")
    app = create_app(Settings())
    meter.measure("create_app")
    openapi = asyncio.run(_serve(app, meter))
    rows = {"floor": floor, "rows": meter.rows, "modules": meter.modules, "openapi": openapi}
    print(json.dumps(rows))


# Packages that build what others ask for: their allocations go to the asker.
_BUILDERS = frozenset({"pydantic", "pydantic_core", "typing_inspection", "typing_extensions"})


def _package(filename: str) -> str | None:
    if "/site-packages/" in filename:
        path = filename.split("/site-packages/", 1)[1]
        return "pydantic.v1" if path.startswith("pydantic/v1/") else path.split("/")[0]
    if "/streamapi/" in filename and not filename.startswith(_STDLIB):
        return "streamapi"
    return None


def kinds_child() -> None:
    """What `import streamapi.app` and `create_app` leave traced, by asker and kind: code
    objects (charged to the importing package), what pydantic built (models, adapters:
    charged to the package that asked), and other objects (classes, functions, tables)."""
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401

    tracemalloc.start(100)
    before = tracemalloc.take_snapshot()
    from streamapi.app import create_app
    from streamapi.settings import Settings

    app = create_app(Settings())
    gc.collect()
    after = tracemalloc.take_snapshot()
    kinds: dict[str, float] = defaultdict(float)
    for stat in after.compare_to(before, "traceback"):
        frames = list(stat.traceback)[::-1]  # the innermost first
        packages = [p for p in map(_package, (f.filename for f in frames)) if p]
        if frames[0].filename.startswith("<frozen importlib._bootstrap_external"):
            asker, kind = (packages[:1] or ["stdlib"])[0], "code objects"
        elif packages and packages[0] in _BUILDERS:
            asker = next((p for p in packages if p not in _BUILDERS), packages[0])
            kind = "pydantic's models and adapters"
        else:
            asker, kind = (packages[:1] or ["stdlib"])[0], "objects"
        kinds[f"{asker}: {kind}"] += stat.size_diff / 1024
    del app
    print(json.dumps(kinds))


def _run(src: str | None, trace: bool, sites: int, pycache: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPI_")}
    # The engine unpaced (the requests end at once); every other setting its default.
    env |= {"STREAMAPI_TIME_TO_FIRST_TOKEN_MS": "0", "STREAMAPI_INTER_TOKEN_LATENCY_MS": "0"}
    if pycache is not None:
        # Modules loaded from bytecode, as pip installs them (it compiles every module):
        # compiling a module from source leaves the compiler's pages in the RSS.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, env.get("PYTHONPATH"))))
    mode = ["--child-kinds"] if sites < 0 else ["--child-trace"] if trace else ["--child"]
    done = subprocess.run(
        [sys.executable, __file__, *mode, "--sites", str(sites)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def serve_idle(src: str | None, pycache: str | None) -> list[tuple[str, tuple[int, int, int]]]:
    """A real `streamapi serve` (default settings, unpaced): its RSS once started, then
    once every generation route has answered (streamed) and embeddings once."""
    import httpx
    from launch import start_streamapi, stop

    env = {"PYTHONDONTWRITEBYTECODE": ""} if pycache is not None else {}
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = pycache
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, os.environ.get("PYTHONPATH"))))
    options = ("--time-to-first-token-ms", "0", "--inter-token-latency-ms", "0")
    process, base = start_streamapi((*options, "--log-level", "warning"), env=env)
    try:
        readings = [("started", status_kib(process.pid))]
        with httpx.Client(base_url=base, timeout=30) as client:
            for _, path, body in REQUESTS:
                client.post(path, json={**body, "stream": True}).raise_for_status()
            client.post("/v1/embeddings", json={"input": PROMPT}).raise_for_status()
        time.sleep(0.2)  # the requests' tasks, done
        readings.append(("every route served once", status_kib(process.pid)))
    finally:
        stop(process)
    return readings


# The floors a served streamapi stands on, each a script of bench/servers/: the
# smallest FastAPI app on uvicorn, and the raw-ASGI ceiling (uvicorn and orjson alone).
FLOORS = (
    ("fastapi_hello.py", "FastAPI, one route"),
    ("ceiling.py", "raw-ASGI ceiling"),
)


def floor_idle(script: str, pycache: str | None) -> list[tuple[str, tuple[int, int, int]]]:
    """One of ``FLOORS`` served by uvicorn: its RSS once started, then once it has
    answered (``GET /health``, and for the ceiling one streamed chat completion)."""
    import httpx
    from launch import HOST, free_port, stop, wait_healthy

    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    port = free_port()
    command = [sys.executable, str(Path(__file__).parent / "servers" / script)]
    process = subprocess.Popen(
        [*command, "--host", HOST, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://{HOST}:{port}"
    try:
        if not wait_healthy(process, base, timeout_s=20):
            raise SystemExit(f"{script} did not start")
        readings = [("started", status_kib(process.pid))]
        with httpx.Client(base_url=base, timeout=30) as client:
            if script == "ceiling.py":
                chat = REQUESTS[0][2]
                client.post("/v1/chat/completions", json={**chat, "stream": True})
            client.get("/health").raise_for_status()
        time.sleep(0.2)
        readings.append(("served", status_kib(process.pid)))
    finally:
        stop(process)
    return readings


def _mib(kib: float) -> str:
    return f"{kib / 1024:7.2f}"


def report(rss: dict[str, Any], traced: dict[str, Any], top_modules: int) -> None:
    """The rows of at least 16 KiB, the totals by owner over every step, the dearest modules.

    RSS, anonymous and file-backed (a shared library's pages: shared between processes,
    and given back under pressure) come from the untraced runs, traced from the traced one.
    """
    twins = {(r["step"], r["owner"]): r for r in traced["rows"]}
    header = f"{'RSS MiB':>8} {'anon':>7} {'file':>7} {'traced':>7}"
    print(f"{'step':22} {'owner':26} {header} {'modules':>7}")

    def figures(row: dict[str, Any], traced_kib: float | None) -> str:
        shown = _mib(traced_kib) if traced_kib is not None else " " * 7
        return f"{_mib(row['rss_kib'])}  {_mib(row['anon_kib'])} {_mib(row['file_kib'])} {shown}"

    for row in rss["floor"]:
        print(f"{row['step']:22} {row['owner']:26} {figures(row, None)}")
    totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KEYS, 0.0))
    for row in rss["rows"]:
        twin = twins.get((row["step"], row["owner"]), {})
        traced_kib = twin.get("traced_kib", 0.0)
        built = row["owner"] == "(built)"
        total = totals[f"(built) {row['step']}" if built else row["owner"]]
        for key in KEYS[:-1]:
            total[key] += row[key]
        total["traced_kib"] += traced_kib
        if max(abs(row["rss_kib"]), abs(traced_kib)) < 16:
            continue
        count = row["modules"] or ""
        print(f"{row['step']:22} {row['owner']:26} {figures(row, traced_kib)} {count:>7}")
        for site, kib in twin.get("sites", []):
            print(f"{'':26}{site[:60]:60} {kib:8.1f} KiB")
    floor = {key: sum(row[key] for row in rss["floor"]) for key in KEYS[:-1]}
    ours = {key: sum(total[key] for total in totals.values()) for key in KEYS}
    print(f"\nabove the floor, by owner, over every step: {figures(ours, ours['traced_kib'])}")
    for owner, total in sorted(totals.items(), key=lambda item: -item[1]["rss_kib"]):
        if max(abs(total["rss_kib"]), abs(total["traced_kib"])) >= 16:
            print(f"  {owner:40} {figures(total, total['traced_kib'])}")
    whole = {key: floor[key] + ours[key] for key in KEYS[:-1]}
    served = {
        key: whole[key] - sum(r[key] for r in rss["rows"] if r["step"] == STEPS[-1])
        for key in KEYS[:-1]
    }
    print(f"floor:                           {figures(floor, None)}")
    print(f"idle, every route served once:   {figures(served, None)}")
    print(f"and /openapi.json built:         {figures(whole, None)}")
    if top_modules:
        traced_by_module = {m["module"]: m["traced_kib"] for m in traced["modules"]}
        print(f"\nthe {top_modules} dearest modules, by their own cost: {header}")
        for module in sorted(rss["modules"], key=lambda m: -m["rss_kib"])[:top_modules]:
            name = module["module"]
            cost = figures(module, traced_by_module.get(name, 0.0))
            print(f"  {name:48} {cost}  ({module['step']})")
    print(f"/openapi.json sha256: {rss['openapi']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--src", help="a tree's src folder to measure instead of the installed one")
    parser.add_argument("--runs", type=int, default=3, help="untraced runs; the median is shown")
    parser.add_argument("--sites", type=int, default=0, help="allocation sites per (built) row")
    parser.add_argument("--modules", type=int, default=0, help="list the N dearest modules")
    parser.add_argument(
        "--from-source",
        action="store_true",
        help="compile every module at import (no bytecode cache, as PYTHONDONTWRITEBYTECODE "
        "without .pyc files) instead of loading the bytecode a pip install writes",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also read a real `streamapi serve`'s RSS (--runs times)",
    )
    parser.add_argument(
        "--kinds",
        action="store_true",
        help="also split what importing and building the app leaves traced into code "
        "objects, pydantic's models and other objects, by the package that asked",
    )
    parser.add_argument("--json", type=Path, help="write every run's rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-kinds", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_kinds:
        kinds_child()
        return
    if args.child or args.child_trace:
        child(args.child_trace, args.sites)
        return
    src = str(Path(args.src).resolve()) if args.src else None
    pycache = None
    if not args.from_source:
        pycache = str(Path(tempfile.gettempdir()) / "streamapi-idle-memory-pycache")
        _run(src, False, 0, pycache)  # writes the bytecode the measured runs load
    runs = [_run(src, False, 0, pycache) for _ in range(max(args.runs, 1))]
    rss = json.loads(json.dumps(runs[0]))
    # Row by row, the median of the runs (each run has the same rows, in the same order,
    # but for modules a run loaded and another did not: those keep the first run's).
    for key in ("floor", "rows", "modules"):
        for index, row in enumerate(rss[key]):
            same = [
                r[key][index]
                for r in runs
                if index < len(r[key])
                and r[key][index].get("owner") == row.get("owner")
                and r[key][index].get("module") == row.get("module")
            ]
            for field in KEYS[:-1]:
                row[field] = sorted(r[field] for r in same)[len(same) // 2]
    traced = _run(src, True, args.sites, pycache)
    report(rss, traced, args.modules)
    if args.kinds:
        kinds: dict[str, float] = _run(src, True, -1, pycache)
        print("\nimport streamapi.app and create_app, traced MiB by asker and kind:")
        for name, kib in sorted(kinds.items(), key=lambda item: -item[1]):
            if kib >= 16:
                print(f"  {name:56} {_mib(kib)}")
    if args.serve:
        served = [serve_idle(src, pycache) for _ in range(max(args.runs, 1))]
        print(f"\nstreamapi serve, the median of {len(served)} (its own process: uvicorn's too):")
        for index, (label, _) in enumerate(served[0]):
            medians = [sorted(r[index][1][k] for r in served)[len(served) // 2] for k in range(3)]
            print(f"  {label:31} {'  '.join(_mib(kib) for kib in medians)}")
        print("the floors it stands on, each its own uvicorn process, the same way:")
        for script, name in FLOORS:
            floors = [floor_idle(script, pycache) for _ in range(max(args.runs, 1))]
            for index, (label, _) in enumerate(floors[0]):
                medians = [
                    sorted(r[index][1][k] for r in floors)[len(floors) // 2] for k in range(3)
                ]
                row = f"{name}, {label}"
                print(f"  {row:31} {'  '.join(_mib(kib) for kib in medians)}")
    if args.json:
        args.json.write_text(json.dumps({"rss": runs, "traced": traced}, indent=1))


if __name__ == "__main__":
    main()
