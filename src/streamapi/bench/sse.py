"""Server-Sent Events, parsed incrementally as a client reads them."""

from __future__ import annotations


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in, ``(event, data)`` pairs out.

    Follows the WHATWG rules that matter to a client: ``\\r\\n``, ``\\n`` and
    ``\\r`` line ends, comments, several ``data:`` lines joined by ``\\n``, one
    optional space after the colon, and no dispatch for blocks without data.
    ``event`` is ``b""`` when the block names none (the spec's "message").
    """

    __slots__ = ("_buffer", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """The events completed by ``chunk``; incomplete ones wait for more bytes."""
        if not self._buffer and not self._skip_lf and chunk.endswith(b"\n\n"):
            # One pass over the bytes for the common case: one data line, then a blank line.
            lines = chunk.splitlines()
            if len(lines) == 2 and not lines[1] and lines[0].startswith(b"data:"):
                data = lines[0][5:]
                return [(b"", data[1:] if data.startswith(b" ") else data)]
        if self._skip_lf or b"\r" in chunk:
            chunk = self._normalise(chunk)
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[tuple[bytes, bytes]] = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            event = _parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def _normalise(self, chunk: bytes) -> bytes:
        # A final \r ends its line now; if the next read starts with \n, that \n
        # was the second half of a \r\n and must not end another line.
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _parse_block(block: bytes) -> tuple[bytes, bytes] | None:
    if block.startswith(b"data:") and b"\n" not in block:
        data = block[5:]
        return b"", data[1:] if data.startswith(b" ") else data
    event = b""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value
    if not data_lines:
        return None
    return event, b"\n".join(data_lines)
