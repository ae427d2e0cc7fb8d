"""Test control through a real server process, driven by the official ``openai`` and ``anthropic``
SDKs: every rule field, every fault (and what the SDK raises or does), the counted rate limits."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-admin"
# The rate-limited server's API keys: limits count per key with keys on (per client
# address with auth off).
LIMITED_KEYS = ("sk-a", "sk-b", "sk-c")
FAST = ("--time-to-first-token-ms", "5", "--inter-token-latency-ms", "1")
FAULT = "X-Streamapi-Fault"
RULES = r"""
rules:
  - name: messages-only
    match: {endpoint: messages, user: which endpoint}
    respond: {text: This is the Messages API.}
  - name: any-endpoint
    match: {user: which endpoint}
    respond: {template: "This is {{endpoint}}."}
  - name: gpt-models
    match: {model: {regex: "^gpt-4"}, user: which model}
    respond: {template: "{{model}} speaking."}
  - name: weather
    match: {user: {regex: "(?i)weather in (?P<city>[A-Z]\\w+)"}, tools: false}
    respond: {template: "It is sunny in {{match.city}}."}
  - name: pirate
    match: {system: pirate}
    respond: {text: Arr!}
  - name: call-the-tool
    match: {tool_name: get_weather, turn: 0}
    respond:
      tool_calls: [{name: get_weather, arguments: {location: "{{user}}"}}]
  - name: use-the-result
    match: {tool_result: {regex: "\\d+ C"}}
    respond: {template: "The tool says {{tool_result}}."}
  - name: other-tools
    match: {tools: true}
    respond: {text: I see tools but none I know.}
  - name: by-header
    match: {headers: {x-test-case: checkout}}
    respond: {text: Checkout scenario.}
  - name: flaky-first
    match: {user: flaky, sequence: 1}
    respond: {fault: "status=429,retry_after=0.2"}
  - name: flaky-then
    match: {user: flaky}
    respond: {text: Recovered.}
  - name: as-json
    match: {user: as json}
    respond: {json: {city: Paris, temperature_c: 22}}
  - name: denied
    match: {user: deny me}
    respond: {error: {status: 403, message: Not in your plan.}}
  - name: breaks
    match: {user: break please}
    respond: {text: "one two three four five six seven eight", fault: "mid_stream_error,after=3"}
  - name: slowly
    match: {user: slowly}
    respond: {text: "a b c d e f g h i j"}
    timing: {ttft_ms: 300, tokens_per_s: 50}
"""


@pytest.fixture(scope="module")
def server(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES)
    return module_server_factory(
        *FAST,
        "--rules-file",
        str(rules),
        "--enable-fault-headers",
        "--admin-key",
        ADMIN_KEY,
        "--no-accept-unknown-models",
        "--served-model-names",
        "sim-small,gpt-4o",
    )


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(server: ServerProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0) as c:
        yield c


def admin(server: ServerProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method,
        f"{server.base_url}/admin{path}",
        # An API key too, for the servers that have API keys on (ignored by the others).
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "x-api-key": LIMITED_KEYS[0]},
        timeout=10,
        **kwargs,
    )
    assert response.status_code < 300, response.text
    return None if response.status_code == 204 else response.json()


def journal(server: ServerProcess) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = admin(server, "GET", "/journal")["entries"]
    return entries


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> None:
    """Every test starts with the settings' state and an empty journal."""
    if "server" in request.fixturenames:
        admin(request.getfixturevalue("server"), "POST", "/reset")


def ask(client: openai.OpenAI, text: str, **fields: Any) -> str:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": text}]
    completion = client.chat.completions.create(
        model=fields.pop("model", "sim-small"), messages=messages, **fields
    )
    return completion.choices[0].message.content or ""


def claude_says(claude: anthropic.Anthropic, text: str, **fields: Any) -> str:
    message = claude.messages.create(
        model="sim-small", max_tokens=100, messages=[{"role": "user", "content": text}], **fields
    )
    return "".join(block.text for block in message.content if block.type == "text")


# --- every rule field ---------------------------------------------------------------------


