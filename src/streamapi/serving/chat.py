"""Chat completions: engine deltas become OpenAI chunks, completions and usage.

This is where the chat protocol's rules live: one ``id`` and ``created`` per
completion, the role once per choice and only after its first token exists
(``content: ""`` for text, ``content: null`` in the first delta of a choice
that opens with a tool call, as OpenAI sends it), a tool call's ``id``,
``type`` and ``name`` in its first delta only, exactly one ``finish_reason``
per choice, the usage chunk last, and errors after the first byte sent
in-stream followed by ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

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
from streamapi.schemas.openai import (
    AllowedToolsChoice,
    ChatCompletionRequest,
    ChatCustomTool,
    ChatFunctionTool,
    ChatMessage as WireMessage,
    ImageContentPart,
    NamedCustomChoice,
    NamedToolChoice,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    TextContentPart,
)
from streamapi.serving.generation import Admission, Generation, Job
from streamapi.serving.request_limits import check_metadata, check_top_logprobs
from streamapi.serving.schema_checks import SchemaChecks, check_tool_choice
from streamapi.serving.usage import Transcript, Usage

# The custom tools of a request that has none (most): one set all of them share.
_NO_TOOLS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ChatJob:
    """A checked chat request and how its stream reports."""

    job: Job
    include_usage: bool
    continuous_usage: bool
    logprobs: bool
    custom_tools: frozenset[str] = _NO_TOOLS
    """Free-form tools: their calls are ``custom`` calls with raw ``input``."""


class ChatService:
    """Serves ``/v1/chat/completions``."""

    def __init__(self, generation: Generation, *, tokens_per_event: int) -> None:
        self._generation = generation
        self._tokens_per_event = tokens_per_event

    def prepare(self, request: ChatCompletionRequest) -> ChatJob:
        """Check everything that can fail before the first byte; raise ``APIError`` if not."""
        generation = self._generation
        if request.stream_options is not None and not request.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true.", param="stream_options"
            )
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequestError(
                "top_logprobs is only allowed when logprobs is true.", param="top_logprobs"
            )
        if request.logprobs and request.top_logprobs:
            check_top_logprobs(
                request.n or 1,
                request.top_logprobs,
                limit=generation.settings.max_top_logprobs_total,
                param="top_logprobs",
            )
        check_metadata((request.model_extra or {}).get("metadata"))
        model = generation.resolve_model(request.model)
        if request.tools is not None and not request.tools:
            raise InvalidRequestError("tools must not be an empty array.", param="tools")
        checks = SchemaChecks.of(generation.settings)
        checks.tool_count(len(request.tools or ()), param="tools")
        tools = tuple(_tool(t, i, checks) for i, t in enumerate(request.tools or ()))
        choice = _tool_choice(request.tool_choice, has_tools=bool(tools))
        check_tool_choice(tools, choice, param="tool_choice")
        effort = request.reasoning_effort
        template = GenerationRequest(
            model=model,
            messages=_conversation(
                request.messages,
                lambda detail, param: generation.image_tokens(model, detail, param=param),
            ),
            max_tokens=request.max_completion_tokens or request.max_tokens,
            stop=(request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ()),
            seed=request.seed,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            ignore_eos=bool(request.ignore_eos),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            output_format=_output_format(request, checks),
            length_instructions=not request.prompt_form,
            reasoning=generation.reasons(model, None if effort is None else effort != "none"),
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        return ChatJob(
            job=generation.job([template], n=request.n or 1, id_prefix="chatcmpl-"),
            include_usage=include_usage,
            continuous_usage=include_usage and bool(options and options.continuous_usage_stats),
            logprobs=bool(request.logprobs),
            custom_tools=_custom_tool_names(tools),
        )

    async def stream(self, chat: ChatJob, admission: Admission) -> AsyncIterator[bytes]:
        """SSE frames of a streamed chat completion, ending with ``[DONE]``."""
        writer = _ChunkWriter(chat, self._tokens_per_event)
        # The frames that end the stream: every choice's finish chunk, the usage chunk,
        # an error, and [DONE] are ready together, so they go out in one write.
        tail = b""
        try:
            async for batch in self._generation.batches(admission):
                # Deltas that were ready together go out in one write.
                if len(batch) == 1:
                    frames = writer.add(*batch[0])
                else:
                    frames = [frame for index, delta in batch for frame in writer.add(index, delta)]
                if frames:
                    if writer.unfinished:
                        yield frames[0] if len(frames) == 1 else b"".join(frames)
                    else:
                        tail += b"".join(frames)  # the engine's stream ends with this batch
                # Not kept while the next batch is awaited: an open stream holds no
                # delta or frame of its own.
                del batch, frames
            if chat.include_usage:
                tail += writer.usage_chunk()
        except Exception as exc:
            tail += b"".join(self._generation.stream_error(exc, chat.job.id, render_error))
        yield tail + sse.DONE

    async def complete(self, chat: ChatJob, admission: Admission) -> dict[str, Any]:
        """The whole completion at once (``stream`` false), as a ``chat.completion`` body."""
        job = chat.job
        transcripts = [Transcript.empty() for _ in range(job.choice_count)]
        usage = Usage.of(job)
        async for batch in self._generation.batches(admission):
            for index, delta in batch:
                transcripts[index].add(delta)
                usage.add(delta, index)
        return {
            "id": job.id,
            "object": "chat.completion",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "message": _message(t, chat.custom_tools),
                    "logprobs": _logprobs(t.logprobs) if chat.logprobs else None,
                    "finish_reason": t.finish_reason,
                }
                for i, t in enumerate(transcripts)
            ],
            "usage": usage_dict(usage),
        }


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


@dataclass(slots=True)
class _Choice:
    """One choice of a stream: whether it started, its tokens waiting to fill an event,
    and its content chunks' template (one small object each, not a dict entry per field)."""

    started: bool = False
    channel: str = "content"
    tool_index: int = 0
    deltas: list[TokenDelta] = field(default_factory=list)
    content: sse.DataTemplate | None = None
    plain: sse.DataTemplate | None = None
    """With one token per event, once started: a plain content token is this filled."""


