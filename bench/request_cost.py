"""CPU per request before the stream starts: validating, preparing and admitting a chat request.

In one process, with no server, this times what the chat route runs once per request
before its first byte, for two requests:

- ``bench``: what ``python -m streamapi.bench --max-tokens 64 --ignore-eos`` sends (one
  user message of 32 words drawn from the bench's vocabulary, ``stream``, ``max_tokens``
  64, ``ignore_eos``), a new prompt each request, as the bench sends;
- ``agent``: an agent's turn of ~2 KB (a fixed system prompt, two earlier turns, a new
  user message each request), with no ``max_tokens``.

Stages, each timed alone in CPU time (best of ``--repeats`` rounds of ``--number`` calls,
the requests and stages alternating so that a noisy neighbour weighs on all of them alike):

- ``validate``: ``ChatCompletionRequest.model_validate`` of the JSON body;
- ``prepare``: ``ChatService.prepare`` (the checks, the engine request, the job);
- ``admit``: ``Generation.admit`` with a request id, as the route calls it (the engine
  request with its id, the plan, the prompt's tokens, the sequence queued), then
  ``Admission.aclose`` (taken out of the queue; the step loop never runs);
- ``total``: the three in a row, then ``aclose``.

Each round runs in one coroutine on an event loop (admission needs one). Run it
against another tree for a before/after comparison:

    python bench/request_cost.py
    PYTHONPATH=/tmp/base-cpu/src python bench/request_cost.py      # e.g. main
    python bench/request_cost.py --repeats 9 --number 400 --json out.json
    python bench/request_cost.py --memo-chars 8000   # what the caches keep of new prompts
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import streamapi
from streamapi.bench.runner import _WORDS as WORDS  # the bench's prompts: 32 of these words
from streamapi.engines.simulator import SimulatorEngine
from streamapi.lifecycle import Lifecycle
from streamapi.schemas.openai import ChatCompletionRequest
from streamapi.serving.chat import ChatService
from streamapi.serving.generation import Generation, Job
from streamapi.settings import Settings

_SYSTEM = (
    "You are a careful coding assistant working in a user's repository. Answer in the "
    "language of the question. Prefer small, reviewable changes and explain each one "
    "briefly. When a task is ambiguous, say which reading you chose and why. Never invent "
    "APIs: if you are not sure a function exists, say so and suggest how to check. Keep "
    "answers focused on the question; do not repeat the question back. Use Markdown for "
    "code blocks and lists, and keep lines under 100 characters. When you show a command, "
    "show the exact command and what it prints. Tests matter: when you change behaviour, "
    "say which test covers it or write one. Security matters: never print secrets, and "
    "point out input that reaches a shell, a query or a file path unchecked. Performance "
    "matters where it is measured: suggest a benchmark before an optimisation, and give "
    "figures with the command that produced them. The project uses Python 3.11, FastAPI, "
    "Pydantic and uvicorn; its tests run under pytest, its types under mypy --strict and "
    "its style under ruff."
)
_EARLIER = (
    (
        "user",
        "How is the request body validated before the route runs? I see a Pydantic model "
        "but also a hand-written check of the stream options; which one wins?",
    ),
    (
        "assistant",
        "Pydantic validates the body first: a bad type or a missing field is a 400 naming "
        "the field. The hand-written checks then cover rules that span several fields, "
        "such as stream_options being allowed only when stream is true. Both raise through "
        "the one error hierarchy, so the client sees one error envelope either way.",
    ),
)


def bench_body(rng: random.Random) -> dict[str, Any]:
    """The body ``python -m streamapi.bench --max-tokens 64 --ignore-eos`` sends."""
    prompt = " ".join(rng.choices(WORDS, k=32))
    return {
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": 64,
        "ignore_eos": True,
    }


def agent_body(rng: random.Random) -> dict[str, Any]:
    """An agent's turn of ~2 KB: a fixed system prompt and history, a new question."""
    question = (
        "Now explain how the "
        + " ".join(rng.choices(WORDS, k=12))
        + " path works, and what I should test first."
    )
    messages = [{"role": "system", "content": _SYSTEM}]
    messages += [{"role": role, "content": content} for role, content in _EARLIER]
    messages.append({"role": "user", "content": question})
    return {"model": "streamapi-sim", "messages": messages, "stream": True}


