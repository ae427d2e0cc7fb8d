"""Checks on the tools and JSON Schemas a request brings, before any byte is sent.

Every ``$ref`` must point inside its schema: nothing is ever fetched from elsewhere.
A client's schema is untrusted input, so the checks are bounded: a request offers at
most ``max_tools`` tools, its schemas hold at most ``max_schema_properties`` properties
between them and nest at most ``MAX_SCHEMA_DEPTH`` deep, and these are counted in one
linear walk before the (costlier) meta-schema check. A schema no finite value can
satisfy (one that requires itself, as ``{"$ref": "#"}`` required does) is refused with
the path where it loops, never generated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Final

from streamapi.engines.protocol import ToolSpec
from streamapi.errors import InvalidRequestError
from streamapi.settings import Settings

logger = logging.getLogger(__name__)

MAX_SCHEMA_DEPTH: Final = 64
"""Deepest nesting of JSON objects and arrays in one schema document."""
_MAX_WALK = 128  # nested schemas the satisfiability walk follows, $refs included
_MAX_STEPS = 100_000  # $ref targets it decides: each once, unless loops reopen them
_NO_LOOP = 1 << 30


_jsonschema: ModuleType | None = None


def validator_ready() -> bool:
    """Whether jsonschema is imported: until then a request with a schema is prepared in a
    worker thread (``api.common.is_small``), since importing it (with attrs, referencing
    and rpds) would hold up every stream on the event loop for tens of milliseconds."""
    return _jsonschema is not None


def _validator() -> ModuleType:
    # Imported at the first schema, not at start-up: jsonschema is several MB of a
    # server's idle memory that most never use.
    global _jsonschema
    if _jsonschema is None:
        import jsonschema

        _jsonschema = jsonschema
    return _jsonschema


class SchemaChecks:
    """The checks of one request's tools and schemas, whose properties are counted together."""

    def __init__(self, *, max_tools: int, max_properties: int) -> None:
        self._max_tools = max_tools
        self._properties_left = max_properties
        self._max_properties = max_properties

    @classmethod
    def of(cls, settings: Settings) -> SchemaChecks:
        """A request's checks with the server's limits."""
        return cls(max_tools=settings.max_tools, max_properties=settings.max_schema_properties)

    def tool_count(self, count: int, *, param: str) -> None:
        """400 when a request offers more tools than ``max_tools``."""
        if count > self._max_tools:
            _refuse(
                f"Too many tools: {count}; a request may offer at most {self._max_tools}.",
                param,
                code="too_many_tools",
            )

    def schema(self, schema: Mapping[str, Any], *, param: str) -> None:
        """400 naming the problem when ``schema`` is not a valid JSON Schema, is too large,
        or can have no finite value."""
        jsonschema = _validator()
        refs = self._walk(schema, param)
        try:
            jsonschema.validators.validator_for(schema).check_schema(dict(schema))
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            detail = f" at '{where}'" if where else ""
            raise InvalidRequestError(
                f"Invalid JSON Schema{detail}: {exc.message}", param=param
            ) from None
        except RecursionError:  # the depth limit keeps this out of reach; still a 400
            _refuse("Invalid JSON Schema: it nests too deeply to check.", param)
        for ref in refs:
            if _target(schema, ref) is None:
                raise InvalidRequestError(
                    f"Invalid JSON Schema: the reference '{ref}' does not point inside the schema.",
                    param=param,
                )
        _Satisfiable(schema, param).check()

    def tool(
        self,
        name: str,
        description: str | None,
        parameters: Mapping[str, Any] | None,
        *,
        param: str,
    ) -> ToolSpec:
        """A checked tool definition."""
        schema = parameters if parameters is not None else {"type": "object", "properties": {}}
        self.schema(schema, param=param)
        return ToolSpec(name=name, description=description or "", parameters=schema)

    def _walk(self, schema: Mapping[str, Any], param: str) -> list[str]:
        """Every ``$ref`` of ``schema``, counting its properties and depth (iteratively:
        no recursion for a hostile document to exhaust)."""
        refs: list[str] = []
        stack: list[tuple[Any, int]] = [(schema, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_SCHEMA_DEPTH:
                _refuse(
                    f"Invalid JSON Schema: it nests deeper than {MAX_SCHEMA_DEPTH} levels.",
                    param,
                    code="schema_too_deep",
                )
            if isinstance(node, Mapping):
                ref = node.get("$ref")
                if isinstance(ref, str):
                    refs.append(ref)
                properties = node.get("properties")
                if isinstance(properties, Mapping):
                    self._properties_left -= len(properties)
                    if self._properties_left < 0:
                        _refuse(
                            "Too many properties in the request's JSON Schemas: at most "
                            f"{self._max_properties} in all.",
                            param,
                            code="schema_too_large",
                        )
                stack.extend((value, depth + 1) for value in node.values())
            elif isinstance(node, list):
                stack.extend((value, depth + 1) for value in node)
        return refs


class _Satisfiable:
    """Whether a schema has a finite value: no required ``$ref`` loop, nothing required that
    no value satisfies (``false``, an empty ``enum``, ``minLength`` over ``maxLength``,
    ``minItems`` over ``maxItems``, ``minimum`` over ``maximum``).

    A value is finite when every property it must have, every item it must hold and
    every ``allOf`` part is; a schema with a choice (``anyOf``, a ``null`` type,
    optional properties, ``minItems`` 0) can stop at a finite branch. A ``$ref``
    met again while it is being decided closes a loop: that way has no finite
    value. Each target is decided once (unless a loop through an outer one leaves it
    open), so a fan-out of ``$defs`` costs its size, not its expansion.
    """

    def __init__(self, root: Mapping[str, Any], param: str) -> None:
        self._root = root
        self._param = param
        self._decided: dict[str, bool] = {}
        self._open: list[str] = []  # the $refs being decided, outermost first
        self._lowest_loop = _NO_LOOP  # the outermost open $ref a loop went back to
        self._loop: str | None = None  # the first loop met, for the message
        self._impossible: str | None = None  # the first unsatisfiable part met, likewise
        self._steps = 0

    def check(self) -> None:
        if not self._ref_finite("#", "#", 0):
            if self._loop is not None:
                why = f"it requires itself ({self._loop})"
            else:
                why = self._impossible or "a value it requires is `false`"
            _refuse(
                f"Invalid JSON Schema: no finite value satisfies it: {why}. Make the "
                "recursion optional (not required, minItems 0, or a null branch).",
                self._param,
            )

    def _finite(self, node: Any, path: str, depth: int) -> bool:
        if node is False:
            return False
        if not isinstance(node, Mapping):
            return True
        if depth > _MAX_WALK:
            _refuse(
                f"Invalid JSON Schema at '{path}': its values nest deeper than {_MAX_WALK}.",
                self._param,
                code="schema_too_deep",
            )
        depth += 1
        ref = node.get("$ref")
        if isinstance(ref, str) and not self._ref_finite(ref, path, depth):
            return False
        for part in node.get("allOf", ()) if isinstance(node.get("allOf"), list) else ():
            if not self._finite(part, f"{path}/allOf", depth):
                return False
        for key in ("anyOf", "oneOf"):
            branches = node.get(key)
            if (
                isinstance(branches, list)
                and branches
                and not any(self._finite(b, f"{path}/{key}", depth) for b in branches)
            ):
                return False
        if "const" in node:
            return True
        if "enum" in node:
            options = node["enum"]
            some = not isinstance(options, list) or bool(options)
            return self._possible(some, path, "its enum is empty")
        # Scalar types first: they end here without looking further.
        kinds = sorted(_kinds(node), key=lambda kind: kind in ("object", "array"))
        return any(self._kind_finite(kind, node, path, depth) for kind in kinds)

    def _kind_finite(self, kind: str, node: Mapping[str, Any], path: str, depth: int) -> bool:
        if kind == "object":
            return self._object_finite(node, path, depth)
        if kind == "array":
            low, high = node.get("minItems", 0), node.get("maxItems")
            fits = not _numbers(low, high) or low <= high
            if not self._possible(fits, path, f"minItems {low} is more than maxItems {high}"):
                return False
            return self._array_finite(node, path, depth)
        if kind == "string":
            low, high = node.get("minLength", 0), node.get("maxLength")
            fits = not _numbers(low, high) or low <= high
            return self._possible(fits, path, f"minLength {low} is more than maxLength {high}")
        if kind in ("number", "integer"):
            fits = _in_range(node, integer=kind == "integer")
            return self._possible(fits, path, f"no {kind} lies within its bounds")
        return True

    def _possible(self, possible: bool, path: str, why: str) -> bool:
        if not possible and self._impossible is None:
            self._impossible = f"at '{path}', {why}"
        return possible

    def _object_finite(self, node: Mapping[str, Any], path: str, depth: int) -> bool:
        properties = node.get("properties")
        required = node.get("required")
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            return True
        return all(
            self._finite(properties[name], f"{path}/properties/{name}", depth)
            for name in required
            if isinstance(name, str) and name in properties
        )

    def _array_finite(self, node: Mapping[str, Any], path: str, depth: int) -> bool:
        wanted = node.get("minItems", 0)
        if not isinstance(wanted, int) or wanted <= 0:
            return True
        prefix = node.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        for index, item in enumerate(prefix[:wanted]):
            if not self._finite(item, f"{path}/prefixItems/{index}", depth):
                return False
        if wanted > len(prefix):
            return self._finite(node.get("items", True), f"{path}/items", depth)
        return True

    def _ref_finite(self, ref: str, path: str, depth: int) -> bool:
        if ref in self._decided:
            return self._decided[ref]
        if ref in self._open:
            at = self._open.index(ref)
            self._lowest_loop = min(self._lowest_loop, at)
            if self._loop is None:
                self._loop = " -> ".join([*self._open[at:], ref]) + f", at '{path}'"
            return False
        self._steps += 1
        if self._steps > _MAX_STEPS:
            _refuse(
                "Invalid JSON Schema: its references are too intricate to check.",
                self._param,
                code="schema_too_large",
            )
        target = self._root if ref == "#" else _target(self._root, ref)
        position = len(self._open)
        outer_loop, self._lowest_loop = self._lowest_loop, _NO_LOOP
        self._open.append(ref)
        try:
            finite = target is None or self._finite(target, ref, depth)
        finally:
            self._open.pop()
        # Settled unless it was false only through a loop to a $ref still open outside.
        if finite or self._lowest_loop >= position:
            self._decided[ref] = finite
        lowest = self._lowest_loop if self._lowest_loop < position else _NO_LOOP
        self._lowest_loop = min(outer_loop, lowest)
        return finite


def _numbers(*values: object) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _in_range(node: Mapping[str, Any], *, integer: bool) -> bool:
    """Whether a number (an integer) lies within the node's bounds, draft 4's booleans too."""
    low, high = _number(node.get("minimum")), _number(node.get("maximum"))
    low_open = high_open = False
    above, below = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if isinstance(above, bool):
        low_open = above
    elif (bound := _number(above)) is not None and (low is None or bound >= low):
        low, low_open = bound, True
    if isinstance(below, bool):
        high_open = below
    elif (bound := _number(below)) is not None and (high is None or bound <= high):
        high, high_open = bound, True
    if low is None or high is None:
        return True
    if integer:
        first = math.floor(low) + 1 if low_open and low == math.floor(low) else math.ceil(low)
        last = math.ceil(high) - 1 if high_open and high == math.ceil(high) else math.floor(high)
        return first <= last
    return low < high or (low == high and not (low_open or high_open))


def _number(value: object) -> float | None:
    """A finite bound, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past any float
        return None
    return number if math.isfinite(number) else None


def _kinds(node: Mapping[str, Any]) -> set[str]:
    declared = node.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list) and declared:
        return {str(t) for t in declared}
    if "properties" in node:
        return {"object"}
    if "items" in node or "prefixItems" in node:
        return {"array"}
    return {"string"}


def _target(root: Mapping[str, Any], ref: str) -> Any:
    """What a local ``$ref`` points at in ``root``; None if it points nowhere (or elsewhere)."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _refuse(message: str, param: str, *, code: str | None = None) -> None:
    # One line for the operator: the request gets the whole message.
    logger.info("refused a JSON Schema at %s: %s", param, message)
    raise InvalidRequestError(message, param=param, code=code)


def check_tool_choice(tools: Sequence[ToolSpec], choice: str, *, param: str) -> None:
    """400 when ``tool_choice`` cannot be honoured with these tools."""
    if choice in ("none", "auto"):
        return
    if not tools:
        raise InvalidRequestError(
            f"tool_choice '{choice}' is only allowed when tools are given.", param=param
        )
    if choice != "required" and choice not in {t.name for t in tools}:
        raise InvalidRequestError(
            f"tool_choice names the function '{choice}', which is not among the tools.",
            param=param,
        )
