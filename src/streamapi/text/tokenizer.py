"""A deterministic, dependency-free tokenizer shaped like OpenAI's.

Pieces follow GPT-2's pre-tokenizer (a word takes its leading space,
contractions and digit groups split off), and words longer than seven letters
are cut into four-letter pieces, which brings English prose to roughly four
characters a token, as OpenAI's encodings do. Tokens always concatenate back to
the text they came from.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate, pairwise

from streamapi.text.memo import per_text

_PIECES = re.compile(
    r"'(?:s|t|re|ve|m|ll|d)\b| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"
)
# The same pattern for ASCII text (most text), with the classes spelled out as ASCII sets,
# which match ~1.6x faster than Unicode categories. Over ASCII they are the same sets:
# letters, digits, other non-space characters or "_", and whitespace, which includes
# \x1c-\x1f (str.isspace); tests/test_properties.py checks each of the 128 characters.
_SPACE = r"\t-\r\x1c-\x20"
_ASCII_PIECES = re.compile(
    rf"'(?:s|t|re|ve|m|ll|d)\b| ?[A-Za-z]+| ?[0-9]{{1,3}}| ?[^A-Za-z0-9{_SPACE}]+"
    rf"|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+"
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
    pattern = _ASCII_PIECES if text.isascii() else _PIECES
    if limit is None:
        pieces: list[str] = pattern.findall(text)
    elif limit <= 0:
        return []
    else:
        # Each piece is one token or more: the first ``limit`` pieces are enough.
        pieces = _first_pieces(pattern, text, limit)
    lengths = list(map(len, pieces))
    longs = [index for index, length in enumerate(lengths) if length > _LONGEST_WHOLE_WORD]
    if not longs:
        return pieces  # short words only (most prompts): each piece is a token
    # The short pieces between long ones go in as they are, in slices.
    tokens: list[str] = []
    start = 0
    for index in longs:
        tokens += pieces[start:index]
        piece = pieces[index]
        tokens += _cut(piece) if lengths[index] > _CUTS_KEPT_CHARS else _kept_cut(piece)
        start = index + 1
    tokens += pieces[start:]
    return tokens if limit is None else tokens[:limit]


# How far before the end of a window a piece must end to be the whole text's piece too.
# Matching a piece that ends at e and starts at p reads the text up to e + 1 and p + 3
# at most (the next character after a run or a whitespace run's lookahead; a
# contraction's word boundary), so a piece ending this far before the window's end was
# matched on characters of the text alone, as in the whole text.
_WINDOW_MARGIN = 8


def _first_pieces(pattern: re.Pattern[str], text: str, count: int) -> list[str]:
    """The first ``count`` pieces of ``text`` (all of them if it has fewer): ``findall``
    over windows of the text (``endpos``) just long enough, as a long answer capped short
    is the load-test case; a window's last pieces, which its end may have cut short, are
    matched again from where they start (``pos``: the text before it still counts)."""
    pieces: list[str] = []
    position, size = 0, len(text)
    window = count * 6 + _WINDOW_MARGIN  # prose runs ~5 characters a piece
    while len(pieces) < count:
        end = position + window
        if end >= size:
            pieces += pattern.findall(text, position)
            break
        found = pattern.findall(text, position, end)
        ends = list(accumulate(map(len, found), initial=position))
        kept = bisect_right(ends, end - _WINDOW_MARGIN) - 1  # pieces ending early enough
        if kept:
            pieces += found[:kept]
            position = ends[kept]
        else:
            window *= 2  # one piece longer than the window: a long run of spaces or marks
    return pieces[:count]


def prefix_chars(tokens: int) -> int:
    """How long a text's beginning must be to hold its first ``tokens`` tokens as the whole
    text has them: ``tokenize(text[:n], tokens) == tokenize(text, tokens)`` for any ``n``
    at least this. A token is at most eight characters, and a piece is matched on a few
    characters past its end at most (``_WINDOW_MARGIN``): the margin is well above."""
    return tokens * _LONGEST_WHOLE_WORD + 8 * _WINDOW_MARGIN


def _cut(piece: str) -> list[str]:
    """A long piece's tokens: its first four letters (five with a leading space), then
    four at a time, the last one taking a one-letter tail."""
    first = _PIECE_LEN + (piece[0] == " ")
    last = first + (len(piece) - 1 - first) // _PIECE_LEN * _PIECE_LEN  # the last cut
    if len(piece) - last < 2:
        last -= _PIECE_LEN  # no one-letter tail
    middle = [piece[i : i + _PIECE_LEN] for i in range(first, last, _PIECE_LEN)]
    return [piece[:first], *middle, piece[last:]]


# Long words recur (an answer's templates repeat theirs): the cuts of pieces up to this
# long are remembered.
_CUTS_KEPT_CHARS = 24


@functools.lru_cache(maxsize=2048)
def _kept_cut(piece: str) -> tuple[str, ...]:
    return tuple(_cut(piece))


@per_text()
def _lengths(text: str) -> bytes:
    """Each token's length, a byte each (a token is at most eight characters): the form
    a prompt's tokenization is remembered in, a byte a token beside its text."""
    return bytes(map(len, tokenize(text)))


