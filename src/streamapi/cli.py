"""The ``streamapi`` command: ``serve``, ``rules check FILE`` and ``bench``."""

from __future__ import annotations

import copy
import logging
import logging.config
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp
from sse_starlette.sse import AppStatus

from streamapi import __version__
from streamapi.app import create_app
from streamapi.control.rules import RulesError, load_rules
from streamapi.lifecycle import Lifecycle
from streamapi.settings import Settings

logger = logging.getLogger(__name__)

USAGE = """\
usage: streamapi <command> [options]

commands:
  serve              start the server (streamapi serve --help lists every setting)
  rules check FILE   validate a rules file (YAML or JSON) without serving
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
        timeout_keep_alive=int(settings.keep_alive_timeout_s),
        timeout_graceful_shutdown=int(
            settings.shutdown_grace_period_s + _UVICORN_SHUTDOWN_MARGIN_S
        ),
    )
    server = _Server(config, lifecycle=lifecycle, grace_period_s=settings.shutdown_grace_period_s)
    server.run()
    return 0 if server.started else 1


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


_SECRET_SETTINGS = frozenset({"api_keys"})


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
