"""The pytest plugin, as a user's test suite uses it: fixtures, markers, both modes, the journal."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from streamapi.pytest_plugin import StreamapiServer

pytestmark = pytest.mark.e2e

GREETING = [{"name": "greeting", "match": {"user": "hello"}, "respond": {"text": "Hi there!"}}]


def chat(server: StreamapiServer, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="sk-user", **options)  # type: ignore[arg-type]


@pytest.mark.streamapi(rules=GREETING)
def test_script_an_answer_break_a_stream_and_hit_a_counted_rate_limit(
    streamapi_server: StreamapiServer,
) -> None:
    with chat(streamapi_server, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "Hi there!"

        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(
                model="sim-small",
                messages=[{"role": "user", "content": "Explain DNS"}],
                stream=True,
                extra_headers=streamapi_server.fault_header("mid_stream_error,after=5"),
            ):
                pass

        streamapi_server.set_rate_limits(requests_per_minute=1)
        client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hello"}]
        )
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "hello"}]
            )

    outcomes = [
        (e["rule"], e["fault"], e["status"], e["outcome"]) for e in streamapi_server.journal()
    ]
    assert outcomes == [
        ("greeting", None, 200, "completed"),
        (None, "mid_stream_error,after=5", 200, "error"),
        ("greeting", None, 200, "completed"),
        (None, None, 429, "error"),
    ]


@pytest.mark.streamapi(fault="status=503")
class TestMarkers:
    def test_a_class_marker_applies(self, streamapi_server: StreamapiServer) -> None:
        with (
            chat(streamapi_server, max_retries=0) as client,
            pytest.raises(openai.InternalServerError),
        ):
            client.models.list()  # not a generation route: never faulted
            client.completions.create(model="sim-small", prompt="hi")

    @pytest.mark.streamapi(fault="status=404")
    def test_the_closest_marker_wins(self, streamapi_server: StreamapiServer) -> None:
        with chat(streamapi_server, max_retries=0) as client, pytest.raises(openai.NotFoundError):
            client.completions.create(model="sim-small", prompt="hi")


@pytest.mark.parametrize(
    "streamapi_server",
    [{"latency": {"time_to_first_token_ms": 200.0}}],
    indirect=True,
)
def test_indirect_parametrization_and_runtime_changes(streamapi_server: StreamapiServer) -> None:
    assert streamapi_server.config()["latency"]["time_to_first_token_ms"] == 200
    streamapi_server.set_latency(time_to_first_token_ms=0)
    streamapi_server.set_rules([{"respond": {"text": "Scripted at runtime."}}])
    streamapi_server.set_faults(rate=0.0)
    with chat(streamapi_server, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "anything"}]
        )
    assert reply.choices[0].message.content == "Scripted at runtime."
    streamapi_server.reset()
    assert streamapi_server.config()["rules"]["count"] == 0
    assert streamapi_server.journal() == []


def test_subprocess_mode_with_a_rules_file(
    streamapi_factory: Callable[..., StreamapiServer], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {match: {user: ping}, respond: {text: pong}}\n")
    server = streamapi_factory(rules=rules, mode="subprocess", settings={"seed": 1})
    with chat(server, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "ping"}]
        )
    assert reply.choices[0].message.content == "pong"
    assert [e["rule"] for e in server.journal()] == ["#1"]


def test_stopping_ends_open_streams_at_once(
    streamapi_factory: Callable[..., StreamapiServer],
) -> None:
    server = streamapi_factory(latency={"inter_token_latency_ms": 200.0})
    with chat(server, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "Explain DNS"}], stream=True
        )
        next(iter(stream))
        started = time.monotonic()
        server.stop()
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
    assert time.monotonic() - started < 5


PLUGIN_PAGE = Path(__file__).parents[2] / "docs" / "testing" / "pytest-plugin.md"


def test_the_docs_example_passes_in_a_users_suite(tmp_path: Path) -> None:
    """The plugin comes from the installed package's entry point, as in any user's suite."""
    example = PLUGIN_PAGE.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    (tmp_path / "test_user.py").write_text(example)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
