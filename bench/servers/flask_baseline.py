"""The original spec's design, re-implemented as the benchmark's baseline.

As the seed spec has it: Flask on its own threaded server (``app.run(threaded=True)``,
one thread per connection), a generator that ``json.dumps`` each chunk and paces
itself with ``time.sleep``. Two things differ so that the same client measures every
server: the chunks carry OpenAI's framing (id, object, model, one token per event,
a finish chunk, the usage chunk when asked), and ``max_tokens`` sets the number of
tokens exactly, as ``ignore_eos`` does.

    python bench/servers/flask_baseline.py --port 8002 --ttft-ms 20 --itl-ms 20
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

_TOKENS = [
    " " + word
    for word in (
        "Streaming answers token by token keeps a client busy with something to read "
        "while the rest is still being written, which is why every chat interface does it."
    ).split()
]


def create_app(*, ttft_ms: float, itl_ms: float) -> Flask:
    """The Flask app: ``POST /v1/chat/completions`` (streamed only) and ``GET /health``."""
    app = Flask(__name__)
    ttft_s, itl_s = ttft_ms / 1000, itl_ms / 1000

    @app.post("/v1/chat/completions")
    def chat() -> Response | tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or data.get("stream") is not True:
            return jsonify({"error": {"message": "stream parameter must be true"}}), 400
        max_tokens = int(data.get("max_completion_tokens") or data.get("max_tokens") or 16)
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        base: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(data.get("model") or "flask-baseline"),
        }

        def generate() -> Iterator[str]:
            # Relative sleeps, as in the spec: each gap is the sleep plus the time
            # to produce and write the chunk, so pacing drifts under load.
            time.sleep(ttft_s)
            for i in range(max_tokens):
                if i:
                    time.sleep(itl_s)
                token = _TOKENS[i % len(_TOKENS)]
                delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
            yield f"data: {json.dumps(finish)}\n\n"
            if include_usage:
                usage = {
                    "prompt_tokens": 0,
                    "completion_tokens": max_tokens,
                    "total_tokens": max_tokens,
                }
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return Response(
            generate(),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "healthy"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    args = parser.parse_args()
    # One log line per request would cost the baseline CPU that the others do not spend.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    create_app(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms).run(
        host=args.host, port=args.port, threaded=True, debug=False
    )


if __name__ == "__main__":
    main()