def prompt_tokens(text: str) -> list[str]:
    """``tokenize(text)``, for a prompt's text: prompts repeat (a system prompt, an
    agent's history, a request read twice), so their tokens' lengths are remembered
    (``memo.per_text``) and the tokens are cut from the text by them."""
    return [text[start:end] for start, end in pairwise(accumulate(_lengths(text), initial=0))]


def count_tokens(text: str) -> int:
    """The number of tokens in ``text``."""
    return len(tokenize(text))


def count_prompt_tokens(text: str) -> int:
    """``count_tokens(text)`` for a prompt's text, remembered as ``prompt_tokens`` is."""
    return len(_lengths(text))


def count_chat_tokens(contents: Iterable[str]) -> int:
    """Prompt tokens of a chat: each message's content plus its framing tokens."""
    counts = sum(count_prompt_tokens(text) + TOKENS_PER_MESSAGE for text in contents)
    return counts + TOKENS_PER_REPLY


def chat_prompt_tokens(messages: Iterable[tuple[str, str]], tools: Iterable[str] = ()) -> list[str]:
    """The prompt of a chat as tokens, framing included: ``count_chat_tokens`` of them,
    after the tokens of ``tools`` (each tool's definition, as text).

    Tools come first, then the messages (the system prompt first among them): the
    order Anthropic documents for its prompt cache (tools, system, messages), so a
    prefix cache reads a request's tools and system prompt from the request before.
    The framing tokens name the role, so a prefix cache tells a system prompt
    from the same text sent as a user message.
    """
    tokens: list[str] = []
    for tool in tools:
        tokens += prompt_tokens(tool)
    for role, content in messages:
        tokens += [f"<|{role}|>", "<|content|>", *prompt_tokens(content), "<|end|>"]
    return [*tokens, "<|assistant|>", "<|content|>", "<|reply|>"]


# --- token ids (vLLM's /tokenize and /detokenize) ------------------------------------
#
# The tokenizer has no vocabulary, so a token's id is computed from its text and back:
# stable across processes and reversible. The framing tokens of chat prompts take the
# first ids; a token of up to eight characters from tab, newline, carriage return and
# printable ASCII (every piece of English text) is its bijective base-98 numeral, which
# stays under 2**53 (JavaScript's safe integers); any other token is its UTF-8 bytes
# read as one number above that.
_SPECIAL = (
    "<|system|>",
    "<|developer|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|function|>",
    "<|content|>",
    "<|end|>",
    "<|reply|>",
)
_SPECIAL_IDS = {token: index for index, token in enumerate(_SPECIAL)}
_FIRST_TEXT_ID = 256
_ALPHABET = "\t\n\r" + "".join(map(chr, range(0x20, 0x7F)))
_DIGITS = {char: value for value, char in enumerate(_ALPHABET, start=1)}
_BASE = len(_ALPHABET)
_MAX_SHORT = 8
_FIRST_BYTES_ID: int = _FIRST_TEXT_ID + sum(_BASE**k for k in range(1, _MAX_SHORT + 1))
assert _FIRST_BYTES_ID < 2**53


def token_id(token: str) -> int:
    """The id of one token (see above); ``token_text`` gives the token back."""
    special = _SPECIAL_IDS.get(token)
    if special is not None:
        return special
    if token and len(token) <= _MAX_SHORT and all(c in _DIGITS for c in token):
        value = 0
        for char in token:
            value = value * _BASE + _DIGITS[char]
        return _FIRST_TEXT_ID + value - 1
    return _FIRST_BYTES_ID + int.from_bytes(b"\x01" + token.encode(), "big")


def token_text(ident: int) -> str:
    """The token whose id is ``ident``; ``ValueError`` if no token has it."""
    if 0 <= ident < len(_SPECIAL):
        return _SPECIAL[ident]
    if _FIRST_TEXT_ID <= ident < _FIRST_BYTES_ID:
        value = ident - _FIRST_TEXT_ID + 1
        chars: list[str] = []
        while value:
            value, digit = divmod(value - 1, _BASE)
            chars.append(_ALPHABET[digit])
        return "".join(reversed(chars))
    if ident > _FIRST_BYTES_ID:
        raw = (ident - _FIRST_BYTES_ID).to_bytes((ident - _FIRST_BYTES_ID).bit_length() // 8 + 1)
        if raw[:1] == b"\x01":
            try:
                return raw[1:].decode()
            except UnicodeDecodeError:
                pass
    raise ValueError(f"{ident} is not a token id")


def encode(text: str) -> list[int]:
    """``text`` as token ids."""
    return [token_id(token) for token in tokenize(text)]


def decode(ids: Iterable[int]) -> str:
    """The text of token ids (``ValueError`` for one that is no token's)."""
    return "".join(token_text(ident) for ident in ids)
