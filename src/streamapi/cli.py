"""The ``streamapi`` command: ``serve``, ``rules check FILE``, ``cassette to-rules FILE`` and
``bench``."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import gc
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import tracemalloc
from multiprocessing import connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from pydantic import ValidationError
from pydantic_settings import CliApp

from streamapi import __version__
from streamapi.app import create_app
from streamapi.control.rules import RulesError, load_rules
from streamapi.edge import edge_protocol
from streamapi.lifecycle import Lifecycle
from streamapi.middleware import ServeLaterLayer
from streamapi.settings import Settings
from streamapi.state import PER_WORKER, check_reachable

logger = logging.getLogger(__name__)

USAGE = """\
usage: streamapi <command> [options]

commands:
  serve              start the server (streamapi serve --help lists every setting)
  rules check FILE   validate a rules file (YAML or JSON) without serving
  cassette to-rules FILE [-o OUT]
                     turn a cassette into a rules file (YAML; to stdout without -o)
  bench              load-test any OpenAI-compatible streaming server (streamapi bench --help)

options:
  -h, --help     show this message
  --version      show the version
"""

# uvicorn's own deadline must outlast the drain, so that streams end with our
# in-stream error rather than being cancelled by uvicorn mid-write.
_UVICORN_SHUTDOWN_MARGIN_S = 5.0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamapi`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        sys.stdout.write(f"streamapi {__version__}\n")
        return 0
    if args[0] == "serve":
        return serve(args[1:])
    if args[0] == "rules":
        return rules(args[1:])
    if args[0] == "cassette":
        return cassette(args[1:])
    if args[0] == "bench":
        # Imported here so that a bench run pays for none of the server's imports
        # beyond this module's own.
        from streamapi.bench import main as bench_main

        return bench_main(args[1:])
    sys.stderr.write(f"streamapi: unknown command {args[0]!r}\n\n{USAGE}")
    return 2


def serve(args: list[str]) -> int:
    """Read the settings (options, then environment) and run the server until stopped."""
    try:
        settings = CliApp.run(Settings, cli_args=args)
    except ValidationError as exc:
        sys.stderr.write(_describe(exc))
        return 2
    if settings.rules_file is not None:
        try:
            load_rules(settings.rules_file)
        except RulesError as exc:
            sys.stderr.write(f"streamapi serve: invalid rules: {exc}\n")
            return 2
    if settings.state_url is not None:
        problem = check_reachable(settings.state_url, timeout_s=max(1.0, settings.state_timeout_s))
        if problem is not None:
            sys.stderr.write(f"streamapi serve: {problem}\n")
            return 2
    _configure_logging(settings.log_level)
    if settings.workers > 1:
        return _serve_workers(settings)
    lifecycle = Lifecycle()
    config = _uvicorn_config(settings, create_app(settings, lifecycle=lifecycle))
    server = _Server(
        config,
        lifecycle=lifecycle,
        grace_period_s=settings.shutdown_grace_period_s,
        tracemalloc_frames=settings.tracemalloc_frames,
    )
    server.run()
    return 0 if server.started else 1


def _uvicorn_config(settings: Settings, app: Any) -> uvicorn.Config:
    if not isinstance(app, str):
        # Streams served from outside FastAPI's and Starlette's own calls too: an open
        # stream keeps neither coroutine alive (the app's own layer defers to this one).
        app = ServeLaterLayer(app)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        # The Responses API's WebSocket mode, on the websockets library's
        # Sans-I/O core (its legacy API, uvicorn's "auto", is deprecated).
        ws="websockets-sansio",
        # Over this a message is not even read: the connection closes (1009). Under it
        # the app answers one over --max-request-body-bytes with a 413 error event.
        ws_max_size=2 * settings.max_request_body_bytes,
        # Header and body deadlines and a connection cap, which uvicorn lacks.
        http=edge_protocol(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
        ),
        timeout_keep_alive=int(settings.keep_alive_timeout_s),
        # The app applies X-Forwarded-For itself, from --forwarded-allow-ips only.
        proxy_headers=False,
        timeout_graceful_shutdown=int(
            settings.shutdown_grace_period_s + _UVICORN_SHUTDOWN_MARGIN_S
        ),
    )


def rules(args: list[str]) -> int:
    """``streamapi rules check FILE``: 0 if the file's rules are valid, else 1 and why."""
    if len(args) != 2 or args[0] != "check":
        sys.stderr.write(f"usage: streamapi rules check FILE\n\n{USAGE}")
        return 2
    path = Path(args[1])
    try:
        loaded = load_rules(path)
    except RulesError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    names = ", ".join(rule.name or f"#{i + 1}" for i, rule in enumerate(loaded))
    sys.stdout.write(f"{path}: {len(loaded)} valid rule(s){': ' + names if names else ''}\n")
    return 0


