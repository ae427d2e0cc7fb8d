"""Claude Code and Codex CLI, installed from ``tests/e2e/agents/``, run headless by pytest.

``npm ci`` installs exactly what ``package-lock.json`` pins, once per session. Without
``npm`` (or ``node``) the tests skip, unless ``CI`` is set: on CI they fail. The canary
points ``AGENT_CLIS_DIR`` at another install (a folder whose
``node_modules/.bin`` holds ``claude`` and ``codex``, e.g. the newest versions:
``tests/e2e/agents/canary-versions.sh``), and nothing is installed.

Each run gets its own ``HOME`` (and ``CODEX_HOME``) and work folder. Nothing may reach
the internet: telemetry, auto-updates and nonessential traffic are off, and every HTTP
proxy variable points at a closed loopback port, with only 127.0.0.1 exempt.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.node_project import node_binary, npm_ci

AGENTS_DIR = Path(__file__).parent / "agents"
INSTALL_TIMEOUT_S = 600.0
SESSION_TIMEOUT_S = 180.0
CANARY_ENV = "AGENT_CLIS_DIR"
# Nothing listens on the discard port: a request that tries the internet fails at once.
DEAD_PROXY = "http://127.0.0.1:9"
ADMIN_KEY = "sk-admin-agent-clis"
API_KEY = "sk-agent-clis"


def install_agent_clis() -> Path:
    """The ``node_modules/.bin`` holding ``claude`` and ``codex`` (skips or fails as above)."""
    node_binary()
    canary = os.environ.get(CANARY_ENV)
    if canary:
        bin_dir = Path(canary) / "node_modules" / ".bin"
        if not (bin_dir / "claude").exists() or not (bin_dir / "codex").exists():
            pytest.fail(f"{CANARY_ENV}={canary} has no node_modules/.bin/claude and codex")
        return bin_dir
    npm_ci(AGENTS_DIR, INSTALL_TIMEOUT_S)
    return AGENTS_DIR / "node_modules" / ".bin"


def version(binary: Path, home: Path) -> str:
    """What ``binary --version`` prints (first line), run with ``home`` as HOME."""
    done = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_offline_env(home),
    )
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0]


def _offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(
        HOME=str(home),
        HTTP_PROXY=DEAD_PROXY,
        HTTPS_PROXY=DEAD_PROXY,
        ALL_PROXY=DEAD_PROXY,
        http_proxy=DEAD_PROXY,
        https_proxy=DEAD_PROXY,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    # Settings of the developer's own shell never leak into a run.
    for name in list(env):
        if name.startswith(("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_")):
            del env[name]
    return env


@dataclass
class Place:
    """One run's own folders: ``home`` (HOME, CODEX_HOME below it) and ``work`` (the cwd)."""

    home: Path
    work: Path

    @classmethod
    def make(cls, root: Path) -> Place:
        home, work = root / "home", root / "work"
        home.mkdir(parents=True)
        work.mkdir(parents=True)
        return cls(home, work)


@dataclass
class Session:
    """What a CLI did: its JSON events, its tool calls and its final text."""

    returncode: int
    events: list[dict[str, Any]]
    tool_calls: list[tuple[str, Any]]
    final_text: str
    stderr: str
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        tail = "\n".join(json.dumps(e)[:400] for e in self.events[-8:])
        return f"exit {self.returncode}\nlast events:\n{tail}\nstderr:\n{self.stderr[-3000:]}"


