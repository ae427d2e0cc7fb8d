"""The original spec's "TESTING & VALIDATION" section, replayed over raw HTTP.

A curl-like client (httpx, ``Accept: */*``) against a real server: the test
command, the performance bounds with the default pacing, the four error cases
(in SSE for curl, in JSON for clients that ask for it), and the byte-level
framing that OpenAI's clients rely on.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
TEST_COMMAND_BODY = {"prompt": "Test prompt", "stream": True}
FAST_PACING = ("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "1")
CURL_HEADERS = {"Accept": "*/*", "Content-Type": "application/json"}
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
ERROR_KEYS = {"message", "type", "param", "code"}
MAX_EVENTS = 5_000


@dataclass(frozen=True)
class Event:
    """One SSE frame as received, and when its last byte arrived."""

    frame: str
    at: float

    @property
    def data(self) -> str:
        assert self.frame.startswith("data: "), self.frame
        return self.frame[len("data: ") :]


@dataclass(frozen=True)
class Exchange:
    """A whole streamed request: what came back and when."""

    status_code: int
    headers: httpx.Headers
    body: bytes
    events: list[Event]
    sent_at: float
    ended_at: float

    def chunks(self) -> list[dict[str, Any]]:
        """The JSON chunks before ``[DONE]``."""
        return [json.loads(event.data) for event in self.events[:-1]]

    def content_events(self) -> list[Event]:
        return [e for e in self.events[:-1] if _content_of(json.loads(e.data))]

    def content(self) -> str:
        return "".join(_content_of(chunk) for chunk in self.chunks())


def _content_of(chunk: dict[str, Any]) -> str:
    return "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])


def stream_exchange(client: httpx.Client, body: object) -> Exchange:
    """POST ``body`` and read the stream, timestamping every frame as it arrives."""
    events: list[Event] = []
    raw = b""
    pending = b""
    sent_at = time.monotonic()
    with client.stream("POST", CHAT, json=body, headers=CURL_HEADERS) as response:
        for piece in response.iter_raw():
            now = time.monotonic()
            raw += piece
            *frames, pending = (pending + piece).split(b"\n\n")
            events.extend(Event(frame.decode(), now) for frame in frames)
            assert len(events) < MAX_EVENTS, "runaway stream"
        ended_at = time.monotonic()
    return Exchange(response.status_code, response.headers, raw, events, sent_at, ended_at)


@pytest.fixture(scope="module")
def default_server(module_server_factory: ServerFactory) -> ServerProcess:
    """A server with every setting at its default, pacing included."""
    return module_server_factory()


@pytest.fixture(scope="module")
def fast_server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(*FAST_PACING)


@pytest.fixture(scope="module")
def default_client(default_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=default_server.base_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def fast_client(fast_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fast_server.base_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def test_command(default_client: httpx.Client) -> Exchange:
    """The spec's curl test command, against the default settings."""
    return stream_exchange(default_client, TEST_COMMAND_BODY)


@pytest.fixture(scope="module")
def fast_stream(fast_client: httpx.Client) -> Exchange:
    return stream_exchange(fast_client, TEST_COMMAND_BODY)


# --- the test command ----------------------------------------------------------------


def test_test_command_answers_200(test_command: Exchange) -> None:
    assert test_command.status_code == 200


def test_test_command_content_type_is_event_stream(test_command: Exchange) -> None:
    assert test_command.headers["content-type"].startswith("text/event-stream")


def test_test_command_sends_streaming_headers(test_command: Exchange) -> None:
    headers = test_command.headers
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["connection"] == "keep-alive"


def test_test_command_sends_multiple_data_lines(test_command: Exchange) -> None:
    assert len(test_command.events) > 6
    assert all(event.frame.startswith("data: ") for event in test_command.events)


def test_test_command_ends_with_done(test_command: Exchange) -> None:
    assert test_command.events[-1].frame == "data: [DONE]"


def test_test_command_delivers_at_least_1378_characters(test_command: Exchange) -> None:
    assert len(test_command.content()) >= 1378


def test_test_command_delivers_at_least_6_content_chunks(test_command: Exchange) -> None:
    assert len(test_command.content_events()) >= 6


# --- performance, default pacing ----------------------------------------------------


def test_default_pacing_first_chunk_under_2000_ms(test_command: Exchange) -> None:
    first_content = test_command.content_events()[0]
    assert test_command.events[0].at - test_command.sent_at < 2.0
    assert first_content.at - test_command.sent_at < 2.0


def test_default_pacing_throughput_over_30_tokens_per_second(test_command: Exchange) -> None:
    # tokens_per_event defaults to 1: one content chunk is one token.
    tokens = len(test_command.content_events())
    seconds = test_command.events[-1].at - test_command.sent_at
    assert tokens / seconds > 30


def test_default_pacing_delivers_whole_answer_progressively_within_3_s(
    test_command: Exchange,
) -> None:
    total = test_command.ended_at - test_command.sent_at
    first_content = test_command.content_events()[0].at - test_command.sent_at
    arrivals = {event.at for event in test_command.events}
    assert total < 3.0
    # Streamed, not buffered: the answer starts early and arrives over many reads.
    assert first_content < total / 2
    assert len(arrivals) >= 6


# --- error cases -------------------------------------------------------------------

