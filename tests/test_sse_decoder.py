"""The upstream SSE decoder, byte by byte: separators, comments, fields, and quirks."""

from __future__ import annotations

import pytest

from streamapi.engines.sse_decoder import SSEDecoder, SSEEvent

WIRE = (
    b': keep-alive\n\ndata: {"a":1}\n\nevent: message\ndata: line one\ndata: line two\n\n'
    b"id: 7\nretry: 100\ndata: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a":1}'),
    SSEEvent("line one\nline two", event="message"),
    SSEEvent("[DONE]"),
]


def decode_in_pieces(wire: bytes, size: int) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(wire), size):
        events += decoder.feed(wire[start : start + size])
    return events + decoder.close()


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_every_line_ending_and_every_split_of_the_bytes_gives_the_same_events(
    separator: bytes, size: int
) -> None:
    wire = WIRE.replace(b"\n", separator)
    assert decode_in_pieces(wire, size) == EXPECTED


def test_a_carriage_return_at_the_end_of_a_read_waits_for_the_next() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [SSEEvent("x")]


def test_a_last_event_without_its_blank_line_is_still_dispatched() -> None:
    # llama.cpp has been seen ending with "data: [DONE]" and no blank line.
    assert decode_in_pieces(b'data: {"b":2}\n\ndata: [DONE]', 4) == [
        SSEEvent('{"b":2}'),
        SSEEvent("[DONE]"),
    ]
    assert decode_in_pieces(b"data: [DONE]\n", 100) == [SSEEvent("[DONE]")]


def test_a_stream_that_ends_without_done_just_ends() -> None:
    assert decode_in_pieces(b'data: {"c":3}\n\n', 5) == [SSEEvent('{"c":3}')]


def test_llama_cpp_error_field_is_kept_rather_than_making_an_empty_event() -> None:
    wire = b'error: {"code":500,"message":"boom","type":"server_error"}\n\n'
    assert decode_in_pieces(wire, 3) == [
        SSEEvent("", error='{"code":500,"message":"boom","type":"server_error"}')
    ]


def test_utf8_characters_cut_across_reads_are_decoded_whole() -> None:
    wire = 'data: {"t":"héllo — 日本"}\n\n'.encode()
    assert decode_in_pieces(wire, 1) == [SSEEvent('{"t":"héllo — 日本"}')]


def test_a_field_without_a_space_after_its_colon_and_an_empty_data_line() -> None:
    assert decode_in_pieces(b"data:x\ndata\n\n", 2) == [SSEEvent("x\n")]


def test_comments_and_blank_lines_alone_make_no_event() -> None:
    assert decode_in_pieces(b": ping\n\n\n\n: ping\r\n\r\n", 2) == []
