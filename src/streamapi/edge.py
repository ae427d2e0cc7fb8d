"""Timeouts and a connection cap at the edge: the HTTP protocol ``streamapi serve`` runs.

uvicorn times out idle keep-alive connections, but nothing before a request's
headers have arrived, nor while its body arrives: 300 sockets trickling a
header byte now and then stayed open forever (slowloris). This is uvicorn's own
httptools protocol with three additions, each counted on the event loop's timers:

- a **header deadline**: a connection must deliver a request's headers within
  ``header_timeout_s`` of opening (or of a keep-alive request's first byte),
  else it gets ``408`` and is closed;
- a **body deadline**: the whole body within ``body_timeout_s`` of the headers,
  else the connection is closed (the app sees the client gone);
- a **connection cap**: past ``max_connections`` open connections (in this
  worker) a new one gets ``503`` and is closed before anything is read.

A WebSocket leaves this protocol at its upgrade, and its timers with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

_CLOSE = b"connection: close\r\ncontent-length: 0\r\n\r\n"
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\n" + _CLOSE
_FULL = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n" + _CLOSE


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a connection cap.

    Configured by subclassing (``edge_protocol``): uvicorn builds one per connection.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 0
    """0: no cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            logger.warning("Refused a connection: %d open (the cap)", self.max_connections)
            transport.write(_FULL)
            transport.close()
            return
        self._arm(self.header_timeout_s, headers=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A keep-alive connection's next request: its headers have the same deadline.
        if self._deadline is None:
            self._arm(self.header_timeout_s, headers=True)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._arm(self.body_timeout_s, headers=False)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # Answered without its whole body (a 413 or 429 before reading it): no deadline.
        self._disarm()
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def _arm(self, delay_s: float, *, headers: bool) -> None:
        if delay_s > 0:
            self._reading_body = not headers
            self._deadline = self.loop.call_later(delay_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._reading_body:
            logger.info("Closed a connection whose request body took over %ss", self.body_timeout_s)
        else:
            logger.info("Closed a connection whose headers took over %ss", self.header_timeout_s)
            if self.cycle is None or self.cycle.response_complete:
                # No response is being written (a pipelined request may wait behind
                # one): the 408 is the only thing on the wire.
                self.transport.write(_TIMED_OUT)
        self.transport.close()


def edge_protocol(
    *, header_timeout_s: float, body_timeout_s: float, max_connections: int
) -> type[EdgeProtocol]:
    """``EdgeProtocol`` with these limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "ConfiguredEdgeProtocol",
        (EdgeProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "max_connections": max_connections,
        },
    )
