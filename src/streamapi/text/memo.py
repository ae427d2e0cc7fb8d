"""Per-text memos: pure work derived from a prompt's text, done once per distinct text.

Agents and load tests send the same system prompt, tools and history with every
request, and one request reads its prompt more than once (its token count when it is
checked, its tokens when the engine admits it), so the simulator keeps what it derives
from a text (its tokens' lengths, its subject and key terms, the length or JSON it asks
for, the user's own words) in ``functools.lru_cache``: bounded in entries, and only for
texts up to ``max_chars`` long, so that however large or many a client's prompts are, a
memo holds at most ``maxsize`` texts of ``max_chars`` characters (1 M characters, 1 MB
of ASCII, with the defaults; a text several memos key is held once) and what is derived
from them (the most, token lengths, is a byte a token). A longer text is read each time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TEXTS = 128
"""Texts a memo remembers (the least recently used goes first)."""
MAX_CHARS = 8192
"""The longest text a memo remembers."""


def per_text(
    maxsize: int = TEXTS, max_chars: int = MAX_CHARS
) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Memoise a pure function of one text, for texts of at most ``max_chars`` characters.

    What it returns is shared between callers: it must be immutable (a tuple, bytes, a
    frozen dataclass, a str or None).
    """

    def decorate(function: Callable[[str], T]) -> Callable[[str], T]:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def memoised(text: str) -> T:
            return cached(text) if len(text) <= max_chars else function(text)

        return memoised

    return decorate
