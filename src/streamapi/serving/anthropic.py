"""Anthropic Messages (``/v1/messages``): content blocks and their named-event stream.

A stream is ``message_start``, a ``ping``, then per content block (thinking,
text or tool_use) ``content_block_start``, its deltas and
``content_block_stop``, then ``message_delta`` (stop reason and cumulative
output tokens) and ``message_stop``. Every event has an ``event:`` line
matching its ``type``: the Anthropic SDK drops unnamed events.

Usage counts prompt caching as Anthropic does (``serving.prompt_cache``):
``input_tokens`` excludes the tokens read from the cache
(``cache_read_input_tokens``) and those written to it
(``cache_creation_input_tokens``: the prompt up to the last ``cache_control``
breakpoint, less what was read). Both are known when the request is admitted, so
``message_start`` and ``message_delta`` carry the same counts.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from streamapi import sse
from streamapi.engines.protocol import (
    GenerationRequest,
    OutputFormat,
    PromptMessage,
    PromptToolCall,
    TokenDelta,
    ToolSpec,
)
from streamapi.errors import APIError, InvalidRequestError
from streamapi.schemas.anthropic import (
    AnyTool,
    ContextManagement,
    DocumentBlock,
    ImageBlock,
    MessageCreateRequest,
    MessageParam,
    SearchResultBlock,
    ServerResultBlock,
    ServerToolUseBlock,
    TextBlock,
    Tool,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
    VersionedTool,
)
from streamapi.serving.client_tools import anthropic_client_tool
from streamapi.serving.generation import Admission, Generation, Job
from streamapi.serving.prompt_cache import (
    LONG_TTL_S,
    TTL_S,
    Boundary,
    Breakpoint,
    CacheUse,
    PromptCache,
    boundaries,
    minimum_cacheable_tokens,
)
from streamapi.serving.schema_checks import check_schema, check_tool_choice, tool_spec
from streamapi.serving.usage import Usage
from streamapi.text.tokenizer import count_tokens

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_BLOCK_KINDS = {"content": "text", "reasoning": "thinking", "tool_call": "tool_use"}


@dataclass(frozen=True, slots=True)
class MessageJob:
    """A checked Messages request."""

    job: Job
    cache_points: tuple[Boundary, ...] = ()
    """The prompt's block boundaries (``prompt_cache.boundaries``)."""
    cache_marks: tuple[Breakpoint, ...] = ()
    """Its ``cache_control`` breakpoints."""
    omit_thinking: bool = False
    """``thinking.display`` is ``omitted``: thinking blocks carry no text."""
    context_management: dict[str, Any] | None = None
    """What the request's ``context_management`` edits applied (None: it had none)."""


