"""Regular expressions that come from outside the code, run in linear time by RE2.

Rules (``match: {user: {regex: ...}}``) and the model-name settings
(``--reasoning-model-pattern``, ``--vision-model-pattern``) are matched against
text that clients send. Python's ``re`` backtracks: ``^(a+)+$`` against 25
characters takes a second and doubles with each one more. RE2 (``google-re2``)
matches in time linear in the text, whatever the pattern; the price is its
syntax, Python's without backreferences and look-arounds (``\\1``, ``(?=...)``),
which it refuses when the pattern is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Protocol, cast

import re2  # type: ignore[import-untyped]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error is raised with its message; RE2 need not print it too


class LinearMatch(Protocol):
    """A match: its groups by number or name, as ``re.Match``."""

    def group(self, index: int | str = 0, /) -> str | None: ...


class LinearPattern(Protocol):
    """A compiled pattern: the part of ``re.Pattern`` the server uses."""

    groups: int
    groupindex: Mapping[str, int]

    def search(self, text: str) -> LinearMatch | None: ...


class RegexError(ValueError):
    """A pattern RE2 cannot run; the message says why."""


@lru_cache(maxsize=1024)
def compile_linear(pattern: str) -> LinearPattern:
    """``pattern`` compiled by RE2 (cached); ``RegexError`` if RE2 refuses it."""
    try:
        return cast(LinearPattern, re2.compile(pattern, options=_OPTIONS))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise RegexError(
            f"{text} (patterns use RE2 syntax: Python's, without backreferences or look-arounds)"
        ) from None


def search(pattern: str, text: str) -> LinearMatch | None:
    """The first match of ``pattern`` in ``text``, in time linear in ``text``."""
    return compile_linear(pattern).search(text)