class Case:
    """One kind of request, with a pool of distinct bodies and their stages."""

    def __init__(
        self,
        name: str,
        make: Callable[[random.Random], dict[str, Any]],
        pool: int,
        chat: ChatService,
        generation: Generation,
    ) -> None:
        rng = random.Random(name)
        self.name = name
        self.bodies = [make(rng) for _ in range(pool)]
        self.parsed = [ChatCompletionRequest.model_validate(b) for b in self.bodies]
        self.jobs = [chat.prepare(p) for p in self.parsed]
        self.size = len(json.dumps(self.bodies[0]))
        self._chat = chat
        self._generation = generation
        self._next = 0

    def _take(self) -> int:
        # A new body each call, as the bench sends: nothing is served from a cache keyed
        # by the prompt unless real traffic would hit it too.
        index = self._next = (self._next + 1) % len(self.bodies)
        return index

    async def validate(self) -> None:
        ChatCompletionRequest.model_validate(self.bodies[self._take()])

    async def prepare(self) -> None:
        self._chat.prepare(self.parsed[self._take()])

    async def admit(self) -> None:
        job = self.jobs[self._take()].job
        choices = job.choices
        await self._admitted(job)
        # Admission hands a job's requests to the engine and empties them: given back,
        # so that the job is admitted again in a later call (two stores, ~0.05 µs).
        job.choices = choices

    async def total(self) -> None:
        parsed = ChatCompletionRequest.model_validate(self.bodies[self._take()])
        await self._admitted(self._chat.prepare(parsed).job)

    async def _admitted(self, job: Job) -> None:
        admission = await self._generation.admit(job, arrived_at=0.0, request_id=_REQUEST_ID)
        admission.ended = True  # not a client's disconnect
        await admission.aclose()


_REQUEST_ID = "0f8e2a6c3b5d4e7f9a1b2c3d4e5f6a7b"  # as EdgeMiddleware makes one
STAGES = ("validate", "prepare", "admit", "total")


async def _micros(stage: Callable[[], Awaitable[None]], number: int) -> float:
    """CPU µs per call of ``stage``, over ``number`` calls in a row: the process's CPU
    time (``time.process_time``), which time spent waiting for a busy core leaves out."""
    started = time.process_time()
    for _ in range(number):
        await stage()
    return (time.process_time() - started) / number * 1e6


async def _measure(args: argparse.Namespace) -> tuple[list[Case], dict[tuple[str, str], float]]:
    settings = Settings()
    engine = SimulatorEngine.from_settings(settings)
    generation = Generation(settings, engine, Lifecycle())
    chat = ChatService(generation, tokens_per_event=1)
    cases = [
        Case("bench", bench_body, args.pool, chat, generation),
        Case("agent", agent_body, args.pool, chat, generation),
    ]
    best: dict[tuple[str, str], float] = {}
    try:
        for _ in range(args.repeats):
            for case in cases:
                for stage in STAGES:
                    gc.collect()
                    micros = await _micros(getattr(case, stage), args.number)
                    key = (case.name, stage)
                    best[key] = min(best.get(key, micros), micros)
    finally:
        await engine.aclose()
    return cases, best


async def _memo_bytes(chars: int, requests: int) -> int:
    """Bytes still held (tracemalloc) after ``requests`` requests of distinct prompts (a
    system prompt and a question of ``chars`` characters each), past a warm-up: what the
    bounded caches keep of a stream of prompts that never repeat."""
    settings = Settings()
    engine = SimulatorEngine.from_settings(settings)
    generation = Generation(settings, engine, Lifecycle())
    chat = ChatService(generation, tokens_per_event=1)
    rng = random.Random(chars)

    def body(size: int) -> dict[str, Any]:
        system, question = (" ".join(rng.choices(WORDS, k=size // 6))[:size] for _ in "ab")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return {"messages": messages, "stream": True, "max_tokens": 64}

    async def one(size: int) -> None:
        parsed = ChatCompletionRequest.model_validate(body(size))
        admission = await generation.admit(chat.prepare(parsed).job, arrived_at=0.0)
        admission.ended = True
        await admission.aclose()

    try:
        for _ in range(20):
            await one(200)  # imports and first-use caches
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(requests):
            await one(chars)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await engine.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds; the best is kept")
    parser.add_argument("--number", type=int, default=300, help="calls per stage per round")
    parser.add_argument("--pool", type=int, default=997, help="distinct bodies per request")
    parser.add_argument("--json", help="also write the figures (µs per request) here")
    parser.add_argument(
        "--memo-chars",
        type=int,
        default=0,
        help="instead, the memory the caches keep after 400 requests of distinct prompts "
        "of this many characters",
    )
    args = parser.parse_args(argv)
    if args.memo_chars:
        held = asyncio.run(_memo_bytes(args.memo_chars, 400))
        print(f"{held / 1e6:.2f} MB held after 400 prompts of {args.memo_chars:,} characters")
        return 0

    cases, best = asyncio.run(_measure(args))
    print(f"streamapi from {streamapi.__file__}")
    print(f"Python {sys.version.split()[0]}; best of {args.repeats} x {args.number} calls")
    print(f"{'request':<8} {'body':>6} " + " ".join(f"{s:>9}" for s in STAGES) + "   (µs)")
    for case in cases:
        row = " ".join(f"{best[(case.name, s)]:9.1f}" for s in STAGES)
        print(f"{case.name:<8} {case.size:5d}B {row}")
    if args.json:
        figures = {c.name: {s: round(best[(c.name, s)], 2) for s in STAGES} for c in cases}
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"source": streamapi.__file__, "us_per_request": figures}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
