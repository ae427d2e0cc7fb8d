"""Deterministic log probabilities for simulated tokens.

A token's log probability is a function of the token, its position and its
rank among the alternatives, so the same answer always gets the same numbers.
Sampled tokens are mostly likely ones (-0 to -2.5, skewed towards 0);
alternatives rank below the sampled token.
"""

from __future__ import annotations

import hashlib
import struct


def logprob(token: str, position: int, rank: int = 0) -> float:
    """The log probability of ``token`` at ``position`` as the ``rank``-th choice."""
    digest = hashlib.blake2b(f"{position}:{rank}:{token}".encode(), digest_size=4).digest()
    value: int = struct.unpack("<I", digest)[0]
    return -round(2.5 * (value / 0xFFFFFFFF) ** 3, 6)


def top_logprobs(token: str, position: int, count: int) -> tuple[tuple[str, float], ...]:
    """``count`` candidates for the position, the sampled token first, in decreasing order."""
    chosen = logprob(token, position)
    top = [(token, chosen)]
    for rank, alternative in enumerate(_alternatives(token, count - 1), start=1):
        top.append(
            (alternative, round(min(chosen, logprob(alternative, position, rank)) - 0.5 * rank, 6))
        )
    return tuple(top[:count])


def _alternatives(token: str, count: int) -> list[str]:
    stripped = token.strip() or token
    candidates = [stripped.lower(), stripped.capitalize(), stripped + "s", " " + stripped, "\n"]
    candidates += [f"{stripped}{i}" for i in range(count)]
    unique = [c for c in dict.fromkeys(candidates) if c != token]
    return unique[:count]
