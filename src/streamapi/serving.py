"""Chat completions: engine token deltas become OpenAI chunks, completions and usage.

This is where the protocol's rules live: one ``id`` and ``created`` per
completion, the role chunk once per choice and only after its first token
exists, exactly one ``finish_reason`` per choice, the usage chunk last, and
errors after the first byte sent in-stream followed by ``[DONE]``. It knows
the engine and the wire models, not HTTP.

A request's engine sequences are opened by ``admit``, before the response
exists, so that a full engine is an HTTP 429 and never an in-stream error; the
``Admission`` it returns must be closed exactly once, however the request ends.
The client-side latencies (time to first token, inter-token, end-to-end) are
recorded here, where frames are handed to the response, against the event
loop's monotonic clock and the request's arrival.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from streamapi import sse
from streamapi.engines import ChatMessage, Engine, GenerationRequest, TokenDelta
from streamapi.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from streamapi.lifecycle import DRAIN_EXPIRED, Lifecycle
from streamapi.metrics import Metrics
from streamapi.schemas import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    PromptTokensDetails,
    TextContentPart,
)
from streamapi.settings import Settings
from streamapi.text.tokenizer import count_chat_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TestOverrides:
    """Per-request timing and length a test asked for (``--enable-latency-headers``)."""

    time_to_first_token_ms: float | None = None
    inter_token_latency_ms: float | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatJob:
    """A validated chat request: one engine request per choice, and how to report it."""

    id: str
    created: int
    model: str
    choices: tuple[GenerationRequest, ...]
    prompt_tokens: int
    include_usage: bool
    continuous_usage: bool


class Admission:
    """A chat job whose engine sequences are open; ``aclose`` releases them.

    ``aclose`` is idempotent, so every way a request can end may call it: the
    stream's own ``finally``, the response's ``on_finish`` (which runs even when
    the client left before the stream's first step, sse-starlette #156), and the
    non-streamed route's ``finally``. A job closed before serving marked it
    ``ended`` counts as a client disconnect.
    """

    def __init__(
        self,
        job: ChatJob,
        streams: list[AsyncIterator[TokenDelta]],
        *,
        arrived_at: float,
        metrics: Metrics | None,
    ) -> None:
        self.job = job
        self.streams = streams
        self.arrived_at = arrived_at
        self.ended = False
        self._metrics = metrics
        self._closed = False

    async def aclose(self) -> None:
        """Release every engine sequence of the job (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        if not self.ended and self._metrics is not None:
            self._metrics.client_disconnects.inc()
        for stream in self.streams:
            await _aclose(stream)


class ChatService:
    """Turns chat requests into engine calls and engine output into OpenAI responses."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        lifecycle: Lifecycle,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._lifecycle = lifecycle
        self._metrics = metrics

    def prepare(
        self, request: ChatCompletionRequest, overrides: TestOverrides | None = None
    ) -> ChatJob:
        """Check everything that can fail before the first byte; raise ``APIError`` if not."""
        settings = self._settings
        if request.stream_options is not None and not request.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true.", param="stream_options"
            )
        model = self.resolve_model(request.model)
        messages = tuple(_flatten(i, m.role, m.content) for i, m in enumerate(request.messages))
        n = request.n or 1
        if n > settings.max_n:
            raise InvalidRequestError(f"n must be at most {settings.max_n}; got {n}.", param="n")
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        prompt_tokens = count_chat_tokens(m.content for m in messages)
        max_tokens = request.max_completion_tokens or request.max_tokens
        if prompt_tokens + (max_tokens or 0) > settings.max_model_len or (
            prompt_tokens >= settings.max_model_len
        ):
            raise ContextLengthExceededError(
                max_model_len=settings.max_model_len,
                prompt_tokens=prompt_tokens,
                max_tokens=max_tokens or 0,
            )
        room = settings.max_model_len - prompt_tokens
        choices = tuple(
            GenerationRequest(
                model=model,
                messages=messages,
                max_tokens=min(max_tokens or room, room),
                stop=stop,
                seed=request.seed,
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                choice_index=index,
                ignore_eos=bool(request.ignore_eos),
                time_to_first_token_ms=overrides.time_to_first_token_ms if overrides else None,
                inter_token_latency_ms=overrides.inter_token_latency_ms if overrides else None,
                output_tokens=overrides.output_tokens if overrides else None,
            )
            for index in range(n)
        )
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        return ChatJob(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model,
            choices=choices,
            prompt_tokens=prompt_tokens,
            include_usage=include_usage,
            continuous_usage=include_usage and bool(options and options.continuous_usage_stats),
        )

    def resolve_model(self, requested: str | None) -> str:
        """The model name a request is served under, or ``ModelNotFoundError``."""
        settings = self._settings
        if requested is None or requested == "":
            return settings.default_model
        if requested in settings.served_model_names or settings.accept_unknown_models:
            return requested
        raise ModelNotFoundError(requested)

    async def admit(self, job: ChatJob, *, arrived_at: float) -> Admission:
        """Open the job's engine sequences now, before any byte is sent.

        Raises the engine's ``APIError`` (``RateLimitError`` when it is full),
        having closed whatever it had opened: all of a job's choices or none.
        """
        streams: list[AsyncIterator[TokenDelta]] = []
        try:
            for request in job.choices:
                streams.append(self._engine.stream(request))
        except BaseException:
            for stream in streams:
                await _aclose(stream)
            raise
        return Admission(job, streams, arrived_at=arrived_at, metrics=self._metrics)

    async def stream(self, admission: Admission) -> AsyncIterator[bytes]:
        """SSE frames of a streamed chat completion, ending with ``[DONE]``."""
        job = admission.job
        frames = _ChunkWriter(job)
        clock = _Stopwatch(admission.arrived_at, self._metrics)
        per_event = self._settings.tokens_per_event
        pending: dict[int, list[str]] = {}
        try:
            try:
                async for index, delta in self._deltas(admission):
                    if index not in frames.started:
                        yield frames.role(index)
                    if index == 0 and delta.cached_prompt_tokens:
                        frames.cached_tokens = delta.cached_prompt_tokens
                    if delta.text:
                        frames.completion_tokens += 1
                        texts = pending.setdefault(index, [])
                        texts.append(delta.text)
                        if len(texts) >= per_event:
                            clock.content(index)
                            yield frames.content(index, "".join(texts))
                            texts.clear()
                    if delta.finish_reason is not None:
                        if pending.get(index):
                            clock.content(index)
                            yield frames.content(index, "".join(pending.pop(index)))
                        clock.finish()
                        yield frames.finish(index, delta.finish_reason)
                if job.include_usage:
                    yield frames.usage()
            except APIError as error:
                # The status line is long gone: the error becomes an event, then [DONE].
                logger.warning("%s ended in-stream: %s", job.id, error.message)
                self._count_error(error)
                yield sse.encode_data(error.to_dict())
            except Exception:
                logger.exception("%s failed mid-stream", job.id)
                hidden = APIError("The server had an error while generating.")
                self._count_error(hidden)
                yield sse.encode_data(hidden.to_dict())
            admission.ended = True
            yield sse.DONE
        finally:
            await admission.aclose()

    async def complete(self, admission: Admission) -> ChatCompletion:
        """The whole completion at once (``stream`` false)."""
        job = admission.job
        clock = _Stopwatch(admission.arrived_at, self._metrics)
        texts: list[list[str]] = [[] for _ in job.choices]
        finish: list[Any] = [None] * len(job.choices)
        completion_tokens = cached_tokens = 0
        try:
            async for index, delta in self._deltas(admission):
                if index == 0 and delta.cached_prompt_tokens:
                    cached_tokens = delta.cached_prompt_tokens
                if delta.text:
                    # No client sees these tokens before the end; they are timed
                    # when serving receives them, as vLLM times its engine's output.
                    clock.content(index)
                    texts[index].append(delta.text)
                    completion_tokens += 1
                if delta.finish_reason is not None:
                    clock.finish()
                    finish[index] = delta.finish_reason
        except Exception:
            admission.ended = True  # answered with an error status, not abandoned
            raise
        admission.ended = True
        return ChatCompletion(
            id=job.id,
            created=job.created,
            model=job.model,
            choices=[
                Choice(
                    index=i,
                    message=ChatCompletionMessage(content="".join(parts)),
                    finish_reason=finish[i],
                )
                for i, parts in enumerate(texts)
            ],
            usage=_usage(job.prompt_tokens, completion_tokens, cached_tokens),
        )

    async def _deltas(self, admission: Admission) -> AsyncIterator[tuple[int, TokenDelta]]:
        streams = admission.streams
        source = _single(streams[0]) if len(streams) == 1 else _merge(streams)
        try:
            with self._lifecycle.interruptible():
                async for item in source:
                    yield item
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
            await source.aclose()

    def _count_error(self, error: APIError) -> None:
        if self._metrics is not None:
            self._metrics.error(error.type, error.code, in_stream=True)


class _Stopwatch:
    """Times one request's sequences for the latency histograms, on the event loop's clock."""

    def __init__(self, arrived_at: float, metrics: Metrics | None) -> None:
        self._arrived_at = arrived_at
        self._metrics = metrics
        self._last: dict[int, float] = {}

    def content(self, index: int) -> None:
        """A content frame of choice ``index`` is handed over now."""
        metrics = self._metrics
        if metrics is None:
            return
        now = asyncio.get_running_loop().time()
        last = self._last.get(index)
        if last is None:
            metrics.time_to_first_token.observe(now - self._arrived_at)
        else:
            metrics.inter_token_latency.observe(now - last)
        self._last[index] = now

    def finish(self) -> None:
        """A choice's last frame is handed over now."""
        if self._metrics is not None:
            now = asyncio.get_running_loop().time()
            self._metrics.e2e_request_latency.observe(now - self._arrived_at)


class _ChunkWriter:
    """Encodes the chunks of one completion; counts tokens for usage."""

    def __init__(self, job: ChatJob) -> None:
        self._job = job
        self._head: dict[str, Any] = {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": None,
        }
        self.started: set[int] = set()
        self.completion_tokens = 0
        self.cached_tokens = 0

    def role(self, index: int) -> bytes:
        self.started.add(index)
        return self._chunk(index, {"role": "assistant", "content": ""}, None)

    def content(self, index: int, text: str) -> bytes:
        return self._chunk(index, {"content": text}, None)

    def finish(self, index: int, reason: str) -> bytes:
        return self._chunk(index, {}, reason)

    def usage(self) -> bytes:
        return sse.encode_data({**self._head, "choices": [], "usage": self._usage()})

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        chunk = {
            **self._head,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self._job.include_usage:
            # OpenAI sends usage: null on every chunk but the last when usage was asked
            # for; vLLM's continuous_usage_stats puts running counts there instead.
            chunk["usage"] = self._usage() if self._job.continuous_usage else None
        return sse.encode_data(chunk)

    def _usage(self) -> dict[str, Any]:
        return _usage(
            self._job.prompt_tokens, self.completion_tokens, self.cached_tokens
        ).model_dump()


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


def _flatten(index: int, role: str, content: object) -> ChatMessage:
    if content is None:
        return ChatMessage(role, "")
    if isinstance(content, str):
        return ChatMessage(role, content)
    texts: list[str] = []
    for part_index, part in enumerate(content if isinstance(content, list) else []):
        if not isinstance(part, TextContentPart):
            raise InvalidRequestError(
                f"This model only reads text: content parts of type '{part.type}' are not "
                "supported.",
                param=f"messages[{index}].content[{part_index}].type",
            )
        texts.append(part.text)
    return ChatMessage(role, "\n".join(texts))


async def _single(stream: AsyncIterator[TokenDelta]) -> AsyncGenerator[tuple[int, TokenDelta]]:
    try:
        async for delta in stream:
            yield 0, delta
    finally:
        await _aclose(stream)


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
            await _aclose(stream)


async def _aclose(stream: AsyncIterator[TokenDelta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
