"""The generation run loop every protocol shares: checked jobs, admission, the choices' deltas."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Protocol, TypeVar

from streamapi.aio import aclose_iterator
from streamapi.engines.protocol import Engine, GenerationRequest, TokenDelta
from streamapi.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from streamapi.lifecycle import DRAIN_EXPIRED, Lifecycle
from streamapi.linear_regex import search as linear_search
from streamapi.metrics import Metrics
from streamapi.serving.stream_errors import render_stream_error
from streamapi.settings import MODEL_NAME_CACHED_CHARS, MODEL_NAMES_KEPT, Settings
from streamapi.text.tokenizer import count_chat_tokens, count_prompt_tokens

T = TypeVar("T")

# An image's prompt tokens (Generation.image_tokens): OpenAI's cost at detail "low",
# and of a 1024x1024 image at "high" (85 + 4 tiles x 170).
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS = 765


@dataclass(slots=True)
class Job:
    """A checked request: one engine request per choice, and what to report.

    ``Generation.admit`` hands the requests to the engine and empties ``choices``:
    an open stream keeps no request, and so not its prompt (an agent's context is
    tens of kilobytes). ``choice_count`` stays.
    """

    id: str
    created: int
    model: str
    choices: tuple[GenerationRequest, ...]
    prompt_tokens: int
    n: int = 1
    """Choices per prompt: choice ``i`` answers prompt ``i // n``."""
    choice_count: int = field(init=False)
    """How many choices the job has (``len(choices)`` until admission)."""

    def __post_init__(self) -> None:
        self.choice_count = len(self.choices)


@dataclass(frozen=True, slots=True)
class TestOverrides:
    """Per-request timing and length a test asked for (``--enable-latency-headers``)."""

    time_to_first_token_ms: float | None = None
    inter_token_latency_ms: float | None = None
    output_tokens: int | None = None


