"""Actions written as code, as smolagents' CodeAgent asks for them.

smolagents' CodeAgent tells the model, in its system prompt, to solve a task "using code
blobs": a ``Thought:`` line, then Python in a block opened and closed with the tags it
names (``<code>`` and ``</code>`` by default), calling its tools as functions (listed in
the system prompt as ``def name(arg: type) -> type:`` with their docstrings) and ending
with ``final_answer(...)``. Each block's printed output comes back as a user message
"Observation: ...". The answer here calls the tool the task names with arguments from
its words (printing the result), and, once an observation is in, hands it to
``final_answer``: so the agent finishes in two steps, or one when no tool fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_TAGS = re.compile(
    r"The code sequence must be opened with '([^'\n]{1,60})', and closed with '([^'\n]{1,60})'"
)
_CODE_BLOBS = re.compile(r"\busing code blobs\b", re.IGNORECASE)
_TOOL_DEF = re.compile(
    r"^def (\w+)\(([^)\n]{0,500})\) -> [^:\n]{1,100}:\n[ \t]+\"\"\"(.{0,3000}?)\"\"\"",
    re.MULTILINE | re.DOTALL,
)
_FINAL_ANSWER = "final_answer"
# What smolagents wraps around a code block's output in its observation.
_LOGS = re.compile(r"^\s*Execution logs:\s*", re.IGNORECASE)
_LAST_OUTPUT = re.compile(r"\n?Last output from code snippet:.*\Z", re.DOTALL)
_MAX_SCAN_CHARS = 200_000
_ANSWER_CHARS = 300


def code_tags(system: str) -> tuple[str, str] | None:
    """The tags a code action is wrapped in, if the prompt asks for code actions."""
    system = system[:_MAX_SCAN_CHARS]
    found = _TAGS.search(system)
    if found is None:
        return ("<code>", "</code>") if _CODE_BLOBS.search(system) else None
    opening, closing = found.group(1), found.group(2)
    # The markdown form names its tags as regular expressions: ```(?:python|py) and \n```.
    if opening.startswith("```"):
        opening, closing = "```py", "```"
    return opening, closing.replace("\\n", "")


def write_code_action(
    system: str,
    question: str,
    observations: Sequence[str],
    names: Callable[[], Sequence[str]],
    brief: Callable[[], str],
) -> str | None:
    """The next code action: a tool call, or ``final_answer``; None if none is asked for.

    ``names`` gives the question's names and key terms, for arguments; ``brief`` is the
    answer to give when no tool fits and nothing was observed (each called only then: most
    requests ask for no code action).
    """
    tags = code_tags(system)
    if tags is None:
        return None
    opening, closing = tags
    if observations:
        shown = _LAST_OUTPUT.sub("", _LOGS.sub("", observations[-1])).strip()
        shown = " ".join(shown.split())
        shown = shown if len(shown) <= _ANSWER_CHARS else shown[: _ANSWER_CHARS - 3] + "..."
        thought = "Thought: The observation answers the task, so I return it."
        code = f"final_answer({shown!r})"
    else:
        tool = _named_tool(system, question)
        if tool is None:
            thought = "Thought: I can answer this directly."
            code = f"final_answer({brief()!r})"
        else:
            name, parameters = tool
            hints = names()
            arguments = ", ".join(
                f"{arg}={_value(kind, hints, index)!r}"
                for index, (arg, kind) in enumerate(parameters)
            )
            thought = f"Thought: I will use the tool `{name}` and look at its result."
            code = f"result = {name}({arguments})\nprint(result)"
    return f"{thought}\n{opening}\n{code}\n{closing}"


def _named_tool(system: str, question: str) -> tuple[str, list[tuple[str, str]]] | None:
    """The listed tool the question names best (by the words of its name and docstring)."""
    stems = {w.lower()[:5] for w in re.findall(r"[A-Za-z]{3,}", question)}
    best: tuple[int, str, list[tuple[str, str]]] | None = None
    for name, arguments, doc in _TOOL_DEF.findall(system[:_MAX_SCAN_CHARS]):
        if name == _FINAL_ANSWER:
            continue
        summary = doc.strip().split("\n\n")[0]
        words = re.findall(r"[A-Za-z]{3,}", f"{name.replace('_', ' ')} {summary}")
        overlap = len({w.lower()[:5] for w in words} & stems)
        if overlap and (best is None or overlap > best[0]):
            parameters = [
                (part.split(":")[0].strip(), part.split(":")[1].strip() if ":" in part else "")
                for part in arguments.split(",")
                if part.strip() and part.split(":")[0].strip().isidentifier()
            ]
            best = (overlap, name, parameters)
    return None if best is None else (best[1], best[2])


def _value(kind: str, names: Sequence[str], index: int) -> object:
    kind = kind.lower()
    if kind in ("integer", "int", "number", "float"):
        return 1
    if kind in ("boolean", "bool"):
        return True
    return names[index % len(names)] if names else "example"
