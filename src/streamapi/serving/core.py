"""What every protocol shares: checked engine requests, running the choices, usage."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from jsonschema import SchemaError, validators

from streamapi.engines.protocol import Engine, GenerationRequest, TokenDelta, ToolSpec, UsageReport
from streamapi.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from streamapi.lifecycle import DRAIN_EXPIRED, Lifecycle
from streamapi.metrics import Metrics
from streamapi.settings import Settings
from streamapi.text.tokenizer import count_chat_tokens, count_tokens

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    """A checked request: one engine request per choice, and what to report."""

    id: str
    created: int
    model: str
    choices: tuple[GenerationRequest, ...]
    prompt_tokens: int
    n: int = 1
    """Choices per prompt: choice ``i`` answers prompt ``i // n``."""


@dataclass(slots=True)
class ToolCallRecord:
    """One tool call as it accumulates."""

    id: str
    name: str
    arguments: list[str]

    @property
    def arguments_text(self) -> str:
        return "".join(self.arguments)


@dataclass(slots=True)
class Transcript:
    """Everything one choice generated, gathered from its deltas."""

    content: list[str]
    reasoning: list[str]
    tool_calls: list[ToolCallRecord]
    logprobs: list[TokenDelta]
    finish_reason: str | None = None

    @classmethod
    def empty(cls) -> Transcript:
        return cls([], [], [], [])

    def add(self, delta: TokenDelta) -> None:
        if delta.tool_call is not None:
            self.tool_calls.append(ToolCallRecord(delta.tool_call.id, delta.tool_call.name, []))
        elif delta.channel == "tool_call":
            self.tool_calls[delta.tool_index].arguments.append(delta.text)
        elif delta.channel == "reasoning":
            self.reasoning.append(delta.text)
        else:
            self.content.append(delta.text)
            if delta.logprob is not None:
                self.logprobs.append(delta)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


