"""Request ids in log lines: the id of the request a line was logged for.

``middleware.EdgeMiddleware`` sets ``request_id`` for the request's task; every task
it starts (the streamed response's, an upstream call's) inherits it, so the
``RequestIdFilter`` on the log handlers tags each line with it ("-" outside a
request).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("streamapi_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` for the format string; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True
