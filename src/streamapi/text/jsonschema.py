"""Values that validate against a JSON Schema, for tool arguments and structured outputs.

Covers what tool definitions and OpenAI's strict structured outputs use:
``type`` (single or list), ``enum``, ``const``, ``properties`` and ``required``,
``items`` and ``prefixItems``, ``minItems``/``maxItems``/``uniqueItems``,
numeric bounds and ``multipleOf``, ``minLength``/``maxLength``, ``pattern`` (a
regular-expression generator), common ``format``s, ``anyOf``/``oneOf``/``allOf``,
and local ``$ref``s (``#/$defs/...``, ``#/definitions/...``, ``#``), recursive
ones included. Strings are drawn from the conversation (``hints``) so that,
say, a ``location`` argument names the city the user asked about.

The work is bounded whatever the schema asks (a client's schema is untrusted
input): a ``GenerationBudget`` caps the characters of all values one answer
generates (``minItems``, ``minLength``, ``pattern`` repeats and fan-outs of
required ``$defs`` included), ``multipleOf`` is computed arithmetically, and
nesting (``$ref`` chains included) stops at ``MAX_NESTING``. A value cut short by
its budget is longer than the answer's token limit, so it is never sent whole.
"""

from __future__ import annotations

import math
import random
import re

# The stdlib's own regex parser, to generate strings for `pattern`; the public
# sre_parse alias is deprecated since 3.11.
import re._constants as sre_constants  # type: ignore[import-not-found]
import re._parser as sre_parse  # type: ignore[import-not-found]
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

Schema = Mapping[str, Any] | bool

# Past this depth, recursive schemas get their smallest valid value.
_MAX_DEPTH = 6
MAX_NESTING = 64
"""Values nest (``$ref`` chains included) at most this deep; deeper gets ``null``. Checked
schemas never reach it (serving/schema_checks.py refuses a required self-reference)."""
MAX_TOKEN_CHARS = 8
"""The longest token the tokenizer makes (text/tokenizer.py), in characters."""
# A repeat of more than this many is one sample repeated: as valid, and linear.
_SAMPLED_REPEATS = 16
_PLACE_WORDS = ("city", "location", "place", "country", "region", "destination", "origin")
_TEXT_WORDS = ("description", "summary", "text", "content", "reason", "answer", "message", "note")
# Optional properties are filled this often, above depth _DEEP (and half as often below).
_KEEP_OPTIONAL = 0.9
_DEEP = 3
# JavaScript's Number.MAX_SAFE_INTEGER: zod and JSON.parse hold integers exactly up to here.
_SAFE_INTEGER = float(2**53 - 1)
# Plausible ranges by a number's name, checked in order; the schema's bounds win.
_NUMBER_WINDOWS: tuple[tuple[tuple[str, ...], tuple[float, float]], ...] = (
    (("year",), (1950, 2026)),
    (("age",), (18, 80)),
    (("population", "inhabitant"), (1_000, 10_000_000)),
    (("latitude", "lat"), (-90, 90)),
    (("longitude", "lon", "lng"), (-180, 180)),
    (("percent", "pct"), (0, 100)),
    (("probability", "confidence", "score", "ratio", "rate"), (0, 1)),
    (("price", "cost", "amount", "salary"), (1, 500)),
    (("count", "quantity", "number", "num", "total"), (1, 20)),
)


class GenerationBudget:
    """Characters the values of one answer may still take; shared by all of its values.

    Every generated node is charged at most what it takes serialised (at least
    one character), so a spent budget means the serialised values are longer
    than the characters it started with.
    """

    def __init__(self, chars: int) -> None:
        self.left = chars

    @classmethod
    def for_tokens(cls, tokens: int) -> GenerationBudget:
        """Enough for ``tokens`` tokens and one more (to tell "length" from "stop"): no
        token is longer than ``MAX_TOKEN_CHARS``, so a value cut short still fills them."""
        return cls((max(0, tokens) + 1) * MAX_TOKEN_CHARS)

    @property
    def spent(self) -> bool:
        """Whether a value was cut short (or would be)."""
        return self.left <= 0

    def charge(self, chars: int) -> None:
        self.left -= max(1, chars)


# Without a token limit (a caller's own use): as much as a 128k-token answer.
_UNLIMITED = 131_072


