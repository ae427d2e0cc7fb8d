"""The Node project in ``tests/e2e/node/``: npm clients and llmprobe, run by pytest.

``npm ci`` installs exactly what ``package-lock.json`` pins, once per session. Without
``npm`` (or ``node``) the Node tests skip, unless ``CI`` is set: on CI a missing tool
or a failed install fails them, so they cannot go quietly missing.

``STREAMAPI_NODE_DIR`` names another copy of the project whose packages are already
installed (``.ci/canary`` puts the newest releases there); it is used as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(os.environ.get("STREAMAPI_NODE_DIR") or Path(__file__).parent / "node")
INSTALL_TIMEOUT_S = 300.0
SCRIPT_TIMEOUT_S = 60.0


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def node_binary() -> str:
    """The ``node`` on PATH (skips without one, fails on CI)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed (Node 20 or later runs tests/e2e/node)")
    assert node is not None
    return node


def install_node_project() -> Path:
    """``npm ci`` in ``tests/e2e/node``; returns the folder (skips or fails as above)."""
    if os.environ.get("STREAMAPI_NODE_DIR"):
        node_binary()
        return NODE_DIR  # installed by whoever set it (.ci/canary)
    npm_ci(NODE_DIR, INSTALL_TIMEOUT_S)
    return NODE_DIR


def npm_ci(folder: Path, timeout_s: float) -> None:
    """``npm ci`` in ``folder``: exactly what its ``package-lock.json`` pins (skips without
    node or npm, or when the install fails; fails instead under ``CI``)."""
    node_binary()
    npm = shutil.which("npm")
    if npm is None:
        _unavailable(f"npm is not installed (it installs {folder}/package-lock.json)")
    assert npm is not None
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npm ci took over {timeout_s:.0f} s in {folder}")
    if done.returncode != 0:
        _unavailable(f"npm ci failed in {folder}:\n{done.stdout}\n{done.stderr}")


def run_json(command: list[str], *, env: dict[str, str] | None = None) -> Any:
    """Run a Node command in the project folder and parse the JSON it prints.

    The exit code is not checked: llmprobe exits 1 when a check fails, and the
    scripts report each case's failure in their JSON.
    """
    done = subprocess.run(
        command,
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
        env=env,
    )
    # The JSON is the whole output, or its last line: a client may print notes of its own
    # before it (the AI SDK says how to turn its warnings off, on stdout, when it first warns).
    lines = done.stdout.strip().splitlines() or [""]
    for text in (done.stdout, lines[-1]):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            continue
    else:
        pytest.fail(
            f"{' '.join(command)} exited {done.returncode} without JSON:\n"
            f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-4000:]}"
        )


def run_script(script: str, base_url: str) -> dict[str, Any]:
    """Run one of the project's ``.mjs`` scripts against ``base_url``: case name → result."""
    results: dict[str, Any] = run_json([node_binary(), script, base_url])
    return results
