"""streamapi's pytest plugin: a real streamapi server for your own test suite.

Installed with streamapi (entry point ``pytest11``), it adds two fixtures and a
marker, and nothing else:

- ``streamapi_server``: a server for one test, on a free 127.0.0.1 port,
  configured by the test's ``@pytest.mark.streamapi(...)`` markers (the closest
  wins) or by indirect parametrization with a dict of the same options;
- ``streamapi_factory``: call it with those options to start servers, all
  stopped at the end of the test.

Options (all optional): ``rules`` (a list of rules, a ``{"rules": [...]}`` dict,
or the path of a rules file), ``fault`` (a fault every request gets, in the
``X-Streamapi-Fault`` grammar), ``fault_rate`` and ``fault_kinds``,
``latency`` (a latency profile's name, default ``"instant"``, or a dict of
latency settings such as ``{"time_to_first_token_ms": 50}``), ``rate_limits``
(``{"requests_per_minute": ..., "tokens_per_minute": ...}``), ``settings``
(any other settings, by their Python names), ``mode`` (``"thread"``, the
default: uvicorn in a thread of the test process; or ``"subprocess"``:
``python -m streamapi serve``), ``state_url`` (a Redis URL: servers started
with the same one share their state, see docs/scaling-out.md), and ``cassette``
with ``record_mode`` (record the upstreams of ``settings["routes_file"]`` to a
cassette, or replay it: ``"once"``, the default, records when the file does not
exist and else only replays; ``"none"`` only replays; ``"new_episodes"`` replays
and records what matches nothing; ``"all"`` records everything anew; vcrpy's
meanings. A relative path is from pytest's rootdir). Every server has the admin
API on (with a key of its own) and fault headers honoured; it ignores
``STREAMAPI_*`` variables.

The server object gives ``base_url`` / ``openai_base_url``, ``journal()``, and
``set_rules``, ``set_faults``, ``set_latency``, ``set_rate_limits``, ``reset``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest

if TYPE_CHECKING:
    import uvicorn

    from streamapi.lifecycle import Lifecycle

__all__ = ["FAULT_HEADER", "StreamapiServer", "serve"]

FAULT_HEADER = "X-Streamapi-Fault"
_HOST = "127.0.0.1"
RecordMode = Literal["once", "none", "new_episodes", "all"]
_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_MARKER = (
    "streamapi(rules=None, fault=None, fault_rate=None, fault_kinds=None, latency='instant', "
    "rate_limits=None, settings=None, mode='thread', state_url=None, cassette=None, "
    "record_mode='once'): configure the streamapi_server fixture"
)


class StreamapiServer:
    """A running streamapi server and its admin API."""

    def __init__(self, base_url: str, admin_key: str, stop: Callable[[], None]) -> None:
        self.base_url = base_url
        """``http://127.0.0.1:<port>``: Anthropic's SDK takes this as its ``base_url``."""
        self.admin_key = admin_key
        self._stop = stop
        self._stopped = False
        self._admin = httpx.Client(
            base_url=f"{base_url}/admin",
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10.0,
        )

    @property
    def openai_base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: the OpenAI SDK's ``base_url``."""
        return f"{self.base_url}/v1"

    @staticmethod
    def fault_header(spec: str) -> dict[str, str]:
        """Headers that inject ``spec`` into one request: ``extra_headers=...`` in the SDKs."""
        return {FAULT_HEADER: spec}

    def journal(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The requests the server saw, oldest first (fields: docs/testing/admin-api.md)."""
        params = {} if limit is None else {"limit": limit}
        entries: list[dict[str, Any]] = self._call("GET", "/journal", params=params)["entries"]
        return entries

    def clear_journal(self) -> None:
        self._call("DELETE", "/journal")

    def set_rules(self, rules: list[Any] | Mapping[str, Any] | str | Path) -> None:
        """Replace the rules: a list, a ``{"rules": [...]}`` dict, or a rules file's path."""
        if isinstance(rules, str | Path):
            text = Path(rules).read_text(encoding="utf-8")
            content_type = (
                "application/json" if str(rules).endswith(".json") else "application/yaml"
            )
            self._call("PUT", "/rules", content=text, headers={"Content-Type": content_type})
        else:
            self._call("PUT", "/rules", json=rules if isinstance(rules, list) else dict(rules))

    def clear_rules(self) -> None:
        """Back to the rules the server started with."""
        self._call("DELETE", "/rules")

    def set_faults(self, *, rate: float | None = None, kinds: str | None = None) -> None:
        """Random faults: ``rate`` of the requests get one of ``kinds`` (``|``-separated)."""
        self._call("PATCH", "/config", json={"faults": {"rate": rate, "kinds": kinds}})

    def set_latency(self, **latency: float) -> None:
        """Change latency settings, e.g. ``set_latency(time_to_first_token_ms=200)``."""
        self._call("PATCH", "/config", json={"latency": latency})

    def set_rate_limits(
        self, *, requests_per_minute: int | None = None, tokens_per_minute: int | None = None
    ) -> None:
        """New rate limits (0 turns one off), every bucket starting full."""
        limits = {
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
        }
        self._call("PATCH", "/config", json={"rate_limits": limits})

    def config(self) -> dict[str, Any]:
        """Latency, random faults, rate limits and rules as they are now."""
        config: dict[str, Any] = self._call("GET", "/config")
        return config

    def reset(self) -> None:
        """Back to how the server started, with an empty journal."""
        self._call("POST", "/reset")

    def stop(self) -> None:
        """Stop the server: open streams end at once (the fixtures do it for you)."""
        if self._stopped:
            return
        self._stopped = True
        self._admin.close()
        self._stop()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._admin.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(
                f"streamapi admin {method} {path} -> {response.status_code}: {response.text}"
            )
        return None if response.status_code == 204 else response.json()


@contextlib.contextmanager
def serve(
    *,
    rules: list[Any] | Mapping[str, Any] | str | Path | None = None,
    fault: str | None = None,
    fault_rate: float | None = None,
    fault_kinds: str | None = None,
    latency: str | Mapping[str, float] = "instant",
    rate_limits: Mapping[str, int] | None = None,
    settings: Mapping[str, Any] | None = None,
    mode: Literal["thread", "subprocess"] = "thread",
    state_url: str | None = None,
    cassette: str | Path | None = None,
    record_mode: RecordMode = "once",
) -> Iterator[StreamapiServer]:
    """Run a streamapi server for the ``with`` block (the fixtures' building block).

    ``state_url`` points it at a shared Redis (``--state-url``): servers started
    with the same one share limits, rules, counters, the journal and responses.
    """
    with tempfile.TemporaryDirectory(prefix="streamapi-") as scratch:
        values = _settings(
            Path(scratch), rules, fault, fault_rate, fault_kinds, latency, rate_limits, settings
        )
        if state_url is not None:
            values["state_url"] = state_url
        if cassette is not None:
            values.update(cassette_settings(Path(cassette), record_mode))
        admin_key = secrets.token_urlsafe(24)
        if mode == "thread":
            base_url, stop = _start_thread(values, admin_key)
        elif mode == "subprocess":
            base_url, stop = _start_subprocess(values, admin_key, Path(scratch))
        else:
            raise ValueError(f"mode must be 'thread' or 'subprocess', not {mode!r}")
        server = StreamapiServer(base_url, admin_key, stop)
        try:
            yield server
        finally:
            server.stop()


def cassette_settings(cassette: Path, record_mode: RecordMode) -> dict[str, Any]:
    """The record and replay settings of a cassette in one of vcrpy's record modes."""
    cassette = cassette.resolve()
    exists = cassette.exists()
    if record_mode == "none":
        return {"replay_dir": cassette, "replay_miss": "error"}
    if record_mode == "once":
        if exists:
            return {"replay_dir": cassette, "replay_miss": "error"}
        return {"record_dir": cassette}
    if record_mode == "new_episodes":
        replay = {"replay_dir": cassette, "replay_miss": "upstream"} if exists else {}
        return {"record_dir": cassette, **replay}
    if record_mode == "all":
        cassette.unlink(missing_ok=True)
        return {"record_dir": cassette}
    raise ValueError(
        f"record_mode must be 'once', 'none', 'new_episodes' or 'all', not {record_mode!r}"
    )


def _settings(
    scratch: Path,
    rules: list[Any] | Mapping[str, Any] | str | Path | None,
    fault: str | None,
    fault_rate: float | None,
    fault_kinds: str | None,
    latency: str | Mapping[str, float],
    rate_limits: Mapping[str, int] | None,
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {"enable_fault_headers": True}
    if isinstance(latency, str):
        values["latency_profile"] = latency
    else:
        values.update(latency)
    if rules is not None:
        if isinstance(rules, str | Path):
            values["rules_file"] = Path(rules).resolve()
        else:
            path = scratch / "rules.json"
            path.write_text(json.dumps(rules if isinstance(rules, list) else dict(rules)))
            values["rules_file"] = path
    if fault is not None:
        values["fault_rate"], values["fault_kinds"] = 1.0, fault
    if fault_rate is not None:
        values["fault_rate"] = fault_rate
    if fault_kinds is not None:
        values["fault_kinds"] = fault_kinds
    for name, limit in (rate_limits or {}).items():
        values[f"rate_limit_{name}"] = limit
    values.update(settings or {})
    return values


def _start_thread(values: dict[str, Any], admin_key: str) -> tuple[str, Callable[[], None]]:
    import uvicorn

    from streamapi.app import create_app
    from streamapi.lifecycle import Lifecycle
    from streamapi.settings import Settings

    class _OptionsOnly(Settings):
        # The fixture's options, not the environment of whoever runs the tests.
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: Any, init_settings: Any, *args: Any, **kwargs: Any
        ) -> Any:
            return (init_settings,)

    settings = _OptionsOnly(**values, admin_key=admin_key, host=_HOST)
    lifecycle = Lifecycle()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((_HOST, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, lifecycle=lifecycle),
        log_config=None,  # the test process's logging stays as it is
        access_log=False,
        ws="websockets-sansio",  # the Responses API's WebSocket mode, as serve runs it
        # As serve: the app applies X-Forwarded-For, from --forwarded-allow-ips only.
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=int(_STOP_TIMEOUT_S / 2),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"streamapi-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"streamapi did not start on {_HOST}:{port}")
        time.sleep(0.01)

    def stop() -> None:
        _stop_thread(server, lifecycle, thread)
        sock.close()

    return f"http://{_HOST}:{port}", stop


def _stop_thread(server: uvicorn.Server, lifecycle: Lifecycle, thread: threading.Thread) -> None:
    # Open streams end at once with an in-stream error, then the server exits.
    lifecycle.begin_drain(0.0)
    server.should_exit = True
    thread.join(_STOP_TIMEOUT_S)
    if thread.is_alive():
        server.force_exit = True
        thread.join(_STOP_TIMEOUT_S)


def _start_subprocess(
    values: dict[str, Any], admin_key: str, scratch: Path
) -> tuple[str, Callable[[], None]]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPI_")}
    # The key goes by the environment: command lines are visible to other users.
    env["STREAMAPI_ADMIN_KEY"] = admin_key
    command = [sys.executable, "-m", "streamapi", "serve", "--host", _HOST, "--port", str(port)]
    command += [arg for name, value in values.items() for arg in _option(name, value)]
    log_path = scratch / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://{_HOST}:{port}"

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(timeout=_STOP_TIMEOUT_S)

    deadline = time.monotonic() + _START_TIMEOUT_S
    with httpx.Client(base_url=base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    return base_url, stop
            time.sleep(0.05)
    stop()
    raise RuntimeError(f"streamapi did not start on {base_url}:\n{log_path.read_text()}")


def _option(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, list | tuple | dict):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)


@pytest.fixture
def streamapi_factory() -> Iterator[Callable[..., StreamapiServer]]:
    """Start streamapi servers with ``serve``'s options; all stop when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> StreamapiServer:
            return stack.enter_context(serve(**options))

        yield start


@pytest.fixture
def streamapi_server(
    request: pytest.FixtureRequest, streamapi_factory: Callable[..., StreamapiServer]
) -> StreamapiServer:
    """A streamapi server for this test, configured by ``@pytest.mark.streamapi(...)``."""
    options: dict[str, Any] = {}
    # iter_markers gives the closest first: apply it last so that it wins.
    for marker in reversed(list(request.node.iter_markers("streamapi"))):
        if marker.args:
            raise pytest.UsageError("@pytest.mark.streamapi takes keyword arguments only")
        options.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, Mapping):
        options.update(param)
    cassette = options.get("cassette")
    if cassette is not None and not Path(cassette).is_absolute():
        options["cassette"] = request.config.rootpath / cassette
    return streamapi_factory(**options)