def _run(command: list[str], place: Place, env: dict[str, str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(
            command,
            cwd=place.work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SESSION_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command[0]} ran over {SESSION_TIMEOUT_S:.0f} s:\n{exc.stderr!r}")
    return done.returncode, done.stdout, done.stderr


def _json_lines(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


# --- Claude Code ----------------------------------------------------------------------

CLAUDE_MODEL = "claude-sonnet-4-5"
CLAUDE_TOOLS = "Bash Read Write Edit"


def run_claude(
    bin_dir: Path, base_url: str, place: Place, prompt: str, *, max_turns: int = 10
) -> Session:
    """``claude -p`` headless, streaming JSON; Bash, Read, Write and Edit allowed."""
    env = _offline_env(place.home)
    env.update(
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY=API_KEY,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
    )
    command = [
        str(bin_dir / "claude"), "-p", prompt, "--output-format", "stream-json", "--verbose",
        "--model", CLAUDE_MODEL, "--max-turns", str(max_turns), "--allowedTools", CLAUDE_TOOLS,
    ]  # fmt: skip
    returncode, stdout, stderr = _run(command, place, env)
    events = _json_lines(stdout)
    calls: list[tuple[str, Any]] = []
    results: list[Any] = []
    for event in events:
        content = (event.get("message") or {}).get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if event.get("type") == "assistant" and block.get("type") == "tool_use":
                calls.append((block["name"], block.get("input")))
            if event.get("type") == "user" and block.get("type") == "tool_result":
                results.append(block.get("content"))
    final: dict[str, Any] = next((e for e in reversed(events) if e.get("type") == "result"), {})
    return Session(
        returncode, events, calls, str(final.get("result") or ""), stderr,
        extra={"result": final, "tool_results": results},
    )  # fmt: skip


# --- Codex CLI ------------------------------------------------------------------------

CODEX_MODEL = "gpt-5.5"


def codex_config(place: Place, base_url: str, *, model: str | None = CODEX_MODEL) -> Path:
    """A ``CODEX_HOME`` whose provider is ``base_url``; returns the folder.

    Only what points Codex at streamapi and keeps it offline is set: the provider
    (Responses, as Codex speaks), the model, no analytics and no update check. Every
    feature (web search, multi-agent, apply_patch, the sandbox) stays as shipped.
    """
    codex_home = place.home / ".codex"
    codex_home.mkdir(exist_ok=True)
    model_line = f'model = "{model}"\n' if model else ""
    (codex_home / "config.toml").write_text(
        f"{model_line}"
        'model_provider = "streamapi"\n'
        "check_for_update_on_startup = false\n\n"
        "[model_providers.streamapi]\n"
        'name = "streamapi"\n'
        f'base_url = "{base_url}/v1"\n'
        'env_key = "STREAMAPI_AGENT_KEY"\n'
        'wire_api = "responses"\n\n'
        "[analytics]\n"
        "enabled = false\n",
        encoding="utf-8",
    )
    return codex_home


def run_codex(
    bin_dir: Path, base_url: str, place: Place, prompt: str, *, model: str | None = CODEX_MODEL
) -> Session:
    """``codex exec --json`` with its workspace-write sandbox (the work folder writable)."""
    env = _offline_env(place.home)
    env.update(
        CODEX_HOME=str(codex_config(place, base_url, model=model)),
        STREAMAPI_AGENT_KEY=API_KEY,
    )
    command = [
        str(bin_dir / "codex"), "exec", "--json", "--skip-git-repo-check",
        "--sandbox", "workspace-write", prompt,
    ]  # fmt: skip
    returncode, stdout, stderr = _run(command, place, env)
    events = _json_lines(stdout)
    calls: list[tuple[str, Any]] = []
    texts: list[str] = []
    for event in events:
        if event.get("type") != "item.completed":
            continue
        item = event.get("item") or {}
        kind = item.get("type")
        if kind == "command_execution":
            calls.append((kind, item.get("command")))
        elif kind == "file_change":
            calls.append((kind, sorted(Path(c["path"]).name for c in item.get("changes", ()))))
        elif kind == "agent_message":
            texts.append(str(item.get("text") or ""))
        elif kind not in ("reasoning", "todo_list", None):
            calls.append((kind, item.get("name") or item.get("tool")))
    return Session(returncode, events, calls, texts[-1] if texts else "", stderr)


# --- the server's side ----------------------------------------------------------------


def journal(base_url: str) -> list[dict[str, Any]]:
    """The server's journal (``--admin-key ADMIN_KEY``), oldest first."""
    answer = httpx.get(
        base_url + "/admin/journal",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    answer.raise_for_status()
    entries: list[dict[str, Any]] = answer.json()["entries"]
    return entries


def refused(entries: list[dict[str, Any]]) -> list[str]:
    """Each 4xx of the journal: path, status and the error's message."""
    return [
        f"{e['path']} {e['status']}: {(e.get('error') or {}).get('message')}"
        for e in entries
        if e.get("status") is not None and 400 <= e["status"] < 500
    ]
