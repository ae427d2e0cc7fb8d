"""The engine seam: what generates tokens, knowing nothing of HTTP or SSE.

An engine turns one ``GenerationRequest`` into a stream of ``TokenDelta``s for
one choice; ``serving`` fans out ``n`` choices, frames them for each protocol
and counts usage. The simulator is the default engine; upstream engines fit
the same two-member protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from streamapi.settings import Settings

FinishReason = Literal["stop", "length", "tool_calls"]
Channel = Literal["content", "reasoning", "tool_call"]
ToolChoice = str
"""``"none"``, ``"auto"``, ``"required"``, or the name of the one function to call."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation, its content flattened to text.

    ``name`` is the function's name on a tool result (resolved from the call it
    answers), else the author's name if the client gave one.
    """

    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its JSON Schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What the answer must be: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What an engine needs to generate one choice."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    choice_index: int = 0
    ignore_eos: bool = False
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    output_format: OutputFormat = OutputFormat()
    reasoning: bool = False
    logprobs: int | None = None
    """None: no log probabilities; k: each token's, with k alternatives."""


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """Opens a tool call: the first delta of each call carries it."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """One generated token, on one channel.

    Content and reasoning tokens carry their text. A tool call opens with a
    delta that carries ``tool_call`` (its text is empty), then its arguments
    arrive as text fragments tagged with ``tool_index``. ``finish_reason`` is
    set on the last delta only; that delta may carry no token at all.
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

    @property
    def is_token(self) -> bool:
        """Whether this delta counts as a generated token in usage."""
        return bool(self.text) or self.tool_call is not None


class Engine(Protocol):
    """A token generator.

    ``stream`` yields one ``TokenDelta`` per token, the last with a
    ``finish_reason``. A consumer that stops early closes the iterator (or
    cancels the task awaiting it); the engine must then release whatever it
    holds at once.
    """

    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...

    async def aclose(self) -> None: ...


def create_engine(settings: Settings) -> Engine:
    """The engine that ``settings.engine`` names."""
    from streamapi.engines.simulator import SimulatorEngine

    return SimulatorEngine.from_settings(settings)
