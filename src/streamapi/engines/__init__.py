"""The engine seam: what generates tokens, knowing nothing of HTTP or SSE.

An engine turns one ``GenerationRequest`` into a stream of ``TokenDelta``s for
one choice; ``serving`` fans out ``n`` choices, frames them for each protocol
and counts usage. The simulator is the default engine; upstream engines fit
the same two-member protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from streamapi.settings import Settings

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation, its content flattened to text."""

    role: str
    content: str


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


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """One generated token; ``finish_reason`` is set on the last one only."""

    text: str
    finish_reason: FinishReason | None = None


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
