"""A deterministic, dependency-free tokenizer shaped like OpenAI's.

Pieces follow GPT-2's pre-tokenizer (a word takes its leading space,
contractions and digit groups split off), and words longer than seven letters
are cut into four-letter pieces, which brings English prose to roughly four
characters a token, as OpenAI's encodings do. Tokens always concatenate back to
the text they came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PIECES = re.compile(
    r"'(?:s|t|re|ve|m|ll|d)\b| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"
)
_LONGEST_WHOLE_WORD = 8  # characters, the leading space included
_PIECE_LEN = 4
# Chat formats wrap each message in a few special tokens, and the reply opens
# with some more: OpenAI documents 3 and 3 for its chat models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def tokenize(text: str, limit: int | None = None) -> list[str]:
    """Split ``text`` into tokens; ``"".join(tokenize(t)) == t`` always holds.

    With ``limit``, only the first ``limit`` tokens (the same as
    ``tokenize(text)[:limit]``): a plan capped by ``max_tokens`` need not pay
    for the rest of a long answer.
    """
    if limit is None:
        pieces: Iterable[str] = _PIECES.findall(text)
    else:
        pieces = (match.group() for match in _PIECES.finditer(text))
    tokens: list[str] = []
    for piece in pieces:
        if limit is not None and len(tokens) >= limit:
            return tokens[:limit]
        if len(piece) <= _LONGEST_WHOLE_WORD:
            tokens.append(piece)
            continue
        cuts = list(range(_PIECE_LEN + (piece[0] == " "), len(piece), _PIECE_LEN))
        if len(piece) - cuts[-1] < 2:
            cuts.pop()  # no one-letter tail
        tokens.extend(piece[i:j] for i, j in zip([0, *cuts], [*cuts, len(piece)], strict=True))
    return tokens if limit is None else tokens[:limit]


def count_tokens(text: str) -> int:
    """The number of tokens in ``text``."""
    return len(tokenize(text))


def count_chat_tokens(contents: Iterable[str]) -> int:
    """Prompt tokens of a chat: each message's content plus its framing tokens."""
    return sum(count_tokens(text) + TOKENS_PER_MESSAGE for text in contents) + TOKENS_PER_REPLY


def chat_prompt_tokens(messages: Iterable[tuple[str, str]]) -> list[str]:
    """The prompt of a chat as tokens, framing included: ``count_chat_tokens`` of them.

    The framing tokens name the role, so a prefix cache tells a system prompt
    from the same text sent as a user message.
    """
    tokens: list[str] = []
    for role, content in messages:
        tokens += [f"<|{role}|>", "<|content|>", *tokenize(content), "<|end|>"]
    return [*tokens, "<|assistant|>", "<|content|>", "<|reply|>"]
