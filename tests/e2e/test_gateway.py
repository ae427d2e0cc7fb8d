"""The gateway with real processes on 127.0.0.1: streamapi in front of three upstreams.

- a streamapi simulator (``up-small``),
- mockllm, a third-party OpenAI-compatible server from PyPI (``mock-gpt``),
- ``fault_upstream.py``, which fails in every way a real engine does,
- and a port where nothing listens (``refused``).

Clients are the official ``openai`` and ``anthropic`` SDKs (``max_retries=0``,
so each test sees the gateway's own answer) and raw HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import FAST_PACING, HOST, ServerFactory, ServerProcess, free_port

pytestmark = pytest.mark.e2e

GATEWAY_KEY = "sk-gateway-e2e"
MOCK_ANSWER = "Paris is the capital of France, on the Seine."
QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Process:
    base_url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _start(command: list[str], ready_path: str, log: Path, env: dict[str, str]) -> Process:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return _ready(Process(f"http://{HOST}:{port}", process), ready_path, log)


def _ready(started: Process, ready_path: str, log: Path) -> Process:
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                pytest.fail(f"upstream exited at start-up:\n{log.read_text()}")
            try:
                if client.get(started.base_url + ready_path).status_code == 200:
                    return started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    started.stop()
    pytest.fail(f"upstream not ready within 20 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("fault") / "fault.log"
    script = str(Path(__file__).with_name("fault_upstream.py"))
    started = _start([sys.executable, script], "/_stats", log, dict(os.environ))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def mockllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp("mockllm")
    responses = folder / "responses.yml"
    # mockllm 0.0.8 streams its default answer whatever the prompt (its stream
    # looks the answer up as if it were a prompt), and the gateway always
    # streams from upstreams: the default is the answer.
    responses.write_text(
        json.dumps(
            {
                "responses": {QUESTION[0]["content"]: MOCK_ANSWER},
                "defaults": {"unknown_response": MOCK_ANSWER},
                "settings": {"lag_enabled": False},
            }
        )
    )
    port = free_port()
    # Loopback only: a proxy on a closed port makes sure nothing it imports
    # (tiktoken fetches encodings) reaches past this machine.
    env = {
        **os.environ,
        "MOCKLLM_RESPONSES_FILE": str(responses),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    log = folder / "mockllm.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "mockllm.server:app", "--host", HOST,
             "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    started = _ready(Process(f"http://{HOST}:{port}", process), "/models", log)
    yield started
    started.stop()


@dataclass
class Rig:
    gateway: ServerProcess
    simulator: ServerProcess
    fault: Process

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.gateway.base_url, api_key=GATEWAY_KEY, max_retries=0
        )

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(self.fault.base_url + "/_stats", timeout=5).json()
        return stats


FAULTS = [
    "ok", "slow-first", "stall", "drop-before", "drop-mid", "status-400", "status-500",
    "always-429", "flaky-503", "error-mid", "llama-error-first", "forever",
]  # fmt: skip


@pytest.fixture(scope="module")
def rig(
    module_server_factory: ServerFactory,
    fault: Process,
    mockllm: Process,
    tmp_path_factory: pytest.TempPathFactory,
) -> Rig:
    simulator = module_server_factory(*FAST_PACING, "--served-model-names", "up-small")
    routes = {
        "upstreams": {
            "sim": {"base_url": simulator.base_url + "/v1", "max_retries": 0},
            "fault": {
                "base_url": fault.base_url + "/v1",
                "read_timeout_s": 1.0,
                "retry_backoff_s": 0.05,
                "max_retries": 2,
            },
            "nowhere": {
                "base_url": f"http://{HOST}:{free_port()}/v1",
                "retry_backoff_s": 0.05,
                "max_retries": 1,
            },
            "mock": {"base_url": mockllm.base_url + "/v1", "max_retries": 0},
        },
        "models": {
            "up-small": {"upstream": "sim"},
            "refused": {"upstream": "nowhere"},
            "mock-gpt": {"upstream": "mock", "upstream_model": "gpt-4o"},
            **{f"f-{name}": {"upstream": "fault", "upstream_model": name} for name in FAULTS},
        },
    }
    path = tmp_path_factory.mktemp("gateway") / "routes.yaml"
    path.write_text(json.dumps(routes))  # JSON is YAML too
    gateway = module_server_factory(
        *FAST_PACING, "--routes-file", str(path), "--api-keys", GATEWAY_KEY
    )
    return Rig(gateway, simulator, fault)


# --- passthrough --------------------------------------------------------------


def test_the_openai_sdk_streams_a_simulator_upstream_through_the_gateway(rig: Rig) -> None:
    direct = openai.OpenAI(base_url=rig.simulator.base_url + "/v1", api_key="unused", max_retries=0)
    kwargs: Any = {"messages": QUESTION, "seed": 4, "max_tokens": 50, "stream": True,
                   "stream_options": {"include_usage": True}}  # fmt: skip
    with rig.openai() as client, direct:
        through = list(client.chat.completions.create(model="up-small", **kwargs))
        reference = list(direct.chat.completions.create(model="up-small", **kwargs))

    def text(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(through) == text(reference) != ""
    assert through[-1].usage == reference[-1].usage
    assert {c.id for c in through} == {through[0].id}


def test_raw_framing_normalises_an_upstream_with_crlf_comments_and_no_done(rig: Rig) -> None:
    response = httpx.post(
        rig.gateway.base_url + "/v1/chat/completions",
        json={"model": "f-ok", "messages": QUESTION, "stream": True,
              "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    )  # fmt: skip
    raw = response.text
    assert "\r" not in raw
    assert ":" not in [line[:1] for line in raw.split("\n")]
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from the fault upstream."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    # No usage upstream: the gateway counts it, since the client asked.
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_mockllm_from_pypi_as_an_upstream_for_both_sdks(rig: Rig) -> None:
    with rig.openai() as client:
        stream = client.chat.completions.create(
            model="mock-gpt",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_ANSWER
    assert chunks[-1].usage is not None
    # mockllm streams one character per chunk and no usage: counted by tokens, not chunks.
    assert 5 < chunks[-1].usage.completion_tokens < len(MOCK_ANSWER)
    with rig.anthropic() as claude:
        message = claude.messages.create(model="mock-gpt", max_tokens=100, messages=QUESTION)
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == MOCK_ANSWER
    assert message.stop_reason == "end_turn"


def test_slow_first_byte_is_waited_for(rig: Rig) -> None:
    with rig.openai() as client:
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="f-slow-first", messages=QUESTION, stream=True
        )
        first = next(c for c in stream if c.choices and c.choices[0].delta.content)
        ttft = time.monotonic() - started
        rest = list(stream)
    assert first.choices[0].delta.content == "Hello"
    assert ttft >= 0.4
    assert rest[-1].choices[0].finish_reason == "stop"


# --- failures before the first byte: a status, and what the SDK raises -------


@pytest.mark.parametrize(
    ("model", "exception", "status"),
    [
        ("refused", openai.InternalServerError, 502),
        ("f-drop-before", openai.InternalServerError, 502),
        ("f-status-500", openai.InternalServerError, 502),
        ("f-stall", openai.InternalServerError, 504),
        ("f-status-400", openai.BadRequestError, 400),
        ("f-always-429", openai.RateLimitError, 429),
        ("f-llama-error-first", openai.BadRequestError, 400),
    ],
)
def test_an_upstream_failure_before_the_first_byte_is_a_status(
    rig: Rig, model: str, exception: type[openai.APIStatusError], status: int
) -> None:
    with rig.openai() as client, pytest.raises(exception) as caught:
        client.chat.completions.create(model=model, messages=QUESTION, stream=True)
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert isinstance(body, dict) and body["message"]
    if model == "f-status-400":
        assert body["message"] == "temperature must be at most 2"
        assert body["param"] == "temperature"
    if model == "f-always-429":
        assert caught.value.response.headers["retry-after"] == "1"


def test_retries_are_bounded_and_only_for_connection_errors_and_429_503(rig: Rig) -> None:
    before = rig.stats()["attempts"]
    with rig.openai() as client:
        answer = client.chat.completions.create(
            model="f-flaky-503", messages=QUESTION, extra_headers={"x-request-id": "flaky-1"}
        )
        for model in ("f-status-500", "f-status-400", "f-stall", "f-always-429"):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model=model, messages=QUESTION)
    after = rig.stats()["attempts"]

    def sent(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    assert answer.choices[0].message.content == "Hello from the fault upstream."
    assert sent("flaky-503") == 3  # two 503s, then the answer
    assert sent("always-429") == 3  # the first try and max_retries=2
    assert (sent("status-500"), sent("status-400"), sent("stall")) == (1, 1, 1)


def test_the_anthropic_sdk_gets_its_own_envelope_for_an_upstream_failure(rig: Rig) -> None:
    with rig.anthropic() as claude, pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="f-status-400", max_tokens=50, messages=QUESTION)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "temperature must be at most 2"},
        "request_id": caught.value.response.headers["request-id"],
    }


# --- failures after the first byte: an in-stream error, then [DONE] ----------


@pytest.mark.parametrize(("model", "words"), [("f-drop-mid", 3), ("f-error-mid", 2)])
def test_an_upstream_failure_mid_stream_is_an_error_event(rig: Rig, model: str, words: int) -> None:
    received: list[str] = []
    with rig.openai() as client, pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=model, messages=QUESTION, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert received == ["Hello", " from", " the"][:words]
    raw = httpx.post(
        rig.gateway.base_url + "/v1/chat/completions",
        json={"model": model, "messages": QUESTION, "stream": True},
        headers={"x-api-key": GATEWAY_KEY},
        timeout=10,
    ).text
    events = [e for e in raw.split("\n\n") if e]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "upstream_error"
    assert events[-1] == "data: [DONE]"
    if model == "f-error-mid":
        assert "CUDA out of memory" in str(caught.value)


def test_the_anthropic_sdk_raises_on_a_mid_stream_upstream_failure(rig: Rig) -> None:
    with (
        rig.anthropic() as claude,
        pytest.raises(anthropic.APIStatusError) as caught,
        claude.messages.stream(model="f-drop-mid", max_tokens=50, messages=QUESTION) as stream,
    ):
        for _ in stream:
            pass
    assert "upstream" in str(caught.value)


# --- cancellation, request ids, auth, metrics --------------------------------


def test_a_client_disconnect_reaches_the_upstream_within_100_ms(rig: Rig) -> None:
    before = len(rig.stats()["disconnects"])
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            rig.gateway.base_url + "/v1/chat/completions",
            json={"model": "f-forever", "messages": QUESTION, "stream": True},
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        ) as response,
    ):
        contents = 0
        for line in response.iter_lines():
            if '"content":"tick' in line:
                contents += 1
            if contents == 3:
                break
        left_at = time.monotonic()
    deadline = time.monotonic() + 5
    disconnects: list[float] = []
    while time.monotonic() < deadline:
        disconnects = rig.stats()["disconnects"][before:]
        if disconnects:
            break
        time.sleep(0.01)
    assert disconnects, "the upstream never saw the client leave"
    assert disconnects[0] - left_at < 0.1


def test_the_request_id_reaches_the_upstream_and_every_log_line(rig: Rig) -> None:
    with rig.openai() as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="f-status-400", messages=QUESTION, extra_headers={"x-request-id": "rid-e2e-77"}
        )
    assert any(h.get("x-request-id") == "rid-e2e-77" for h in rig.stats()["headers"])
    lines = [line for line in rig.gateway.log().splitlines() if "rid-e2e-77" in line]
    assert any("Upstream 'fault' answered 400" in line for line in lines)
    assert any('"POST /v1/chat/completions HTTP/1.1" 400' in line for line in lines)
    assert GATEWAY_KEY not in rig.gateway.log()


def test_auth_holds_in_front_of_upstreams(rig: Rig) -> None:
    wrong = openai.OpenAI(base_url=rig.gateway.base_url + "/v1", api_key="nope", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="up-small", messages=QUESTION)
    claude = anthropic.Anthropic(base_url=rig.gateway.base_url, api_key="nope", max_retries=0)
    with claude, pytest.raises(anthropic.AuthenticationError):
        claude.messages.create(model="up-small", max_tokens=5, messages=QUESTION)
    assert httpx.get(rig.gateway.base_url + "/health").status_code == 200


def test_metrics_count_upstream_errors_by_upstream(rig: Rig) -> None:
    with rig.openai() as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="refused", messages=QUESTION)
    text = httpx.get(rig.gateway.base_url + "/metrics").text
    assert 'streamapi_upstream_errors_total{reason="connect",upstream="nowhere"}' in text
    assert 'streamapi_upstream_retries_total{upstream="fault"}' in text
    assert 'streamapi_upstream_requests_total{status="200",upstream="sim"}' in text