class Admission:
    """A job whose engine sequences are open; ``aclose`` releases them.

    ``aclose`` is idempotent, so every way a request can end may call it: the
    stream's own ``finally``, the response's ``on_finish`` (which runs even when
    the client left before the stream's first step, sse-starlette #156), and the
    non-streamed route's ``finally``. Closed before it was marked ``ended``, it
    counts as a client disconnect.
    """

    __slots__ = ("_closed", "_lease", "_metrics", "arrived_at", "ended", "job", "streams")

    def __init__(
        self,
        job: Job,
        streams: list[AsyncIterator[TokenDelta]],
        *,
        arrived_at: float,
        metrics: Metrics | None,
        lease: Lease | None = None,
    ) -> None:
        self.job = job
        self.streams = streams
        self.arrived_at = arrived_at
        self.ended = False
        self._metrics = metrics
        self._lease = lease
        self._closed = False

    async def aclose(self) -> None:
        """Release every engine sequence of the job, and its lease (once; later calls do
        nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.ended and self._metrics is not None:
                self._metrics.client_disconnects.inc()
            for stream in self.streams:
                await aclose_iterator(stream)
        finally:
            if self._lease is not None:
                self._lease.release()


class Lease(Protocol):
    """A held share of a limit (``concurrency.ConcurrencyLimiter``); ``release`` is idempotent."""

    def release(self) -> None: ...


class Generation:
    """Turns protocol-neutral requests into engine calls, checked before the first byte."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        lifecycle: Lifecycle,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._model_names = frozenset(settings.model_names)

    def resolve_model(self, requested: str | None) -> str:
        """The model name a request is served under, or ``ModelNotFoundError``."""
        settings = self.settings
        if not requested:
            return settings.default_model
        if requested in self._model_names or settings.accept_unknown_models:
            return requested
        raise ModelNotFoundError(requested)

    def reasons(self, model: str, asked: bool | None) -> bool:
        """Whether the answer starts with reasoning: asked for, or by setting or model name."""
        if asked is not None:
            return asked
        if self.settings.reasoning:
            return True
        pattern = self.settings.reasoning_model_pattern
        if len(model) > MODEL_NAME_CACHED_CHARS:  # a client's name: not kept
            return linear_search(pattern, model) is not None
        return _names_reasoning(pattern, model)

    def image_tokens(self, model: str, detail: str | None, *, param: str) -> int:
        """What one image costs in prompt tokens, or 400 if ``model`` reads text only.

        A fixed cost, as the simulator does not decode images: OpenAI's 85 tokens at
        detail ``low``, and 765 otherwise (a 1024x1024 image at ``high``: 85 plus
        170 for each of four 512-pixel tiles).
        """
        if self.settings.routes.upstream_of(model) is not None:
            # The upstream engine forwards text only: refusing beats dropping the image.
            raise InvalidRequestError(
                f"The model '{model}' is served by an upstream, to which streamapi forwards "
                "text only: it does not accept images.",
                param=param,
            )
        if not linear_search(self.settings.vision_model_pattern, model):
            raise InvalidRequestError(
                f"The model '{model}' only reads text: it does not accept images. "
                "Models whose name matches --vision-model-pattern do.",
                param=param,
            )
        return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS

    def job(
        self,
        templates: Sequence[GenerationRequest],
        *,
        n: int = 1,
        id_prefix: str,
        prompt_tokens: Sequence[int] | None = None,
    ) -> Job:
        """Check ``n`` and the context length, then ``n`` engine requests per template.

        Chat has one template; legacy completions one per prompt, whose choices
        are numbered prompt by prompt. ``prompt_tokens`` overrides the chat count
        (each message's tokens plus framing) where a protocol counts otherwise.
        """
        settings = self.settings
        if n > settings.max_n:
            raise InvalidRequestError(f"n must be at most {settings.max_n}; got {n}.", param="n")
        counts = (
            list(prompt_tokens)
            if prompt_tokens is not None
            else [
                count_chat_tokens(m.content for m in t.messages)
                + sum(m.image_tokens for m in t.messages)
                + sum(count_prompt_tokens(tool.prompt_text) for tool in t.tools)
                for t in templates
            ]
        )
        choices: list[GenerationRequest] = []
        for template, count in zip(templates, counts, strict=True):
            max_tokens = template.max_tokens
            # None for an upstream model whose context length the routes file does
            # not give: the upstream checks it with its own tokenizer.
            limit = self.settings.max_model_len_of(template.model)
            capped = max_tokens
            if limit is not None:
                if count + (max_tokens or 0) > limit or count >= limit:
                    raise ContextLengthExceededError(
                        max_model_len=limit, prompt_tokens=count, max_tokens=max_tokens or 0
                    )
                room = limit - count
                capped = room if max_tokens is None else min(max_tokens, room)
            if n == 1 and template.choice_index == 0 and capped == max_tokens:
                choices.append(template)  # the usual case: the template is the request
            else:
                choices += [replace(template, choice_index=i, max_tokens=capped) for i in range(n)]
        return Job(
            # 32 random hex digits, as uuid4().hex gives, in a fifth of its time (no
            # UUID object): no client reads a version from an id.
            id=f"{id_prefix}{secrets.token_hex(16)}",
            created=int(time.time()),
            model=templates[0].model,
            choices=tuple(choices),
            prompt_tokens=sum(counts),
            n=n,
        )

    async def admit(
        self,
        job: Job,
        *,
        arrived_at: float,
        overrides: TestOverrides | None = None,
        request_id: str | None = None,
        lease: Lease | None = None,
    ) -> Admission:
        """Open the job's engine sequences now, before any byte is sent.

        Each stream's ``open()``, if it has one, is awaited here (all of a job's
        choices at once), so an engine's refusal is an HTTP status. Raises the
        engine's ``APIError`` (``RateLimitError`` when it is full), having
        closed whatever it had opened and released ``lease``: all of a job's
        choices or none.
        """
        if overrides is not None:
            requests = tuple(
                replace(
                    request,
                    request_id=request_id,
                    time_to_first_token_ms=overrides.time_to_first_token_ms,
                    inter_token_latency_ms=overrides.inter_token_latency_ms,
                    output_tokens=overrides.output_tokens,
                )
                for request in job.choices
            )
        else:
            requests = tuple(_with_request_id(request, request_id) for request in job.choices)
        streams: list[AsyncIterator[TokenDelta]] = []
        try:
            for request in requests:
                streams.append(self._engine.stream(request))
            await _open_all(streams)
        except BaseException:
            try:
                for stream in streams:
                    await aclose_iterator(stream)
            finally:
                if lease is not None:
                    lease.release()
            raise
        # The engine has the requests now: the job keeps none (see ``Job``).
        job.choices = ()
        return Admission(job, streams, arrived_at=arrived_at, metrics=self._metrics, lease=lease)

    async def batches(self, admission: Admission) -> AsyncIterator[list[tuple[int, TokenDelta]]]:
        """Every choice's deltas as they come, tagged with the choice index, in batches.

        A batch is a delta waited for and whatever else the engine holds ready
        with it (``take_ready``): a stream can frame a batch as one write. Each
        token is timed for the latency histograms when it is handed on to be
        framed. When the shutdown grace period ends while this waits, it raises
        ``ServiceUnavailableError`` (code ``server_shutting_down``).
        """
        streams = admission.streams
        # Asked once: each asyncio.get_running_loop() costs a getpid() on Python 3.11.
        loop = asyncio.get_running_loop()
        clock = _Stopwatch(admission.arrived_at, self._metrics, len(streams), loop)
        # One choice (the usual case) is read directly: each layer of async
        # generators costs every token a resumption.
        source = streams[0] if len(streams) == 1 else None
        merged = _merge(streams) if source is None else None
        try:
            with self._lifecycle.interruptible(loop):
                if source is not None:
                    take_ready: Callable[[], list[TokenDelta]] | None = getattr(
                        source, "take_ready", None
                    )
                    async for delta in source:
                        ready = take_ready() if take_ready is not None else None
                        batch = (
                            [(0, delta), *[(0, each) for each in ready]] if ready else [(0, delta)]
                        )
                        clock.time(batch)
                        # Neither the deltas nor their batch are kept while the next is
                        # awaited: an open stream holds no delta of its own.
                        del delta, ready
                        yield batch
                        del batch
                elif merged is not None:
                    async for index, delta in merged:
                        batch = [(index, delta)]
                        clock.time(batch)
                        del delta
                        yield batch
                        del batch
        except asyncio.CancelledError as cancel:
            if cancel.args != (DRAIN_EXPIRED,):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise ServiceUnavailableError(
                "Generation aborted: server shutting down.", code="server_shutting_down"
            ) from None
        finally:
            if merged is not None:
                await merged.aclose()
            else:
                await aclose_iterator(streams[0])

    async def whole(self, admission: Admission, work: Awaitable[T]) -> T:
        """A non-streamed answer: an error status counts as an end, not a disconnect."""
        try:
            result = await work
        except Exception:
            admission.ended = True
            raise
        admission.ended = True
        return result

    def stream_error(
        self, exc: Exception, job_id: str, render: Callable[[APIError], Iterable[bytes]]
    ) -> Iterable[bytes]:
        """The frames ending a stream that ``exc`` broke after its first byte (counted, logged)."""
        return render_stream_error(exc, job_id=job_id, metrics=self._metrics, render=render)