def test_endpoint(client: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    assert ask(client, "which endpoint?") == "This is chat."
    assert client.completions.create(model="sim-small", prompt="which endpoint?").choices[
        0
    ].text == ("This is completions.")
    assert client.responses.create(model="sim-small", input="which endpoint?").output_text == (
        "This is responses."
    )
    assert claude_says(claude, "which endpoint?") == "This is the Messages API."


def test_model(client: openai.OpenAI) -> None:
    assert ask(client, "which model?", model="gpt-4o") == "gpt-4o speaking."
    assert ask(client, "which model?") != "sim-small speaking."


def test_user_regex_and_template(client: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    assert ask(client, "What's the weather in Lisbon today?") == "It is sunny in Lisbon."
    assert claude_says(claude, "weather in Oslo?") == "It is sunny in Oslo."
    with client.chat.completions.stream(
        model="sim-small",
        messages=[{"role": "user", "content": "weather in Rome"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "It is sunny in Rome."
    assert final.usage is not None
    assert final.usage.completion_tokens == 6  # It, is, sunny, in, Rome, .


def test_system(client: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hello"},
    ]
    completion = client.chat.completions.create(model="sim-small", messages=messages)
    assert completion.choices[0].message.content == "Arr!"
    assert claude_says(claude, "Hello", system="You are a pirate.") == "Arr!"


WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


def test_tool_name_turn_and_tool_result_drive_an_agent_loop(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Paris"}]
    first = client.chat.completions.create(
        model="sim-small", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"location": "Paris"},
    )
    messages += [
        choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": "22 C and clear"},
    ]
    second = client.chat.completions.create(
        model="sim-small", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "The tool says 22 C and clear."
    assert [e["rule"] for e in journal(server)] == [
        "call-the-tool",
        "use-the-result",
    ]


def test_tools_present(claude: anthropic.Anthropic) -> None:
    tool: anthropic.types.ToolParam = {
        "name": "lookup",
        "input_schema": {"type": "object", "properties": {}},
    }
    assert claude_says(claude, "hello", tools=[tool]) == "I see tools but none I know."


def test_header(client: openai.OpenAI) -> None:
    assert ask(client, "hi", extra_headers={"x-test-case": "checkout"}) == "Checkout scenario."
    assert ask(client, "hi", extra_headers={"x-test-case": "refund"}) != "Checkout scenario."


def test_sequence_fails_the_first_call_and_the_sdk_retries_after_retry_after(
    server: ServerProcess,
) -> None:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=2) as retrying:
        started = time.monotonic()
        assert ask(retrying, "flaky") == "Recovered."
        elapsed = time.monotonic() - started
    attempts = [(e["rule"], e["status"], e["fault"]) for e in journal(server)]
    assert attempts == [
        ("flaky-first", 429, "status=429,retry_after=0.2"),
        ("flaky-then", 200, None),
    ]
    assert elapsed >= 0.2  # the SDK waited as retry-after-ms said


def test_json_answer(client: openai.OpenAI) -> None:
    assert json.loads(ask(client, "as json")) == {"city": "Paris", "temperature_c": 22}


def test_error_answer(client: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=r"Not in your plan\."):
        ask(client, "deny me")
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        claude_says(claude, "deny me")
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "permission_error", "message": "Not in your plan."},
        "request_id": raised.value.request_id,
    }


def test_fault_answer(client: openai.OpenAI) -> None:
    seen = []
    with pytest.raises(openai.APIError, match="Sorry about that") as raised:
        for chunk in client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "break please"}],
            stream=True,
        ):
            seen += [c.delta.content or "" for c in chunk.choices]
    assert not isinstance(raised.value, openai.APIStatusError)
    assert "".join(seen) == "one two three"


def test_timing(client: openai.OpenAI) -> None:
    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "slowly"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 10
    assert arrivals[0] >= 0.3
    assert arrivals[-1] - arrivals[0] >= 9 * 0.02 * 0.9


# --- faults before the stream: the SDKs' exception classes ---------------------------------


