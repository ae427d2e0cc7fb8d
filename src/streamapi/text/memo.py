"""Per-text memos: pure work derived from a prompt's text, done once per distinct text.

Agents and load tests send the same system prompt, tools and history with every
request, and one request reads its prompt more than once (its token count when it is
checked, its tokens when the engine admits it), so the simulator keeps what it derives
from a text in ``functools.lru_cache``: bounded in entries, and only for texts up to
``max_chars`` long, so a client cannot make the memo hold more than
``maxsize * max_chars`` characters' worth, however large its prompts are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_text(maxsize: int, max_chars: int) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Memoise a pure function of one text, for texts of at most ``max_chars`` characters.

    What it returns is shared between callers: it must be immutable (a tuple, a frozen
    dataclass, a str or None).
    """

    def decorate(function: Callable[[str], T]) -> Callable[[str], T]:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def memoised(text: str) -> T:
            return cached(text) if len(text) <= max_chars else function(text)

        return memoised

    return decorate
