"""``streamapi cassette to-rules``: a recording becomes rules that answer the recorded requests.

Recorded through a gateway in front of the simulator (the helpers of
test_record_replay.py), converted, checked with ``streamapi rules check``, then
served with ``--rules-file`` by a plain simulator and asked again with the
openai SDK; failures the gateway cannot provoke in-process are hand-written
cassettes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.cassettes import Exchange, RecordedEvent, dumps_exchanges, write_atomic
from streamapi.cli import main
from streamapi.settings import Settings
from tests.test_record_replay import QUESTION, TOOLS, chat, gateway


@asynccontextmanager
async def served(rules: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    """A plain simulator (no routes, no upstream) answering from ``rules``."""
    settings = Settings(
        served_model_names=["up-small"],
        rules_file=rules,
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
    )
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
        yield openai.AsyncOpenAI(
            base_url="http://sim.test/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport, base_url="http://sim.test"),
        )


def convert(tape: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> list[Any]:
    assert main(["cassette", "to-rules", str(tape), "-o", str(out)]) == 0
    assert main(["rules", "check", str(out)]) == 0
    capsys.readouterr()
    rules: list[Any] = yaml.safe_load(out.read_text())["rules"]
    return rules


async def _agent(client: openai.AsyncOpenAI, model: str) -> list[Any]:
    """A tool conversation whose results do not change run to run."""
    messages: list[Any] = [{"role": "user", "content": "agent: plan my day"}]
    answers: list[Any] = []
    for turn in range(3):
        answer = await client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        message = answer.choices[0].message
        calls = [c.model_dump() for c in message.tool_calls or ()]
        answers.append((answer.choices[0].finish_reason, message.content or "", calls))
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or ():
            messages.append({"role": "tool", "tool_call_id": call.id, "content": f"result {turn}"})
    return answers


async def test_a_recorded_answer_and_agent_loop_become_rules_that_answer_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = tmp_path / "tape.jsonl"
    async with gateway(tmp_path, upstream={}, record_dir=tape) as gw:
        streamed = await gw.openai().chat.completions.create(
            **chat(seed=3, max_tokens=60), stream=True
        )
        recorded_text = "".join([c.choices[0].delta.content or "" async for c in streamed
                                 if c.choices])  # fmt: skip
        recorded_loop = await _agent(gw.openai(), "gw-small")
    rules = convert(tape, tmp_path / "rules.yaml", capsys)

    assert len(rules) == 4
    first = rules[0]
    assert first["match"]["model"] == "up-small"
    assert first["match"]["user"] == {"equals": QUESTION[0]["content"]}
    assert first["match"]["turn"] == 0 and first["match"]["tools"] is False
    assert first["respond"]["text"] == recorded_text != ""
    assert set(first["timing"]) == {"ttft_ms", "itl_ms"}
    # The agent's turns share their user message; the turn and the tool result tell them apart.
    assert [r["match"]["turn"] for r in rules[1:]] == [0, 1, 2]
    assert rules[2]["match"]["tool_result"] == {"equals": "result 0"}
    assert rules[1]["respond"]["tool_calls"][0]["name"] == "get_weather"

    async with served(tmp_path / "rules.yaml") as client:
        again = await client.chat.completions.create(
            model="up-small", messages=QUESTION, max_tokens=60, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in again if c.choices])
        loop = await _agent(client, "up-small")
    assert text == recorded_text
    # The same words and calls, ids included, with the same finish reasons.
    assert loop == recorded_loop


def _exchange(status: int | None, events: list[RecordedEvent], **end: Any) -> Exchange:
    body = {"model": "up-small", "messages": [{"role": "user", "content": f"case {status}"}]}
    exchange = Exchange("sim", "/chat/completions", body, status=status, events=events)
    for name, value in end.items():
        setattr(exchange, name, value)
    return exchange


def _delta(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})


async def test_failures_and_a_whole_body_become_errors_faults_and_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = (
        '{"object":"chat.completion","choices":[{"index":0,"finish_reason":"stop",'
        '"message":{"role":"assistant","content":"All in one piece."}}]}'
    )
    limited = '{"error":{"message":"Slow down.","type":"rate_limit_error","code":"rate"}}'
    exchanges = [
        _exchange(200, [RecordedEvent(5, whole, "body")]),
        _exchange(429, [RecordedEvent(5, limited, "body")]),
        _exchange(
            200,
            [RecordedEvent(40, _delta("one two")), RecordedEvent(60, _delta(" three"))],
            end="dropped",
            message="The connection to the upstream 'sim' was lost.",
        ),
        _exchange(None, [], end="unreachable", message="The upstream 'sim' is unreachable."),
    ]
    exchanges[1].response_headers = {"retry-after": "2"}
    tape = tmp_path / "failures.jsonl"
    write_atomic(tape, dumps_exchanges(exchanges))
    rules = convert(tape, tmp_path / "rules.yaml", capsys)

    assert rules[0]["respond"] == {"text": "All in one piece."}
    assert "timing" not in rules[0]
    assert rules[1]["respond"] == {
        "error": {
            "status": 429,
            "message": "Slow down.",
            "type": "rate_limit_error",
            "code": "rate",
            "retry_after_s": 2.0,
        }
    }
    assert rules[2]["respond"] == {"text": "one two three", "fault": "drop,after=3"}
    assert rules[2]["timing"] == {"ttft_ms": 40.0, "itl_ms": 10.0}
    assert rules[3]["respond"]["error"]["status"] == 502

    async with served(tmp_path / "rules.yaml") as client:
        answer = await client.chat.completions.create(
            model="up-small", messages=[{"role": "user", "content": "case 200"}]
        )
        assert answer.choices[0].message.content == "All in one piece."
        with pytest.raises(openai.RateLimitError, match="Slow down"):
            await client.chat.completions.create(
                model="up-small", messages=[{"role": "user", "content": "case 429"}]
            )
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="up-small", messages=[{"role": "user", "content": "case None"}]
            )


def test_to_rules_prints_yaml_without_o_and_names_a_corrupt_cassette(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = tmp_path / "one.jsonl"
    write_atomic(tape, dumps_exchanges([_exchange(200, [RecordedEvent(1, _delta("hi"))])]))
    assert main(["cassette", "to-rules", str(tape)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Rules converted from one.jsonl")
    assert yaml.safe_load(printed)["rules"][0]["respond"]["text"] == "hi"
    tape.write_text(tape.read_text()[:-20])
    assert main(["cassette", "to-rules", str(tape)]) == 1
    assert f"cassette {tape}, line 5: not JSON" in capsys.readouterr().err
    assert main(["cassette", "to-rules"]) == 2