class _ChunkWriter:
    """Encodes the chunks of one completion, grouping tokens into events."""

    __slots__ = (
        "_chat",
        "_choices",
        "_custom_calls",
        "_per_event",
        "_templated",
        "_usage",
        "unfinished",
    )

    def __init__(self, chat: ChatJob, tokens_per_event: int) -> None:
        job = chat.job
        self._chat = chat
        self._per_event = tokens_per_event
        # (choice, call) of custom tools; made for the first, as most streams call none.
        self._custom_calls: set[tuple[int, int]] | None = None
        self._choices = tuple(_Choice() for _ in range(job.choice_count))
        self.unfinished = job.choice_count
        """Choices whose finish chunk is still to come."""
        # Counted only for the usage a stream sends (include_usage).
        self._usage = Usage.of(job) if chat.include_usage else None
        # Plain content chunks (the load-test case) are spliced into a frame
        # encoded once per choice; with logprobs or running usage they vary more.
        self._templated = not chat.logprobs and not chat.continuous_usage

    def add(self, index: int, delta: TokenDelta) -> list[bytes]:
        choice = self._choices[index]
        template = choice.plain
        if (
            template is not None
            and delta.text
            and delta.finish_reason is None
            and delta.channel == "content"
            and delta.tool_call is None
            and delta.usage is None
        ):
            if self._usage is not None:
                self._usage.add(delta, index)
            return [template.fill(delta.text)]
        frames: list[bytes] = []
        role: dict[str, Any] = {}
        if not choice.started:
            choice.started = True
            if delta.tool_call is None:
                frames.append(self._chunk(index, {"role": "assistant", "content": ""}))
            else:
                # A choice that opens with a tool call has no text: OpenAI sends the
                # role with content null in the call's first delta (an empty string
                # makes the AI SDK open an empty text part).
                role = {"role": "assistant", "content": None}
        if self._usage is not None:
            self._usage.add(delta, index)
        if choice.deltas and (
            delta.tool_call is not None
            or (delta.channel, delta.tool_index) != (choice.channel, choice.tool_index)
        ):
            frames.append(self._flush(index, choice))
        if delta.tool_call is not None:
            call = delta.tool_call
            opening: dict[str, Any] = {"index": call.index, "id": call.id}
            if call.name in self._chat.custom_tools:
                if self._custom_calls is None:
                    self._custom_calls = set()
                self._custom_calls.add((index, call.index))
                opening |= {"type": "custom", "custom": {"name": call.name, "input": ""}}
            else:
                opening |= {"type": "function", "function": {"name": call.name, "arguments": ""}}
            frames.append(self._chunk(index, {**role, "tool_calls": [opening]}))
        elif delta.text:
            choice.channel, choice.tool_index = delta.channel, delta.tool_index
            choice.deltas.append(delta)
            if len(choice.deltas) >= self._per_event:
                frames.append(self._flush(index, choice))
        if delta.finish_reason is not None:
            if choice.deltas:
                frames.append(self._flush(index, choice))
            frames.append(self._chunk(index, {}, finish_reason=delta.finish_reason))
            self.unfinished -= 1
        return frames

    def usage_chunk(self) -> bytes:
        assert self._usage is not None  # counted when include_usage
        return sse.encode_data({**self._head(), "choices": [], "usage": usage_dict(self._usage)})

    def _flush(self, index: int, choice: _Choice) -> bytes:
        deltas = choice.deltas
        text = "".join(d.text for d in deltas)
        logprobs = None
        if choice.channel == "reasoning":
            delta: dict[str, Any] = {"reasoning_content": text}
        elif choice.channel == "tool_call":
            part = (
                {"custom": {"input": text}}
                if self._custom_calls is not None
                and (index, choice.tool_index) in self._custom_calls
                else {"function": {"arguments": text}}
            )
            delta = {"tool_calls": [{"index": choice.tool_index, **part}]}
        elif self._templated:
            deltas.clear()
            template = choice.content
            if template is None:
                template = choice.content = self._template(index)
                if self._per_event == 1:
                    choice.plain = template
            return template.fill(text)
        else:
            delta = {"content": text}
            if self._chat.logprobs:
                logprobs = _logprobs(deltas)
        deltas.clear()
        return self._chunk(index, delta, logprobs=logprobs)

    def _head(self) -> dict[str, Any]:
        """What every chunk opens with (made for the few chunks a template does not fill:
        an open stream keeps no copy)."""
        job = self._chat.job
        return {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": None,
        }

    def _template(self, index: int) -> sse.DataTemplate:
        return sse.DataTemplate(self._payload(index, {"content": sse.HOLE}, None, None))

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        *,
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        return sse.encode_data(self._payload(index, delta, finish_reason, logprobs))

    def _payload(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None,
        logprobs: dict[str, Any] | None,
    ) -> dict[str, Any]:
        chunk = {
            **self._head(),
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if self._chat.include_usage:
            # OpenAI sends usage: null on every chunk but the last when usage was asked
            # for; vLLM's continuous_usage_stats puts running counts there instead.
            usage = self._usage if self._chat.continuous_usage else None
            chunk["usage"] = None if usage is None else usage_dict(usage)
        return chunk


def _message(transcript: Transcript, custom_tools: frozenset[str]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": transcript.text if transcript.content or not transcript.tool_calls else None,
        "refusal": None,
    }
    if transcript.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "custom",
                "custom": {"name": call.name, "input": call.arguments_text},
            }
            if call.name in custom_tools
            else {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_text},
            }
            for call in transcript.tool_calls
        ]
    if transcript.reasoning:
        message["reasoning_content"] = transcript.reasoning_text
    return message


