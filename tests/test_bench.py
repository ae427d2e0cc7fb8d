"""The load generator's parts, in process: SSE parsing, HTTP framing, statistics, options."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streamapi import bench, cli
from streamapi.bench import SSEParser, percentile, summarize
from streamapi.bench.client import Connection
from streamapi.bench.replay import schedule
from streamapi.bench.stats import RequestRecord, Stats
from streamapi.cassettes import Exchange, dumps_exchanges, write_atomic


def _feed_all(parser: SSEParser, pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    events: list[tuple[bytes, bytes]] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


STREAM = (
    b'data: {"a": 1}\n\n'
    b": a comment\n\n"
    b"event: delta\ndata: first line\ndata: second line\n\n"
    b"id: 7\nretry: 10\n\n"
    b"data:no space\n\n"
    b"data:  two spaces\n\n"
    b"data\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (b"", b'{"a": 1}'),
    (b"delta", b"first line\nsecond line"),
    (b"", b"no space"),
    (b"", b" two spaces"),
    (b"", b""),
    (b"", b"[DONE]"),
]


def test_sse_parser_reads_whole_stream_in_one_piece() -> None:
    assert SSEParser().feed(STREAM) == EXPECTED


def test_sse_parser_gives_the_same_events_fed_one_byte_at_a_time() -> None:
    assert _feed_all(SSEParser(), _bytewise(STREAM)) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_sse_parser_accepts_every_line_ending(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    assert SSEParser().feed(stream) == EXPECTED
    assert _feed_all(SSEParser(), _bytewise(stream)) == EXPECTED


def test_sse_parser_joins_crlf_split_across_reads() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == [(b"", b"x")]
    assert parser.feed(b"\ndata: y\r\n\r\n") == [(b"", b"y")]


def test_sse_parser_holds_an_incomplete_event_until_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: par") == []
    assert parser.feed(b"tial\n") == []
    assert parser.feed(b"\ndata: next") == [(b"", b"partial")]


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (50, 2.5), (90, 3.7), (99, 3.97), (100, 4.0)],
)
def test_percentile_interpolates_between_closest_ranks(q: float, expected: float) -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 101), ([1.0], -1)])
def test_percentile_rejects_no_values_and_bad_ranks(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summarize_sorts_and_scales_seconds_to_milliseconds() -> None:
    summary = summarize([0.004, 0.001, 0.003, 0.002])
    assert summary["count"] == 4
    assert summary["mean"] == pytest.approx(2.5)
    assert summary["p50"] == pytest.approx(2.5)
    assert summary["p90"] == pytest.approx(3.7)
    assert summary["max"] == pytest.approx(4.0)


def test_summarize_of_nothing_has_a_count_and_no_values() -> None:
    assert summarize([]) == {
        "count": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }


@pytest.mark.parametrize(
    ("url", "route", "path", "base"),
    [
        ("http://127.0.0.1:8080", "chat", "/v1/chat/completions", "/v1"),
        ("http://127.0.0.1:8080/", "completions", "/v1/completions", "/v1"),
        ("http://127.0.0.1:8000/v1", "chat", "/v1/chat/completions", "/v1"),
        ("http://h:1/api/v1/chat/completions", "chat", "/api/v1/chat/completions", "/api/v1"),
        ("http://h:1/openai/v1/completions", "completions", "/openai/v1/completions", "/openai/v1"),
    ],
)
def test_resolve_target_accepts_a_root_a_v1_base_or_a_full_path(
    url: str, route: str, path: str, base: str
) -> None:
    target = bench.resolve_target(url, route)
    assert (target.path, target.base_path) == (path, base)


def test_resolve_target_omits_default_ports_from_the_host_header() -> None:
    assert bench.resolve_target("https://example.com/v1", "chat").host_header == "example.com"
    assert bench.resolve_target("http://[::1]:81", "chat").host_header == "[::1]:81"


def test_resolve_target_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        bench.resolve_target("ftp://127.0.0.1/", "chat")


@pytest.mark.parametrize(("spec", "expected"), [("64", (64, 64)), ("16-128", (16, 128))])
def test_parse_length_reads_fixed_and_ranged_lengths(spec: str, expected: tuple[int, int]) -> None:
    assert bench.parse_length(spec) == expected


@pytest.mark.parametrize("spec", ["", "x", "9-3", "-1"])
def test_parse_length_rejects_nonsense(spec: str) -> None:
    with pytest.raises(ValueError):
        bench.parse_length(spec)


# --- HTTP responses, fed to one connection without a network -----------------------


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
ROLE = b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
TOKEN = b'{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}'
TEXT = b'{"choices":[{"index":0,"text":" so"}]}'
FINISH = b'{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}'
USAGE = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}'
ERROR = b'{"error":{"message":"boom","type":"server_error"}}'


async def _exchange(pieces: list[bytes], *, eof: bool = False) -> tuple[RequestRecord, Stats]:
    stats = Stats()
    connection = Connection(stats)
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    request = RequestRecord(measured=True)
    done = connection.send(b"POST / HTTP/1.1\r\n\r\n", request)
    for piece in pieces:
        connection.data_received(piece)
    if eof:
        connection.eof_received()
    assert done.done()
    stats.record(request)
    return request, stats


async def test_connection_counts_token_events_and_takes_tokens_from_usage() -> None:
    body = b"".join(_chunk(_event(p)) for p in (ROLE, TOKEN, TOKEN, TEXT, FINISH, USAGE))
    response = SSE_HEAD + body + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    request, stats = await _exchange([response])
    assert request.error is None
    assert request.events == 3
    assert request.usage_tokens == 5
    assert (stats.ok, stats.tokens, stats.events, stats.sse_events) == (1, 5, 3, 7)
    assert len(stats.ttft) == 1
    assert len(stats.gaps) == 2


async def test_connection_parses_a_response_split_at_every_byte() -> None:
    body = b"".join(_chunk(_event(p)) for p in (ROLE, TOKEN, TOKEN, FINISH))
    response = SSE_HEAD + body + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    request, stats = await _exchange(_bytewise(response))
    assert request.error is None
    assert (stats.tokens, stats.events) == (2, 2)


async def test_connection_names_an_error_status_by_its_code() -> None:
    body = b'{"error":{"message":"slow down"}}'
    head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    response = head + b"content-length: %d\r\n\r\n" % len(body) + body
    request, stats = await _exchange([response])
    assert request.error == "http_429"
    assert stats.errors == {"http_429": 1}
    assert "slow down" in stats.error_samples["http_429"]


async def test_connection_reports_an_error_event_inside_a_stream() -> None:
    body = _chunk(_event(TOKEN)) + _chunk(_event(ERROR)) + _chunk(b"data: [DONE]\n\n")
    request, stats = await _exchange([SSE_HEAD + body + b"0\r\n\r\n"])
    assert request.error == "stream_error"
    assert stats.failed == 1


async def test_connection_reports_a_stream_cut_before_its_end() -> None:
    request, _ = await _exchange([SSE_HEAD + _chunk(_event(TOKEN))], eof=True)
    assert request.error == "disconnected"


async def test_connection_reads_a_close_delimited_http10_stream() -> None:
    head = b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
    request, stats = await _exchange(
        [head + _event(TOKEN) + _event(TOKEN) + b"data: [DONE]\n\n"], eof=True
    )
    assert request.error is None
    assert stats.tokens == 2


async def test_connection_calls_a_stream_without_done_incomplete() -> None:
    request, _ = await _exchange([SSE_HEAD + _chunk(_event(TOKEN)) + b"0\r\n\r\n"])
    assert request.error == "incomplete"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("concurrency", "rate"), [(2, None), (None, 500.0)])
def test_run_against_a_closed_port_reports_connection_errors(
    concurrency: int | None, rate: float | None
) -> None:
    config = bench.BenchConfig(
        url=_closed_port_url(),
        model="m",
        concurrency=concurrency,
        rate=rate,
        requests=3,
        progress=False,
    )
    report = bench.run(config, loop="asyncio")
    assert report["requests"]["issued"] == 3
    assert report["requests"]["failed"] == 3
    assert report["requests"]["errors"] == {"connect": 3}


def test_open_loop_stops_at_its_duration_even_between_arrivals() -> None:
    config = bench.BenchConfig(
        url=_closed_port_url(), model="m", rate=0.001, duration_s=0.2, progress=False
    )
    report = bench.run(config, loop="asyncio")
    assert report["requests"]["issued"] == 0
    # Not a speed check: unbounded, it would sleep until the first arrival, ~1000 s away.
    assert report["duration_s"] < 5


def test_bench_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    assert "streamapi bench" in capsys.readouterr().out


def test_bench_imports_nothing_of_the_server() -> None:
    # In a fresh interpreter: pytest has already loaded the server (streamapi
    # ships a pytest plugin), so this process's modules prove nothing.
    # The package imports each of its modules.
    probe = (
        "import sys, streamapi.bench\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('streamapi'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert "streamapi.bench.runner" in loaded
    # One exception: --replay reads cassettes with streamapi.cassettes, the format's one
    # reader, and its match keys (streamapi.replay_keys). Both are standard library only
    # and import nothing else of streamapi (checked here), so the bench still loads
    # nothing of the server it measures.
    outside = [m for m in loaded if m != "streamapi" and not m.startswith("streamapi.bench")]
    assert outside == ["streamapi.cassettes", "streamapi.replay_keys"]


def test_python_m_streamapi_bench_runs_the_same_command() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "streamapi.bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert finished.stdout.startswith("usage: streamapi bench")


def test_streamapi_cli_dispatches_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--concurrency" in capsys.readouterr().out


# --- --replay: the schedule read from cassettes ---------------------------------------------


def _recorded(question: str, started_at: float | None, took_ms: float) -> Exchange:
    body = {"model": "up-small", "messages": [{"role": "user", "content": question}]}
    return Exchange(
        "sim", "/chat/completions", body, status=200, end_offset_ms=took_ms, started_at=started_at
    )


def test_replay_schedule_keeps_the_recorded_spacing_scaled_by_the_speed(tmp_path: Path) -> None:
    tape = tmp_path / "tape.jsonl"
    # Out of order in the file: sent in the order they arrived.
    exchanges = [_recorded("b", 1000.5, 50), _recorded("a", 1000.0, 50), _recorded("c", 1002.0, 9)]
    write_atomic(tape, dumps_exchanges(exchanges))
    plan = schedule(tape, speed=2, model="other")
    assert [(p.at_s, p.body["messages"][0]["content"]) for p in plan] == [
        (0.0, "a"),
        (0.25, "b"),
        (1.0, "c"),
    ]
    assert {(p.endpoint, p.body["model"], p.body["stream"]) for p in plan} == {
        ("/chat/completions", "other", True)
    }
    assert [p.at_s for p in schedule(tape, speed=0)] == [0.0, 0.0, 0.0]
    assert schedule(tape, speed=1)[0].body["model"] == "up-small"


def test_replay_schedule_of_an_older_cassette_sends_each_when_the_last_ended(
    tmp_path: Path,
) -> None:
    # Recorded before started_at was kept: back to back, at the recorded durations.
    tape = tmp_path / "old.jsonl"
    write_atomic(tape, dumps_exchanges([_recorded(q, None, 400) for q in "abc"]))
    assert [p.at_s for p in schedule(tape, speed=1)] == [0.0, 0.4, 0.8]


def test_bench_replay_names_a_corrupt_cassette_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = tmp_path / "bad.jsonl"
    tape.write_text('{"format": "streamapi-cassette", "version": 1}\n{"kind": "requ\n')
    code = bench.main(["--url", _closed_port_url(), "--replay", str(tape), "--no-progress"])
    assert code == 2
    assert f"cassette {tape}, line 2: not JSON" in capsys.readouterr().err


class _ClosesAfterEachStream(socketserver.StreamRequestHandler):
    """Answers one streamed chat request per connection, then closes it, as llama.cpp's
    llama-server does (whatever its Keep-Alive header says)."""

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.rfile.read(length)
        body = b"".join(_chunk(_event(p)) for p in (ROLE, TOKEN, FINISH, USAGE))
        head = SSE_HEAD.replace(b"\r\n\r\n", b"\r\nkeep-alive: timeout=5, max=100\r\n\r\n")
        self.wfile.write(head + body + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def test_a_server_that_closes_each_connection_after_its_stream_costs_no_failed_request() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _ClosesAfterEachStream) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            config = bench.BenchConfig(
                url=f"http://127.0.0.1:{server.server_address[1]}",
                model="m",
                concurrency=1,
                requests=6,
                progress=False,
            )
            report = bench.run(config, loop="asyncio")
        finally:
            server.shutdown()
    assert report["requests"]["ok"] == 6
    assert report["requests"]["failed"] == 0
