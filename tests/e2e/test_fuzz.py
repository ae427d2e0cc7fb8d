"""Schemathesis over the server's own OpenAPI document: no 5xx, every response as documented.

It runs every phase (examples, coverage, fuzzing, stateful) with a fixed seed
and a budget that fits CI. One check is left out on purpose: "schema-valid
request rejected" (positive_data_acceptance). JSON Schema cannot say "tool_choice
needs tools" or "this previous_response_id must exist", so such requests are
schema-valid and still, rightly, 400.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 30
SEED = 1


def test_schemathesis_finds_no_server_error_nor_undocumented_response(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--latency-profile", "instant", "--max-model-len", "2048")
    st = shutil.which("st")
    assert st is not None, "schemathesis is in the test extra"
    run = subprocess.run(
        [
            st,
            "run",
            f"{server.base_url}/openapi.json",
            f"--max-examples={MAX_EXAMPLES}",
            f"--seed={SEED}",
            "--checks=all",
            "--exclude-checks=positive_data_acceptance",
            "--request-timeout=30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
    assert "Traceback" not in server.log()