class MessageService:
    """Serves ``/v1/messages``."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation
        self._cache = PromptCache()

    def prepare(self, request: MessageCreateRequest) -> MessageJob:
        """Check everything that can fail before the first byte."""
        generation = self._generation
        model = generation.resolve_model(request.model)
        messages, marked, changes = _conversation(
            request.system,
            request.messages,
            lambda param: generation.image_tokens(model, None, param=param),
        )
        tools = _tools(request, changes)
        choice = request.tool_choice
        if choice is None:
            tool_choice = "auto" if tools else "none"
        elif choice.type == "tool":
            if not choice.name:
                raise InvalidRequestError(
                    "tool_choice of type 'tool' needs a name.", param="tool_choice.name"
                )
            tool_choice = choice.name
        else:
            tool_choice = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        check_tool_choice(tools, tool_choice, param="tool_choice")
        thinking = request.thinking
        asked = (
            None if thinking is None or thinking.type == "adaptive" else thinking.type == "enabled"
        )
        template = GenerationRequest(
            model=model,
            messages=messages,
            max_tokens=request.max_tokens,
            stop=tuple(request.stop_sequences or ()),
            seed=request.seed,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(0, request.top_k or 0),
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=not (choice and choice.disable_parallel_tool_use),
            output_format=_output_format(request),
            reasoning=generation.reasons(model, asked),
        )
        job = generation.job([template], id_prefix="msg_")
        # Tools come first in the prompt, then the messages (the system prompt first).
        marks = [
            Breakpoint(i, _ttl_s(t)) for i, t in enumerate(request.tools or ()) if _cache_control(t)
        ]
        marks += [Breakpoint(len(tools) + count - 1, ttl) for count, ttl in marked if count]
        automatic = (request.model_extra or {}).get("cache_control")
        last = len(tools) + len(messages) - 1
        if automatic and last >= 0:
            marks.append(Breakpoint(last, _ttl_s(automatic)))  # the whole prompt
        # No caching asked for: no need to measure the prompt.
        points = tuple(boundaries(model, tools, messages)) if marks else ()
        return MessageJob(
            job,
            points,
            tuple(marks),
            omit_thinking=thinking is not None and thinking.display == "omitted",
            context_management=_applied_edits(request, job.prompt_tokens),
        )

    def _cache_use(self, message: MessageJob) -> CacheUse:
        """Tokens read from and written to the prompt cache by this request, now."""
        minimum = minimum_cacheable_tokens(message.job.model)
        return self._cache.use(message.cache_points, message.cache_marks, minimum)

    async def stream(self, message: MessageJob, admission: Admission) -> AsyncIterator[bytes]:
        """The named-event stream, from ``message_start`` to ``message_stop``."""
        job = message.job
        blocks = _Blocks(message, self._cache_use(message))
        try:
            start = {**blocks.message_body(), "content": [], "stop_reason": None}
            yield _event("message_start", message=start)
            yield _event("ping")
            async for batch in self._generation.batches(admission):
                for _, delta in batch:
                    for frame in blocks.add(delta):
                        yield frame
            for frame in blocks.close_block():
                yield frame
            managed = (
                {}
                if message.context_management is None
                else {"context_management": message.context_management}
            )
            yield _event(
                "message_delta",
                delta={"stop_reason": blocks.stop_reason, "stop_sequence": blocks.stop_sequence},
                usage=blocks.usage_body(),
                **managed,
            )
            yield _event("message_stop")
        except Exception as exc:
            for frame in self._generation.stream_error(exc, job.id, _render_error):
                yield frame

    async def complete(self, message: MessageJob, admission: Admission) -> dict[str, Any]:
        """The whole Message (``stream`` false)."""
        blocks = _Blocks(message, self._cache_use(message))
        async for batch in self._generation.batches(admission):
            for _, delta in batch:
                blocks.add(delta)
        blocks.close_block()
        return blocks.message_body()


@dataclass(slots=True)
class _Block:
    index: int
    kind: str
    texts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""

    @property
    def text(self) -> str:
        return "".join(self.texts)


class _Blocks:
    """Builds one message's content blocks and their events."""

    def __init__(self, message: MessageJob, cache: CacheUse) -> None:
        self._job = job = message.job
        self._cache = cache
        self._omit_thinking = message.omit_thinking
        self._managed = message.context_management
        self._block: _Block | None = None
        self.content: list[dict[str, Any]] = []
        self.usage = Usage.of(job)
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None

    def add(self, delta: TokenDelta) -> list[bytes]:
        self.usage.add(delta)
        if delta.finish_reason is not None:
            self.stop_reason = _STOP_REASONS[delta.finish_reason]
            if delta.matched_stop is not None:
                self.stop_reason, self.stop_sequence = "stop_sequence", delta.matched_stop
        if not delta.is_token:
            return []
        kind = _BLOCK_KINDS[delta.channel]
        frames: list[bytes] = []
        if delta.tool_call is not None or self._block is None or self._block.kind != kind:
            frames += self.close_block()
            frames += self._open(kind, delta)
            if delta.tool_call is not None:
                return frames
        block = self._block
        assert block is not None
        block.texts.append(delta.text)
        if kind == "thinking" and self._omit_thinking:
            return frames  # display "omitted": the thinking is not sent, its signature is
        if kind == "text":
            body = {"type": "text_delta", "text": delta.text}
        elif kind == "thinking":
            body = {"type": "thinking_delta", "thinking": delta.text}
        else:
            body = {"type": "input_json_delta", "partial_json": delta.text}
        frames.append(_event("content_block_delta", index=block.index, delta=body))
        return frames

    def close_block(self) -> list[bytes]:
        block, self._block = self._block, None
        if block is None:
            return []
        frames = []
        done = _block_body(block)
        if block.kind == "thinking" and self._omit_thinking:
            done["thinking"] = ""
        if block.kind == "thinking":
            signature = {"type": "signature_delta", "signature": done["signature"]}
            frames.append(_event("content_block_delta", index=block.index, delta=signature))
        self.content.append(done)
        frames.append(_event("content_block_stop", index=block.index))
        return frames

    def message_body(self) -> dict[str, Any]:
        managed = {} if self._managed is None else {"context_management": self._managed}
        return {
            **managed,
            "id": self._job.id,
            "type": "message",
            "role": "assistant",
            "model": self._job.model,
            "content": list(self.content),
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": {**self.usage_body(), "cache_creation": self._cache_creation()},
        }

    def _cache_creation(self) -> dict[str, int]:
        """What was written, by lifetime (the Message's ``usage.cache_creation``)."""
        written = self.usage_body()["cache_creation_input_tokens"]
        hour = min(self._cache.written_1h, written)
        return {"ephemeral_5m_input_tokens": written - hour, "ephemeral_1h_input_tokens": hour}

    def usage_body(self) -> dict[str, int]:
        """Anthropic's usage: ``input_tokens`` are the prompt tokens neither read nor written."""
        usage = self.usage
        read = min(self._cache.read, usage.prompt_tokens)
        written = min(self._cache.written, usage.prompt_tokens - read)
        return {
            "input_tokens": usage.prompt_tokens - read - written,
            "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        }

    def _open(self, kind: str, delta: TokenDelta) -> list[bytes]:
        block = _Block(len(self.content), kind)
        if delta.tool_call is not None:
            block.id = "toolu_" + delta.tool_call.id.removeprefix("call_")
            block.name = delta.tool_call.name
        self._block = block
        opening: dict[str, Any]
        if kind == "text":
            opening = {"type": "text", "text": ""}
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            opening = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        return [_event("content_block_start", index=block.index, content_block=opening)]


def _block_body(block: _Block) -> dict[str, Any]:
    if block.kind == "text":
        return {"type": "text", "text": block.text}
    if block.kind == "thinking":
        digest = hashlib.sha256(block.text.encode()).digest()
        return {
            "type": "thinking",
            "thinking": block.text,
            "signature": base64.b64encode(digest).decode(),
        }
    try:
        arguments = json.loads(block.text) if block.text else {}
    except json.JSONDecodeError:
        arguments = {}  # cut short by max_tokens
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": arguments}


def _render_error(error: APIError) -> list[bytes]:
    """An in-stream ``error`` event in Anthropic's terms."""
    return [_event("error", error=error.to_anthropic()["error"])]


def _event(kind: str, **fields: Any) -> bytes:
    return sse.encode_event(kind, {"type": kind, **fields})


def _cache_control(part: BaseModel) -> bool:
    """Whether a block (or tool) is a ``cache_control`` breakpoint."""
    return bool(part.model_extra and part.model_extra.get("cache_control"))


def _ttl_s(part: object) -> float:
    """A breakpoint's lifetime: ``ttl: "1h"``, else Anthropic's default 5 minutes."""
    mark = (part.model_extra or {}).get("cache_control") if isinstance(part, BaseModel) else part
    ttl = mark.get("ttl") if isinstance(mark, dict) else None
    return LONG_TTL_S if ttl == "1h" else TTL_S


def _output_format(request: MessageCreateRequest) -> OutputFormat:
    """Structured outputs: ``output_config.format``, or the beta's ``output_format``."""
    if request.output_config is not None and request.output_config.format is not None:
        schema, param = request.output_config.format.schema_, "output_config.format.schema"
    elif request.output_format is not None:
        schema, param = request.output_format.schema_, "output_format.schema"
    else:
        return OutputFormat()
    check_schema(schema, param=param)
    return OutputFormat("json_schema", schema)


@dataclass(slots=True)
class _ToolChanges:
    """What the conversation did to the tools: loaded deferred ones (``tool_reference``
    results, ``tool_addition`` blocks), added definitions, and withdrawn ones."""

    loaded: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    added: list[Tool | VersionedTool] = field(default_factory=list)

    def apply(self, block: ServerResultBlock) -> None:
        tool = (block.model_extra or {}).get("tool")
        if not isinstance(tool, dict):
            return
        name = tool.get("name")
        if block.type == "tool_removal":
            if isinstance(name, str):
                self.removed.add(name)
                self.loaded.discard(name)
            return
        if tool.get("type") == "tool_definition" and isinstance(tool.get("definition"), dict):
            try:
                definition = _TOOL.validate_python(tool["definition"])
            except ValidationError as exc:
                raise InvalidRequestError(
                    f"Invalid tool definition in a tool_addition block: {exc.errors()[0]['msg']}",
                    param="messages",
                ) from None
            self.added.append(definition)
            name = definition.name
        if isinstance(name, str):
            self.loaded.add(name)
            self.removed.discard(name)


_TOOL_CHANGES = frozenset({"tool_addition", "tool_removal"})
_TOOL: TypeAdapter[Tool | VersionedTool] = TypeAdapter(AnyTool)


def _tools(request: MessageCreateRequest, changes: _ToolChanges) -> tuple[ToolSpec, ...]:
    """The tools the engine may call: the client's own, and Anthropic's client tools.

    A ``defer_loading`` tool is callable once a ``tool_reference`` block (or a
    ``tool_addition``) loaded it, and no longer once a ``tool_removal`` withdrew it;
    server tools (web search, code execution...) are never called.
    """
    loaded = changes.loaded
    specs = []
    offered = [*(request.tools or ()), *changes.added]
    for index, tool in enumerate(offered):
        if tool.name in changes.removed:
            continue
        if isinstance(tool, Tool):
            if tool.defer_loading and tool.name not in loaded:
                continue
            param = f"tools[{index}].input_schema"
            specs.append(tool_spec(tool.name, tool.description, tool.input_schema, param=param))
            continue
        known = anthropic_client_tool(tool.type)
        if known is not None and not (tool.defer_loading and tool.name not in loaded):
            description, schema = known
            specs.append(ToolSpec(tool.name or tool.type.rsplit("_", 1)[0], description, schema))
    return tuple(specs)


def _applied_edits(request: MessageCreateRequest, prompt_tokens: int) -> dict[str, Any] | None:
    """``context_management``'s answer: each edit that would clear something, and how much.

    The simulator reports the edits; its prompt already leaves thinking out and
    it does not rewrite tool results.
    """
    managed: ContextManagement | None = request.context_management
    if managed is None:
        return None
    applied: list[dict[str, Any]] = []
    for edit in managed.edits or ():
        if edit.type == "clear_thinking_20251015":
            turns = [
                count_tokens(str((b.model_extra or {}).get("thinking", "")))
                for m in request.messages
                if m.role == "assistant" and not isinstance(m.content, str)
                for b in m.content or ()
                if b.type in ("thinking", "redacted_thinking")
            ]
            keep = _kept(edit.keep, "thinking_turns", 1)
            cleared = turns[: max(0, len(turns) - keep)]
            if cleared:
                applied.append(
                    {
                        "type": edit.type,
                        "cleared_thinking_turns": len(cleared),
                        "cleared_input_tokens": sum(cleared),
                    }
                )
        elif edit.type == "clear_tool_uses_20250919":
            trigger = (edit.trigger or {}).get("value", 100_000)
            results = [
                count_tokens(_result_text(b))
                for m in request.messages
                if not isinstance(m.content, str)
                for b in m.content or ()
                if isinstance(b, ToolResultBlock)
            ]
            keep = _kept(edit.keep, "tool_uses", 3)
            cleared = results[: max(0, len(results) - keep)]
            if prompt_tokens >= trigger and cleared:
                applied.append(
                    {
                        "type": edit.type,
                        "cleared_tool_uses": len(cleared),
                        "cleared_input_tokens": sum(cleared),
                    }
                )
    return {"applied_edits": applied}


def _kept(keep: Any, unit: str, default: int) -> int:
    if keep == "all":
        return 1 << 30
    if isinstance(keep, dict) and keep.get("type") == unit:
        return int(keep.get("value", default))
    return default


def _result_text(block: ToolResultBlock) -> str:
    content = block.content
    if isinstance(content, str):
        return content
    return "\n".join(_part_text(part) for part in content or ())


def _part_text(part: BaseModel) -> str:
    """The text a tool result's part, or a user's document or search result, reads as."""
    if isinstance(part, TextBlock):
        return part.text
    if isinstance(part, SearchResultBlock):
        return "\n".join([part.title, *(b.text for b in part.content)])
    if isinstance(part, DocumentBlock):
        source = part.source
        if source.get("type") == "text":
            return str(source.get("data", ""))
        if source.get("type") == "content":
            inner = source.get("content")
            if isinstance(inner, str):
                return inner
            return "\n".join(str(b.get("text", "")) for b in inner or () if isinstance(b, dict))
        return f"[document {part.title or ''}]".replace(" ]", "]")
    if isinstance(part, ToolReferenceBlock):
        return f"[tool {part.tool_name}]"
    return ""


def _conversation(
    system: str | list[TextBlock] | None,
    messages: list[MessageParam],
    image_cost: Callable[[str], int],
) -> tuple[tuple[PromptMessage, ...], list[tuple[int, float]], _ToolChanges]:
    """The engine's messages, the cache breakpoints among them (how many messages each
    covers, and its lifetime), and the changes the conversation made to the tools."""
    out: list[PromptMessage] = []
    marks: list[tuple[int, float]] = []
    changes = _ToolChanges()
    if system:
        text = system if isinstance(system, str) else "\n".join(b.text for b in system)
        out.append(PromptMessage("system", text))
        if not isinstance(system, str):
            marks += [(1, _ttl_s(b)) for b in system if _cache_control(b)][-1:]
    tool_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        # An assistant's null content is an empty reply.
        blocks = "" if message.content is None else message.content
        marked = [] if isinstance(blocks, str) else [b for b in blocks if _cache_control(b)]
        if isinstance(blocks, str):
            out.append(PromptMessage(message.role, blocks))
            continue
        texts: list[str] = []
        calls: list[PromptToolCall] = []
        images = image_tokens = 0
        results = False
        for block_index, block in enumerate(blocks):
            where = f"messages[{index}].content[{block_index}]"
            if isinstance(block, ImageBlock):
                image_tokens += image_cost(f"{where}.type")
                images += 1
            elif isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                tool_names[block.id] = block.name
                texts.append(f"{block.name}({json.dumps(block.input)})")
                calls.append(PromptToolCall(block.id, block.name, json.dumps(block.input)))
            elif isinstance(block, ServerToolUseBlock):
                texts.append(f"{block.name}({json.dumps(block.input)})")  # run by the server
            elif isinstance(block, DocumentBlock | SearchResultBlock):
                texts.append(_part_text(block))
            elif isinstance(block, ServerResultBlock) and block.type in _TOOL_CHANGES:
                changes.apply(block)
            elif isinstance(block, ToolResultBlock):
                results = True
                content = block.content
                parts = [] if isinstance(content, str) else list(content or ())
                changes.loaded.update(
                    p.tool_name for p in parts if isinstance(p, ToolReferenceBlock)
                )
                result_images = [
                    image_cost(f"{where}.content[{part_index}].type")
                    for part_index, part in enumerate(parts)
                    if isinstance(part, ImageBlock)
                ]
                out.append(
                    PromptMessage(
                        "tool",
                        _result_text(block),
                        tool_names.get(block.tool_use_id),
                        tool_call_id=block.tool_use_id,
                        images=len(result_images),
                        image_tokens=sum(result_images),
                    )
                )
        if texts or images:
            out.append(
                PromptMessage(
                    message.role,
                    "\n".join(texts),
                    tool_calls=tuple(calls),
                    images=images,
                    image_tokens=image_tokens,
                    # Text after tool results (Claude Code's reminders) is part of their turn.
                    joins_tool_results=results and message.role == "user",
                )
            )
        if marked:
            marks.append((len(out), _ttl_s(marked[-1])))
    return tuple(out), marks, changes
