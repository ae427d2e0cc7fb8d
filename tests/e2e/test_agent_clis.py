"""Claude Code and Codex CLI, unchanged, run whole sessions against a real ``streamapi serve``.

The pinned CLIs of ``tests/e2e/agents/`` run headless (``claude -p``, ``codex exec``),
each in its own HOME and work folder, with nothing reaching the internet
(``tests/e2e/agent_clis.py``). Every server runs with its journal on, and every session
must leave no 4xx in it: a request the client sent as it does today and streamapi
refused fails the test with the server's message.

- Scripted sessions (rules answer each turn): a shell command that must really run,
  a file written and read back, an image read, a Codex ``apply_patch``.
- Unscripted sessions (no rules): each ends within a bounded number of requests with
  a final answer.
- A recorded session replayed: the CLI runs through a gateway recording its second
  streamapi upstream; the upstream is stopped, and the CLI's next run (another HOME
  and work folder, so other paths, ids and reminders) is answered from the cassette by
  the ``agent`` match keys, with the same tool calls, files and final text.

``docs/testing/coding-agents.md`` is the user's side of this.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.agent_clis import (
    ADMIN_KEY,
    AGENTS_DIR,
    CANARY_ENV,
    CLAUDE_MODEL,
    CODEX_MODEL,
    Place,
    Session,
    install_agent_clis,
    journal,
    refused,
    run_claude,
    run_codex,
    version,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
# An unscripted session ends within this many model requests.
UNSCRIPTED_MAX_REQUESTS = 6


@pytest.fixture(scope="session")
def clis() -> Path:
    """The folder holding ``claude`` and ``codex``."""
    return install_agent_clis()


def test_the_clis_are_the_pinned_versions(clis: Path, tmp_path: Path) -> None:
    """What ran (printed for the CI log): the lock's versions, unless the canary's."""
    lock = json.loads((AGENTS_DIR / "package-lock.json").read_text())["packages"]
    for name, package in (("claude", "@anthropic-ai/claude-code"), ("codex", "@openai/codex")):
        found = version(clis / name, tmp_path)
        print(f"{name}: {found}")  # noqa: T201 (the CI log, with -rP)
        if not os.environ.get(CANARY_ENV):
            assert lock[f"node_modules/{package}"]["version"] in found


def serve(factory: ServerFactory, tmp_path: Path, rules: list[Any] | None) -> ServerProcess:
    options = [*FAST_PACING, "--seed", "11", "--admin-key", ADMIN_KEY]
    if rules is not None:
        rules_file = tmp_path / "rules.json"
        rules_file.write_text(json.dumps({"rules": rules}), encoding="utf-8")
        options += ["--rules-file", str(rules_file)]
    return factory(*options)


def no_refusals(server: ServerProcess, session: Session) -> list[dict[str, Any]]:
    """The journal, after checking it holds no 4xx (each named with its message)."""
    entries = journal(server.base_url)
    bad = refused(entries)
    assert not bad, "streamapi refused requests:\n" + "\n".join(bad) + "\n" + session.describe()
    return entries


def report(what: str, entries: list[Any], session: Session) -> None:
    """One line for the CI log (``pytest -rP`` shows it): requests and tools of a session."""
    tools = [name for name, _ in session.tool_calls]
    print(f"{what}: {len(entries)} requests, tool calls {tools}")  # noqa: T201


def png(path: Path, size: int = 8) -> Path:
    """A small red square, as a real PNG file."""
    row = b"\x00" + b"\xff\x00\x00" * size
    raw = zlib.compress(row * size)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    )
    return path


# --- Claude Code, scripted ----------------------------------------------------------------


def test_claude_code_runs_a_shell_command_for_real(
    clis: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    rules = [
        {"match": {"user": "cc-shell", "turn": 0},
         "respond": {"tool_calls": [{"name": "Bash", "arguments": {
             "command": "echo ran-by-claude > shell-proof.txt",
             "description": "Write the proof file"}}]}},
        {"match": {"turn": 1}, "respond": {"text": "The command ran."}},
    ]  # fmt: skip
    server = serve(server_factory, tmp_path, rules)
    place = Place.make(tmp_path / "run")
    session = run_claude(clis, server.base_url, place, "cc-shell: make the proof file")
    entries = no_refusals(server, session)
    report("claude_code_runs_a_shell_command_for_real", entries, session)
    assert (place.work / "shell-proof.txt").read_text().strip() == "ran-by-claude"
    assert session.tool_calls[0][0] == "Bash"
    assert session.final_text == "The command ran.", session.describe()
    assert len(entries) == 2


def test_claude_code_writes_a_file_and_reads_it_back(
    clis: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    place = Place.make(tmp_path / "run")
    notes = str(place.work / "notes.txt")
    rules = [
        {"match": {"user": "cc-notes", "turn": 0},
         "respond": {"tool_calls": [{"name": "Write", "arguments": {
             "file_path": notes, "content": "written by claude code\n"}}]}},
        {"match": {"turn": 1},
         "respond": {"tool_calls": [{"name": "Read", "arguments": {"file_path": notes}}]}},
        {"match": {"turn": 2}, "respond": {"template": "Read back: {{tool_result}}"}},
    ]  # fmt: skip
    server = serve(server_factory, tmp_path, rules)
    session = run_claude(clis, server.base_url, place, "cc-notes: write the notes, read them")
    entries = no_refusals(server, session)
    report("claude_code_writes_a_file_and_reads_it_back", entries, session)
    assert (place.work / "notes.txt").read_text() == "written by claude code\n"
    assert [name for name, _ in session.tool_calls] == ["Write", "Read"]
    assert "written by claude code" in session.final_text, session.describe()
    assert len(entries) == 3


def test_claude_code_reads_an_image_and_sends_it_as_a_tool_result(
    clis: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    place = Place.make(tmp_path / "run")
    picture = png(place.work / "square.png")
    rules = [
        {"match": {"user": "cc-image", "turn": 0},
         "respond": {"tool_calls": [{"name": "Read", "arguments": {"file_path": str(picture)}}]}},
        {"match": {"turn": 1}, "respond": {"text": "A small red square."}},
    ]  # fmt: skip
    server = serve(server_factory, tmp_path, rules)
    session = run_claude(clis, server.base_url, place, "cc-image: what is in square.png?")
    entries = no_refusals(server, session)
    report("claude_code_reads_an_image_and_sends_it_as_a_tool_result", entries, session)
    # Claude Code sent the picture back as an image block inside the tool_result.
    blocks = [b for r in session.extra["tool_results"] if isinstance(r, list) for b in r]
    assert any(block.get("type") == "image" for block in blocks), session.describe()
    assert session.final_text == "A small red square.", session.describe()
    assert len(entries) == 2


# --- Codex CLI, scripted ------------------------------------------------------------------


def test_codex_runs_a_shell_command_for_real(
    clis: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    rules = [
        {"match": {"user": "cx-shell", "turn": 0},
         "respond": {"tool_calls": [{"name": "exec_command", "arguments": {
             "cmd": "echo ran-by-codex > shell-proof.txt"}}]}},
        {"match": {"turn": 1}, "respond": {"text": "The command ran."}},
    ]  # fmt: skip
    server = serve(server_factory, tmp_path, rules)
    place = Place.make(tmp_path / "run")
    session = run_codex(clis, server.base_url, place, "cx-shell: make the proof file")
    entries = no_refusals(server, session)
    report("codex_runs_a_shell_command_for_real", entries, session)
    assert (place.work / "shell-proof.txt").read_text().strip() == "ran-by-codex"
    assert session.tool_calls and session.tool_calls[0][0] == "command_execution"
    assert session.final_text == "The command ran.", session.describe()
    assert len(entries) == 2


def test_codex_applies_a_patch_and_reads_the_file_back(
    clis: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    patch = "*** Begin Patch\n*** Add File: notes.txt\n+written by apply_patch\n*** End Patch\n"
    rules = [
        # apply_patch is Codex's freeform (custom) tool: its input is the patch itself.
        {"match": {"user": "cx-notes", "turn": 0},
         "respond": {"tool_calls": [{"name": "apply_patch", "arguments": patch}]}},
        {"match": {"turn": 1},
         "respond": {"tool_calls": [{"name": "exec_command", "arguments": {
             "cmd": "cat notes.txt"}}]}},
        {"match": {"turn": 2}, "respond": {"template": "Read back: {{tool_result}}"}},
    ]  # fmt: skip
    server = serve(server_factory, tmp_path, rules)
    place = Place.make(tmp_path / "run")
    session = run_codex(clis, server.base_url, place, "cx-notes: add the notes, read them")
    entries = no_refusals(server, session)
    report("codex_applies_a_patch_and_reads_the_file_back", entries, session)
    assert (place.work / "notes.txt").read_text() == "written by apply_patch\n"
    assert [kind for kind, _ in session.tool_calls] == ["file_change", "command_execution"]
    assert "written by apply_patch" in session.final_text, session.describe()
    assert len(entries) == 3


def test_codex_views_an_image(clis: Path, server_factory: ServerFactory, tmp_path: Path) -> None:
    place = Place.make(tmp_path / "run")
    picture = png(place.work / "square.png")
    rules = [
        {"match": {"user": "cx-image", "turn": 0},
         "respond": {"tool_calls": [{"name": "view_image", "arguments": {"path": str(picture)}}]}},
        {"match": {"turn": 1}, "respond": {"text": "A small red square."}},
    ]  # fmt: skip
    server = serve(server_factory, tmp_path, rules)
    session = run_codex(clis, server.base_url, place, "cx-image: what is in square.png?")
    entries = no_refusals(server, session)
    report("codex_views_an_image", entries, session)
    assert session.final_text == "A small red square.", session.describe()
    assert len(entries) == 2


# --- unscripted ---------------------------------------------------------------------------

PROMPTS = ["Say hello in one short sentence.", "What is in the file notes.txt?"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_claude_code_unscripted_ends_with_an_answer(
    clis: Path, server_factory: ServerFactory, tmp_path: Path, prompt: str
) -> None:
    server = serve(server_factory, tmp_path, None)
    place = Place.make(tmp_path / "run")
    (place.work / "notes.txt").write_text("Buy milk.\n")
    session = run_claude(clis, server.base_url, place, prompt)
    entries = no_refusals(server, session)
    result = session.extra["result"]
    assert result.get("subtype") == "success" and not result.get("is_error"), session.describe()
    assert session.final_text.strip()
    assert len(entries) <= UNSCRIPTED_MAX_REQUESTS, session.describe()
    report(f"claude unscripted {prompt!r}", entries, session)


@pytest.mark.parametrize("model", [CODEX_MODEL, None], ids=[CODEX_MODEL, "default-model"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_codex_unscripted_ends_with_an_answer(
    clis: Path, server_factory: ServerFactory, tmp_path: Path, prompt: str, model: str | None
) -> None:
    server = serve(server_factory, tmp_path, None)
    place = Place.make(tmp_path / "run")
    (place.work / "notes.txt").write_text("Buy milk.\n")
    session = run_codex(clis, server.base_url, place, prompt, model=model)
    entries = no_refusals(server, session)
    assert session.returncode == 0, session.describe()
    assert session.final_text.strip(), session.describe()
    assert any(e.get("type") == "turn.completed" for e in session.events), session.describe()
    assert len(entries) <= UNSCRIPTED_MAX_REQUESTS, session.describe()
    report(f"codex {model or 'default model'} unscripted {prompt!r}", entries, session)


# --- recorded once, replayed offline ------------------------------------------------------


def _replay_rules(tool: str, key: str) -> list[Any]:
    """A shell command that makes a file, one that shows it, and an answer from it."""
    steps: list[dict[str, str]] = [
        {key: "echo replayed > replay-proof.txt"},
        {key: "cat replay-proof.txt"},
    ]
    if tool == "Bash":  # Claude Code's Bash takes a description too
        for step in steps:
            step["description"] = "Run the step"
    return [
        {"match": {"user": "replay-me", "turn": 0},
         "respond": {"tool_calls": [{"name": tool, "arguments": steps[0]}]}},
        {"match": {"turn": 1}, "respond": {"tool_calls": [{"name": tool, "arguments": steps[1]}]}},
        {"match": {"turn": 2}, "respond": {"template": "The file says: {{tool_result}}"}},
    ]  # fmt: skip


def _gateway(factory: ServerFactory, tmp_path: Path, upstream_url: str, model: str,
             *mode: str) -> ServerProcess:  # fmt: skip
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps({
            "upstreams": {"sim": {"base_url": upstream_url + "/v1", "max_retries": 0}},
            "models": {model: {"upstream": "sim"}},
        }),
        encoding="utf-8",
    )  # fmt: skip
    return factory(*FAST_PACING, "--admin-key", ADMIN_KEY, "--routes-file", str(routes), *mode)


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_recorded_session_replays_offline_in_the_clis_next_run(
    clis: Path, server_factory: ServerFactory, tmp_path: Path, cli: str
) -> None:
    tool, key, model = (
        ("Bash", "command", CLAUDE_MODEL)
        if cli == "claude"
        else ("exec_command", "cmd", CODEX_MODEL)
    )
    run = run_claude if cli == "claude" else run_codex
    upstream = serve(server_factory, tmp_path, _replay_rules(tool, key))
    tapes = tmp_path / "tapes"
    recording = _gateway(server_factory, tmp_path, upstream.base_url, model,
                         "--record-dir", str(tapes))  # fmt: skip
    first = Place.make(tmp_path / "first")
    recorded = run(clis, recording.base_url, first, "replay-me: make the file and show it")
    report(f"{cli} recorded", no_refusals(recording, recorded), recorded)
    assert (first.work / "replay-proof.txt").read_text().strip() == "replayed"
    # The rule's answer quotes the command's output (Codex wraps it in its own lines).
    assert recorded.final_text.startswith("The file says:"), recorded.describe()
    assert "replayed" in recorded.final_text, recorded.describe()
    recording.stop()
    upstream.stop()  # from here on, nothing answers at the upstream's address

    replaying = _gateway(server_factory, tmp_path, upstream.base_url, model,
                         "--replay-dir", str(tapes), "--replay-match", "agent",
                         "--replay-speed", "0")  # fmt: skip
    second = Place.make(tmp_path / "second")
    replayed = run(clis, replaying.base_url, second, "replay-me: make the file and show it")
    report(f"{cli} replayed", no_refusals(replaying, replayed), replayed)
    assert (second.work / "replay-proof.txt").read_text().strip() == "replayed"
    assert replayed.tool_calls == recorded.tool_calls
    assert replayed.final_text == recorded.final_text