def _logprobs(deltas: list[TokenDelta]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": d.text,
                "logprob": d.logprob,
                "bytes": list(d.text.encode()),
                "top_logprobs": [
                    {"token": token, "logprob": lp, "bytes": list(token.encode())}
                    for token, lp in d.top_logprobs
                ],
            }
            for d in deltas
        ],
        "refusal": None,
    }


def _tool(tool: ChatFunctionTool | ChatCustomTool, index: int, checks: SchemaChecks) -> ToolSpec:
    if isinstance(tool, ChatFunctionTool):
        function = tool.function
        param = f"tools[{index}].function.parameters"
        return checks.tool(function.name, function.description, function.parameters, param=param)
    custom = tool.custom
    fmt: dict[str, Any] = {"type": "text"}
    if custom.format is not None and custom.format.grammar is not None:
        fmt = {"type": "grammar", **custom.format.grammar.model_dump()}
    return ToolSpec(custom.name, custom.description or "", {}, format=fmt)


def _custom_tool_names(tools: tuple[ToolSpec, ...]) -> frozenset[str]:
    """The free-form tools' names; most requests have none, and share one empty set (an
    empty frozenset is an object of 216 bytes that the stream would keep)."""
    names = [t.name for t in tools if t.format is not None]
    return frozenset(names) if names else _NO_TOOLS