@pytest.mark.parametrize(
    ("status", "openai_error", "anthropic_error"),
    [
        (400, openai.BadRequestError, anthropic.BadRequestError),
        (401, openai.AuthenticationError, anthropic.AuthenticationError),
        (403, openai.PermissionDeniedError, anthropic.PermissionDeniedError),
        (404, openai.NotFoundError, anthropic.NotFoundError),
        (408, openai.APIStatusError, anthropic.RequestTimeoutError),
        (429, openai.RateLimitError, anthropic.RateLimitError),
        (500, openai.InternalServerError, anthropic.InternalServerError),
        (502, openai.InternalServerError, anthropic.InternalServerError),
        (503, openai.InternalServerError, anthropic.ServiceUnavailableError),
        (504, openai.InternalServerError, anthropic.GatewayTimeoutError),
        (529, openai.InternalServerError, anthropic.OverloadedError),
    ],
)
def test_status_faults_raise_each_sdks_own_class(
    client: openai.OpenAI,
    claude: anthropic.Anthropic,
    status: int,
    openai_error: type[openai.APIStatusError],
    anthropic_error: type[anthropic.APIStatusError],
) -> None:
    fault = {FAULT: f"status={status}"}
    with pytest.raises(openai_error) as raised:
        ask(client, "hi", extra_headers=fault)
    assert raised.value.status_code == status
    with pytest.raises(anthropic_error) as claude_raised:
        claude_says(claude, "hi", extra_headers=fault)
    assert claude_raised.value.status_code == status


def test_400_is_the_context_length_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        ask(client, "hi", extra_headers={FAULT: "status=400"})
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.body["message"].startswith(  # type: ignore[index]
        "This model's maximum context length is 131072 tokens. However, you requested"
    )


def test_429_carries_retry_after_and_the_sdk_retries_each_attempt(server: ServerProcess) -> None:
    with (
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=2) as retrying,
        pytest.raises(openai.RateLimitError) as raised,
    ):
        ask(retrying, "hi", extra_headers={FAULT: "status=429,retry_after=0.1"})
    headers = raised.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "100")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "100ms"
    assert [e["status"] for e in journal(server)] == [429, 429, 429]


def test_529_overloaded_on_the_anthropic_route_is_retried(server: ServerProcess) -> None:
    with (
        anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=1) as retrying,
        pytest.raises(anthropic.OverloadedError),
    ):
        claude_says(retrying, "hi", extra_headers={FAULT: "status=529,retry_after=0.05"})
    assert [(e["endpoint"], e["status"]) for e in journal(server)] == [("messages", 529)] * 2


# --- faults during the stream -----------------------------------------------------------------


def stream_chat(client: openai.OpenAI, fault: str, **fields: Any) -> list[str]:
    """The content deltas received before the stream ended (or raised)."""
    received: list[str] = []
    fields.setdefault("messages", [{"role": "user", "content": "Explain DNS"}])
    for chunk in client.chat.completions.create(
        model="sim-small", stream=True, extra_headers={FAULT: fault}, **fields
    ):
        received += [c.delta.content or "" for c in chunk.choices if c.delta.content]
    return received


def test_mid_stream_error_is_an_api_error_in_every_sdk(
    client: openai.OpenAI, claude: anthropic.Anthropic, server: ServerProcess
) -> None:
    with pytest.raises(openai.APIError) as raised:
        stream_chat(client, "mid_stream_error,after=5,status=503")
    assert not isinstance(raised.value, openai.APIStatusError)
    assert raised.value.body == {
        "message": "The engine is currently overloaded, please try again later.",
        "type": "service_unavailable_error",
        "param": None,
        "code": "server_is_overloaded",
    }
    with pytest.raises(openai.APIError) as legacy_raised:
        for _ in client.completions.create(
            model="sim-small",
            prompt="Explain DNS",
            max_tokens=20,
            stream=True,
            extra_headers={FAULT: "mid_stream_error,after=5"},
        ):
            pass
    assert not isinstance(legacy_raised.value, openai.APIStatusError)
    with (
        pytest.raises(anthropic.APIStatusError) as claude_raised,
        claude.messages.stream(
            model="sim-small",
            max_tokens=100,
            messages=[{"role": "user", "content": "Explain DNS"}],
            extra_headers={FAULT: "mid_stream_error,after=5"},
        ) as stream,
    ):
        stream.get_final_message()
    assert claude_raised.value.status_code == 200  # the stream's own status
    assert claude_raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    events = []
    with client.responses.stream(
        model="sim-small", input="Explain DNS", extra_headers={FAULT: "mid_stream_error,after=5"}
    ) as responses:
        events = [event.type for event in responses]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            responses.get_final_response()
    assert events[-2:] == ["error", "response.failed"]
    assert [(e["outcome"], e["completion_tokens"]) for e in journal(server)] == [("error", 5)] * 4


