"""What a prompt asks of the answer's form in words: JSON of a schema, a Markdown block, a length.

Structured-output libraries that do not use ``response_format`` put a JSON
Schema in a message and ask for JSON: instructor's ``Mode.JSON`` (with
``json_object``) and ``Mode.MD_JSON`` ("within a ```json codeblock") put
``model_json_schema()`` in the system message; pydantic-ai's ``PromptedOutput``
says "Always respond with a JSON object that's compatible with this schema".
Others show an example object ("as JSON like {...}"). People ask for short
answers the same way: "in one sentence", "in 12 words", "be brief".

Only the instructions (system and developer messages) and the last user message
are read: a schema in an earlier turn or a tool's output is not an instruction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamapi.text.memo import per_text

# Where a prompt's JSON is looked for: enough for any real schema, bounded for safety.
_MAX_SCAN_CHARS = 200_000
_MAX_DECODE_ATTEMPTS = 64
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SCHEMA_ANCHORS = ("properties", "$defs", "definitions", "$ref", "anyOf", "oneOf", "allOf", "items")
_SCHEMA_WORDS = frozenset(
    """$schema $id $ref $defs definitions title description type properties required
    additionalProperties items prefixItems enum const anyOf oneOf allOf not default examples
    minimum maximum exclusiveMinimum exclusiveMaximum multipleOf minLength maxLength pattern
    format minItems maxItems uniqueItems patternProperties propertyNames minProperties
    maxProperties strict name schema discriminator nullable readOnly""".split()
)
# "respond with a JSON object", "provide the parsed objects in json", "return only the JSON",
# "output JSON": a verb of answering, then JSON within the same sentence.
_ASKS_FOR_JSON = re.compile(
    r"\b(?:respond|reply|answer|return|output|provide|give|produce|generate|format|write|emit"
    r"|list|extract)\w*\b[^.\n]{0,80}?\bjson\b|\bjson\s+(?:only|format|object|response|output)\b"
    r"|\bas\s+json\b|\bin\s+json\b",
    re.IGNORECASE,
)
_ASKS_FOR_MARKDOWN = re.compile(r"```|\bcode\s?block\b", re.IGNORECASE)
# Example values that name a type ({"age": "integer"}) rather than being one.
_TYPE_NAMES = {
    "string": "string",
    "str": "string",
    "text": "string",
    "integer": "integer",
    "int": "integer",
    "number": "number",
    "float": "number",
    "boolean": "boolean",
    "bool": "boolean",
}


@dataclass(frozen=True, slots=True)
class PromptedFormat:
    """JSON asked for in words: the schema to answer with, and whether in a ```json block."""

    schema: Mapping[str, Any]
    markdown: bool = False


@dataclass(frozen=True, slots=True)
class Length:
    """An explicit length: a number of words, or of sentences ("be brief" is two)."""

    words: int | None = None
    sentences: int | None = None


def prompted_format(instructions: Sequence[str], *, json_mode: bool) -> PromptedFormat | None:
    """The JSON a prompt asks for in words, if it does.

    ``instructions`` are the texts read (system messages, then the last user
    message). A JSON Schema among them, or else an example object, is the
    shape; it counts when a text asks for JSON, or always when ``json_mode``
    (``response_format: json_object``) already asks for it.
    """
    asked = json_mode or any(map(_asks_for_json, instructions))
    if not asked:
        return None
    schema: Mapping[str, Any] | None = None
    example: Any = None
    for text in instructions:
        for value in _json_objects(text):
            if _is_schema(value):
                schema = value
            elif example is None or len(json.dumps(value)) > len(json.dumps(example)):
                example = value
    if schema is None and example is not None:
        schema = schema_of_example(example)
    if schema is None:
        schema = _schema_of_named_fields(instructions)
    if schema is None:
        return None
    return PromptedFormat(schema, markdown=any(_ASKS_FOR_MARKDOWN.search(t) for t in instructions))


# "as JSON with fields name, age and city", "JSON with the keys `title` and `summary`":
# the names after the word, up to the end of the sentence.
_NAMED_FIELDS = re.compile(
    r"\bjson\b[^.\n]{0,60}?\b(?:fields?|keys?|properties|attributes|members)\b\s*:?\s*"
    r"([^.\n]{1,300})",
    re.IGNORECASE,
)
_FIELD_NAME = re.compile(r"[`'\"]?([A-Za-z_][\w-]{0,63})[`'\"]?")
_NOT_NAMES = frozenset("and or the a an with of for each named called as only".split())
_INTEGER_NAMES = frozenset("age year count number quantity population total id rank".split())
_NUMBER_NAMES = frozenset(
    "price cost amount score rating confidence probability latitude longitude percent".split()
)


