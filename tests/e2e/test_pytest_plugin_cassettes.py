"""The pytest plugin's cassettes: record once through a real upstream, then replay without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from streamapi.cassettes import read_cassette
from streamapi.pytest_plugin import StreamapiServer, serve

pytestmark = pytest.mark.e2e

QUESTION: Any = [{"role": "user", "content": "Explain DNS caching"}]


def ask(server: StreamapiServer, seed: int) -> str:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0)
    with client:
        answer = client.chat.completions.create(
            model="gw-small", messages=QUESTION, seed=seed, max_tokens=20
        )
    return answer.choices[0].message.content or ""


def test_record_modes_once_none_new_episodes_and_all(tmp_path: Path) -> None:
    tape = tmp_path / "cassettes" / "checkout.jsonl"
    routes = tmp_path / "routes.json"
    with serve(settings={"served_model_names": ["up-small"]}) as upstream:
        routes.write_text(
            json.dumps(
                {
                    "upstreams": {"up": {"base_url": upstream.openai_base_url, "max_retries": 0}},
                    "models": {"gw-small": {"upstream": "up", "upstream_model": "up-small"}},
                }
            )
        )
        settings = {"routes_file": str(routes)}
        with serve(settings=settings, cassette=tape) as first:  # once, no file: records
            recorded = ask(first, seed=1)
        with serve(settings=settings, cassette=tape, record_mode="new_episodes") as grow:
            assert ask(grow, seed=1) == recorded
            new = ask(grow, seed=2)
    assert [e.body["seed"] for e in read_cassette(tape)] == [1, 2]
    # The upstream is gone: "once" with a file and "none" only replay.
    for mode in ("once", "none"):
        with serve(settings=settings, cassette=tape, record_mode=mode) as replay:
            assert ask(replay, seed=1) == recorded
            assert ask(replay, seed=2) == new
            with pytest.raises(openai.NotFoundError, match="No recording matches"):
                ask(replay, seed=3)
    # "all" starts the cassette anew (here the upstream is gone: the exchange that
    # failed to connect is what it records).
    with (
        serve(settings=settings, cassette=tape, record_mode="all") as again,
        pytest.raises(openai.InternalServerError),
    ):
        ask(again, seed=1)
    (only,) = read_cassette(tape)
    assert only.end == "unreachable" and only.status is None


@pytest.mark.streamapi(cassette="tests/cassettes/none-such.jsonl", record_mode="none")
def test_a_marker_with_a_missing_cassette_in_none_mode_fails_to_start(
    request: pytest.FixtureRequest,
) -> None:
    with pytest.raises(Exception, match="no cassette at"):
        request.getfixturevalue("streamapi_server")