def raw_stream(server: ServerProcess, fault: str) -> bytes:
    """The raw bytes of a streamed chat response, read until the server closes the socket."""
    body = json.dumps(
        {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + f"{FAULT}: {fault}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        for _ in range(10_000):
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    return received


def test_drop_cuts_the_connection_mid_body(server: ServerProcess, client: openai.OpenAI) -> None:
    raw = raw_stream(server, "drop,after=3")
    assert b"transfer-encoding: chunked" in raw.lower()
    assert raw.count(b'"content":') == 4  # the role chunk, then three tokens
    assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: an incomplete chunked body
    with pytest.raises(openai.APIConnectionError) as raised:
        stream_chat(client, "drop,after=3")
    assert "incomplete chunked read" in str(raised.value.__cause__)
    assert [e["outcome"] for e in journal(server)] == ["dropped", "dropped"]


def test_drop_in_anthropic_streams_is_a_connection_error(claude: anthropic.Anthropic) -> None:
    """A stream cut mid-body reaches the caller as the transport's error, never as a clean
    end of the message: the SDK's connection-error family (anthropic 2.17 wraps it in
    APIConnectionError) or, in the releases before, the HTTP library's RemoteProtocolError
    (httpx's, or httpx2's since anthropic 2.17)."""
    with (
        pytest.raises(Exception) as raised,
        claude.messages.stream(
            model="sim-small",
            max_tokens=100,
            messages=[{"role": "user", "content": "Explain DNS"}],
            extra_headers={FAULT: "drop,after=2"},
        ) as stream,
    ):
        stream.get_final_message()
    error = raised.value
    transport = error.__cause__ if isinstance(error, anthropic.APIConnectionError) else error
    assert type(transport).__name__ == "RemoteProtocolError", repr(error)
    assert "incomplete chunked read" in str(transport)


def test_a_dropped_whole_answer_is_a_connection_error_the_sdk_retries(
    server: ServerProcess,
) -> None:
    with (
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=1) as retrying,
        pytest.raises(openai.APIConnectionError),
    ):
        ask(retrying, "Explain DNS", extra_headers={FAULT: "drop,after=2"})
    assert [e["outcome"] for e in journal(server)] == ["dropped", "dropped"]


def test_a_dropped_whole_anthropic_answer_is_a_connection_error_retried(
    server: ServerProcess,
) -> None:
    with (
        anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=1) as retrying,
        pytest.raises(anthropic.APIConnectionError),
    ):
        claude_says(retrying, "Explain DNS", extra_headers={FAULT: "drop,after=2"})
    assert [(e["endpoint"], e["outcome"]) for e in journal(server)] == [("messages", "dropped")] * 2


def test_stall_and_slow_in_an_anthropic_stream(claude: anthropic.Anthropic) -> None:
    started = time.monotonic()
    with claude.messages.stream(
        model="sim-small",
        max_tokens=6,
        messages=[{"role": "user", "content": "Explain DNS"}],
        extra_headers={FAULT: "stall,after=2,ms=300; slow,ms=20"},
    ) as stream:
        message = stream.get_final_message()
    assert message.usage.output_tokens == 6
    assert time.monotonic() - started >= 0.3 + 6 * 0.02


def test_stall_then_resume_leaves_a_gap_and_completes(client: openai.OpenAI) -> None:
    arrivals = []
    started = time.monotonic()
    for chunk in client.chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "Explain DNS"}],
        max_tokens=8,
        stream=True,
        extra_headers={FAULT: "stall,after=4,ms=400"},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # The stall starts once the 4th token's frame is written: the client may read
    # that frame a moment later than the next one, hence the tolerance.
    assert max(gaps) >= 0.35
    assert gaps.index(max(gaps)) == 3  # between the 4th token and the 5th