def cassette(args: list[str]) -> int:
    """``streamapi cassette to-rules FILE [-o OUT]``: one rule per recorded exchange."""
    # Imported here, not by every server: PyYAML and the cassette code are this command's.
    from streamapi.cassettes import CassetteError, read_cassette, write_atomic
    from streamapi.control.cassette_rules import cassette_rules, dump_rules

    usage = "usage: streamapi cassette to-rules FILE [-o OUT]\n"
    if args[:1] != ["to-rules"] or len(args) not in (2, 4):
        sys.stderr.write(usage)
        return 2
    source, out = Path(args[1]), None
    if len(args) == 4:
        if args[2] not in ("-o", "--output"):
            sys.stderr.write(usage)
            return 2
        out = Path(args[3])
    try:
        converted = cassette_rules(read_cassette(source))
    except (CassetteError, RulesError) as exc:
        sys.stderr.write(f"streamapi cassette to-rules: {exc}\n")
        return 1
    text = dump_rules(converted, source=source.name)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        sys.stderr.write(f"{out}: {len(converted)} rule(s) from {source}\n")
    return 0


def _serve_workers(settings: Settings) -> int:
    """Serve from ``settings.workers`` processes, each with its own listening socket."""
    # Only the parent's listening sockets come from this config: each worker
    # builds its own app and config.
    config = _uvicorn_config(settings, "streamapi.app:create_app")
    try:
        sockets = _listening_sockets(settings.host, settings.port, settings.workers, config)
    except OSError as exc:
        logger.error("Could not listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    port: int = sockets[0].getsockname()[1]
    logger.info(
        "streamapi %s starting %d workers on http://%s:%d (parent pid %d)",
        __version__,
        settings.workers,
        _url_host(settings.host),
        port,
        os.getpid(),
    )
    if settings.state_url is None:
        logger.warning(
            "Without --state-url each worker keeps its own %s (docs/scaling-out.md).",
            ", ".join(PER_WORKER),
        )
    metrics_dir = _metrics_dir()
    try:
        return _Supervisor(settings, sockets, port, metrics_dir).run()
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir() -> Path:
    """A new, empty directory for prometheus-client's multiprocess mode, named in the environment.

    Every worker's metrics are files there, so ``/metrics`` on any worker sums
    them all (``streamapi.metrics``). It must start empty (old files would be
    counted) and is removed at exit, so it is always ours, whatever
    ``PROMETHEUS_MULTIPROC_DIR`` said before. Set before any worker starts:
    prometheus-client reads the variable when it is imported.
    """
    path = Path(tempfile.mkdtemp(prefix="streamapi-metrics-"))
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    return path


MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _listening_sockets(
    host: str, port: int, count: int, config: uvicorn.Config
) -> list[socket.socket]:
    """One listening socket per worker on the same address, where the OS allows it.

    With ``SO_REUSEPORT`` the kernel spreads new connections evenly over the
    workers' sockets. On one shared socket, whichever worker wakes first takes
    a burst of connections and keeps them (keep-alive): two workers measured no
    faster than one. Without ``SO_REUSEPORT``, the workers share one socket.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        shared = config.bind_socket()
        return [shared] * count
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(config.backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _worker(settings: Settings, index: int, port: int, parent: int, sock: socket.socket) -> None:
    """One process of ``serve --workers N``: its own app, drained on SIGTERM as a single server is.

    Runs in a spawned child (a fresh interpreter), serving the parent's socket
    ``sock``.
    """
    _stop_with_parent(parent)
    _configure_logging(settings.log_level)
    lifecycle = Lifecycle()
    try:
        app = create_app(settings, lifecycle=lifecycle)
    except Exception:
        # Every restart would fail the same way: the parent stops on this exit code.
        logger.exception("Worker %d could not build the app", index + 1)
        sys.exit(_STARTUP_FAILURE)
    config = _uvicorn_config(settings, app)
    config.port = port
    server = _Server(
        config,
        lifecycle=lifecycle,
        grace_period_s=settings.shutdown_grace_period_s,
        worker=(index, settings.workers),
        tracemalloc_frames=settings.tracemalloc_frames,
    )
    # uvicorn handles SIGINT itself; one arriving before its handlers are
    # installed would otherwise print a traceback for a normal stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.run([sock])
    if not server.started:
        sys.exit(_STARTUP_FAILURE)


# The exit code of a worker that could not start (uvicorn's own, 3): the parent
# stops rather than restart a worker that would fail the same way every time.
_STARTUP_FAILURE = 3

# Workers are fresh interpreters, never forks of the parent: a fork would copy
# the parent's logging locks and imported state mid-use, and "spawn" behaves
# the same on every platform. The parent's sockets are passed to them as
# multiprocessing passes any socket argument (the descriptor is duplicated).
_SPAWN = multiprocessing.get_context("spawn")


def _stop_with_parent(parent: int) -> None:
    """Have Linux send this worker SIGTERM when its parent dies, however it dies.

    A parent killed with SIGKILL cannot pass SIGTERM on; its workers would go on
    serving its port, orphaned. With the signal they drain like any other stop.
    Elsewhere (no ``prctl``) they are left to the operator.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        # The parent died before the request took effect.
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Supervisor:
    """Keeps the workers serving until SIGTERM or SIGINT, then lets each drain.

    Not uvicorn's ``Multiprocess``: its workers run a plain ``uvicorn.Server``
    (ours, which drains, cannot be plugged in), and once stopping it joins them
    without reading signals any more, so a second signal could not force the exit.
    """

    def __init__(
        self,
        settings: Settings,
        sockets: list[socket.socket],
        port: int,
        metrics_dir: Path,
    ) -> None:
        self._settings = settings
        self._sockets = sockets
        self._port = port
        self._metrics_dir = metrics_dir
        self._signals: list[int] = []
        self._workers: list[SpawnProcess] = []

    def run(self) -> int:
        """Start the workers, restart any that dies, and return the exit code once all ended."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        self._workers = [self._spawn(index) for index in range(self._settings.workers)]
        failed = False
        while not self._signals and not failed:
            connection.wait([worker.sentinel for worker in self._workers], timeout=0.5)
            if self._signals:
                # A worker that ended now most likely got the same signal (Ctrl-C
                # reaches the whole process group): stopping, not dying.
                break
            for index, worker in enumerate(self._workers):
                if worker.exitcode is None:
                    continue
                if worker.exitcode == _STARTUP_FAILURE:
                    # It would fail the same way at every restart.
                    logger.error(
                        "Worker %d [pid %s] failed to start; stopping", index + 1, worker.pid
                    )
                    failed = True
                    break
                logger.warning(
                    "Worker %d [pid %s] died (exit code %s); starting a new one",
                    index + 1,
                    worker.pid,
                    worker.exitcode,
                )
                self._forget(worker)
                self._workers[index] = self._spawn(index)
        return self._stop(by_signal=not failed)

    def _spawn(self, index: int) -> SpawnProcess:
        process = _SPAWN.Process(
            target=_worker,
            args=(self._settings, index, self._port, os.getpid(), self._sockets[index]),
            name=f"streamapi-worker-{index + 1}",
        )
        process.start()
        return process

    def _forget(self, worker: SpawnProcess) -> None:
        """Drop a dead worker's live gauges from the metrics (its counters still count)."""
        if worker.pid is not None:
            mark_process_dead(worker.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _stop(self, *, by_signal: bool) -> int:
        # SIGTERM whichever signal we got: a worker that already has the terminal's
        # SIGINT would take a second SIGINT as "force the exit".
        logger.info("Stopping %d worker(s); each drains its open streams", len(self._workers))
        self._send(signal.SIGTERM)
        forced = False
        force_after = 2 if by_signal else 1
        while alive := [worker for worker in self._workers if worker.exitcode is None]:
            connection.wait([worker.sentinel for worker in alive], timeout=0.5)
            if not forced and len(self._signals) >= force_after:
                logger.warning("Second signal: workers stop without waiting for open streams")
                # uvicorn takes SIGINT after SIGTERM as "force the exit".
                self._send(signal.SIGINT)
                forced = True
        # A worker stopped before it could handle SIGTERM had no stream to drain.
        clean = (0, -signal.SIGTERM)
        codes = [worker.exitcode for worker in self._workers]
        logger.info("Workers stopped (exit codes %s)", codes)
        return 0 if by_signal and all(code in clean for code in codes) else 1

    def _send(self, sig: int) -> None:
        for worker in self._workers:
            if worker.exitcode is None and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when SIGTERM starts the drain."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        lifecycle: Lifecycle,
        grace_period_s: float,
        worker: tuple[int, int] | None = None,
        tracemalloc_frames: int = 0,
    ):
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_period_s = grace_period_s
        self._worker = worker
        self._tracemalloc_frames = tracemalloc_frames

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._lifecycle.begin_drain(self._grace_period_s)
        super().handle_exit(sig, frame)
        # uvicorn re-raises caught signals once it has stopped, so the process
        # would die by SIGTERM after a clean drain; a drained server exits 0.
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _settle_heap()
            if self._tracemalloc_frames:
                _dump_heap_on_signal(self._tracemalloc_frames)
            base = f"http://{_url_host(self.config.host)}:{self.config.port}"
            if self._worker is None:
                logger.info("streamapi %s listening on %s", __version__, base)
            else:
                index, count = self._worker
                logger.info(
                    "streamapi %s listening on %s (worker %d of %d, pid %d)",
                    __version__,
                    base,
                    index + 1,
                    count,
                    os.getpid(),
                )
            if self._worker is None or self._worker[0] == 0:
                logger.info("API docs at %s/docs, chat at %s/v1/chat/completions", base, base)


def _settle_heap() -> None:
    """Keep the garbage collector from stalling streams.

    The app, its routes, schemas and imported modules live as long as the
    process; left in the collected heap, every full collection walks them
    again (~80 ms on this project's machine with 300 streams open, a stall in
    every stream's time to first token), so they are frozen out of its sight.
    A stream allocates thousands of short-lived objects, nearly all freed by
    reference counting; collecting every 5,000 net allocations instead of 700
    cuts the collector's time by five (docs/performance.md has the figures).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(5000, 20, 20)


def _dump_heap_on_signal(frames: int) -> None:
    """``--tracemalloc-frames N``: trace allocations from now on; SIGUSR1 writes a snapshot.

    A debugging aid for ``bench/stream_memory.py`` (docs/performance.md, "Memory
    per stream"): nothing of it exists unless the setting is on, so the serving
    path is the same either way. Tracing starts once the server has started (the
    imports before it would take minutes to trace), so a snapshot holds what was
    allocated since and is still alive. The snapshot goes to
    ``$TMPDIR/streamapi-PID-N.tracemalloc`` (N counts from 1), written under
    another name first and then renamed, so a reader never sees half a file.
    """
    loop = asyncio.get_running_loop()
    count = 0
    tracemalloc.start(frames)

    def dump() -> None:
        nonlocal count
        count += 1
        # What is alive, not what the collector has yet to free.
        gc.collect()
        path = Path(tempfile.gettempdir()) / f"streamapi-{os.getpid()}-{count}.tracemalloc"
        partial = path.with_suffix(".partial")
        tracemalloc.take_snapshot().dump(str(partial))
        partial.rename(path)
        logger.warning("tracemalloc snapshot written to %s", path)

    loop.add_signal_handler(signal.SIGUSR1, dump)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _describe(exc: ValidationError) -> str:
    lines = ["streamapi serve: invalid settings:"]
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if not loc:
            # A check of several settings (or of a file they name): its input is every
            # setting, API keys included, so only the message is shown.
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
            continue
        field = ".".join(str(part) for part in loc)
        option = "--" + field.replace("_", "-")
        env = "STREAMAPI_" + field.upper()
        shown = "<secret>" if loc[0] in _SECRET_SETTINGS else repr(error.get("input"))
        lines.append(f"  {option} / {env}: {error['msg']} (got {shown})")
    return "\n".join(lines) + "\n"


_SECRET_SETTINGS = frozenset({"api_keys", "admin_key"})


def _configure_logging(level: str) -> None:
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    # Every line names the request it was logged for ("-" outside one).
    config.setdefault("filters", {})["request_id"] = {"()": "streamapi.logs.RequestIdFilter"}
    config["formatters"]["default"]["fmt"] = "%(levelprefix)s [%(request_id)s] %(message)s"
    config["formatters"]["access"]["fmt"] = (
        '%(levelprefix)s [%(request_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'
    )
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("request_id")
    config["loggers"]["streamapi"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        config["loggers"].setdefault(name, {})["level"] = level.upper()
    logging.config.dictConfig(config)