def _tool_choice(choice: object, *, has_tools: bool) -> str:
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    if isinstance(choice, NamedCustomChoice):
        return choice.custom.name
    if isinstance(choice, AllowedToolsChoice):
        return choice.allowed_tools.mode
    if choice is None:
        return "auto" if has_tools else "none"
    return str(choice)


def _output_format(request: ChatCompletionRequest, checks: SchemaChecks) -> OutputFormat:
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJSONSchema) and fmt.json_schema.schema_ is not None:
        checks.schema(fmt.json_schema.schema_, param="response_format.json_schema.schema")
        return OutputFormat("json_schema", fmt.json_schema.schema_)
    if isinstance(fmt, ResponseFormatJSONObject | ResponseFormatJSONSchema):
        return OutputFormat("json_object")
    return OutputFormat()


ImageCost = Callable[[str | None, str], int]
"""An image's prompt tokens from its detail and its parameter's path (400 if not read)."""


def _conversation(messages: list[WireMessage], image_cost: ImageCost) -> tuple[PromptMessage, ...]:
    """The messages as engine text, tool results named after the call they answer."""
    call_names: dict[str, str] = {}
    out = []
    for index, message in enumerate(messages):
        text, images, image_tokens = _text(index, message.content, image_cost)
        calls = []
        for call in message.tool_calls or ():
            call_names[call.id] = call.name
            text += f"\n{call.name}({call.arguments})"
            calls.append(PromptToolCall(call.id, call.name, call.arguments))
        name = message.name
        if message.role == "tool" and message.tool_call_id is not None:
            name = call_names.get(message.tool_call_id, name)
        out.append(
            PromptMessage(
                message.role,
                # The simulator reads past calls in the text; an upstream gets them
                # structured, and its text only.
                text.strip("\n"),
                name,
                tool_calls=tuple(calls),
                tool_call_id=message.tool_call_id if message.role == "tool" else None,
                images=images,
                image_tokens=image_tokens,
            )
        )
    return tuple(out)


def _text(index: int, content: object, image_cost: ImageCost) -> tuple[str, int, int]:
    """A message's text, its number of images and their tokens."""
    if content is None:
        return "", 0, 0
    if isinstance(content, str):
        return content, 0, 0
    texts: list[str] = []
    images = tokens = 0
    for part_index, part in enumerate(content if isinstance(content, list) else []):
        param = f"messages[{index}].content[{part_index}].type"
        if isinstance(part, ImageContentPart):
            tokens += image_cost(part.image_url.detail, param)
            images += 1
            continue
        if isinstance(part, TextContentPart):
            texts.append(part.text)
        elif part.type == "refusal":
            texts.append(part.refusal or "")
        elif part.type == "file":
            named = (part.file or {}).get("filename") or (part.file or {}).get("file_id") or ""
            texts.append(f"[file {named}]".replace(" ]", "]"))
        else:
            texts.append("[audio]")
    return "\n".join(texts), images, tokens


def render_error(error: APIError) -> list[bytes]:
    """An in-stream error in OpenAI's data-only streams: the error envelope as an event."""
    return [sse.encode_data(error.to_dict())]
