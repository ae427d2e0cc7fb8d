"""An incremental Server-Sent Events decoder for what upstream servers send.

It follows the SSE specification's parsing rules and tolerates the upstream
quirks of wire-contract section 14:

- lines end in ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r`` at the end of one read
  is held until the next shows whether a ``\\n`` follows);
- ``:`` comments (keep-alives) are skipped; ``data:`` lines of one event are
  joined with ``\\n``; ``event:`` is kept; ``id:`` and ``retry:`` are ignored;
- llama.cpp's non-standard ``error:`` field is kept as ``error``, so it is
  not lost as an empty event;
- at the end of the stream an event not closed by a blank line (a final
  ``data: [DONE]`` without one) is still dispatched.

Bytes are split into lines before they are decoded, so a UTF-8 character cut
across two reads is decoded whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    data: str
    event: str | None = None
    error: str | None = None


class SSEDecoder:
    """Feed bytes as they arrive; get the events they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._event: str | None = None
        self._error: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that ``chunk`` completes."""
        self._buffer += chunk
        return self._lines(final=False)

    def close(self) -> list[SSEEvent]:
        """The events left at the end of the stream (a last unterminated line too)."""
        events = self._lines(final=True)
        if self._buffer:
            line = self._buffer.decode("utf-8", errors="replace")
            self._buffer.clear()
            events += self._line(line)
        event = self._dispatch()
        return events + ([event] if event is not None else [])

    def _lines(self, *, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buffer = self._buffer
        start = 0
        while True:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            step = 1
            if buffer[end] == 0x0D:  # \r
                if end + 1 == len(buffer) and not final:
                    break  # a \n may follow in the next read
                if end + 1 < len(buffer) and buffer[end + 1] == 0x0A:
                    step = 2
            line = bytes(buffer[start:end]).decode("utf-8", errors="replace")
            events += self._line(line)
            start = end + step
        del buffer[:start]
        return events

    def _line(self, line: str) -> list[SSEEvent]:
        if not line:
            event = self._dispatch()
            return [event] if event is not None else []
        if line.startswith(":"):
            return []
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            self._error.append(value)
        return []

    def _dispatch(self) -> SSEEvent | None:
        data, event, error = self._data, self._event, self._error
        self._data, self._event, self._error = [], None, []
        if not data and not error:
            return None
        return SSEEvent("\n".join(data), event, "\n".join(error) if error else None)


async def decode(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """The events of a byte stream, as they complete."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
