"""The ``streamapi`` command: ``streamapi serve [options]``, ``streamapi bench [options]``."""

from __future__ import annotations

import copy
import logging
import logging.config
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp
from sse_starlette.sse import AppStatus

from streamapi import __version__
from streamapi.app import create_app
from streamapi.lifecycle import Lifecycle
from streamapi.settings import Settings

logger = logging.getLogger(__name__)

USAGE = """\
usage: streamapi <command> [options]

commands:
  serve      start the server (streamapi serve --help lists every setting)
  bench      load-test any OpenAI-compatible streaming server (streamapi bench --help)

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
    _configure_logging(settings.log_level)
    lifecycle = Lifecycle()
    # We drain streams ourselves: sse-starlette would otherwise cancel every open
    # stream the moment SIGTERM arrives (sysid/sse-starlette#73).
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    config = uvicorn.Config(
        create_app(settings, lifecycle=lifecycle),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(
            settings.shutdown_grace_period_s + _UVICORN_SHUTDOWN_MARGIN_S
        ),
    )
    server = _Server(config, lifecycle=lifecycle, grace_period_s=settings.shutdown_grace_period_s)
    server.run()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when SIGTERM starts the drain."""

    def __init__(self, config: uvicorn.Config, *, lifecycle: Lifecycle, grace_period_s: float):
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_period_s = grace_period_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._lifecycle.begin_drain(self._grace_period_s)
        super().handle_exit(sig, frame)
        # uvicorn re-raises caught signals once it has stopped, so the process
        # would die by SIGTERM after a clean drain; a drained server exits 0.
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            base = f"http://{_url_host(self.config.host)}:{self.config.port}"
            logger.info("streamapi %s listening on %s", __version__, base)
            logger.info("API docs at %s/docs, chat at %s/v1/chat/completions", base, base)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _describe(exc: ValidationError) -> str:
    lines = ["streamapi serve: invalid settings:"]
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        option = "--" + field.replace("_", "-")
        env = "STREAMAPI_" + field.upper()
        lines.append(f"  {option} / {env}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines) + "\n"


def _configure_logging(level: str) -> None:
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["streamapi"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        config["loggers"].setdefault(name, {})["level"] = level.upper()
    logging.config.dictConfig(config)