class SchemaGenerator:
    """Generates values for one root schema; ``hints`` are words to use in strings.

    ``budget`` bounds the work (a fresh one for a 128k-token answer if not given);
    when it is spent, the value is cut short (``budget.spent`` says so).
    """

    def __init__(
        self,
        root: Schema,
        rng: random.Random,
        hints: Sequence[str] = (),
        budget: GenerationBudget | None = None,
    ) -> None:
        self._root = root
        self._rng = rng
        self.budget = budget or GenerationBudget.for_tokens(_UNLIMITED)
        self._hints = [h for h in hints if h] or ["example"]
        # Strings take the hints in turn, from a seeded start: distinct where possible.
        self._turn = rng.randrange(len(self._hints))

    def generate(self) -> Any:
        """A value valid against the root schema."""
        return self._value(self._root, name="", depth=0)

    def _value(self, schema: Schema, *, name: str, depth: int) -> Any:
        budget = self.budget
        if budget.spent or depth > MAX_NESTING:
            budget.charge(4)  # null
            return None
        if schema is True or schema == {}:
            return self._string({}, name)
        if schema is False or not isinstance(schema, Mapping):
            budget.charge(4)
            return None
        if "$ref" in schema:
            return self._value(self._resolve(schema["$ref"]), name=name, depth=depth + 1)
        if "const" in schema:
            budget.charge(1)
            return schema["const"]
        if "enum" in schema:
            budget.charge(1)
            options = schema["enum"]
            return self._rng.choice(options) if isinstance(options, list) and options else None
        if "allOf" in schema:
            merged = self._merge(schema)
            # A part that brings an allOf of its own is a level deeper (an allOf that
            # refers to itself would otherwise merge forever).
            return self._value(merged, name=name, depth=depth + ("allOf" in merged))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = list(schema[key])
                concrete = [b for b in branches if not _is_null(b)]
                # Deep in a recursion, a null branch ends it.
                if depth >= _MAX_DEPTH and len(concrete) < len(branches):
                    return None
                branch = self._rng.choice(concrete or branches)
                return self._value(branch, name=name, depth=depth + 1)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind not in ("integer", "number", "boolean", "null"):
            return self._string(schema, name)
        budget.charge(1)
        if kind == "integer":
            return self._integer(schema, name)
        if kind == "number":
            return self._number(schema, name)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name)

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties: Mapping[str, Schema] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        value: dict[str, Any] = {}
        # Models fill most optional fields (instructor's Iterable[...] is one optional
        # list): most near the top, fewer deep down, so recursive schemas still end.
        keep = _KEEP_OPTIONAL if depth < _DEEP else 0.5
        budget = self.budget
        budget.charge(2)
        for prop, sub in properties.items():
            if budget.spent:
                break
            optional_kept = depth < _MAX_DEPTH and self._rng.random() < keep
            if prop in required or optional_kept:
                budget.charge(len(prop))
                value[prop] = self._value(sub, name=prop, depth=depth + 1)
        if not value and properties and depth < _MAX_DEPTH:
            # An object of optional fields only is never answered empty.
            prop, sub = next(iter(properties.items()))
            value[prop] = self._value(sub, name=prop, depth=depth + 1)
        return value

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        prefix: Sequence[Schema] = schema.get("prefixItems", ())
        items: Schema = schema.get("items", True)
        budget = self.budget
        budget.charge(2)
        # Never more items than the budget has characters: each takes one at least.
        low = min(_count(schema.get("minItems"), 0), max(0, budget.left))
        high = _count(schema.get("maxItems"), max(low, len(prefix), 3))
        high = min(high, max(low, budget.left))
        if depth >= _MAX_DEPTH:
            high = low
        count = self._rng.randint(max(low, min(1, high)), max(low, high))
        count = max(count, min(len(prefix), high))
        singular = name[:-1] if name.endswith("s") else name
        values: list[Any] = []
        attempts = 0
        while len(values) < count and attempts < count * 10 and not budget.spent:
            attempts += 1
            budget.charge(1)  # the comma
            sub = prefix[len(values)] if len(values) < len(prefix) else items
            value = self._value(sub, name=singular, depth=depth + 1)
            if schema.get("uniqueItems") and value in values:
                if not isinstance(value, str):
                    continue
                value = f"{value} {len(values) + 1}"
            values.append(value)
        return values

    def _integer(self, schema: Mapping[str, Any], name: str) -> int:
        low, low_open, high, high_open = _bounds(schema, _window(name, integer=True))
        first = math.floor(low) + 1 if low_open else math.ceil(low)
        last = math.ceil(high) - 1 if high_open else math.floor(high)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            multiples = range(-(-first // step) * step, last + 1, step)
            return self._rng.choice(multiples) if multiples else first
        return self._rng.randint(first, max(first, last))

    def _number(self, schema: Mapping[str, Any], name: str) -> float:
        low, low_open, high, high_open = _bounds(schema, _window(name, integer=False))
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
            return self._multiple(step, low, low_open, high)
        value = round(self._rng.uniform(low, high), 2)
        if (low_open and value <= low) or (high_open and value >= high) or not low <= value <= high:
            value = (low + high) / 2
        return value

    def _multiple(self, step: float, low: float, low_open: bool, high: float) -> float:
        try:
            first = math.ceil(low / step)
            last = max(first, math.floor(high / step))
        except (OverflowError, ValueError):  # a step so small that low / step is infinite
            return low if not low_open else (low + high) / 2
        first += 1 if low_open and first * step == low else 0
        last = max(first, last)
        decimals = max(0, -math.floor(math.log10(step))) + 2
        # The first 64 multiples, counted arithmetically: a tiny step over a wide
        # range has billions of them.
        candidates = list(range(first, min(last, first + 63) + 1))
        self._rng.shuffle(candidates)
        for k in candidates:
            value = round(k * step, decimals)
            # Validators divide in floating point: 0.6 / 0.1 is not a whole number.
            if (value / step).is_integer():
                return value
        return round(first * step, decimals)

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        budget = self.budget
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = self._from_pattern(pattern)
        else:
            text = self._formatted(schema.get("format")) or self._word_for(name)
        # Never longer than the budget has characters left.
        room = max(0, budget.left)
        low = min(_count(schema.get("minLength"), 0), room)
        high = schema.get("maxLength")
        if len(text) < low:
            text += "x" * (low - len(text))
        if isinstance(high, int) and len(text) > high:
            text = text[: max(0, high)]
        text = text[: max(room, 1)]
        budget.charge(len(text) + 2)
        return text

    def _formatted(self, fmt: object) -> str | None:
        rng = self._rng
        if not isinstance(fmt, str) or fmt not in _FORMATS:
            # The same draws as below without building the strings (most strings have no
            # format): equal seeds still give equal answers, at a fifth of the cost.
            for low, high in ((1, 12), (1, 28), (0, 23)):
                rng.randint(low, high)
            rng.choice((0, 15, 30, 45))
            rng.getrandbits(128)
            for low, high in ((1, 254), (1, 65535), (1, 59)):
                rng.randint(low, high)
            self._turn += 4  # the four slugs
            return None
        day = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        clock = f"{rng.randint(0, 23):02d}:{rng.choice((0, 15, 30, 45)):02d}:00"
        formats = {
            "date": day,
            "date-time": f"{day}T{clock}Z",
            "time": f"{clock}Z",
            "email": f"{self._slug()}@example.com",
            "uri": f"https://example.com/{self._slug()}",
            "url": f"https://example.com/{self._slug()}",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "ipv4": f"192.0.2.{rng.randint(1, 254)}",
            "ipv6": f"2001:db8::{rng.randint(1, 65535):x}",
            "hostname": f"{self._slug()}.example.com",
            "duration": f"PT{rng.randint(1, 59)}M",
        }
        return formats.get(fmt) if isinstance(fmt, str) else None

    def _word_for(self, name: str) -> str:
        lowered = name.lower()
        proper = [h for h in self._hints if h[:1].isupper()]
        if any(word in lowered for word in _PLACE_WORDS) and proper:
            return proper[0]  # hints open with the question's proper nouns
        if any(word in lowered for word in _TEXT_WORDS):
            return f"A concise note about {self._next_hint()}."
        if lowered.endswith("id"):
            return (
                f"{lowered.removesuffix('id').rstrip('_') or 'id'}_{self._rng.getrandbits(32):08x}"
            )
        return self._next_hint()

    def _next_hint(self) -> str:
        hint = self._hints[self._turn % len(self._hints)]
        self._turn += 1
        return hint

    def _slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self._next_hint().lower()).strip("-") or "x"

    def _from_pattern(self, pattern: str) -> str:
        try:
            parsed = sre_parse.parse(pattern)
        except (re.error, RecursionError, OverflowError):
            return self._rng.choice(self._hints)
        return _Regex(self._rng, max(1, self.budget.left)).emit(parsed)

    def _resolve(self, ref: object) -> Schema:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return True  # remote references are not fetched; anything goes
        node: Any = self._root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping):
                node = node.get(part, True)
            else:
                return True  # a reference that points nowhere: anything goes
        return node  # type: ignore[no-any-return]

    def _merge(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            is_ref = isinstance(part, Mapping) and "$ref" in part
            resolved = self._resolve(part["$ref"]) if is_ref else part
            if not isinstance(resolved, Mapping):
                continue
            for key, value in resolved.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged


class _Regex:
    """Emits one string matching a parsed regular expression, of at most ``limit`` characters
    (past it, the string is cut short)."""

    def __init__(self, rng: random.Random, limit: int) -> None:
        self._rng = rng
        self._left = limit

    def emit(self, parsed: Any) -> str:
        parts: list[str] = []
        for op, arg in parsed:
            if self._left <= 0:
                break
            text = self._node(op, arg)
            self._left -= len(text)
            parts.append(text)
        return "".join(parts)

    def _node(self, op: Any, arg: Any) -> str:
        c = sre_constants
        if op is c.LITERAL:
            return chr(arg)
        if op is c.NOT_LITERAL:
            return "x" if chr(arg) != "x" else "y"
        if op is c.ANY:
            return "a"
        if op is c.IN:
            return self._charset(arg)
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            high = min(high, low + 3) if high is not c.MAXREPEAT else low + 3
            times = self._rng.randint(low, high)
            if times <= _SAMPLED_REPEATS:
                return "".join(self.emit(sub) for _ in range(times))
            # Many repeats (a{1000000}): one sample, repeated as far as the limit goes.
            left = self._left
            sample = self.emit(sub)
            self._left = left
            if not sample:
                return ""
            return sample * min(times, left // len(sample) + 1)
        if op is c.SUBPATTERN:
            return self.emit(arg[-1])
        if op is c.BRANCH:
            return self.emit(self._rng.choice(arg[1]))
        if op is c.CATEGORY:
            return _CATEGORY.get(arg, "a")
        return ""  # anchors and look-arounds emit nothing

    def _charset(self, items: Any) -> str:
        c = sre_constants
        if items and items[0][0] is c.NEGATE:
            return "x"
        op, arg = self._rng.choice(items)
        if op is c.LITERAL:
            return chr(arg)
        if op is c.RANGE:
            return chr(self._rng.randint(arg[0], arg[1]))
        if op is c.CATEGORY:
            return _CATEGORY.get(arg, "a")
        return "a"


_CATEGORY = {
    sre_constants.CATEGORY_DIGIT: "7",
    sre_constants.CATEGORY_WORD: "w",
    sre_constants.CATEGORY_SPACE: " ",
    sre_constants.CATEGORY_NOT_DIGIT: "d",
    sre_constants.CATEGORY_NOT_WORD: "-",
    sre_constants.CATEGORY_NOT_SPACE: "s",
}


_FORMATS = frozenset("date date-time time email uri url uuid ipv4 ipv6 hostname duration".split())


def _count(value: object, default: int) -> int:
    """A schema's count keyword (``minItems``, ``minLength``...), or ``default`` if it is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return max(0, int(value))


def _kind(schema: Mapping[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        concrete = [t for t in declared if t != "null"]
        return str(concrete[0]) if concrete else "null"
    if isinstance(declared, str):
        return declared
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _is_null(schema: Schema) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _bounds(
    schema: Mapping[str, Any], window: tuple[float, float]
) -> tuple[float, bool, float, bool]:
    """The range to draw from, and whether each end is exclusive.

    The schema's bounds, narrowed to the plausible ``window`` where they allow
    it: a schema's wide bounds (zod's safe-integer range) are a limit, not a
    suggestion to say ``-4257131876494712``. Never beyond JavaScript's safe
    integers, so any client can hold the value exactly.
    """
    low, low_open = _tighter(schema.get("minimum"), schema.get("exclusiveMinimum"), max)
    high, high_open = _tighter(schema.get("maximum"), schema.get("exclusiveMaximum"), min)
    floor = -_SAFE_INTEGER if low is None else max(float(low), -_SAFE_INTEGER)
    ceiling = _SAFE_INTEGER if high is None else min(float(high), _SAFE_INTEGER)
    width = window[1] - window[0]
    start, end = max(floor, window[0]), min(ceiling, window[1])
    if start > end:  # the window is outside the bounds: as wide a range at the near end
        start, end = (
            (floor, min(ceiling, floor + width))
            if floor > window[1]
            else (
                max(floor, ceiling - width),
                ceiling,
            )
        )
    return start, low_open and start == floor, end, high_open and end == ceiling


def _window(name: str, *, integer: bool) -> tuple[float, float]:
    """Plausible values for a number called ``name`` when the schema allows them."""
    # Whole words of the name (snake_case or camelCase), singular: "age" is not in "page".
    said = {w.lower().removesuffix("s") for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)}
    for words, window in _NUMBER_WINDOWS:
        if said & set(words) and (not integer or window[1] - window[0] > 1):
            return window
    return (1, 100) if integer else (0.0, 100.0)


def _tighter(inclusive: Any, exclusive: Any, pick: Any) -> tuple[float | None, bool]:
    # Draft 4 spelled exclusivity as booleans beside minimum/maximum.
    if isinstance(exclusive, bool):
        return inclusive, exclusive and inclusive is not None
    if inclusive is None:
        return exclusive, exclusive is not None
    if exclusive is None:
        return inclusive, False
    tight = pick(inclusive, exclusive)
    return tight, tight == exclusive
