"""The edge over a real server: slowloris, slow bodies, the connection cap, the WebSocket.

Each row of issue 26 that lives below the app (in the HTTP protocol uvicorn runs,
or the WebSocket's own framing) replayed on 127.0.0.1 with raw sockets and the
``websockets`` client. Every wait is bounded by a socket timeout; nothing here
asserts a duration.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.conftest import FAST_PACING, ServerFactory

pytestmark = pytest.mark.e2e

# Far above the deadlines the tests set: a socket that outlives it is a failure.
_WAIT_S = 20.0


def _open(base_url: str) -> socket.socket:
    address = urlsplit(base_url)
    sock = socket.create_connection((address.hostname, address.port), timeout=_WAIT_S)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or ``_WAIT_S``)."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_300_slowloris_sockets_get_408_and_are_closed(server_factory: ServerFactory) -> None:
    server = server_factory("--header-timeout-s", "1", *FAST_PACING)
    sockets = [_open(server.base_url) for _ in range(300)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for sock in sockets[:50]:
            sock.sendall(b"X-Trickle: 1\r\n")  # still trickling: no deadline is reset
        answers = [_read_all(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert {answer.split(b"\r\n", 1)[0] for answer in answers} == {b"HTTP/1.1 408 Request Timeout"}
    # The server still serves, and a prompt client is not affected by the deadline.
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_a_body_that_never_ends_closes_its_connection(server_factory: ServerFactory) -> None:
    server = server_factory("--body-timeout-s", "1", *FAST_PACING)
    sock = _open(server.base_url)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": '
        )
        answer = _read_all(sock)
    finally:
        sock.close()
    # Closed with nothing written: the request never started its answer.
    assert answer == b""
    health = httpx.get(server.base_url + "/health")
    assert health.status_code == 200


def test_past_the_connection_cap_a_new_connection_gets_503(server_factory: ServerFactory) -> None:
    server = server_factory("--max-connections", "5", *FAST_PACING)
    held = [_open(server.base_url) for _ in range(5)]
    try:
        # Every socket above is open on the server before the next connects.
        time.sleep(0.2)
        one_more = _open(server.base_url)
        try:
            refused = _read_all(one_more)
        finally:
            one_more.close()
    finally:
        for sock in held:
            sock.close()
    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable")
    for _ in range(100):  # the held sockets' slots come back once the server sees them close
        if httpx.get(server.base_url + "/health").status_code == 200:
            break
        time.sleep(0.05)
    assert httpx.get(server.base_url + "/health").status_code == 200


def _ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/v1/responses"


def test_a_websocket_message_over_the_limit_is_a_413_and_far_over_closes_1009(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--max-request-body-bytes", "2048", *FAST_PACING)
    with connect(_ws_url(server.base_url), open_timeout=_WAIT_S) as ws:
        ws.send(json.dumps({"type": "response.create", "input": "x" * 3000}))
        refused = json.loads(ws.recv(timeout=_WAIT_S))
        ws.send(json.dumps({"type": "response.create", "input": "hi", "max_output_tokens": 3}))
        served = json.loads(ws.recv(timeout=_WAIT_S))
        # Over twice the limit, the message is not read at all.
        ws.send(json.dumps({"type": "response.create", "input": "x" * 8000}))
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(1_000):  # the rest of the served turn, then the close
                ws.recv(timeout=_WAIT_S)
    assert (refused["status"], refused["error"]["code"]) == (413, "request_too_large")
    assert served["type"] == "response.created"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


def test_an_idle_websocket_is_closed(server_factory: ServerFactory) -> None:
    server = server_factory("--websocket-idle-timeout-s", "1", *FAST_PACING)
    with connect(_ws_url(server.base_url), open_timeout=_WAIT_S) as ws:
        told = json.loads(ws.recv(timeout=_WAIT_S))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=_WAIT_S)
    assert told["error"]["code"] == "websocket_idle_timeout"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000