def _schema_of_named_fields(instructions: Sequence[str]) -> dict[str, Any] | None:
    """The object a prompt asks for by its fields' names, every field required; None if
    it names none. A name says its type where it can (``age``, ``price``, ``is_open``)."""
    for text in reversed(instructions):  # the user's own words win
        found = _NAMED_FIELDS.search(text[:_MAX_SCAN_CHARS])
        if found is None:
            continue
        names = [
            name for name in _FIELD_NAME.findall(found.group(1)) if name.lower() not in _NOT_NAMES
        ]
        if not names:
            continue
        properties = {name: _named_type(name) for name in dict.fromkeys(names)}
        return {"type": "object", "properties": properties, "required": list(properties)}
    return None


def _named_type(name: str) -> dict[str, Any]:
    lowered = name.lower()
    if lowered.startswith(("is_", "has_", "can_")):
        return {"type": "boolean"}
    last = re.split(r"[_-]", lowered)[-1]
    if last in _INTEGER_NAMES:
        return {"type": "integer", "minimum": 0}
    if last in _NUMBER_NAMES:
        return {"type": "number"}
    return {"type": "string"}


def schema_of_example(value: Any) -> dict[str, Any]:
    """A schema every value shaped like ``value`` validates against (all keys required)."""
    if isinstance(value, dict):
        return {
            "type": "object",
            "properties": {str(k): schema_of_example(v) for k, v in value.items()},
            "required": [str(k) for k in value],
        }
    if isinstance(value, list):
        items = schema_of_example(value[0]) if value else {}
        return {"type": "array", "items": items, "minItems": 1 if value else 0}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "minimum": 0} if value >= 0 else {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        named = _TYPE_NAMES.get(value.strip().lower())
        return {"type": named or "string"}
    return {"type": "null"}


def _json_objects(text: str) -> list[Any]:
    """The JSON objects written in ``text``, outermost ones only, in order."""
    decoder = json.JSONDecoder()
    text = text[:_MAX_SCAN_CHARS]
    found: list[Any] = []
    position = text.find("{")
    attempts = 0
    while position >= 0 and attempts < _MAX_DECODE_ATTEMPTS:
        attempts += 1
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict) and value:
            found.append(value)
        position = text.find("{", end)
    return found


def _is_schema(value: Mapping[str, Any]) -> bool:
    """Whether an object reads as a JSON Schema rather than an example of data."""
    if not set(value) <= _SCHEMA_WORDS:
        return False
    declared = value.get("type")
    typed = declared in _JSON_TYPES or (isinstance(declared, list) and set(declared) <= _JSON_TYPES)
    return typed or any(anchor in value for anchor in _SCHEMA_ANCHORS)