@dataclass(slots=True)
class Usage:
    """Tokens generated so far, counted as the deltas go by.

    One delta is one token, unless a choice's last delta carries the engine's
    own ``UsageReport`` (an upstream's chunks may hold several tokens): its
    counts then replace what was counted for that choice, and reported prompt
    tokens replace ours once every prompt of the job has reported (each prompt
    counted once however many choices answer it, as OpenAI counts ``n``).
    """

    prompt_tokens: int
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    n: int = 1
    prompts: int = 1
    _counted: dict[int, tuple[int, int]] = field(default_factory=dict)
    _reported_prompts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> Usage:
        """Empty usage for ``job``, with its prompt tokens counted."""
        return cls(job.prompt_tokens, n=job.n, prompts=max(1, len(job.choices) // job.n))

    def add(self, delta: TokenDelta, index: int = 0) -> None:
        """Count ``delta`` of choice ``index``."""
        if delta.cached_prompt_tokens:
            # Every choice shares the prompt: its cached part is counted once.
            self.cached_tokens = max(self.cached_tokens, delta.cached_prompt_tokens)
        if delta.is_token:
            tokens, reasoning = self._counted.get(index, (0, 0))
            is_reasoning = delta.channel == "reasoning"
            self._counted[index] = (tokens + 1, reasoning + is_reasoning)
            self.completion_tokens += 1
            self.reasoning_tokens += is_reasoning
        if delta.usage is not None:
            self._report(index, delta.usage)

    def _report(self, index: int, report: UsageReport) -> None:
        tokens, reasoning = self._counted.get(index, (0, 0))
        self.completion_tokens += report.completion_tokens - tokens
        if report.reasoning_tokens is not None:
            self.reasoning_tokens += report.reasoning_tokens - reasoning
            reasoning = report.reasoning_tokens
        self._counted[index] = (report.completion_tokens, reasoning)
        if report.cached_tokens is not None:
            self.cached_tokens = max(self.cached_tokens, report.cached_tokens)
        if report.prompt_tokens is not None:
            self._reported_prompts[index // self.n] = report.prompt_tokens
            if len(self._reported_prompts) == self.prompts:
                self.prompt_tokens = sum(self._reported_prompts.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


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
                await _aclose(stream)
        finally:
            if self._lease is not None:
                self._lease.release()


class Lease(Protocol):
    """A held share of a limit (``limits.ConcurrencyLimiter``); ``release`` is idempotent."""

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
        return self.settings.reasoning or bool(
            re.search(self.settings.reasoning_model_pattern, model)
        )

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
                + sum(count_tokens(json.dumps(_tool_schema(tool))) for tool in t.tools)
                for t in templates
            ]
        )
        choices: list[GenerationRequest] = []
        for template, count in zip(templates, counts, strict=True):
            max_tokens = template.max_tokens
            # None for an upstream model whose context length the routes file does
            # not give: the upstream checks it with its own tokenizer.
            limit = settings.max_model_len_of(template.model)
            capped = max_tokens
            if limit is not None:
                if count + (max_tokens or 0) > limit or count >= limit:
                    raise ContextLengthExceededError(
                        max_model_len=limit, prompt_tokens=count, max_tokens=max_tokens or 0
                    )
                room = limit - count
                capped = room if max_tokens is None else min(max_tokens, room)
            choices += [replace(template, choice_index=i, max_tokens=capped) for i in range(n)]
        return Job(
            id=f"{id_prefix}{uuid.uuid4().hex}",
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
        requests = tuple(replace(request, request_id=request_id) for request in job.choices)
        if overrides is not None:
            requests = tuple(
                replace(
                    request,
                    time_to_first_token_ms=overrides.time_to_first_token_ms,
                    inter_token_latency_ms=overrides.inter_token_latency_ms,
                    output_tokens=overrides.output_tokens,
                )
                for request in requests
            )
        streams: list[AsyncIterator[TokenDelta]] = []
        try:
            for request in requests:
                streams.append(self._engine.stream(request))
            await _open_all(streams)
        except BaseException:
            try:
                for stream in streams:
                    await _aclose(stream)
            finally:
                if lease is not None:
                    lease.release()
            raise
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
        clock = _Stopwatch(admission.arrived_at, self._metrics)
        # One choice (the usual case) is read directly: each layer of async
        # generators costs every token a resumption.
        source = streams[0] if len(streams) == 1 else None
        merged = _merge(streams) if source is None else None
        try:
            with self._lifecycle.interruptible():
                if source is not None:
                    take_ready: Callable[[], list[TokenDelta]] | None = getattr(
                        source, "take_ready", None
                    )
                    async for delta in source:
                        batch = [(0, delta)]
                        ready = take_ready() if take_ready is not None else None
                        if ready:
                            batch += [(0, each) for each in ready]
                        for _, each in batch:
                            if each.is_token:
                                clock.token(0)
                            if each.finish_reason is not None:
                                clock.finish()
                        yield batch
                elif merged is not None:
                    async for index, delta in merged:
                        if delta.is_token:
                            clock.token(index)
                        if delta.finish_reason is not None:
                            clock.finish()
                        yield [(index, delta)]
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
                await _aclose(streams[0])

    async def whole(self, admission: Admission, work: Awaitable[T]) -> T:
        """A non-streamed answer: an error status counts as an end, not a disconnect."""
        try:
            result = await work
        except Exception:
            admission.ended = True
            raise
        admission.ended = True
        return result

    def count_error(self, error: APIError) -> None:
        """Count an error sent in-stream (after the first byte)."""
        if self._metrics is not None:
            self._metrics.error(error.type, error.code, in_stream=True)


class _Stopwatch:
    """Times one request's tokens for the latency histograms, on the event loop's clock."""

    def __init__(self, arrived_at: float, metrics: Metrics | None) -> None:
        self._arrived_at = arrived_at
        self._metrics = metrics
        # Read once: the clock is read per token, on the hot path.
        self._clock = asyncio.get_running_loop().time
        self._last: dict[int, float] = {}

    def token(self, index: int) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        now = self._clock()
        last = self._last.get(index)
        if last is None:
            metrics.time_to_first_token.observe(now - self._arrived_at)
        else:
            metrics.inter_token_latency.observe(now - last)
        self._last[index] = now

    def finish(self) -> None:
        if self._metrics is not None:
            self._metrics.e2e_request_latency.observe(self._clock() - self._arrived_at)


def check_schema(schema: Mapping[str, Any], *, param: str) -> None:
    """400 naming the problem when ``schema`` is not a valid JSON Schema.

    Every ``$ref`` must point inside the schema: nothing is fetched from elsewhere.
    """
    try:
        validators.validator_for(schema).check_schema(dict(schema))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        detail = f" at '{where}'" if where else ""
        raise InvalidRequestError(
            f"Invalid JSON Schema{detail}: {exc.message}", param=param
        ) from None
    for ref in _refs(schema):
        if not _resolves(schema, ref):
            raise InvalidRequestError(
                f"Invalid JSON Schema: the reference '{ref}' does not point inside the schema.",
                param=param,
            )


def _refs(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolves(root: Mapping[str, Any], ref: str) -> bool:
    if not ref.startswith("#"):
        return False
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def tool_spec(
    name: str, description: str | None, parameters: Mapping[str, Any] | None, *, param: str
) -> ToolSpec:
    """A checked tool definition."""
    schema = parameters if parameters is not None else {"type": "object", "properties": {}}
    check_schema(schema, param=param)
    return ToolSpec(name=name, description=description or "", parameters=schema)


def check_tool_choice(tools: Sequence[ToolSpec], choice: str, *, param: str) -> None:
    """400 when ``tool_choice`` cannot be honoured with these tools."""
    if choice in ("none", "auto"):
        return
    if not tools:
        raise InvalidRequestError(
            f"tool_choice '{choice}' is only allowed when tools are given.", param=param
        )
    if choice != "required" and choice not in {t.name for t in tools}:
        raise InvalidRequestError(
            f"tool_choice names the function '{choice}', which is not among the tools.",
            param=param,
        )


def _tool_schema(tool: ToolSpec) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}


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


async def _aclose(stream: AsyncIterator[TokenDelta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