# GenerationRequest's fields in the order its constructor takes them (every one is an
# init field): a copy with one field changed is made positionally, in half the time of
# ``dataclasses.replace``, which goes through keywords and the fields' metadata.
_REQUEST_FIELDS = tuple(f.name for f in fields(GenerationRequest) if f.init)
assert len(_REQUEST_FIELDS) == len(fields(GenerationRequest))
_request_values = attrgetter(*_REQUEST_FIELDS)
_REQUEST_ID_AT = _REQUEST_FIELDS.index("request_id")


def _with_request_id(request: GenerationRequest, request_id: str | None) -> GenerationRequest:
    """``replace(request, request_id=request_id)``, done once per request at admission."""
    if request.request_id == request_id:
        return request
    values = list(_request_values(request))
    values[_REQUEST_ID_AT] = request_id
    return GenerationRequest(*values)


@functools.lru_cache(maxsize=MODEL_NAMES_KEPT)
def _names_reasoning(pattern: str, model: str) -> bool:
    """Whether ``model``'s name matches the reasoning pattern (asked once per model name)."""
    return linear_search(pattern, model) is not None


class _Stopwatch:
    """Times one request's tokens for the latency histograms, on the event loop's clock."""

    __slots__ = ("_arrived_at", "_last", "_loop", "_metrics")

    def __init__(
        self,
        arrived_at: float,
        metrics: Metrics | None,
        choices: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._arrived_at = arrived_at
        self._metrics = metrics
        self._loop = loop
        # Each choice's last token time (None before its first), in a list: an open
        # stream holds this, and a dict costs four times the bytes.
        self._last: list[float | None] = [None] * choices

    def time(self, batch: list[tuple[int, TokenDelta]]) -> None:
        """Time the tokens of ``batch``, handed on now, and any request they finish."""
        metrics = self._metrics
        if metrics is None:
            return
        now = self._loop.time()
        for index, delta in batch:
            if delta.is_token:
                last = self._last[index]
                if last is None:
                    metrics.time_to_first_token.observe(now - self._arrived_at)
                else:
                    metrics.inter_token_latency.observe(now - last)
                self._last[index] = now
            if delta.finish_reason is not None:
                metrics.e2e_request_latency.observe(now - self._arrived_at)


async def _merge(
    streams: Sequence[AsyncIterator[TokenDelta]],
) -> AsyncGenerator[tuple[int, TokenDelta]]:
    """Interleave several choices' deltas as they come, tagged with their index."""
    pending: dict[asyncio.Future[TokenDelta], int] = {
        asyncio.ensure_future(anext(stream)): index for index, stream in enumerate(streams)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                index = pending.pop(future)
                try:
                    delta = future.result()
                except StopAsyncIteration:
                    continue
                yield index, delta
                pending[asyncio.ensure_future(anext(streams[index]))] = index
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await aclose_iterator(stream)


async def _open_all(streams: Sequence[AsyncIterator[TokenDelta]]) -> None:
    """Await every stream's ``open()`` at once; the first failure cancels the others."""
    opens: list[Callable[[], Awaitable[None]]] = [
        opener for stream in streams if (opener := getattr(stream, "open", None)) is not None
    ]
    if len(opens) <= 1:
        for opener in opens:
            await opener()
        return
    tasks = [asyncio.ensure_future(opener()) for opener in opens]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
