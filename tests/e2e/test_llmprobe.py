"""llmprobe's engine-conformance MUST checks against a real ``streamapi serve``.

llmprobe (npm, pinned in ``tests/e2e/node/package.json``) probes each surface and
asserts what the OpenAI, Open Responses and Anthropic specifications require. Its
``--json`` report lists every check; here every MUST check passes on every surface,
except the simulator limitations listed below (answer quality, which a simulator
is not expected to have) and the one divergence streamapi keeps on purpose (the
reasoning text events' names, proven here to be the only frames concerned).
``docs/client-compatibility.md`` gives the numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.node_project import node_binary, run_json

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

FAST_PACING = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "0")
MODEL = "sim-small"

# MUST checks about what the model says, not about the wire: the simulator writes a
# plausible answer about the question, it does not understand it.
SIMULATOR_LIMITATIONS = {
    "responses-chain-remembers": "recalling a name told in an earlier turn of a "
    "previous_response_id chain (the chain itself is stored and replayed)",
}
# MUST checks that fail because streamapi follows OpenAI where Open Responses differs
# (docs/api/responses.md, "Where OpenAI and Open Responses differ"). Each is pinned to
# the frames that cause it by its own test below, so nothing else can hide behind it.
KNOWN_DIVERGENCES = {
    "responses-stream-chunk-schema": "reasoning text streams as OpenAI's "
    "response.reasoning_text.delta/.done, which the openai SDKs type and accumulate; "
    "Open Responses' union names them response.reasoning.delta/.done",
}
# OpenAI's names for the reasoning text events, which Open Responses' union lacks.
OPENAI_REASONING_EVENTS = {"response.reasoning_text.delta", "response.reasoning_text.done"}
# The request of llmprobe's responses-streaming check (0.6.12 asks for reasoning effort
# "medium" by default, and adds 1024 tokens of headroom once its probe finds that
# sim-small reasons), and how many of its frames the check validates.
STREAMING_CHECK_BODY = {
    "model": MODEL,
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "Count from 1 to 5."}]}],
    "temperature": 0,
    "max_output_tokens": 1088,
    "reasoning": {"effort": "medium"},
    "stream": True,
}
STREAMING_CHECK_FRAMES = 12
# --quick probes the four core surfaces; the standard depth adds count_tokens,
# embeddings and legacy completions, and more checks on each.
DEPTHS = {
    "quick": ("--quick",),
    "standard": (),
}
SURFACES = {
    "quick": ["models", "chat", "responses", "messages"],
    "standard": [
        "models",
        "chat",
        "responses",
        "messages",
        "count-tokens",
        "embeddings",
        "completions",
    ],
}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    yield module_server_factory(*FAST_PACING, "--seed", "7")


@pytest.fixture(scope="module")
def reports(
    node_project: Path, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """llmprobe's JSON report at each depth (a few seconds each at fast pacing)."""
    env = dict(os.environ)
    # --no-save keeps the run out of llmprobe's library; HOME keeps it off the user's too.
    env["HOME"] = str(tmp_path_factory.mktemp("llmprobe-home"))
    target = server.base_url.removeprefix("http://") + "/v1"
    llmprobe = str(node_project / "node_modules" / ".bin" / "llmprobe")
    common = ["-k", "x", "--model", MODEL, "--no-save", "--no-bench", "--no-color", "--json"]
    found: dict[str, dict[str, Any]] = {}
    for depth, options in DEPTHS.items():
        report = run_json([node_binary(), llmprobe, target, *common, *options], env=env)
        assert report["target"]["model"] == MODEL
        found[depth] = report
    return found


def must_failures(report: dict[str, Any], surface: str | None = None) -> list[dict[str, Any]]:
    """Every failed MUST assertion of ``surface`` (or of all surfaces), with its check."""
    return [
        {"check": result["id"], **failure}
        for result in report["conformance"]["results"]
        if surface is None or result["surface"] == surface
        for failure in result["failures"]
        if failure["severity"] == "MUST"
    ]


@pytest.mark.parametrize(
    ("depth", "surface"),
    [(depth, surface) for depth, surfaces in SURFACES.items() for surface in surfaces],
)
def test_every_must_check_passes(
    reports: dict[str, dict[str, Any]], depth: str, surface: str
) -> None:
    report = reports[depth]
    [counted] = [s for s in report["conformance"]["bySurface"] if s["surface"] == surface]
    assert counted["total"] > 0, f"llmprobe checked nothing on {surface}"
    failures = [
        failure
        for failure in must_failures(report, surface)
        if failure["id"] not in SIMULATOR_LIMITATIONS and failure["id"] not in KNOWN_DIVERGENCES
    ]
    assert failures == []


def first_streamed_types(server: ServerProcess) -> list[str]:
    """The event types of the frames llmprobe's streaming check validates."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        reply = client.post(
            "/v1/responses", json=STREAMING_CHECK_BODY, headers={"Authorization": "Bearer x"}
        )
    reply.raise_for_status()
    frames = [
        json.loads(line.removeprefix("data: "))
        for line in reply.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    return [frame["type"] for frame in frames[:STREAMING_CHECK_FRAMES]]


@pytest.mark.parametrize("depth", DEPTHS)
def test_the_chunk_schema_divergence_is_the_reasoning_events_only(
    reports: dict[str, dict[str, Any]], server: ServerProcess, depth: str
) -> None:
    """One failure per reasoning text frame llmprobe validates, and no other."""
    types = first_streamed_types(server)
    reasoning_frames = sum(kind in OPENAI_REASONING_EVENTS for kind in types)
    assert reasoning_frames > 0, f"the check's stream has no reasoning text: {types}"
    failed = [
        failure
        for failure in must_failures(reports[depth], "responses")
        if failure["id"] == "responses-stream-chunk-schema"
    ]
    assert len(failed) == reasoning_frames


@pytest.mark.parametrize("depth", DEPTHS)
def test_no_must_check_fails_beyond_the_listed_ones(
    reports: dict[str, dict[str, Any]], depth: str
) -> None:
    """A failure on a surface that ``SURFACES`` does not list is caught here."""
    unexpected = [
        failure
        for failure in must_failures(reports[depth])
        if failure["id"] not in SIMULATOR_LIMITATIONS and failure["id"] not in KNOWN_DIVERGENCES
    ]
    assert unexpected == []


def test_llmprobe_finds_every_surface(reports: dict[str, dict[str, Any]]) -> None:
    supported = {
        entry["id"]
        for entry in reports["standard"]["coverage"]["entries"]
        if entry["kind"] == "surface" and entry["supported"]
    }
    assert {"models", "chat", "responses", "messages", "embeddings", "completions"} <= supported