_NUMBERS = {
    "one": 1,
    "a single": 1,
    "single": 1,
    "two": 2,
    "a couple of": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "fifty": 50,
    "a hundred": 100,
    "one hundred": 100,
}
_COUNT = r"(\d{1,4}|" + "|".join(sorted(map(re.escape, _NUMBERS), key=len, reverse=True)) + r")"
# "one short sentence", "a single plain sentence": a word may say what kind.
_KIND = r"(?:(?:short|brief|simple|single|concise|plain|clear|complete|full)\s+)?"
_WORDS_ASKED = re.compile(rf"\b{_COUNT}[ -]{_KIND}words?\b", re.IGNORECASE)
_SENTENCES_ASKED = re.compile(rf"\b{_COUNT}[ -]{_KIND}sentences?\b", re.IGNORECASE)
_BRIEF_ASKED = re.compile(
    r"\b(?:be|keep (?:it|this|the answer|your answer|your reply)|answer|reply|respond)"
    r"\s+(?:very\s+)?(?:brief|short|concise|succinct)(?:ly)?\b"
    r"|\bbriefly\b|\bin brief\b|\bconcisely\b|\bsuccinctly\b|\btl;?dr\b"
    r"|\b(?:a|one)\s+(?:very\s+)?(?:short|brief|concise)\s+"
    r"(?:answer|reply|response|explanation|summary|description|paragraph)\b",
    re.IGNORECASE,
)
# The longest length an instruction is taken to ask for: beyond it, the usual answer.
_MAX_WORDS = 2000
_MAX_SENTENCES = 50
BRIEF_SENTENCES = 2


def asked_length(instructions: Sequence[str]) -> Length | None:
    """The length the instructions ask for: words first, then sentences, then brevity."""
    for text in reversed(instructions):  # the user's own words win over a system prompt's
        length = _length_asked_in(text)
        if length is not None:
            return length
    return None


# Words each length pattern needs: an ASCII text with none of them (most prompts) is
# not searched. (In other texts, case-insensitive matching maps letters such as the
# dotless i, U+0131, to ASCII ones, so those are always searched.)
_BRIEF_WORDS = ("brief", "short", "concise", "succinct", "tl")


def _may_hold(text: str, words: tuple[str, ...]) -> bool:
    """False only when ``text`` is ASCII and holds none of ``words`` in any case."""
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(word in lowered for word in words)


@per_text()
def _length_asked_in(text: str) -> Length | None:
    """The length one text asks for (``asked_length``); a system prompt repeats, so it is
    read once."""
    if _may_hold(text, ("word",)) and (match := _WORDS_ASKED.search(text)):
        words = _count(match.group(1))
        if 0 < words <= _MAX_WORDS:
            return Length(words=words)
    if _may_hold(text, ("sentence",)) and (match := _SENTENCES_ASKED.search(text)):
        sentences = _count(match.group(1))
        if 0 < sentences <= _MAX_SENTENCES:
            return Length(sentences=sentences)
    if _may_hold(text, _BRIEF_WORDS) and _BRIEF_ASKED.search(text):
        return Length(sentences=BRIEF_SENTENCES)
    return None


@per_text()
def _asks_for_json(text: str) -> bool:
    """Whether a text asks for JSON in words (``_ASKS_FOR_JSON``, which needs "json")."""
    return _may_hold(text, ("json",)) and _ASKS_FOR_JSON.search(text) is not None


def _count(spelled: str) -> int:
    lowered = spelled.lower()
    return int(lowered) if lowered.isdigit() else _NUMBERS.get(lowered, 0)


_LENGTH_PHRASE = re.compile(
    r"(?:\b(?:in|with|using|within|under|at most|no more than|fewer than|less than)\s+)?"
    rf"\b{_COUNT}[ -]{_KIND}(?:words?|sentences?)\b|{_BRIEF_ASKED.pattern}",
    re.IGNORECASE,
)
# What is left of a clause that only asked for a length ("Answer in one sentence.").
_INSTRUCTION_WORDS = frozenset(
    "answer respond reply please keep it this be your the and just only make sure".split()
)


def without_length_instructions(text: str) -> str:
    """``text`` without its length instructions, so they are not taken for its subject."""
    kept: list[str] = []
    for clause in re.split(r"(?<=[.?!:;,])\s+|\n", text):
        if not _LENGTH_PHRASE.search(clause):
            kept.append(clause)
            continue
        rest = _LENGTH_PHRASE.sub("", clause)
        words = {w.lower() for w in re.findall(r"[A-Za-z']+", rest)}
        if words - _INSTRUCTION_WORDS:
            kept.append(re.sub(r"\s+([.?!:;,])", r"\1", re.sub(r"\s{2,}", " ", rest)).strip())
    return " ".join(c for c in kept if c.strip(" .?!:;,")) or text
