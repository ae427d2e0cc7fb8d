"""The one path for an error after a stream's first byte: counted, logged, then rendered.

The status line is long gone by then, so each protocol renders the error as an
event of its own stream (``render``); what happens before that is the same for
all of them, and is here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from streamapi.errors import APIError
from streamapi.metrics import Metrics

logger = logging.getLogger(__name__)


class GenerationFailed(APIError):
    """An unexpected exception during generation, as the client sees it (the log has the rest)."""

    def __init__(self) -> None:
        super().__init__("The server had an error while generating.")


def render_stream_error(
    exc: Exception,
    *,
    job_id: str,
    metrics: Metrics | None,
    render: Callable[[APIError], Iterable[bytes]],
) -> Iterable[bytes]:
    """The frames that end a stream ``exc`` broke, in the protocol's terms (``render``).

    An ``APIError`` is the client's to see; any other exception is logged with
    its traceback and shown as ``GenerationFailed``. Either is counted as an
    in-stream error. Call it from the ``except`` clause (the log reads the
    exception being handled).
    """
    if isinstance(exc, APIError):
        error = exc
        logger.warning("%s ended in-stream: %s", job_id, error.message)
    else:
        logger.exception("%s failed mid-stream", job_id)
        error = GenerationFailed()
    if metrics is not None:
        metrics.error(error.type, error.code, in_stream=True)
    return render(error)