ERROR_CASES = {
    "empty prompt": b'{"prompt": "", "stream": true}',
    "blank prompt": b'{"prompt": "   \\n\\t ", "stream": true}',
    "stream false": b'{"prompt": "Test prompt", "stream": false}',
    "stream missing": b'{"prompt": "Test prompt"}',
    "no JSON body": b"",
    "invalid JSON": b'{"prompt": "Test prompt", "stream": tru',
    "prompt over 5000 chars": json.dumps({"prompt": "a" * 5001, "stream": True}).encode(),
}


@pytest.mark.parametrize("body", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_case_gives_400_with_one_sse_error_event_for_curl(
    default_client: httpx.Client, body: bytes
) -> None:
    response = default_client.post(CHAT, content=body, headers=CURL_HEADERS)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    frames = response.text[:-2].split("\n\n")
    assert len(frames) == 1
    assert frames[0].startswith("data: ")
    error = json.loads(frames[0][len("data: ") :])
    assert set(error) == {"error"}
    assert set(error["error"]) == ERROR_KEYS
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]


@pytest.mark.parametrize("body", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_case_gives_400_json_envelope_for_json_clients(
    default_client: httpx.Client, body: bytes
) -> None:
    response = default_client.post(CHAT, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert set(error) == {"error"}
    assert set(error["error"]) == ERROR_KEYS
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]


def test_no_body_at_all_gives_400_sse_error_event(default_client: httpx.Client) -> None:
    # curl -X POST with no -d: no body and no Content-Type.
    response = default_client.post(CHAT, headers={"Accept": "*/*"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith('data: {"error":{')


def test_prompt_of_exactly_5000_chars_is_accepted(fast_client: httpx.Client) -> None:
    prompt = "Tell me about streaming. " * 200
    assert len(prompt) == 5000
    exchange = stream_exchange(fast_client, {"prompt": prompt, "stream": True})
    assert exchange.status_code == 200
    assert exchange.events[-1].frame == "data: [DONE]"


def test_error_messages_match_the_spec(default_client: httpx.Client) -> None:
    def message(body: bytes) -> str:
        response = default_client.post(CHAT, content=body, headers=JSON_HEADERS)
        text: str = response.json()["error"]["message"]
        return text

    assert message(ERROR_CASES["empty prompt"]) == "Prompt cannot be empty"
    assert message(ERROR_CASES["stream false"]) == "stream parameter must be true"
    assert message(ERROR_CASES["prompt over 5000 chars"]).startswith(
        "Prompt exceeds maximum length"
    )
    assert message(ERROR_CASES["no JSON body"]).startswith("No JSON body provided")


# --- content -------------------------------------------------------------------------


def test_answer_is_about_the_prompt(fast_client: httpx.Client) -> None:
    exchange = stream_exchange(fast_client, {"prompt": "Explain streaming APIs", "stream": True})
    assert "streaming APIs" in exchange.content()
    assert len(exchange.content()) >= 1378


# --- byte-level framing ----------------------------------------------------------------


def test_stream_uses_lf_separators_only(fast_stream: Exchange) -> None:
    assert b"\r" not in fast_stream.body
    assert fast_stream.body.endswith(b"\n\n")
    assert b"\n\n\n" not in fast_stream.body


def test_stream_frames_are_single_data_lines_without_id(fast_stream: Exchange) -> None:
    lines = fast_stream.body.decode().split("\n")
    assert not [line for line in lines if line.startswith(("id:", "event:", "retry:", ":"))]
    assert all("\n" not in event.frame for event in fast_stream.events)
    assert all(event.frame.startswith("data: ") for event in fast_stream.events)


def test_stream_chunks_share_one_id_and_created(fast_stream: Exchange) -> None:
    chunks = fast_stream.chunks()
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert len({chunk["created"] for chunk in chunks}) == 1
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["id"].startswith("chatcmpl-")


def test_stream_sends_role_in_first_chunk_only(fast_stream: Exchange) -> None:
    chunks = fast_stream.chunks()
    roles = [choice["delta"].get("role") for chunk in chunks for choice in chunk["choices"]]
    assert roles[0] == "assistant"
    assert roles[1:] == [None] * (len(roles) - 1)


def test_stream_sends_exactly_one_finish_reason_in_last_chunk(fast_stream: Exchange) -> None:
    chunks = fast_stream.chunks()
    reasons = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"]]
    assert [r for r in reasons if r is not None] == ["stop"]
    assert reasons[-1] == "stop"


def test_stream_done_is_last_and_response_ends_right_after(fast_stream: Exchange) -> None:
    frames = [event.frame for event in fast_stream.events]
    assert frames.count("data: [DONE]") == 1
    assert frames[-1] == "data: [DONE]"
    assert fast_stream.body.endswith(b"data: [DONE]\n\n")
    assert fast_stream.ended_at - fast_stream.events[-1].at < 0.5


def test_stream_connection_closes_after_done(fast_server: ServerProcess) -> None:
    # Raw bytes on the socket: the final chunk, then the chunked terminator, then EOF.
    port = int(fast_server.base_url.rsplit(":", 1)[1])
    body = json.dumps(TEST_COMMAND_BODY).encode()
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 10.0
        piece = sock.recv(65536)
        while piece and time.monotonic() < deadline:
            received += piece
            piece = sock.recv(65536)
        eof = piece == b""
    assert eof
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
