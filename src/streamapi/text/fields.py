"""Answers in the sections a prompt defines in words: DSPy's ``[[ ## field ## ]]`` markers.

DSPy's ChatAdapter (its default) describes a signature's fields in the system
message and asks, at the end of the user message, to "Respond with the
corresponding output fields, starting with the field `[[ ## answer ## ]]`, ...
and then ending with the marker for `[[ ## completed ## ]]`". It parses the
answer by those markers, each field's value by its type (``str``, ``float``,
``bool``, ``Literal[...]``, ``dict[str, Any]``, a JSON Schema it names). Its
ReAct module asks each step for ``next_thought``, ``next_tool_name`` (one of
its tools or ``finish``) and ``next_tool_args``, with the steps so far in the
``trajectory`` input; its tools are listed in the system message with their
arguments. The answer here fills every output field, in order, so that the
adapter parses it; a ReAct step calls the tool the question names, and
``finish`` once an observation is in the trajectory.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamapi.text.jsonschema import SchemaGenerator
from streamapi.text.writer import find_subject, key_terms, proper_nouns, write_brief

_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_COMPLETED = "[[ ## completed ## ]]"
_RESPOND_OPENING = "Respond with the corresponding output fields"
_RESPOND = re.compile(
    r"Respond with the corresponding output fields, starting with the field (.{0,4000}?)"
    r"and then ending with the marker for `\[\[ ## completed ## \]\]`\.?",
    re.DOTALL,
)
_LISTED_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)(?:\n(?!\s*\d+\.)|\Z)", re.DOTALL)
_LISTED_FIELD = re.compile(r"^\s*\d+\.\s+`(\w+)`\s+\((.+?)\)(?::|\s*$)", re.MULTILINE)
_NOTE = re.compile(r"^\{(\w+)\}\s+# note: (.*)$", re.MULTILINE)
_CHOICES = re.compile(r"one of: (.*)$")
_SCHEMA_NOTE = re.compile(r"JSON schema: (\{.*\})\s*$")
_LITERAL = re.compile(r"^Literal\[(.*)\]$", re.DOTALL)
# A ReAct tool in DSPy's instructions: "(1) get_weather, whose description is
# <desc>...</desc>. It takes arguments {'city': {'type': 'string'}}."
_REACT_TOOL = re.compile(
    r"^[ \t]*\(\d+\)[ \t]+([\w.-]+), whose description is <desc>(.{0,4000}?)</desc>\.\s*"
    r"It takes arguments (\{[^\n]*\})\.?[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_OBSERVATION = re.compile(r"\[\[ ## observation_\d+ ## \]\]\n(.*?)(?=\n\[\[ ## |\Z)", re.DOTALL)
_FINISH = "finish"
_THOUGHT_FIELDS = frozenset("reasoning rationale thought next_thought thinking".split())
_TOOL_ARGS_FIELDS = frozenset("next_tool_args tool_args arguments args".split())
# Where the text of a prompt's fields is looked for: bounded for hostile input.
_MAX_SCAN_CHARS = 200_000


@dataclass(frozen=True, slots=True)
class OutputField:
    """One output field: its name, its type as DSPy writes it, and what its note adds."""

    name: str
    annotation: str = "str"
    choices: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FieldForm:
    """The sections an answer must have, and what the request gave in its input sections."""

    outputs: tuple[OutputField, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    tools: dict[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    """ReAct's tools: name -> (description, JSON Schema of its arguments)."""

    @property
    def question(self) -> str:
        """The request's own words: its first input other than the trajectory."""
        for name, value in self.inputs.items():
            if name != "trajectory" and value:
                return value
        return ""

    @property
    def observations(self) -> list[str]:
        """The observations in a ReAct trajectory, in order."""
        return [o.strip() for o in _OBSERVATION.findall(self.inputs.get("trajectory", ""))]


def field_form(system: str, user: str) -> FieldForm | None:
    """The field sections the prompt asks for (DSPy's ChatAdapter), or None if it asks none."""
    system, user = system[:_MAX_SCAN_CHARS], user[:_MAX_SCAN_CHARS]
    if _COMPLETED not in system and _COMPLETED not in user:
        return None
    listed = {
        name: annotation.strip()
        for block in _LISTED_OUTPUTS.findall(system)
        for name, annotation in _LISTED_FIELD.findall(block)
    }
    # DSPy asks once, at the end: one bounded match from the last opening.
    asked = _RESPOND.match(user, max(0, user.rfind(_RESPOND_OPENING)))
    names = _MARKER.findall(asked.group(1)) if asked else list(listed)
    names = [n for n in names if n != "completed"]
    if not names:
        return None
    notes = dict(_NOTE.findall(system))
    outputs = tuple(_output_field(n, listed.get(n, "str"), notes.get(n, "")) for n in names)
    return FieldForm(outputs, _inputs(user, set(names)), _react_tools(system))


