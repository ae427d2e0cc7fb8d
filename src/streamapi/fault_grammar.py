"""The fault grammar: how a fault is written, parsed into ``Fault``s (standard library only).

A fault is written in one grammar wherever it is given (the ``X-Streamapi-Fault``
header, a rule's ``respond.fault``, ``--fault-kinds``)::

    faults = fault *( ";" fault )
    fault  = kind *( "," name "=" value )      e.g. drop,after=5
           | "status=" code *( "," name "=" value )   e.g. status=429,retry_after=2

Before the stream, ``status=<code>`` answers with that HTTP status in the
route's own error shape. During the stream (after ``after`` tokens or
``after_ms`` milliseconds): ``mid_stream_error`` (an in-protocol error event),
``drop`` (the connection is cut), ``stall`` (no bytes for ``ms``, then
``then=resume|drop``), ``slow`` (each token ``ms`` late), and three frame-level
faults: ``no_done`` (the terminal event is missing), ``malformed`` (one event's
JSON is cut in half) and ``no_usage`` (the usage is missing).

It imports nothing but the standard library, so the settings (which check
``--fault-kinds``) and the pytest plugin can use it without loading the server.
What the faults do lives in ``control``: ``fault_errors`` (the errors' wording),
``fault_streams`` (delta-level faults), ``fault_frames`` (frame-level faults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

FAULT_HEADER: Final = "x-streamapi-fault"

FaultKind = Literal[
    "status", "mid_stream_error", "drop", "stall", "slow", "no_done", "malformed", "no_usage"
]
# Each kind and the parameters it takes.
_PARAMS: Final[dict[FaultKind, frozenset[str]]] = {
    "status": frozenset({"status", "retry_after"}),
    "mid_stream_error": frozenset({"after", "after_ms", "status"}),
    "drop": frozenset({"after", "after_ms"}),
    "stall": frozenset({"after", "after_ms", "ms", "then"}),
    "slow": frozenset({"after", "after_ms", "ms"}),
    "no_done": frozenset(),
    "malformed": frozenset({"after"}),
    "no_usage": frozenset(),
}
_DEFAULT_STALL_MS = 1000.0
_DEFAULT_SLOW_MS = 200.0
_MAX_MS = 600_000.0
_MAX_RETRY_AFTER_S = 3600.0


class FaultSyntaxError(ValueError):
    """A fault specification that does not follow the grammar; the message says where."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault and its parameters (``after`` in tokens; ``after_ms``, ``ms`` in ms)."""

    kind: FaultKind
    status: int | None = None
    after: int | None = None
    after_ms: float | None = None
    ms: float | None = None
    then: Literal["resume", "drop"] = "resume"
    retry_after_s: float | None = None

    @property
    def mid_stream(self) -> bool:
        """Whether it acts on the engine's deltas (as opposed to frames, or before)."""
        return self.kind in ("mid_stream_error", "drop", "stall", "slow")


@dataclass(frozen=True, slots=True)
class FaultSet:
    """The faults of one request, and the text they were written as (for the journal)."""

    faults: tuple[Fault, ...] = ()
    spec: str = ""

    def get(self, kind: FaultKind) -> Fault | None:
        return next((f for f in self.faults if f.kind == kind), None)

    @property
    def before_stream(self) -> Fault | None:
        """The ``status`` fault, which answers instead of streaming."""
        return self.get("status")

    @property
    def mid_stream(self) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults if f.mid_stream)


NO_FAULTS: Final = FaultSet()


def parse_faults(spec: str) -> FaultSet:
    """``spec`` in the fault grammar, or ``FaultSyntaxError`` naming the problem."""
    parts = [part.strip() for part in spec.split(";")]
    if not any(parts):
        raise FaultSyntaxError("empty fault specification")
    faults = tuple(_parse_one(part) for part in parts if part)
    kinds = [f.kind for f in faults]
    if len(set(kinds)) != len(kinds):
        raise FaultSyntaxError(f"a fault kind is given twice in {spec!r}")
    if "status" in kinds and len(kinds) > 1:
        raise FaultSyntaxError(
            "status=<code> answers before the stream starts; it cannot be combined with "
            "other faults"
        )
    return FaultSet(faults, "; ".join(part for part in parts if part))


def parse_fault_choices(text: str) -> tuple[FaultSet, ...]:
    """``--fault-kinds``: fault specifications separated by ``|``, to draw from."""
    choices = tuple(parse_faults(part) for part in text.split("|") if part.strip())
    if not choices:
        raise FaultSyntaxError("give at least one fault")
    return choices


def _parse_one(text: str) -> Fault:
    kind: str | None = None
    params: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            raise FaultSyntaxError(f"empty item in {text!r}")
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        if not equals:
            if kind is not None:
                raise FaultSyntaxError(f"two fault kinds in {text!r}: {kind!r} and {name!r}")
            kind = name
            continue
        if name in params:
            raise FaultSyntaxError(f"{name} is given twice in {text!r}")
        params[name] = value.strip()
    if kind is None:
        if "status" not in params:
            raise FaultSyntaxError(f"no fault kind in {text!r}")
        kind = "status"
    if kind not in _PARAMS:
        known = ", ".join(["status=<code>", *(k for k in _PARAMS if k != "status")])
        raise FaultSyntaxError(f"unknown fault {kind!r}; the faults are {known}")
    fault_kind: FaultKind = kind
    unknown = sorted(set(params) - _PARAMS[fault_kind])
    if unknown:
        takes = ", ".join(sorted(_PARAMS[fault_kind])) or "no parameters"
        raise FaultSyntaxError(f"{kind} does not take {', '.join(unknown)} (it takes {takes})")
    if "after" in params and "after_ms" in params:
        raise FaultSyntaxError(f"{kind} takes after (tokens) or after_ms, not both")
    then = params.get("then", "resume")
    if then not in ("resume", "drop"):
        raise FaultSyntaxError(f"then must be resume or drop; got {then!r}")
    status = _number(params, "status", 400, 599, whole=True)
    if fault_kind == "status" and status is None:
        raise FaultSyntaxError("status needs a code from 400 to 599")
    default_ms = {"stall": _DEFAULT_STALL_MS, "slow": _DEFAULT_SLOW_MS}.get(fault_kind)
    ms = _number(params, "ms", 0, _MAX_MS)
    after = _number(params, "after", 0, 1_000_000, whole=True)
    return Fault(
        kind=fault_kind,
        status=None if status is None else int(status),
        after=None if after is None else int(after),
        after_ms=_number(params, "after_ms", 0, _MAX_MS),
        ms=ms if ms is not None else default_ms,
        then="drop" if then == "drop" else "resume",
        retry_after_s=_number(params, "retry_after", 0, _MAX_RETRY_AFTER_S),
    )


def _number(
    params: dict[str, str], name: str, low: float, high: float, *, whole: bool = False
) -> float | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise FaultSyntaxError(f"{name} must be {kind} from {low:g} to {high:g}; got {raw!r}")
    return value
