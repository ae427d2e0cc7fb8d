"""The Open Responses compliance test against a real ``streamapi serve``.

The suite (TypeScript, run by bun) is not part of this repository: it is found
at ``$OPENRESPONSES_SUITE``, else at ``shared/conformance/openresponses`` next
to the repository or its parent (``docs/api/responses.md`` says how to get it).
Its ``run.sh`` installs bun and zod from npm the first time. The test is
skipped when the suite is not there; when node or npm is missing or the
install fails it is skipped too, except under ``CI=true``, where that fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SUITE_PATH = Path("shared", "conformance", "openresponses")
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300


def _suite() -> Path | None:
    given = os.environ.get("OPENRESPONSES_SUITE")
    candidates = (
        [Path(given)] if given else [REPO.parent / SUITE_PATH, REPO.parents[1] / SUITE_PATH]
    )
    return next((path for path in candidates if (path / "run.sh").is_file()), None)


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the suite must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"The Open Responses compliance test cannot run: {reason}")
    pytest.skip(reason)


def _run(suite: Path, base_url: str, *options: str, timeout_s: float) -> Any:
    completed = subprocess.run(
        [str(suite / "run.sh"), f"{base_url}/v1", "sim-small", "--json", *options],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        return {"stdout": completed.stdout[-2000:], "stderr": completed.stderr[-2000:]}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    # The suite sends its image case to the model it tests: sim-small reads images here.
    yield module_server_factory(
        "--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0",
        "--vision-model-pattern", "^sim-small$",
    )  # fmt: skip


def test_open_responses_compliance(server: ServerProcess) -> None:
    suite = _suite()
    if suite is None:
        pytest.skip(f"no suite at $OPENRESPONSES_SUITE or ../{SUITE_PATH}")
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("node and npm are needed to install bun and zod")
    # A case that sends nothing: it installs the suite's tools on first use.
    smoke = _run(
        suite,
        server.base_url,
        "--filter",
        "response-output-phase-schema",
        timeout_s=INSTALL_TIMEOUT_S,
    )
    if "summary" not in smoke:
        _unavailable(f"the suite's tools did not install: {smoke}")
    report = _run(suite, server.base_url, timeout_s=RUN_TIMEOUT_S)
    failed = {
        result["id"]: result.get("errors")
        for result in report["results"]
        if result["status"] != "passed"
    }
    assert failed == {}
    assert report["summary"]["passed"] == report["summary"]["total"] > 0
