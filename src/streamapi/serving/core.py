"""What every protocol shares: checked engine requests, running the choices, usage."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jsonschema import SchemaError, validators

from streamapi.engines import Engine, GenerationRequest, TokenDelta, ToolSpec
from streamapi.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from streamapi.lifecycle import DRAIN_EXPIRED, Lifecycle
from streamapi.settings import Settings
from streamapi.text.tokenizer import count_chat_tokens, count_tokens


@dataclass(frozen=True, slots=True)
class Job:
    """A checked request: one engine request per choice, and what to report."""

    id: str
    created: int
    model: str
    choices: tuple[GenerationRequest, ...]
    prompt_tokens: int


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
    """Tokens generated so far, counted as the deltas go by."""

    prompt_tokens: int
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, delta: TokenDelta) -> None:
        if delta.is_token:
            self.completion_tokens += 1
            if delta.channel == "reasoning":
                self.reasoning_tokens += 1

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Generation:
    """Turns protocol-neutral requests into engine calls, checked before the first byte."""

    def __init__(self, settings: Settings, engine: Engine, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self._engine = engine
        self._lifecycle = lifecycle

    def resolve_model(self, requested: str | None) -> str:
        """The model name a request is served under, or ``ModelNotFoundError``."""
        settings = self.settings
        if not requested:
            return settings.default_model
        if requested in settings.served_model_names or settings.accept_unknown_models:
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
            if count + (max_tokens or 0) > settings.max_model_len or (
                count >= settings.max_model_len
            ):
                raise ContextLengthExceededError(
                    max_model_len=settings.max_model_len,
                    prompt_tokens=count,
                    max_tokens=max_tokens or 0,
                )
            room = settings.max_model_len - count
            capped = room if max_tokens is None else min(max_tokens, room)
            choices += [replace(template, choice_index=i, max_tokens=capped) for i in range(n)]
        return Job(
            id=f"{id_prefix}{uuid.uuid4().hex}",
            created=int(time.time()),
            model=templates[0].model,
            choices=tuple(choices),
            prompt_tokens=sum(counts),
        )

    async def deltas(self, job: Job) -> AsyncIterator[tuple[int, TokenDelta]]:
        """Every choice's deltas as they come, tagged with the choice index.

        When the shutdown grace period ends while this waits, it raises
        ``ServiceUnavailableError`` (code ``server_shutting_down``).
        """
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


def check_schema(schema: Mapping[str, Any], *, param: str) -> None:
    """400 naming the problem when ``schema`` is not a valid JSON Schema."""
    try:
        validators.validator_for(schema).check_schema(dict(schema))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        detail = f" at '{where}'" if where else ""
        raise InvalidRequestError(
            f"Invalid JSON Schema{detail}: {exc.message}", param=param
        ) from None


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
