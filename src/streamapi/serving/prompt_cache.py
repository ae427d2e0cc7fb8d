"""Anthropic's prompt cache as its usage reports it: entries written at `cache_control` marks.

Anthropic documents (build-with-claude/prompt-caching): the prompt is cached in
the order tools, system, messages; a request with breakpoints writes an entry for
the prefix up to each breakpoint (``cache_creation_input_tokens``: the prompt up to
the last breakpoint, less what was read); a later request reads the longest
prefix that ends at a block boundary where an entry was written, looking back
about 20 blocks from each of its breakpoints (``cache_read_input_tokens``); a
prefix shorter than the model's minimum cacheable length is neither written nor
read; an entry lives 5 minutes from its last use (``ttl: "1h"``: an hour); a
request without breakpoints neither reads nor writes. ``input_tokens`` is the rest.

Boundaries here are one per tool and one per prompt message (a message's blocks
are one text); the simulated engine's own prefix cache (``engines.prefix_cache``)
paces the prefill and is unaffected. Entries are per process.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamapi.engines.protocol import PromptMessage, ToolSpec
from streamapi.text.tokenizer import TOKENS_PER_MESSAGE, count_tokens

LOOKBACK_BLOCKS = 20
TTL_S = 300.0
LONG_TTL_S = 3600.0
# Anthropic's minimum cacheable prompt length by model, first match wins.
_MINIMUM_TOKENS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"opus-4-[5-9]|opus-4\.[5-9]"), 4096),
    (re.compile(r"haiku-4"), 4096),
    (re.compile(r"sonnet-4-[6-9]|sonnet-4\.[6-9]"), 2048),
    (re.compile(r"haiku"), 2048),  # Claude 3 and 3.5 Haiku
)
DEFAULT_MINIMUM_TOKENS = 1024
_MAX_ENTRIES = 100_000


def minimum_cacheable_tokens(model: str) -> int:
    """The shortest prefix Anthropic caches for ``model`` (1,024 for names it does not list)."""
    lowered = model.lower()
    for pattern, tokens in _MINIMUM_TOKENS:
        if pattern.search(lowered):
            return tokens
    return DEFAULT_MINIMUM_TOKENS


@dataclass(frozen=True, slots=True)
class Boundary:
    """The end of one tool or message in the prompt: its token position and prefix's key."""

    tokens: int
    key: bytes


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A ``cache_control`` mark: the boundary it closes, and its entry's lifetime."""

    boundary: int
    ttl_s: float = TTL_S


def boundaries(
    model: str, tools: Sequence[ToolSpec], messages: Sequence[PromptMessage]
) -> list[Boundary]:
    """Every block boundary of the prompt, in order: after each tool, then each message.

    Positions count tokens as usage does (each message's content, framing and images);
    a key chains the whole prefix, so equal keys mean equal prefixes.
    """
    digest = hashlib.sha256(f"{model}\x00".encode())
    position = 0
    found: list[Boundary] = []
    for tool in tools:
        text = tool.prompt_text
        digest.update(f"tool\x00{text}\x01".encode())
        position += count_tokens(text)
        found.append(Boundary(position, digest.copy().digest()))
    for message in messages:
        digest.update(f"{message.role}\x00{message.content}\x00{message.images}\x01".encode())
        position += count_tokens(message.content) + TOKENS_PER_MESSAGE + message.image_tokens
        found.append(Boundary(position, digest.copy().digest()))
    return found


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What one request read from the cache and wrote to it, in prompt tokens."""

    read: int = 0
    written: int = 0
    written_1h: int = 0
    """The part of ``written`` kept an hour (up to the last ``ttl: "1h"`` breakpoint)."""


class PromptCache:
    """The entries written so far, least recently used first, bounded in number."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def use(
        self, points: Sequence[Boundary], marks: Sequence[Breakpoint], minimum: int
    ) -> CacheUse:
        """Read and write the cache for one request."""
        if not marks or not points:
            return CacheUse()
        now = self._clock()
        read = 0
        for mark in marks:
            for index in range(mark.boundary, max(-1, mark.boundary - LOOKBACK_BLOCKS), -1):
                point = points[index]
                if point.tokens <= read or point.tokens < minimum:
                    break
                entry = self._entries.get(point.key)
                if entry is not None and entry[0] > now:
                    read = point.tokens
                    self._entries[point.key] = (now + entry[1], entry[1])
                    self._entries.move_to_end(point.key)
                    break
        last = max(points[mark.boundary].tokens for mark in marks)
        for mark in marks:
            point = points[mark.boundary]
            if point.tokens >= minimum:
                kept = self._entries.get(point.key)
                ttl = max(mark.ttl_s, kept[1] if kept else 0.0)
                self._entries[point.key] = (now + ttl, ttl)
                self._entries.move_to_end(point.key)
        while len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)
        if last < minimum:
            return CacheUse(read)
        hour = max((points[m.boundary].tokens for m in marks if m.ttl_s >= LONG_TTL_S), default=0)
        return CacheUse(read, max(0, last - read), max(0, hour - read))
