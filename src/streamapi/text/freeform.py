"""The input of a custom (free-form) tool call: plain text, or text in the tool's grammar.

OpenAI's custom tools take raw text instead of JSON arguments, optionally constrained
by a grammar: Lark (``syntax: "lark"``) or a regular expression (``syntax: "regex"``).
The simulator writes a short text from the request's words, and for a grammar the
shortest plausible sentence of it: each rule takes its first alternative that can end
(grammars list the usual case first: Codex's ``apply_patch`` adds a file), deeper
than a few levels the cheapest one, and each regular-expression terminal takes the
first of the request's words (or a stock value) that it matches whole.

The grammar is read with Lark's own grammar loader (``lark.load_grammar``), which
resolves its EBNF operators, imports and anonymous terminals into plain rules.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lark.exceptions import LarkError
from lark.grammar import Rule
from lark.lexer import PatternStr, TerminalDef
from lark.load_grammar import load_grammar

from streamapi.text.jsonschema import SchemaGenerator

# Past this depth a rule takes its cheapest alternative, so recursion ends.
_MAX_DEPTH = 12
_FALLBACKS = ("notes.txt", "x", "0", "a", "")
_FILE_RULE = re.compile(r"(?i)file|path")


def freeform_input(fmt: Mapping[str, Any], rng: random.Random, hints: Sequence[str]) -> str:
    """A custom tool call's input for ``fmt`` (a Responses ``format``), from ``hints``."""
    words = [h for h in hints if h.strip()]
    if fmt.get("type") != "grammar":
        return " ".join(words[:6]) or "Done."
    definition = str(fmt.get("definition", ""))
    if fmt.get("syntax") == "regex":
        return _regex_value(definition, rng, words, file_like=False)
    try:
        return _LarkSentence(definition, rng, words).text()
    except (LarkError, RecursionError, KeyError):
        return " ".join(words[:6])


class _LarkSentence:
    def __init__(self, definition: str, rng: random.Random, hints: Sequence[str]) -> None:
        self._rng = rng
        grammar, _ = load_grammar(definition, "<tool grammar>", [], False)  # type: ignore[no-untyped-call]
        terminals, rules, _ = grammar.compile(["start"], set())
        self._terminals: dict[str, TerminalDef] = {t.name: t for t in terminals}
        self._rules: dict[str, list[Rule]] = {}
        for rule in rules:
            self._rules.setdefault(rule.origin.name, []).append(rule)
        self._hints = hints
        self._cost = self._costs()

    def text(self) -> str:
        return "".join(self._derive("start", 0, "start"))

    def _costs(self) -> dict[str, float]:
        # The fewest terminals each rule can end in, by fixpoint (inf: never ends).
        cost = {name: float("inf") for name in self._rules}
        changed = True
        while changed:
            changed = False
            for name, alternatives in self._rules.items():
                best = min(self._expansion_cost(r, cost) for r in alternatives)
                if best < cost[name]:
                    cost[name], changed = best, True
        return cost

    def _expansion_cost(self, rule: Rule, cost: Mapping[str, float]) -> float:
        return sum(1.0 if s.is_term else cost.get(s.name, float("inf")) for s in rule.expansion)

    def _derive(self, name: str, depth: int, parent: str) -> list[str]:
        alternatives = self._rules[name]
        finite = [r for r in alternatives if self._expansion_cost(r, self._cost) < float("inf")]
        if depth > _MAX_DEPTH:
            chosen = min(finite, key=lambda r: self._expansion_cost(r, self._cost))
        else:
            chosen = finite[0]
        out: list[str] = []
        # Rules Lark made up for EBNF operators (``__x_plus_0``) name nothing.
        own = parent if name.startswith("_") else name
        for symbol in chosen.expansion:
            if symbol.is_term:
                out.append(self._terminal(symbol.name, own))
            else:
                out += self._derive(symbol.name, depth + 1, own)
        return out

    def _terminal(self, name: str, rule: str) -> str:
        pattern = self._terminals[name].pattern
        if isinstance(pattern, PatternStr):
            return str(pattern.value)
        file_like = bool(_FILE_RULE.search(rule))
        return _regex_value(pattern.to_regexp(), self._rng, self._hints, file_like=file_like)


def _regex_value(
    expression: str, rng: random.Random, hints: Sequence[str], *, file_like: bool
) -> str:
    """The first candidate ``expression`` matches whole (the request's words, then stock
    ones), else a string generated from it."""
    try:
        compiled = re.compile(expression)
    except re.error:
        return hints[0] if hints else ""
    words = [h.lower() for h in hints[:3]]
    candidates = (
        [f"{w}.txt" for w in words] if file_like else [" ".join(hints[:4]), *hints[:3], *words]
    )
    for candidate in (*candidates, *_FALLBACKS):
        if compiled.fullmatch(candidate):
            return candidate
    value = SchemaGenerator({"type": "string", "pattern": expression}, rng, hints).generate()
    return value if isinstance(value, str) and compiled.fullmatch(value) else ""
