"""The latest turn of a conversation, as a model reads it: the request, and the tool results since.

Clients carry a tool's result in several forms: an OpenAI ``tool`` message, a
Responses ``function_call_output`` item and an Anthropic ``tool_result`` block all
become ``tool`` prompt messages; an Anthropic turn may add text after its results
(``PromptMessage.joins_tool_results``); and text-based agents send the result as a
user message ("Observation: ..."; smolagents' ToolCallingAgent does, with
``tool_choice: "required"``). Each of them answers the latest calls, and the request
they answer is the user's own words in the last user message that asked something
(``text.harness``: without the harness's tagged context).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from streamapi.engines.protocol import PromptMessage, last_user_turn
from streamapi.text.harness import observation, user_words

# A call named in an assistant's text transcript: smolagents writes
# "Calling tools:\n[{'id': ..., 'type': 'function', 'function': {'name': 'get_weather', ...".
_CALLED_NAME = re.compile(r"""['"]name['"]\s*:\s*['"]([\w.-]+)['"]""")
UNNAMED_TOOL = "tool"


@dataclass(frozen=True, slots=True)
class Turn:
    """What the next answer responds to."""

    question: str
    """The user's own words in the last user message that asked something ("" if none)."""
    results: tuple[tuple[str, str], ...] = ()
    """The tool results given since, as ``(tool name, output)``, in order."""
    asked_at: int = -1
    """The index of that user message (-1: none)."""

    @property
    def answered(self) -> frozenset[str]:
        """The names of the tools whose results are in."""
        return frozenset(name for name, _ in self.results)


def read_turn(messages: Sequence[PromptMessage]) -> Turn:
    """The latest turn of ``messages``: its request and the tool results since."""
    asked = -1
    question = ""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role != "user" or message.joins_tool_results:
            continue
        if observation(message.content) is not None:
            continue
        words = user_words(message.content)
        if words or message.images:
            asked, question = index, words
            break
    if asked < 0:
        # No user message asks anything of its own: answer the last one as it is.
        asked = last_user_turn(messages)
        question = messages[asked].content if asked >= 0 else ""
    results: list[tuple[str, str]] = []
    for index in range(asked + 1, len(messages)):
        message = messages[index]
        if message.role in ("tool", "function"):
            results.append((message.name or UNNAMED_TOOL, message.content))
        elif message.role == "user" and not message.joins_tool_results:
            reported = observation(message.content)
            if reported is not None:
                results.append((_last_called(messages[:index]), reported))
    return Turn(question, tuple(results), asked)


def _last_called(messages: Sequence[PromptMessage]) -> str:
    """The tool the last assistant message called, by its calls or its transcript's words."""
    for message in reversed(messages):
        if message.role != "assistant":
            continue
        if message.tool_calls:
            return message.tool_calls[-1].name
        named = _CALLED_NAME.findall(message.content)
        return named[-1] if named else UNNAMED_TOOL
    return UNNAMED_TOOL
