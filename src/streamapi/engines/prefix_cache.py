"""Automatic prefix caching, as vLLM does it: hashed blocks of prompt tokens, least recent out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK_TOKENS = 16


class PrefixCache:
    """Remembers the full 16-token blocks of recent prompts, up to ``capacity_tokens``.

    A block's key chains the key of the block before it, so a block only hits
    when the whole prompt up to its end is the same, as in vLLM.
    """

    def __init__(self, capacity_tokens: int) -> None:
        self._capacity_blocks = max(0, capacity_tokens // BLOCK_TOKENS)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def admit(self, tokens: Sequence[str]) -> int:
        """Cached tokens at the start of ``tokens``; then remember all of its blocks.

        At least the last prompt token is always computed, as vLLM does: its
        logits give the first output token.
        """
        keys: list[int] = []
        parent = 0
        for start in range(0, len(tokens) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
            parent = hash((parent, *tokens[start : start + BLOCK_TOKENS]))
            keys.append(parent)
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            hits += 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self._capacity_blocks:
            self._blocks.popitem(last=False)
        return min(hits * BLOCK_TOKENS, max(0, len(tokens) - 1))
