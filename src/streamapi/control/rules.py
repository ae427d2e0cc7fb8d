"""Rules: what a test scripts for matching requests; first match wins, no match goes to the engine.

A rules file (YAML or JSON) is a list of rules, each with a ``match`` (every
condition given must hold), a ``respond`` (what to answer instead of the
simulator's own words: text, a template, JSON, tool calls, an error or a
fault) and an optional ``timing``. The file is validated when it is loaded,
with messages that name the rule and the field, and reloaded when it changes;
a change that does not validate is logged and the previous rules stay.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from streamapi.engines.protocol import GenerationRequest, Script, ScriptedToolCall, last_user_turn
from streamapi.fault_grammar import FaultSyntaxError, parse_faults
from streamapi.text.harness import observation

logger = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions", "responses", "messages"]
ENDPOINT_PATHS: Final[dict[str, Endpoint]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
_TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")
_PLAIN_VARIABLES = frozenset(
    {"user", "system", "model", "endpoint", "turn", "sequence", "tool_result"}
)


class RulesError(ValueError):
    """Rules that cannot be used; the message names the source, the rule and the field."""


# --- the schema ---------------------------------------------------------------------------


class TextMatch(BaseModel):
    """One way to match a text: ``contains``, ``equals``, or ``regex`` (searched)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contains: str | None = None
    equals: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TextMatch:
        given = [
            name for name in ("contains", "equals", "regex") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of contains, equals or regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.regex!r}: {exc}") from None
        return self

    def matches(self, text: str | None) -> bool:
        if text is None:
            return False
        if self.contains is not None:
            return self.contains in text
        if self.equals is not None:
            return text == self.equals
        return self.captures(text) is not None

    def captures(self, text: str | None) -> re.Match[str] | None:
        """The regex's match in ``text`` (None for the other kinds)."""
        if self.regex is None or text is None:
            return None
        return re.search(self.regex, text)  # re caches compiled patterns


def _as(kind: str) -> Callable[[Any], Any]:
    def shorthand(value: Any) -> Any:
        return {kind: value} if isinstance(value, str) else value

    return shorthand


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


Contains = Annotated[TextMatch, BeforeValidator(_as("contains"))]
"""A string means "contains"; or ``{contains|equals|regex: ...}``."""
Equals = Annotated[TextMatch, BeforeValidator(_as("equals"))]
"""A string means "equals"; or ``{contains|equals|regex: ...}``."""


class Match(BaseModel):
    """Conditions on a request; every one given must hold (none given: every request)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: Annotated[list[Endpoint], BeforeValidator(_as_list)] | None = None
    model: Equals | None = None
    user: Contains | None = None
    """The last user message."""
    system: Contains | None = None
    """The system (and developer) messages, joined by newlines."""
    tools: bool | None = None
    """Whether the request offers tools."""
    tool_name: str | None = None
    """A tool of this name is offered."""
    tool_result: Contains | None = None
    """A tool result given since the last user message."""
    headers: dict[str, Equals] | None = None
    turn: int | None = Field(default=None, ge=0)
    """Assistant messages already in the conversation: 0 on its first call."""
    sequence: Annotated[list[PositiveInt], BeforeValidator(_as_list)] | None = None
    """Which of the requests meeting the other conditions (1 is the first), whichever
    rule answered the others."""

    @field_validator("headers")
    @classmethod
    def _lowercase(cls, headers: dict[str, TextMatch] | None) -> dict[str, TextMatch] | None:
        return None if headers is None else {k.lower(): v for k, v in headers.items()}

    def accepts(self, facts: Facts) -> bool:
        """Whether every condition but ``sequence`` holds for ``facts``."""
        if self.endpoint is not None and facts.endpoint not in self.endpoint:
            return False
        if self.model is not None and not self.model.matches(facts.model):
            return False
        if self.user is not None and not self.user.matches(facts.user):
            return False
        if self.system is not None and not self.system.matches(facts.system):
            return False
        if self.tools is not None and bool(facts.tools) != self.tools:
            return False
        if self.tool_name is not None and self.tool_name not in facts.tools:
            return False
        if self.tool_result is not None and not any(
            self.tool_result.matches(result) for result in facts.tool_results
        ):
            return False
        for name, expected in (self.headers or {}).items():
            if not expected.matches(facts.headers.get(name)):
                return False
        return self.turn is None or facts.turn == self.turn


class ToolCallAnswer(BaseModel):
    """A tool call to make; ``arguments`` is an object, or JSON text sent as it is."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: Any = Field(default_factory=dict)
    id: str | None = None

    @field_validator("arguments")
    @classmethod
    def _object_or_text(cls, arguments: Any) -> Any:
        if not isinstance(arguments, dict | str):
            raise ValueError("must be an object, or a string (sent as the arguments' JSON text)")
        return arguments


