"""The engine seam: what generates tokens, knowing nothing of HTTP or SSE.

This module imports nothing from streamapi (as vLLM's ``engine/protocol.py``):
serving, control and the engines themselves all depend on it, so it must sit
below every one of them. ``engines.factory`` builds the engine from settings.

An engine turns one ``GenerationRequest`` into a stream of ``TokenDelta``s for
one choice; ``serving`` fans out ``n`` choices, frames them for each protocol
and counts usage. The simulator is the default engine; ``upstream`` proxies an
OpenAI-compatible server and ``dispatch`` sends each request by model name,
all behind the same small protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "tool_calls"]
Channel = Literal["content", "reasoning", "tool_call"]
ToolChoice = str
"""``"none"``, ``"auto"``, ``"required"``, or the name of the one function to call."""


@dataclass(frozen=True, slots=True)
class PromptToolCall:
    """A call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """One message of the conversation, its content flattened to text.

    ``name`` is the function's name on a tool result (resolved from the call it
    answers), else the author's name if the client gave one. The simulator reads
    only the text (which names past calls too); an upstream also gets an
    assistant message's ``tool_calls`` and a tool result's ``tool_call_id``.
    """

    role: str
    content: str
    name: str | None = None
    tool_calls: tuple[PromptToolCall, ...] = ()
    tool_call_id: str | None = None
    images: int = 0
    """How many images the message holds (a vision model's input); ``content`` is their
    text only."""
    image_tokens: int = 0
    """What those images count as prompt tokens (docs/simulator.md, "Images")."""
    joins_tool_results: bool = False
    """A user message sent in the same turn as the tool results just before it: an
    Anthropic user turn holds ``tool_result`` blocks and then text (Claude Code adds
    its reminders so). It opens no new turn: those results still answer the latest
    calls (``last_user_turn``)."""