def _output_field(name: str, annotation: str, note: str) -> OutputField:
    choices: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None
    if found := _CHOICES.search(note):
        choices = tuple(c.strip() for c in found.group(1).split(";") if c.strip())
    elif literal := _LITERAL.match(annotation):
        try:
            parsed = ast.literal_eval(f"[{literal.group(1)}]")
        except (ValueError, SyntaxError):
            parsed = []
        choices = tuple(str(c) for c in parsed)
    if found := _SCHEMA_NOTE.search(note):
        try:
            loaded = json.loads(found.group(1))
        except ValueError:
            loaded = None
        schema = loaded if isinstance(loaded, dict) else None
    return OutputField(name, annotation, choices, schema)


def _inputs(user: str, outputs: set[str]) -> dict[str, str]:
    """The user message's sections: ``{field: value}``, the closing request left out."""
    opening = user.rfind(_RESPOND_OPENING)
    if opening >= 0:
        user = user[:opening] + _RESPOND.sub("", user[opening:], count=1)
    parts = _MARKER.split(user)
    # parts: text before the first marker, then (name, value) pairs. The trajectory's own
    # markers (thought_0, observation_0...) belong to the trajectory.
    inputs: dict[str, str] = {}
    current: str | None = None
    for index in range(1, len(parts) - 1, 2):
        name, value = parts[index], parts[index + 1]
        if current == "trajectory" and re.fullmatch(r"[a-z_]+_\d+", name):
            inputs[current] += f"[[ ## {name} ## ]]{value}"
            continue
        if name in outputs:
            continue
        current = name
        inputs[name] = value
    return {name: value.strip() for name, value in inputs.items()}


def _react_tools(system: str) -> dict[str, tuple[str, Mapping[str, Any]]]:
    tools: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for name, description, arguments in _REACT_TOOL.findall(system):
        try:
            properties = ast.literal_eval(arguments.strip())
        except (ValueError, SyntaxError):
            properties = {}
        if not isinstance(properties, dict):
            properties = {}
        schema = {"type": "object", "properties": properties, "required": list(properties)}
        tools[name] = (description, schema)
    return tools


def write_fields(form: FieldForm, rng: random.Random) -> str:
    """The answer: every output field's section, in order, then the ``completed`` marker."""
    question = form.question
    hints = list(dict.fromkeys([*proper_nouns(question), *key_terms(question, "")]))
    observations = form.observations
    tool = _next_tool(form, question, observations)
    sections = []
    for output in form.outputs:
        value = _value(output, form, tool, question, observations, hints, rng)
        sections.append(f"[[ ## {output.name} ## ]]\n{value}")
    return "\n\n".join([*sections, _COMPLETED])


def _next_tool(form: FieldForm, question: str, observations: list[str]) -> str | None:
    """ReAct's next tool: ``finish`` once there is an observation, else the one the question
    names (else the first)."""
    chooser = next((o for o in form.outputs if _FINISH in o.choices), None)
    if chooser is None:
        return None
    tools = [c for c in chooser.choices if c != _FINISH]
    if observations or not tools:
        return _FINISH
    stems = {w.lower()[:5] for w in re.findall(r"[A-Za-z]{3,}", question)}

    def overlap(name: str) -> int:
        described = form.tools.get(name, ("", {}))[0]
        words = re.findall(r"[A-Za-z]{3,}", f"{name.replace('_', ' ')} {described}")
        return len({w.lower()[:5] for w in words} & stems)

    return max(tools, key=overlap)


def _value(
    output: OutputField,
    form: FieldForm,
    tool: str | None,
    question: str,
    observations: list[str],
    hints: list[str],
    rng: random.Random,
) -> str:
    name, annotation = output.name, output.annotation.replace(" ", "")
    if output.choices:
        if tool is not None and tool in output.choices:
            return tool
        return rng.choice(output.choices)
    if name in _TOOL_ARGS_FIELDS and tool is not None:
        schema = form.tools.get(tool, ("", {"type": "object", "properties": {}}))[1]
        return json.dumps(SchemaGenerator(schema, rng, hints).generate(), ensure_ascii=False)
    if output.schema is not None and annotation != "str":
        value = SchemaGenerator(output.schema, rng, hints).generate()
        return json.dumps(value, ensure_ascii=False)
    if annotation == "bool":
        return "True"
    if annotation == "int":
        return str(rng.randint(1, 10))
    if annotation == "float":
        return f"{rng.uniform(0.6, 0.95):.2f}"
    if annotation.startswith("list["):
        return json.dumps(hints[:3] or [find_subject(question)], ensure_ascii=False)
    if annotation.startswith("dict["):
        return "{}"
    lead = ""
    # ReAct's own ``finish`` tool leaves "Completed." as the last observation.
    telling = [o for o in observations if o.rstrip(".").lower() != "completed"]
    if telling:
        shown = " ".join(telling[-1].split())
        lead = shown if len(shown) <= 200 else shown[:197] + "..."
    if name in _THOUGHT_FIELDS:
        if tool == _FINISH and observations:
            said = lead.rstrip(".")
            return f"The observation answers the question: {said}. I have what I need to finish."
        if tool is not None:
            return f"To answer this I should call {tool} first and use its result."
        subject = find_subject(question)
        return f"The question is about {subject}; I will answer it directly and briefly."
    if lead:
        return write_brief(question, rng, sentences=2, lead=lead.rstrip(".") + ".")
    return write_brief(question, rng, sentences=2)
