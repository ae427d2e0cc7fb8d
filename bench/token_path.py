"""CPU per token of a chat stream's own code, in process: ``ChatService.stream`` over
``Generation.batches``, with the latency histograms on.

The engine is a stand-in whose tokens are always ready, one per batch (as a paced
stream gets them), so what is timed is our per-token path alone: the batch, its
timing, the chunk writer and its template, usage when asked for. No server, no
socket, no scheduler: the figures move far less with the machine's load than a
server's, and a change to that path shows. Each figure is the best of ``--rounds``
runs of one stream of ``--tokens`` tokens, in nanoseconds a token.

    python bench/token_path.py
    PYTHONPATH=<another tree>/src python bench/token_path.py   # another commit's code

To compare two trees on a busy machine, run them alternately a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from streamapi.engines.protocol import TokenDelta
from streamapi.lifecycle import Lifecycle
from streamapi.metrics import Metrics
from streamapi.schemas.openai import ChatCompletionRequest
from streamapi.serving.chat import ChatService
from streamapi.serving.generation import Admission, Generation
from streamapi.settings import Settings


class _ReadyStream:
    """An engine stream whose every token is ready: ``n`` tokens, the last one finishing."""

    def __init__(self, n: int) -> None:
        self._deltas = [TokenDelta(f"w{i % 50} ") for i in range(n - 1)]
        self._deltas.append(TokenDelta("end", "length"))
        self._next = 0

    def __aiter__(self) -> _ReadyStream:
        return self

    async def __anext__(self) -> TokenDelta:
        index = self._next
        if index >= len(self._deltas):
            raise StopAsyncIteration
        self._next = index + 1
        return self._deltas[index]

    def take_ready(self) -> list[TokenDelta]:
        return []


async def _ns_per_token(tokens: int, rounds: int, *, include_usage: bool) -> float:
    settings = Settings()
    metrics = Metrics(settings.default_model, multiprocess=False)
    # The stand-in streams are handed over in the admission: the engine is never called.
    generation = Generation(settings, None, Lifecycle(), metrics)  # type: ignore[arg-type]
    chat = ChatService(generation, tokens_per_event=1)
    body: dict[str, Any] = {
        "model": settings.default_model,
        "messages": [{"role": "user", "content": "Explain queues"}],
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    job = chat.prepare(ChatCompletionRequest.model_validate(body))
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(rounds):
        streams: list[Any] = [_ReadyStream(tokens)]
        admission = Admission(job.job, streams, arrived_at=loop.time(), metrics=metrics)
        start = time.perf_counter()
        async for _frame in chat.stream(job, admission):
            pass
        best = min(best, time.perf_counter() - start)
    return best / tokens * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=50_000, help="tokens a stream")
    parser.add_argument("--rounds", type=int, default=7, help="streams timed; the best counts")
    args = parser.parse_args()
    if not 1 <= args.tokens <= 1_000_000 or not 1 <= args.rounds <= 100:
        parser.error("1 to 1,000,000 tokens and 1 to 100 rounds")
    for include_usage in (False, True):
        ns = asyncio.run(_ns_per_token(args.tokens, args.rounds, include_usage=include_usage))
        label = "include_usage" if include_usage else "plain"
        print(f"{label:<14} {ns:7.0f} ns a token")


if __name__ == "__main__":
    main()