def test_stall_then_drop_is_a_connection_error(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        stream_chat(client, "stall,after=2,ms=300,then=drop")
    assert time.monotonic() - started >= 0.3


def test_slow_drip_spaces_every_token(client: openai.OpenAI) -> None:
    started = time.monotonic()
    tokens = stream_chat(client, "slow,ms=60", max_tokens=6)
    assert len(tokens) == 6
    assert time.monotonic() - started >= 6 * 0.06


def test_missing_done_ends_the_openai_stream_silently(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    assert len(stream_chat(client, "no_done", max_tokens=5)) == 5
    assert b"[DONE]" not in raw_stream(server, "no_done")


def test_missing_message_stop_is_tolerated_by_the_anthropic_sdk(
    claude: anthropic.Anthropic,
) -> None:
    with claude.messages.stream(
        model="sim-small",
        max_tokens=5,
        messages=[{"role": "user", "content": "Explain DNS"}],
        extra_headers={FAULT: "no_done"},
    ) as stream:
        message = stream.get_final_message()
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 5)


def test_malformed_json_makes_the_sdks_raise_a_decode_error(
    client: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(json.JSONDecodeError):
        stream_chat(client, "malformed,after=2")
    with (
        pytest.raises(json.JSONDecodeError),
        claude.messages.stream(
            model="sim-small",
            max_tokens=20,
            messages=[{"role": "user", "content": "Explain DNS"}],
            extra_headers={FAULT: "malformed,after=2"},
        ) as stream,
    ):
        stream.get_final_message()


def test_missing_usage_chunk_leaves_usage_unset(
    client: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    usages = [
        chunk.usage
        for chunk in client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "Explain DNS"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={FAULT: "no_usage"},
        )
    ]
    assert usages and all(usage is None for usage in usages)
    # Anthropic's SDK needs message_delta's usage: without it, it fails on None.
    with (
        pytest.raises(AttributeError, match="output_tokens"),
        claude.messages.stream(
            model="sim-small",
            max_tokens=5,
            messages=[{"role": "user", "content": "Explain DNS"}],
            extra_headers={FAULT: "no_usage"},
        ) as stream,
    ):
        stream.get_final_message()


# --- counted rate limits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(
        *FAST,
        "--rate-limit-requests-per-minute",
        "3",
        "--rate-limit-tokens-per-minute",
        "6000",
        "--admin-key",
        ADMIN_KEY,
        "--api-keys",
        ",".join(LIMITED_KEYS),
    )


def test_requests_per_minute_are_counted_with_real_headers(limited: ServerProcess) -> None:
    admin(limited, "POST", "/reset")
    with openai.OpenAI(base_url=f"{limited.base_url}/v1", api_key="sk-a", max_retries=0) as c:
        remaining = []
        for _ in range(3):
            raw = c.chat.completions.with_raw_response.create(
                model="sim-small", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-limit-tokens"] == "6000"
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as raised:
            ask(c, "hi", max_tokens=5)
    assert raised.value.type == "requests"
    assert raised.value.response.headers["retry-after"] == "20"
    # Another key, and Anthropic's x-api-key, count apart.
    with anthropic.Anthropic(base_url=limited.base_url, api_key="sk-b", max_retries=0) as claude:
        raw_message = claude.messages.with_raw_response.create(
            model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert raw_message.headers["x-ratelimit-remaining-requests"] == "2"


def test_tokens_per_minute_refill_and_the_sdk_retries_after_retry_after(
    limited: ServerProcess,
) -> None:
    admin(limited, "POST", "/reset")
    admin(limited, "PATCH", "/config", json={"rate_limits": {"requests_per_minute": 0}})
    with openai.OpenAI(base_url=f"{limited.base_url}/v1", api_key="sk-c", max_retries=2) as c:
        # 7 prompt tokens + 5990 = 5997 of the 6000 a minute (100 a second); the
        # stop sequence ends the answer at once, so little refills meanwhile.
        ask(c, "hi", max_tokens=5990, stop=["."])
        started = time.monotonic()
        ask(c, "hi", max_tokens=40)  # 47 tokens: refused, then refilled in ~0.44 s
        waited = time.monotonic() - started
    statuses = [(e["status"], e["error"] and e["error"]["type"]) for e in journal(limited)]
    assert statuses == [(200, None), (429, "tokens"), (200, None)]
    assert waited >= 0.3
