"""Test control through the app, in-process: rules on every route, faults, limits, admin API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from streamapi.app import create_app
from streamapi.control.rules import RulesError
from streamapi.settings import Settings
from tests.asgi_driver import Exchange
from tests.sse_helpers import chunks, events
from tests.virtual_time import virtual_time

ADMIN = {"Authorization": "Bearer secret"}
JSON = {"Accept": "application/json"}
RULES = """\
rules:
  - name: weather
    match: {user: {regex: "weather in (?P<city>\\\\w+)"}}
    respond: {template: "Sunny in {{match.city}}."}
  - name: call
    match: {tool_name: get_weather, turn: 0}
    respond:
      tool_calls: [{name: get_weather, arguments: {location: Paris}, id: call_1}]
  - name: refuse
    match: {user: refuse me}
    respond: {error: {status: 403, message: "Not for you."}}
  - name: flaky
    match: {user: flaky, sequence: 1}
    respond: {fault: "status=503,retry_after=2"}
  - name: paced
    match: {user: paced}
    respond: {text: "one two three"}
    timing: {ttft_ms: 250, itl_ms: 50}
"""


def chat(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": text}], **fields}


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture
def settings(rules_file: Path) -> Settings:
    return Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        rules_file=rules_file,
        admin_key="secret",
        enable_fault_headers=True,
        seed=7,
    )


async def journal(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/admin/journal", headers=ADMIN)
    assert response.status_code == 200
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


# --- rules on every route ------------------------------------------------------------------


async def test_a_scripted_answer_is_rendered_and_counted_by_every_protocol(
    client: httpx.AsyncClient,
) -> None:
    question = "What is the weather in Paris?"
    body = (await client.post("/v1/chat/completions", json=chat(question))).json()
    assert body["choices"][0]["message"]["content"] == "Sunny in Paris."
    assert body["usage"]["completion_tokens"] == 4
    legacy = {"model": "m", "prompt": question}
    assert (await client.post("/v1/completions", json=legacy)).json()["choices"][0]["text"] == (
        "Sunny in Paris."
    )
    response = (await client.post("/v1/responses", json={"input": question})).json()
    assert response["output"][0]["content"][0]["text"] == "Sunny in Paris."
    message = {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": question}]}
    anthropic = (await client.post("/v1/messages", json=message)).json()
    assert anthropic["content"] == [{"type": "text", "text": "Sunny in Paris."}]
    assert anthropic["usage"]["output_tokens"] == 4
    streamed = await client.post("/v1/chat/completions", json=chat(question, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(streamed.text))
    assert text == "Sunny in Paris."
    assert [e["rule"] for e in await journal(client)] == ["weather"] * 5


async def test_scripted_tool_calls_reach_the_client_as_tool_calls(
    client: httpx.AsyncClient,
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = (await client.post("/v1/chat/completions", json=chat("hi", tools=tools))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
        }
    ]


async def test_no_match_falls_through_to_the_simulator(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/chat/completions", json=chat("Explain DNS"))).json()
    assert len(body["choices"][0]["message"]["content"]) >= 1378
    assert (await journal(client))[-1]["rule"] is None


async def test_a_rules_error_is_in_each_routes_own_shape(client: httpx.AsyncClient) -> None:
    openai = await client.post("/v1/chat/completions", json=chat("refuse me"), headers=JSON)
    assert openai.status_code == 403
    assert openai.json()["error"]["message"] == "Not for you."
    message = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "refuse me"}],
    }
    anthropic = await client.post("/v1/messages", json=message)
    assert anthropic.status_code == 403
    assert anthropic.json()["error"] == {"type": "permission_error", "message": "Not for you."}
    assert (await journal(client))[-1]["error"] == {
        "type": "permission_error",
        "code": None,
        "message": "Not for you.",
    }


async def test_a_rule_fault_for_the_first_call_only(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/chat/completions", json=chat("flaky"), headers=JSON)
    assert first.status_code == 503
    assert first.headers["retry-after"] == "2"
    second = await client.post("/v1/chat/completions", json=chat("flaky"), headers=JSON)
    assert second.status_code == 200
    faults = [(e["rule"], e["fault"], e["status"]) for e in await journal(client)]
    assert faults == [("flaky", "status=503,retry_after=2", 503), (None, None, 200)]


async def test_a_rules_timing_paces_its_answer(settings: Settings) -> None:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        with virtual_time():
            exchange = await Exchange(manager.app, chat("paced", stream=True)).run()
    assert exchange.content_times() == pytest.approx([0.25, 0.30, 0.35])


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


async def test_the_rules_file_is_reloaded_when_it_changes(
    client: httpx.AsyncClient, rules_file: Path
) -> None:
    rewrite(rules_file, RULES.replace("Sunny in", "Rainy in") + "\n# changed\n")
    body = (await client.post("/v1/chat/completions", json=chat("weather in Oslo"))).json()
    assert body["choices"][0]["message"]["content"] == "Rainy in Oslo."


def test_an_invalid_rules_file_stops_the_app_from_being_built(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- {respond: {txt: x}}")
    with pytest.raises(RulesError, match=r"rule 1: respond\.txt: unknown field"):
        create_app(Settings(rules_file=path))


# --- fault headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503, 504, 529])
async def test_fault_header_status_in_openai_and_anthropic_shapes(
    client: httpx.AsyncClient, status: int
) -> None:
    fault = {"X-Streamapi-Fault": f"status={status}", **JSON}
    openai = await client.post("/v1/chat/completions", json=chat("hi"), headers=fault)
    assert openai.status_code == status
    assert set(openai.json()["error"]) == {"message", "type", "param", "code"}
    message = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    anthropic = await client.post("/v1/messages", json=message, headers=fault)
    assert anthropic.status_code == status
    assert anthropic.json()["type"] == "error"


async def test_a_mid_stream_error_is_an_in_stream_event_on_every_route(
    client: httpx.AsyncClient,
) -> None:
    fault = {"X-Streamapi-Fault": "mid_stream_error,after=3"}
    openai = await client.post("/v1/chat/completions", json=chat("hi", stream=True), headers=fault)
    payloads = events(openai.text)
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["type"] == "server_error"
    message = {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    anthropic = await client.post("/v1/messages", json=message, headers=fault)
    assert anthropic.text.rstrip("\n").split("\n\n")[-1].startswith("event: error\n")
    responses = await client.post(
        "/v1/responses", json={"input": "hi", "stream": True}, headers=fault
    )
    *_, failed, done = responses.text.rstrip("\n").split("\n\n")
    assert (failed.startswith("event: response.failed\n"), done) == (True, "data: [DONE]")
    whole = await client.post("/v1/chat/completions", json=chat("hi"), headers={**fault, **JSON})
    assert whole.status_code == 500


async def test_frame_faults_on_the_wire(client: httpx.AsyncClient) -> None:
    fault = {"X-Streamapi-Fault": "no_done;no_usage"}
    body = chat("hi", stream=True, stream_options={"include_usage": True}, max_tokens=5)
    response = await client.post("/v1/chat/completions", json=body, headers=fault)
    payloads = events(response.text)
    assert "[DONE]" not in payloads
    chunks = [json.loads(p) for p in payloads]
    assert all(chunk["choices"] for chunk in chunks)  # no usage chunk
    # Everything else is there: the answer's five tokens and its finish.
    assert sum(bool(c["choices"][0]["delta"].get("content")) for c in chunks) == 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_an_invalid_fault_header_is_400_naming_it(client: httpx.AsyncClient) -> None:
    fault = {"X-Streamapi-Fault": "explode", **JSON}
    response = await client.post("/v1/chat/completions", json=chat("hi"), headers=fault)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-streamapi-fault"
    assert "unknown fault 'explode'" in response.json()["error"]["message"]


async def test_fault_headers_are_ignored_unless_enabled() -> None:
    app = create_app(Settings(time_to_first_token_ms=0, inter_token_latency_ms=0))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        fault = {"X-Streamapi-Fault": "status=500", **JSON}
        assert (await c.post("/v1/chat/completions", json=chat("hi"), headers=fault)).is_success
        assert (await c.get("/admin/journal", headers=ADMIN)).status_code == 404


async def test_random_faults_at_the_configured_rate(settings: Settings) -> None:
    settings = settings.model_copy(update={"fault_rate": 1.0, "fault_kinds": "status=502"})
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        response = await c.post("/v1/chat/completions", json=chat("Explain DNS"), headers=JSON)
        assert response.status_code == 502
        # The header wins over the rules and the random faults.
        ok = {"X-Streamapi-Fault": "no_usage", **JSON}
        assert (await c.post("/v1/chat/completions", json=chat("hi"), headers=ok)).is_success


# --- rate limits ----------------------------------------------------------------------------


async def test_rate_limit_headers_on_every_response_and_429_when_over(
    settings: Settings,
) -> None:
    settings = Settings(
        time_to_first_token_ms=0,
        inter_token_latency_ms=0,
        rules_file=settings.rules_file,
        admin_key="secret",
        rate_limit_requests_per_minute=2,
        # A request without max_tokens is charged its whole context: keep it under the bucket.
        rate_limit_tokens_per_minute=100_000,
        max_model_len=8192,
        # Buckets are per authenticated key (with auth off, per client address).
        api_keys=[SecretStr("sk-test"), SecretStr("sk-other")],
    )
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        key = {"Authorization": "Bearer sk-test", **JSON}
        whole = await c.post("/v1/chat/completions", json=chat("hi", max_tokens=10), headers=key)
        assert whole.headers["x-ratelimit-remaining-requests"] == "1"
        assert whole.headers["x-ratelimit-limit-tokens"] == "100000"
        assert whole.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 10 - 7)
        streamed = await c.post("/v1/chat/completions", json=chat("hi", stream=True), headers=key)
        assert streamed.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await c.post("/v1/chat/completions", json=chat("hi"), headers=key)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "requests"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # Another key has its own buckets; an Anthropic key counts too.
        other = {"x-api-key": "sk-other"}
        message = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        assert (await c.post("/v1/messages", json=message, headers=other)).is_success
        listed = await c.get("/admin/journal", headers={**ADMIN, "x-api-key": "sk-test"})
        identities = {e["identity"] for e in listed.json()["entries"]}
        # The keys' names, never the keys.
        assert identities == {"key:key-1", "key:key-2"}


# --- the admin API --------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
async def test_the_admin_api_needs_the_admin_key(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get("/admin/config", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_key"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_admin_config_reads_and_changes_latency_faults_and_limits(
    client: httpx.AsyncClient, rules_file: Path
) -> None:
    config = (await client.get("/admin/config", headers=ADMIN)).json()
    assert config["latency"]["inter_token_latency_ms"] == 0
    assert config["rules"] == {"source": "file", "path": str(rules_file), "count": 5, "error": None}
    patch = {
        "latency": {"inter_token_latency_ms": 2.5},
        "faults": {"rate": 0.5, "kinds": "drop,after=1"},
        "rate_limits": {"requests_per_minute": 7},
    }
    changed = (await client.patch("/admin/config", json=patch, headers=ADMIN)).json()
    assert changed["latency"]["inter_token_latency_ms"] == 2.5
    assert changed["faults"] == {"rate": 0.5, "kinds": "drop,after=1"}
    assert changed["rate_limits"] == {"requests_per_minute": 7, "tokens_per_minute": 0}
    bad = {"faults": {"kinds": "explode"}, "latency": {"load_factor": 3}}
    refused = await client.patch("/admin/config", json=bad, headers=ADMIN)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "faults.kinds"
    after = (await client.get("/admin/config", headers=ADMIN)).json()
    assert after["latency"]["load_factor"] == config["latency"]["load_factor"]
    unknown = await client.patch("/admin/config", json={"latency": {"ttft": 1}}, headers=ADMIN)
    assert unknown.status_code == 400
    reset = (await client.post("/admin/reset", headers=ADMIN)).json()
    assert reset["latency"]["inter_token_latency_ms"] == 0
    assert reset["faults"]["rate"] == 0
    assert reset["rate_limits"]["requests_per_minute"] == 0


async def test_admin_rules_can_be_replaced_as_json_or_yaml_and_reverted(
    client: httpx.AsyncClient,
) -> None:
    rules = [{"name": "all", "respond": {"text": "Scripted."}}]
    put = await client.put("/admin/rules", json={"rules": rules}, headers=ADMIN)
    assert put.json()["source"] == "admin"
    assert put.json()["rules"] == [{"name": "all", "match": {}, "respond": {"text": "Scripted."}}]
    body = (await client.post("/v1/chat/completions", json=chat("weather in Rome"))).json()
    assert body["choices"][0]["message"]["content"] == "Scripted."
    yaml_body = "- {name: y, respond: {text: From YAML.}}"
    yaml_headers = {**ADMIN, "Content-Type": "application/yaml"}
    assert (await client.put("/admin/rules", content=yaml_body, headers=yaml_headers)).is_success
    body = (await client.post("/v1/chat/completions", json=chat("x"))).json()
    assert body["choices"][0]["message"]["content"] == "From YAML."
    bad = await client.put("/admin/rules", json=[{"name": "b", "match": {"x": 1}}], headers=ADMIN)
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == (
        "the request body: rule 1 ('b'): match.x: unknown field"
    )
    reverted = (await client.delete("/admin/rules", headers=ADMIN)).json()
    assert (reverted["source"], reverted["count"]) == ("file", 5)


async def test_the_journal_records_route_model_status_tokens_rule_and_fault(
    client: httpx.AsyncClient,
) -> None:
    await client.post(
        "/v1/chat/completions",
        json=chat("weather in Lima", stream=True),
        headers={"X-Streamapi-Fault": "no_done", "x-request-id": "req-1"},
    )
    await client.post("/v1/chat/completions", json={"messages": "nope"}, headers=JSON)
    entries = await journal(client)
    first, second = entries
    assert first["request_id"] == "req-1"
    assert first["endpoint"] == "chat"
    assert first["model"] == "sim-small"
    assert first["stream"] is True
    assert first["user"] == "weather in Lima"
    assert (first["status"], first["outcome"]) == (200, "completed")
    assert (first["prompt_tokens"], first["completion_tokens"]) == (9, 4)
    assert first["ttft_ms"] >= 0
    assert first["duration_ms"] >= first["ttft_ms"]
    assert (first["rule"], first["fault"]) == ("weather", "no_done")
    assert (second["status"], second["outcome"]) == (400, "error")
    assert second["error"]["type"] == "invalid_request_error"
    assert (await client.get("/admin/journal?limit=1", headers=ADMIN)).json()["entries"][0][
        "id"
    ] == second["id"]
    assert (await client.delete("/admin/journal", headers=ADMIN)).status_code == 204
    assert await journal(client) == []


async def test_the_journal_lists_requests_in_flight(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"inter_token_latency_ms": 50.0}))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        slow = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat("paced")))
        for _ in range(100):
            entries = await journal(c)
            if entries and entries[0]["completion_tokens"]:
                break
            await asyncio.sleep(0.01)
        assert entries[0]["outcome"] == "in_progress"
        await slow
        assert (await journal(c))[0]["outcome"] == "completed"


async def test_the_admin_api_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert {"/admin/config", "/admin/rules", "/admin/journal", "/admin/reset"} <= set(
        document["paths"]
    )
    assert "RulesFile" in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_journal_records_document_every_field(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat("hi"))
    (entry,) = await journal(client)
    document = (await client.get("/openapi.json")).json()
    assert set(entry) == set(document["components"]["schemas"]["JournalRecord"]["properties"])


async def test_the_journal_counts_every_token_of_a_stream_whose_tokens_share_writes(
    client: httpx.AsyncClient,
) -> None:
    # No fault: the journal counts tokens as the engine hands them over together.
    body = chat("tell me about tides", stream=True, max_tokens=120, ignore_eos=True)
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    (entry,) = await journal(client)
    assert (entry["outcome"], entry["fault"]) == ("completed", None)
    assert entry["completion_tokens"] == 120
    assert 0 <= entry["ttft_ms"] <= entry["duration_ms"]
