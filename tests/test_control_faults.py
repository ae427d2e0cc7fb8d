"""Faults: the grammar, the errors before the stream, and what they do to deltas and frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from streamapi import sse
from streamapi.control.fault_errors import ErrorContext, status_error
from streamapi.control.fault_frames import watch_frames
from streamapi.control.fault_streams import FaultedStream, Watch
from streamapi.control.journal import Journal
from streamapi.engines.protocol import TokenDelta
from streamapi.errors import APIError, format_duration
from streamapi.fault_grammar import Fault, FaultSyntaxError, parse_fault_choices, parse_faults
from tests.virtual_time import virtual_time

CONTEXT = ErrorContext(model="sim-small", prompt_tokens=20, max_tokens=100, max_model_len=8192)

# --- the grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("status=429", Fault("status", status=429)),
        ("status=503,retry_after=2.5", Fault("status", status=503, retry_after_s=2.5)),
        ("mid_stream_error,after=5", Fault("mid_stream_error", after=5)),
        (" MID_STREAM_ERROR , after = 5 ", Fault("mid_stream_error", after=5)),
        ("mid_stream_error,after_ms=250,status=429", Fault("mid_stream_error", 429, None, 250)),
        ("drop,after=10", Fault("drop", after=10)),
        ("stall,after=3,ms=500,then=drop", Fault("stall", after=3, ms=500, then="drop")),
        ("stall", Fault("stall", ms=1000)),
        ("slow,ms=50", Fault("slow", ms=50)),
        ("slow", Fault("slow", ms=200)),
        ("no_done", Fault("no_done")),
        ("malformed,after=2", Fault("malformed", after=2)),
        ("no_usage", Fault("no_usage")),
    ],
)
def test_faults_parse(spec: str, expected: Fault) -> None:
    assert parse_faults(spec).faults == (expected,)


def test_several_faults_combine_with_semicolons() -> None:
    faults = parse_faults("slow,ms=10; no_done;no_usage")
    assert [f.kind for f in faults.faults] == ["slow", "no_done", "no_usage"]
    assert faults.spec == "slow,ms=10; no_done; no_usage"
    assert [f.kind for f in faults.mid_stream] == ["slow"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty fault specification"),
        ("explode", "unknown fault 'explode'; the faults are status=<code>, mid_stream_error"),
        ("status=200", "status must be a whole number from 400 to 599; got '200'"),
        ("status=abc", "status must be a whole number from 400 to 599"),
        ("drop,ms=5", "drop does not take ms (it takes after, after_ms)"),
        ("no_done,after=1", "no_done does not take after (it takes no parameters)"),
        ("drop,after=1,after_ms=5", "takes after (tokens) or after_ms, not both"),
        ("drop,after=1.5", "after must be a whole number"),
        ("stall,then=later", "then must be resume or drop; got 'later'"),
        ("drop,,after=1", "empty item"),
        ("drop stall", "unknown fault 'drop stall'"),
        ("drop,stall", "two fault kinds"),
        ("drop;drop", "a fault kind is given twice"),
        ("status=429;drop", "cannot be combined with other faults"),
        ("after=3", "no fault kind"),
        ("drop,after=1,after=2", "after is given twice"),
    ],
)
def test_bad_faults_are_refused_saying_why(spec: str, message: str) -> None:
    with pytest.raises(FaultSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_faults(spec)


def test_fault_choices_are_separated_by_bars() -> None:
    choices = parse_fault_choices("status=429 | drop,after=1;no_done")
    assert [c.spec for c in choices] == ["status=429", "drop,after=1; no_done"]
    with pytest.raises(FaultSyntaxError, match="at least one"):
        parse_fault_choices(" | ")


# --- errors before the stream ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "type_", "code", "anthropic_type"),
    [
        (401, "invalid_request_error", "invalid_api_key", "authentication_error"),
        (403, "permission_error", "permission_denied", "permission_error"),
        (404, "invalid_request_error", "model_not_found", "not_found_error"),
        (408, "timeout_error", "request_timeout", "timeout_error"),
        (429, "requests", "rate_limit_exceeded", "rate_limit_error"),
        (500, "server_error", None, "api_error"),
        (502, "server_error", "bad_gateway", "api_error"),
        (503, "service_unavailable_error", "server_is_overloaded", "overloaded_error"),
        (504, "timeout_error", "gateway_timeout", "timeout_error"),
        (529, "overloaded_error", "overloaded", "overloaded_error"),
        (418, "invalid_request_error", None, "api_error"),
        (599, "server_error", None, "api_error"),
    ],
)
def test_each_status_is_the_error_its_provider_sends(
    status: int, type_: str, code: str | None, anthropic_type: str
) -> None:
    error = status_error(status, CONTEXT)
    assert (error.status_code, error.type, error.code) == (status, type_, code)
    assert error.to_anthropic()["error"]["type"] == anthropic_type


def test_400_is_openais_context_length_error_word_for_word() -> None:
    error = status_error(400, CONTEXT)
    assert error.code == "context_length_exceeded"
    assert error.message == (
        "This model's maximum context length is 8192 tokens. However, you requested 8193 "
        "tokens (20 in the messages, 8173 in the completion). Please reduce the length of the "
        "messages or completion."
    )


def test_404_names_the_model_and_429_says_when_to_retry() -> None:
    assert "`sim-small` does not exist" in status_error(404, CONTEXT).message
    error = status_error(429, CONTEXT, retry_after_s=2.5)
    assert error.headers == {
        "Retry-After": "3",
        "retry-after-ms": "2500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2.5s",
    }
    assert status_error(529, CONTEXT, retry_after_s=1).headers["Retry-After"] == "1"
    assert "Retry-After" not in status_error(503, CONTEXT).headers


def test_a_rules_error_says_what_the_rule_says() -> None:
    error = status_error(
        403, CONTEXT, message="Region blocked", type_="request_forbidden", code="x"
    )
    assert error.to_dict()["error"] == {
        "message": "Region blocked",
        "type": "request_forbidden",
        "param": None,
        "code": "x",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"), (59.9999, "60s"), (360, "6m0s")],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- during the stream ------------------------------------------------------------------------


async def tokens(count: int, *, every_s: float = 0.0) -> AsyncIterator[TokenDelta]:
    for index in range(count):
        if every_s:
            await asyncio.sleep(every_s)
        yield TokenDelta(f" t{index}", finish_reason="stop" if index == count - 1 else None)


def watch_of(spec: str) -> Watch:
    return Watch(parse_faults(spec), CONTEXT, arrived_at=0.0)


async def drain(stream: FaultedStream) -> list[str]:
    seen = []
    try:
        async for delta in stream:
            seen.append(delta.text)
    finally:
        await stream.aclose()
    return seen


async def test_mid_stream_error_raises_after_k_tokens() -> None:
    seen: list[str] = []
    stream = FaultedStream(tokens(10), watch_of("mid_stream_error,after=3,status=503"))
    with pytest.raises(APIError) as raised:
        async for delta in stream:
            seen.append(delta.text)
    await stream.aclose()
    assert seen == [" t0", " t1", " t2"]
    assert raised.value.status_code == 503


async def test_drop_cuts_after_k_tokens_and_is_not_a_disconnect() -> None:
    dropped = []
    watch = watch_of("drop,after=2")
    watch.on_drop = lambda: dropped.append(True)
    stream = FaultedStream(tokens(10), watch)
    with pytest.raises(sse.AbortConnection):
        await drain(stream)
    assert watch.tokens == 2
    assert dropped == [True]


async def test_stall_waits_then_resumes_or_drops() -> None:
    with virtual_time():
        loop = asyncio.get_running_loop()
        start = loop.time()
        seen = await drain(FaultedStream(tokens(4), watch_of("stall,after=2,ms=750")))
        assert seen == [" t0", " t1", " t2", " t3"]
        assert loop.time() - start == pytest.approx(0.75)
        with pytest.raises(sse.AbortConnection):
            await drain(FaultedStream(tokens(4), watch_of("stall,after=1,ms=100,then=drop")))


async def test_slow_delays_every_token_from_its_start() -> None:
    with virtual_time():
        loop = asyncio.get_running_loop()
        start = loop.time()
        await drain(FaultedStream(tokens(5), watch_of("slow,ms=40,after=2")))
        # Tokens 3 to 5, and nothing else, come 40 ms late.
        assert loop.time() - start == pytest.approx(0.12)


async def test_timed_faults_fire_on_time_while_the_engine_is_quiet() -> None:
    with virtual_time():
        loop = asyncio.get_running_loop()
        start = loop.time()
        stream = FaultedStream(tokens(10, every_s=1.0), watch_of("mid_stream_error,after_ms=2500"))
        with pytest.raises(APIError):
            await drain(stream)
        assert loop.time() - start == pytest.approx(2.5)


async def test_closing_a_faulted_stream_closes_the_engines_even_unstarted() -> None:
    closed = []

    async def engine() -> AsyncIterator[TokenDelta]:
        try:
            yield TokenDelta("x")
            await asyncio.sleep(10)
            yield TokenDelta("y")
        finally:
            closed.append(True)

    inner = engine()
    await anext(inner)
    await FaultedStream(inner, watch_of("drop,after_ms=100")).aclose()
    assert closed == [True]


async def test_the_journal_sees_tokens_and_first_token_time() -> None:
    entry = Journal(10).open(
        method="POST", path="/v1/chat/completions", endpoint="chat", arrived_at=0
    )
    with virtual_time():
        loop = asyncio.get_running_loop()
        entry.arrived_at = loop.time()
        watch = Watch(parse_faults("slow,ms=30"), CONTEXT, entry.arrived_at, entry)
        await drain(FaultedStream(tokens(3), watch))
    assert entry.completion_tokens == 3
    assert entry.ttft_ms == pytest.approx(30)


# --- frames ----------------------------------------------------------------------------------


async def frames(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def collect(spec: str, items: list[bytes], tokens_so_far: int = 0) -> list[bytes]:
    watch = watch_of(spec)
    watch.tokens = tokens_so_far
    return [frame async for frame in watch_frames(frames(*items), watch)]


CHUNK = sse.encode_data({"choices": [{"delta": {"content": "hi"}}], "usage": None})
USAGE = sse.encode_data({"choices": [], "usage": {"total_tokens": 3}})


async def test_no_done_removes_each_protocols_last_event() -> None:
    openai = await collect("no_done", [CHUNK, sse.DONE])
    assert openai == [CHUNK]
    anthropic = [sse.encode_event("message_delta", {}), sse.encode_event("message_stop", {})]
    assert await collect("no_done", anthropic) == anthropic[:1]
    responses = [sse.encode_event("response.completed", {"response": {}})]
    assert await collect("no_done", responses) == []


async def test_no_usage_removes_each_protocols_usage() -> None:
    assert await collect("no_usage", [CHUNK, USAGE, sse.DONE]) == [CHUNK, sse.DONE]
    delta = sse.encode_event("message_delta", {"delta": {}, "usage": {"output_tokens": 3}})
    (stripped,) = await collect("no_usage", [delta])
    assert b"usage" not in stripped
    done = sse.encode_event("response.completed", {"response": {"usage": {"total_tokens": 3}}})
    (nulled,) = await collect("no_usage", [done])
    assert orjson.loads(nulled.split(b"data: ")[1])["response"]["usage"] is None


async def test_frame_faults_act_on_each_event_of_a_write() -> None:
    # A stream's last write holds its last token, the usage chunk and [DONE] together.
    assert await collect("no_done", [CHUNK + USAGE + sse.DONE]) == [CHUNK + USAGE]
    assert await collect("no_usage", [CHUNK, CHUNK + USAGE + sse.DONE]) == [CHUNK, CHUNK + sse.DONE]
    both = await collect("no_done;no_usage", [CHUNK + USAGE + sse.DONE, USAGE + sse.DONE])
    assert both == [CHUNK]


async def test_malformed_cuts_the_json_of_one_event_after_k_tokens() -> None:
    early = await collect("malformed,after=5", [CHUNK], tokens_so_far=4)
    assert early == [CHUNK]
    cut, whole, done = await collect("malformed,after=5", [CHUNK, CHUNK, sse.DONE], 5)
    assert cut.startswith(b"data: {") and cut.endswith(b"\n\n")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut.removeprefix(b"data: "))
    assert (whole, done) == (CHUNK, sse.DONE)


@pytest.mark.parametrize("events", [2, 3, 7])
async def test_malformed_cuts_the_first_event_of_a_write_that_holds_several(events: int) -> None:
    # Tokens ready together share one write; the cut must still leave JSON that
    # cannot be parsed, not fall on a boundary between two whole events.
    shared = CHUNK * events
    (cut,) = await collect("malformed", [shared])
    assert cut.startswith(b"data: {") and cut.endswith(b"\n\n") and cut.count(b"data: ") == 1
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut.removeprefix(b"data: "))
