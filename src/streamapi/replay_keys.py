"""What a replayed request is matched by: the match keys (``--replay-match``) and their parsing.

Apart from the cassette code (``cassettes.py``, which matches by them) so that the
settings check ``--replay-match`` at start-up without importing it: a server that
neither records nor replays keeps none of it in memory (docs/performance.md, "Idle
memory"). Standard library only.
"""

from __future__ import annotations

from typing import Final

# Body fields that change the answer: compared by ``params`` (or one by one).
ANSWER_PARAMS: Final = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "stop",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "ignore_eos",
)
MATCH_KEYS: Final = (
    "endpoint",
    "model",
    "messages",
    "system",
    "last_user_message",
    "tools",
    "tool_names",
    "params",
    "user_text",
    "assistant_turns",
    *ANSWER_PARAMS,
)
DEFAULT_MATCH: Final = ("endpoint", "model", "messages", "tools", "params")
# What a coding agent's next run keeps (docs/testing/coding-agents.md): its system
# prompt (dates, paths), tool results (paths, timings) and reminders change per run,
# but not what the user typed nor, in a replay, the assistant's recorded turns.
AGENT_MATCH: Final = ("endpoint", "model", "tool_names", "params", "user_text", "assistant_turns")


def parse_match_keys(text: str) -> tuple[str, ...]:
    """``"model,last_user_message"`` as keys; raises ``ValueError`` naming a bad one.

    ``agent`` stands for ``AGENT_MATCH``, the keys a coding agent's sessions replay by.
    """
    keys = tuple(
        expanded
        for key in text.split(",")
        if key.strip()
        for expanded in (AGENT_MATCH if key.strip() == "agent" else (key.strip(),))
    )
    if not keys:
        raise ValueError("name at least one key")
    unknown = [key for key in keys if key not in MATCH_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (keys: {', '.join(MATCH_KEYS)})")
    return keys
