"""Chat completions: engine token deltas become OpenAI chunks, completions and usage.

This is where the protocol's rules live: one ``id`` and ``created`` per
completion, the role chunk once per choice and only after its first token
exists, exactly one ``finish_reason`` per choice, the usage chunk last, and
errors after the first byte sent in-stream followed by ``[DONE]``. It knows
the engine and the wire models, not HTTP.
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
from streamapi.schemas import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    TextContentPart,
)
from streamapi.settings import Settings
from streamapi.text.tokenizer import count_chat_tokens

logger = logging.getLogger(__name__)


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


class ChatService:
    """Turns chat requests into engine calls and engine output into OpenAI responses."""

    def __init__(self, settings: Settings, engine: Engine, lifecycle: Lifecycle) -> None:
        self._settings = settings
        self._engine = engine
        self._lifecycle = lifecycle

    def prepare(self, request: ChatCompletionRequest) -> ChatJob:
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

    async def stream(self, job: ChatJob) -> AsyncIterator[bytes]:
        """SSE frames of a streamed chat completion, ending with ``[DONE]``."""
        frames = _ChunkWriter(job)
        per_event = self._settings.tokens_per_event
        pending: dict[int, list[str]] = {}
        try:
            async for index, delta in self._deltas(job):
                if index not in frames.started:
                    yield frames.role(index)
                if delta.text:
                    frames.completion_tokens += 1
                    texts = pending.setdefault(index, [])
                    texts.append(delta.text)
                    if len(texts) >= per_event:
                        yield frames.content(index, "".join(texts))
                        texts.clear()
                if delta.finish_reason is not None:
                    if pending.get(index):
                        yield frames.content(index, "".join(pending.pop(index)))
                    yield frames.finish(index, delta.finish_reason)
            if job.include_usage:
                yield frames.usage()
        except APIError as error:
            # The status line is long gone: the error becomes an event, then [DONE].
            logger.warning("%s ended in-stream: %s", job.id, error.message)
            yield sse.encode_data(error.to_dict())
        except Exception:
            logger.exception("%s failed mid-stream", job.id)
            yield sse.encode_data(APIError("The server had an error while generating.").to_dict())
        yield sse.DONE

    async def complete(self, job: ChatJob) -> ChatCompletion:
        """The whole completion at once (``stream`` false)."""
        texts: list[list[str]] = [[] for _ in job.choices]
        finish: list[Any] = [None] * len(job.choices)
        completion_tokens = 0
        async for index, delta in self._deltas(job):
            if delta.text:
                texts[index].append(delta.text)
                completion_tokens += 1
            if delta.finish_reason is not None:
                finish[index] = delta.finish_reason
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
            usage=_usage(job.prompt_tokens, completion_tokens),
        )

    async def _deltas(self, job: ChatJob) -> AsyncIterator[tuple[int, TokenDelta]]:
        streams = [self._engine.stream(request) for request in job.choices]
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

    def _usage(self) -> dict[str, int]:
        return _usage(self._job.prompt_tokens, self.completion_tokens).model_dump()


def _usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
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