class ErrorAnswer(BaseModel):
    """An HTTP error instead of an answer, in the route's own error shape."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(ge=400, le=599)
    message: str | None = None
    type: str | None = None
    code: str | None = None
    retry_after_s: float | None = Field(default=None, ge=0, le=3600)


class Respond(BaseModel):
    """What to answer; nothing given lets the simulator answer (with the rule's timing)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str | None = None
    template: str | None = None
    """Text with ``{{variables}}`` from the request (see docs/testing/rules.md)."""
    json_value: Any = Field(default=None, alias="json")
    """A structured answer: any JSON value, sent as its JSON text."""
    tool_calls: list[ToolCallAnswer] | None = None
    reasoning: str | None = None
    error: ErrorAnswer | None = None
    fault: str | None = None
    """Faults in the X-Streamapi-Fault grammar."""

    @field_validator("fault")
    @classmethod
    def _parse_fault(cls, fault: str | None) -> str | None:
        if fault is not None:
            try:
                parse_faults(fault)
            except FaultSyntaxError as exc:
                raise ValueError(str(exc)) from None
        return fault

    @model_validator(mode="after")
    def _consistent(self) -> Respond:
        answers = [n for n in ("text", "template") if getattr(self, n) is not None]
        if self.has_json:
            answers.append("json")
        if len(answers) > 1:
            raise ValueError(f"give one of text, template or json, not {' and '.join(answers)}")
        says = [*answers, *(["tool_calls"] if self.tool_calls else [])]
        says += ["reasoning"] if self.reasoning is not None else []
        if self.error is not None and (says or self.fault is not None):
            given = ", ".join([*says, *(["fault"] if self.fault is not None else [])])
            raise ValueError(f"error answers instead of the model; it excludes {given}")
        if self.fault is not None and parse_faults(self.fault).before_stream and says:
            raise ValueError(
                f"fault {self.fault!r} answers before the stream; it excludes {', '.join(says)}"
            )
        return self

    @property
    def has_json(self) -> bool:
        return "json_value" in self.model_fields_set


class Timing(BaseModel):
    """This answer's own pace: first token ``ttft_ms`` after admission, then ``itl_ms`` apart."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(default=None, ge=0, le=600_000)
    itl_ms: float | None = Field(default=None, ge=0, le=60_000)
    tokens_per_s: float | None = Field(default=None, gt=0, le=1_000_000)

    @model_validator(mode="after")
    def _consistent(self) -> Timing:
        if self.itl_ms is not None and self.tokens_per_s is not None:
            raise ValueError("give itl_ms or tokens_per_s, not both")
        if self.ttft_ms is None and self.itl_ms is None and self.tokens_per_s is None:
            raise ValueError("give at least one of ttft_ms, itl_ms or tokens_per_s")
        return self

    @property
    def inter_token_ms(self) -> float | None:
        if self.tokens_per_s is not None:
            return 1000 / self.tokens_per_s
        return self.itl_ms


class Rule(BaseModel):
    """A match and what to answer to it."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    match: Match = Field(default_factory=Match)
    respond: Respond = Field(default_factory=Respond)
    timing: Timing | None = None

    @model_validator(mode="after")
    def _check_templates(self) -> Rule:
        pattern = None if self.match.user is None else self.match.user.regex
        compiled = None if pattern is None else re.compile(pattern)
        for where, text in self._templates():
            for name in _TEMPLATE_VARIABLE.findall(text):
                problem = _variable_problem(name, compiled)
                if problem is not None:
                    raise ValueError(f"{where}: {{{{{name}}}}} {problem}")
        return self

    @property
    def label(self) -> str:
        return self.name or "(unnamed)"

    def _templates(self) -> list[tuple[str, str]]:
        respond = self.respond
        found = [] if respond.template is None else [("respond.template", respond.template)]
        if respond.has_json:
            found += [("respond.json", s) for s in _strings(respond.json_value)]
        for index, call in enumerate(respond.tool_calls or ()):
            where = f"respond.tool_calls[{index}].arguments"
            found += [(where, s) for s in _strings(call.arguments)]
        return found


def _variable_problem(name: str, user_regex: re.Pattern[str] | None) -> str | None:
    if name in _PLAIN_VARIABLES or (name.startswith("header.") and len(name) > 7):
        return None
    if name.startswith("match."):
        group = name[6:]
        if user_regex is None:
            return "needs match.user to be a regex"
        if group.isdigit() and int(group) <= user_regex.groups:
            return None
        if group in user_regex.groupindex:
            return None
        return "names a group that match.user's regex does not have"
    known = ", ".join(sorted(_PLAIN_VARIABLES))
    return f"is not a variable; the variables are {known}, header.<name> and match.<group>"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


class RulesFile(BaseModel):
    """A rules file: ``{"rules": [...]}``, or the list alone."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        if data is None:
            return {"rules": []}
        return {"rules": data} if isinstance(data, list) else data


# --- loading ------------------------------------------------------------------------------


def parse_rules(data: Any, *, source: str) -> list[Rule]:
    """``data`` (parsed YAML or JSON) as rules, or ``RulesError`` naming each problem."""
    try:
        return RulesFile.model_validate(data).rules
    except ValidationError as exc:
        raise RulesError(_describe(exc, data, source)) from None


def parse_text(text: str, *, source: str, json_only: bool = False) -> Any:
    """YAML (or, with ``json_only``, JSON) text as data, or ``RulesError``."""
    try:
        return json.loads(text) if json_only else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if json_only else "YAML"
        raise RulesError(f"{source}: not valid {kind}: {exc}") from None


def load_rules(path: Path) -> list[Rule]:
    """The rules in ``path`` (JSON if it ends in .json, else YAML), or ``RulesError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    data = parse_text(text, source=str(path), json_only=path.suffix.lower() == ".json")
    return parse_rules(data, source=str(path))


def _describe(exc: ValidationError, data: Any, source: str) -> str:
    listed = data.get("rules") if isinstance(data, dict) else data
    problems = []
    for error in exc.errors(include_url=False, include_context=False):
        loc = list(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        where = ""
        if loc[:1] == ["rules"] and len(loc) > 1 and isinstance(loc[1], int):
            index, loc = loc[1], loc[2:]
            name = _rule_name(listed, index)
            where = f"rule {index + 1}" + (f" ({name!r})" if name else "")
        path = _path(loc)
        problems.append(": ".join(part for part in (where, path, message) if part))
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} problems:\n  " + "\n  ".join(problems)


def _rule_name(listed: Any, index: int) -> str | None:
    if isinstance(listed, list) and index < len(listed) and isinstance(listed[index], dict):
        name = listed[index].get("name")
        return name if isinstance(name, str) else None
    return None


def _path(loc: list[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part.startswith("function-"):
            continue  # a validator's or union branch's tag, not a field
        else:
            path += f".{part}" if path else part
    return path


# --- matching -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What rules can match on, taken from one request."""

    endpoint: str | None
    model: str
    user: str | None
    system: str | None
    tools: tuple[str, ...]
    tool_results: tuple[str, ...]
    headers: Mapping[str, str]
    turn: int

    @classmethod
    def of(
        cls, endpoint: str | None, request: GenerationRequest, headers: Mapping[str, str]
    ) -> Facts:
        messages = request.messages
        last_user = last_user_turn(messages)
        system = "\n".join(m.content for m in messages if m.role in ("system", "developer"))
        user = messages[last_user].content if last_user >= 0 else None
        results = [m.content for m in messages[last_user + 1 :] if m.role in ("tool", "function")]
        reported = None if user is None else observation(user)
        return cls(
            endpoint=endpoint,
            model=request.model,
            user=user,
            system=system or None,
            tools=tuple(t.name for t in request.tools),
            # A user message that reports a result in words ("Observation: ...") is one too.
            tool_results=tuple(results if reported is None else [*results, reported]),
            headers=headers,
            turn=sum(1 for m in messages if m.role == "assistant"),
        )


@dataclass(frozen=True, slots=True)
class Matched:
    """The rule that won, its place, and this request's number among its matches."""

    rule: Rule
    index: int
    sequence: int
    facts: Facts

    @property
    def label(self) -> str:
        """How the journal names it: its name, else its place (``#2``)."""
        return self.rule.name or f"#{self.index + 1}"

    def render(self, template: str) -> str:
        """``template`` with its ``{{variables}}`` filled from the request."""
        facts = self.facts
        user = self.rule.match.user
        captured = None if user is None else user.captures(facts.user)

        def value(found: re.Match[str]) -> str:
            name = found.group(1)
            if name.startswith("header."):
                return facts.headers.get(name[7:].lower(), "")
            if name.startswith("match."):
                group = name[6:]
                text = (
                    None
                    if captured is None
                    else captured.group(int(group) if group.isdigit() else group)
                )
                return text or ""
            plain: dict[str, object] = {
                "user": facts.user or "",
                "system": facts.system or "",
                "model": facts.model,
                "endpoint": facts.endpoint or "",
                "turn": facts.turn,
                "sequence": self.sequence,
                "tool_result": facts.tool_results[-1] if facts.tool_results else "",
            }
            return str(plain[name])

        return _TEMPLATE_VARIABLE.sub(value, template)

    def script(self) -> Script | None:
        """The scripted answer, or None when the rule leaves the words to the engine."""
        respond = self.rule.respond
        text: str | None = respond.text
        if respond.template is not None:
            text = self.render(respond.template)
        elif respond.has_json:
            text = json.dumps(self._filled(respond.json_value), ensure_ascii=False)
        calls = tuple(
            ScriptedToolCall(
                name=call.name,
                arguments=self.render(call.arguments)
                if isinstance(call.arguments, str)
                else json.dumps(self._filled(call.arguments), ensure_ascii=False),
                id=call.id,
            )
            for call in respond.tool_calls or ()
        )
        if text is None and not calls and respond.reasoning is None:
            return None
        return Script(text=text or "", tool_calls=calls, reasoning=respond.reasoning)

    def _filled(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.render(value)
        if isinstance(value, dict):
            return {k: self._filled(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._filled(v) for v in value]
        return value


class RuleBook:
    """The rules in force and their sequence counters.

    They come from ``path`` (checked at every look-up with one ``stat``, and
    reloaded when its modification time, size or inode change) unless the
    admin API has replaced them. Counters restart whenever the rules change.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.error: str | None = None
        self._file_rules: list[Rule] = []
        self._override: list[Rule] | None = None
        self._counts: list[int] = []
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._stamp = _stamp(path)
            self._file_rules = load_rules(path)
        self._counts = [0] * len(self._file_rules)

    @property
    def source(self) -> Literal["file", "admin"] | None:
        if self._override is not None:
            return "admin"
        return "file" if self.path is not None else None

    def rules(self) -> list[Rule]:
        """The rules in force now (reloading the file first if it changed)."""
        self._refresh()
        return self._override if self._override is not None else self._file_rules

    def match(self, facts: Facts) -> Matched | None:
        """The first rule that matches ``facts``.

        Every rule whose other conditions hold counts the request, whichever
        rule answers it, so ``sequence: 3`` is the third such request.
        """
        found: Matched | None = None
        for index, rule in enumerate(self.rules()):
            if not rule.match.accepts(facts):
                continue
            self._counts[index] += 1
            sequence = self._counts[index]
            if found is None and (rule.match.sequence is None or sequence in rule.match.sequence):
                found = Matched(rule, index, sequence, facts)
        return found

    def replace(self, rules: list[Rule]) -> None:
        """Put ``rules`` in force instead of the file's, until ``revert``."""
        self._override = rules
        self._counts = [0] * len(rules)

    def revert(self) -> None:
        """Back to the file's rules (re-read now), counters restarted."""
        self._override = None
        if self.path is not None:
            self._stamp = None
        self._refresh()
        self._counts = [0] * len(self._file_rules)

    def _refresh(self) -> None:
        if self._override is not None or self.path is None:
            return
        stamp = _stamp(self.path)
        if stamp == self._stamp and stamp is not None:
            return
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            if self.error != str(exc):
                logger.error("Keeping the previous rules: %s", exc)
            self.error = str(exc)
            return
        self._file_rules, self.error = rules, None
        self._counts = [0] * len(rules)
        logger.info("Loaded %d rule(s) from %s", len(rules), self.path)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)
