"""The user's own words in a message, apart from what an agent harness added around them.

Agent CLIs and frameworks wrap the user's request in context of their own: Claude
Code adds ``<system-reminder>...</system-reminder>`` text (a list of its tools, the
date, a reminder of the to-do list), Codex CLI sends ``<environment_context>`` and
``<user_instructions>`` messages, smolagents opens a task with "New task:" and
returns a tool's result as a user message "Observation: ...". A model answers the
request, not the wrapping, so the simulator picks its subject and fills tool
arguments from what is left once the tagged context is taken out; and a user
message that only reports a tool's result is read as that result.
"""

from __future__ import annotations

import re

from streamapi.text.memo import per_text

# A tag, opening or closing: ``<name ...>``, ``</name>``. Only names a harness uses (a
# hyphen or an underscore in them, or a known word) are context: a user's own
# ``<b>bold</b>`` is not. Attributes are bounded, so each ``<`` costs a bounded look.
_TAG = re.compile(r"<(/?)([A-Za-z][\w:.-]{0,63})(?:\s[^<>]{0,1000})?\s*>")
_CONTEXT_NAMES = frozenset(
    "context environment instructions reminder system instructions_context".split()
)
# Tags that wrap the request itself (Cursor's ``<user_query>``): their content is kept.
_REQUEST_TAGS = frozenset(
    "user_query user_request user_message user_input query request task prompt".split()
)
# Harness lines that only announce what follows (smolagents' "New task:").
_ANNOUNCEMENTS = re.compile(r"^\s*(?:new task|task|user request|request)\s*:\s*$", re.I | re.M)
# DSPy's ChatAdapter frames a request in field markers, and closes it asking for its own:
# the words are the fields' values.
_FIELD_MARKER = re.compile(r"^\s*\[\[ ## \w+ ## \]\]\s*$", re.MULTILINE)
_FIELDS_OPENING = "Respond with the corresponding output fields"
_FIELDS_ASKED = re.compile(
    r"Respond with the corresponding output fields.{0,4000}?\[\[ ## completed ## \]\]`\.?",
    re.DOTALL,
)
# A tool's result sent as a user message's text: smolagents' "Observation:" (and its
# error report "Call id: ...\nError: ..."), ReAct-style transcripts' "Observation:".
_OBSERVATION = re.compile(
    r"^\s*(?:observations?|tool (?:result|output|response)s?|function (?:result|output)s?"
    r"|call id)\s*:\s*",
    re.IGNORECASE,
)
# Bounded work on hostile input: tags are looked for in this much of a message.
_MAX_SCAN_CHARS = 200_000


def _is_context(name: str) -> bool:
    lowered = name.lower()
    return "-" in lowered or "_" in lowered or lowered in _CONTEXT_NAMES


@per_text()
def user_words(text: str) -> str:
    """``text`` without the harness's tagged context and announcements; "" if nothing is left.

    Each pattern is searched for only when the text holds the characters it needs (a
    tag's "<", an announcement's ":", a field marker's "[[ ## "): most messages have none.
    """
    text = text[:_MAX_SCAN_CHARS]
    if "<" in text:
        text = _without_context(text)
    if ":" in text:
        text = _ANNOUNCEMENTS.sub("", text)
    # DSPy asks for its fields once, at the end: only the last such request is looked at,
    # so that a text repeating its opening words costs one bounded match.
    asked = text.rfind(_FIELDS_OPENING)
    if asked >= 0:
        text = text[:asked] + _FIELDS_ASKED.sub("", text[asked:], count=1)
    if "[[ ## " in text:
        text = _FIELD_MARKER.sub("", text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())


def _without_context(text: str) -> str:
    """``text`` without its context blocks, and without the markup of tags that wrap the
    request (their content stays). One pass over the tags: linear in the text."""
    cuts: list[tuple[int, int]] = []
    opened: dict[str, list[tuple[int, int]]] = {}
    for found in _TAG.finditer(text):
        name = found.group(2).lower()
        if name not in _REQUEST_TAGS and not _is_context(name):
            continue
        if not found.group(1):
            opened.setdefault(name, []).append((found.start(), found.end()))
            continue
        stack = opened.get(name)
        if not stack:
            continue  # a closing tag with no opening one: left as it is
        start, inner = stack.pop()
        if name in _REQUEST_TAGS:
            cuts += [(start, inner), (found.start(), found.end())]
        else:
            cuts.append((start, found.end()))
    if not cuts:
        return text
    kept: list[str] = []
    position = 0
    for start, end in sorted(cuts):
        if start >= position:
            kept.append(text[position:start])
            kept.append(" ")
        position = max(position, end)
    kept.append(text[position:])
    return "".join(kept)


def observation(text: str) -> str | None:
    """The tool result a user message reports in words ("Observation: ..."), or None."""
    found = _OBSERVATION.match(text)
    if found is None:
        return None
    return text[found.end() :].strip()