def last_user_turn(messages: Sequence[PromptMessage]) -> int:
    """The index of the last user message that opens a turn of its own; -1 if none does.

    The tool results after it answer the calls made since; a user message that joins
    tool results (``PromptMessage.joins_tool_results``) is part of their turn.
    """
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "user" and not message.joins_tool_results:
            return index
    return -1


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its JSON Schema.

    ``format`` is set for a free-form tool (OpenAI's custom tools): its call's
    text is raw input in that format (``{"type": "text"}``, or a grammar with
    ``syntax`` and ``definition``), not JSON arguments.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    format: Mapping[str, Any] | None = None

    @property
    def prompt_text(self) -> str:
        """The tool as the prompt holds it: its definition as JSON, ahead of the messages."""
        schema: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }
        if self.format is not None:
            schema["format"] = self.format  # a custom tool's grammar is part of the prompt
        return json.dumps(schema)


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What the answer must be: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    """A tool call a script makes: ``arguments`` is its JSON text, sent as it is."""

    name: str
    arguments: str = "{}"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Script:
    """An answer decided by a test (a rule), said instead of the engine's own.

    ``text`` is the content, then ``tool_calls`` are made; ``reasoning``, when
    given, is the thought streamed first (otherwise a reasoning request gets the
    engine's own). Limits still apply: ``max_tokens`` and ``stop`` cut it.
    """

    text: str = ""
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    reasoning: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What an engine needs to generate one choice."""

    model: str
    messages: tuple[PromptMessage, ...]
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """Sample from the k most likely tokens; 0 (or vLLM's -1) samples from all."""
    choice_index: int = 0
    ignore_eos: bool = False
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    output_format: OutputFormat = OutputFormat()
    length_instructions: bool = True
    """Whether the answer follows the prompt's length instructions ("in one sentence",
    "be brief"); the simple prompt form's answers keep their minimum length."""
    reasoning: bool = False
    logprobs: int | None = None
    """None: no log probabilities; k: each token's, with k alternatives."""
    # Test overrides (the x-streamapi-* headers): this sequence's own time to
    # first token after admission, its own inter-token latency, and the length
    # of its answer in tokens.
    time_to_first_token_ms: float | None = None
    inter_token_latency_ms: float | None = None
    output_tokens: int | None = None
    request_id: str | None = None
    """The HTTP request's id, which an upstream engine passes on as X-Request-Id."""
    script: Script | None = None
    """A scripted answer (test control's rules); None lets the engine write its own."""


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """Opens a tool call: the first delta of each call carries it."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    """An engine's own count of one choice's tokens, carried by its last delta.

    Serving counts one token per delta; an engine whose deltas may hold several
    tokens (an upstream's chunks) reports the true counts here, and they replace
    serving's for that choice. ``None`` fields keep serving's count.
    """

    completion_tokens: int
    prompt_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None


# Not frozen: a plan builds one delta per token, and a frozen dataclass's
# __init__ (object.__setattr__ per field) costs several times as much. Treat
# deltas as immutable all the same; ``dataclasses.replace`` makes changed copies.
@dataclass(slots=True)
class TokenDelta:
    """One generated token, on one channel.

    Content and reasoning tokens carry their text. A tool call opens with a
    delta that carries ``tool_call`` (its text is empty), then its arguments
    arrive as text fragments tagged with ``tool_index``. ``finish_reason`` is
    set on the last delta only; that delta may carry no token at all.

    ``cached_prompt_tokens``, on a sequence's first delta, is how much of the
    prompt the engine found in its prefix cache. ``usage``, on the last delta
    only, replaces serving's token counts for the choice (see ``UsageReport``).
    """

    text: str
    finish_reason: FinishReason | None = None
    channel: Channel = "content"
    tool_call: ToolCallStart | None = None
    tool_index: int = 0
    logprob: float | None = None
    top_logprobs: tuple[tuple[str, float], ...] = ()
    matched_stop: str | None = None
    """On the last delta: the stop sequence that ended the answer, if one did."""
    cached_prompt_tokens: int = 0
    usage: UsageReport | None = None

    @property
    def is_token(self) -> bool:
        """Whether this delta counts as a generated token in usage."""
        return bool(self.text) or self.tool_call is not None


class LatencyControl(Protocol):
    """An engine's latency model, read and changed at runtime (the admin API).

    The values are the settings of the same names (``time_to_first_token_ms``,
    ``inter_token_latency_ms``...); a change applies from the engine's next step.
    """

    def latency(self) -> dict[str, float]:
        """The latency settings now."""
        ...

    def set_latency(self, changes: Mapping[str, float]) -> None:
        """Change some of them; the others keep their value."""
        ...

    def reset_latency(self) -> None:
        """Back to the values the engine started with."""
        ...


class Engine(Protocol):
    """A token generator.

    ``stream`` admits the request at once, before any byte is sent: it raises
    an ``APIError`` (``RateLimitError`` when the engine's queue is full) or
    returns an iterator that yields one ``TokenDelta`` per token, the last with
    a ``finish_reason``. Every returned iterator must be closed with
    ``aclose()``, which releases what it holds at once, whether or not it was
    ever iterated. ``aclose`` on the engine stops its background work.

    The returned iterator may also have ``async def open()``: serving awaits
    it at admission, before the response starts, so an engine that must do I/O
    to know whether it can answer (an upstream's connection, status and first
    event) raises its ``APIError`` there and the client gets a real HTTP status.
    Errors after ``open`` arrive as in-stream errors.

    It may also have ``take_ready() -> list[TokenDelta]``: the deltas it holds
    ready now, taken without waiting. Serving calls it after each delta it
    awaits, so that tokens generated faster than a client reads them share one
    write (``Generation.batches``).

    ``latency_control`` is an optional capability, explicit in the protocol: an
    engine that wraps others passes on the one of the engine it defaults to.

    An engine whose ``stream`` is an async generator admits lazily, at its
    first step, i.e. after the response started: it still works, but its
    refusals then arrive as in-stream errors.
    """

    @property
    def latency_control(self) -> LatencyControl | None:
        """The engine's changeable latency model; None if it has none (an upstream)."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...

    async def aclose(self) -> None: ...
