"""A whole answer dropped mid-body: the ``drop`` fault on a non-streamed request."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class DroppedResponse(Response):
    """A whole (non-streamed) answer cut off: the headers promise a body that never comes.

    Returning with the body unfinished makes the server close the socket, so the
    client reads an incomplete body, as when the network drops mid-answer.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})
