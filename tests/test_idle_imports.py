"""What only some settings need is imported only when they are on (the idle footprint).

A fresh interpreter builds the default app (but for the dashboard, which is on by
default), starts it and serves one stream and one request with a tool, over ASGI; then
its ``sys.modules`` must hold none of the code that belongs to settings left off:
PyYAML (rules, routes and keys files), httpx (the routes file's upstreams), Redis
(``--state-url``), the dashboard, the admin API (``--admin-key``), the upstream, replay
and cassette code. jsonschema comes with the first request that brings a schema, and
Lark with the first custom tool that brings a Lark grammar, and not before, each
imported in a worker thread: not on the event loop's, where it would hold up every
stream.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import asyncio, json, sys, threading

from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.settings import Settings
from tests.asgi_driver import Exchange


class WatchImports:
    # Where jsonschema and lark are imported from: True for the event loop's thread.
    on_the_loop: dict[str, list[bool]] = {"jsonschema": [], "lark": []}

    def find_spec(self, name, path=None, target=None):
        if name in self.on_the_loop:
            self.on_the_loop[name].append(threading.current_thread() is threading.main_thread())
        return None  # imported as usual


sys.meta_path.insert(0, WatchImports())


async def main() -> None:
    settings = Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, dashboard=False)
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        await serve(manager.app)


async def serve(app) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}
    stream = await Exchange(app, body).run()
    loaded = {"stream": sorted(sys.modules)}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    await Exchange(app, {**body, "tools": [tool]}).run()
    loaded["tool"] = sorted(sys.modules)
    definition = 'start: "ok" NAME\nNAME: /[a-z]+/'
    grammar = {"type": "grammar", "syntax": "lark", "definition": definition}
    custom = {"type": "custom", "name": "say", "format": grammar}
    # A short answer, planned on the event loop but for the import its grammar needs.
    call = {"input": "Say ok", "tools": [custom], "tool_choice": "required", "stream": True,
            "max_output_tokens": 64}  # fmt: skip
    said = await Exchange(app, call, path="/v1/responses").run()
    loaded["custom_call"] = [said.status, "custom_tool_call_input.done" in said.raw.decode()]
    loaded["grammar"] = sorted(sys.modules)
    loaded["status"] = stream.status
    loaded["imported_on_the_loop"] = WatchImports.on_the_loop
    print(json.dumps(loaded))


asyncio.run(main())
"""

OFF_BY_DEFAULT = (
    "yaml",
    "httpx",
    "redis",
    "streamapi.api.dashboard",
    "streamapi.api.admin",
    "streamapi.engines.upstream",
    "streamapi.engines.replay",
    "streamapi.cassettes",
    "streamapi.control.cassette_rules",
    "streamapi.state.redis_store",
)


def _loaded() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_a_default_server_imports_nothing_its_settings_leave_off() -> None:
    loaded = _loaded()
    assert loaded["status"] == 200
    stream = set(loaded["stream"])  # type: ignore[call-overload]
    assert [name for name in OFF_BY_DEFAULT if name in stream] == []
    assert "jsonschema" not in stream
    assert "lark" not in stream
    # The first schema brings jsonschema in, and only that.
    tool = set(loaded["tool"])  # type: ignore[call-overload]
    assert "jsonschema" in tool
    assert "lark" not in tool
    # The first Lark grammar brings Lark in; the call is made in it.
    assert loaded["custom_call"] == [200, True]
    assert "lark" in loaded["grammar"]  # type: ignore[operator]
    assert loaded["imported_on_the_loop"] == {"jsonschema": [False], "lark": [False]}
    assert [name for name in OFF_BY_DEFAULT if name in tool] == []
