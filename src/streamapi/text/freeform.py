"""The input of a custom (free-form) tool call: plain text, or text in the tool's grammar.

OpenAI's custom tools take raw text instead of JSON arguments, optionally constrained
by a grammar: Lark (``syntax: "lark"``) or a regular expression (``syntax: "regex"``).
The simulator writes a short text from the request's words, and for a grammar the
shortest plausible sentence of it: each rule takes its first alternative that can end
(grammars list the usual case first: Codex's ``apply_patch`` adds a file), deeper
than a few levels the cheapest one, and each regular-expression terminal takes the
first of the request's words (or a stock value) that it matches whole.

The grammar is read with Lark's own grammar loader (``lark.load_grammar``), which
resolves its EBNF operators, imports and anonymous terminals into plain rules. Lark is
imported at the first grammar, not with the server: it is idle memory most servers never
use (several MB where the ``regex`` package is installed, which Lark then imports too).
Until then a request with a Lark grammar is planned in a worker thread
(``grammar_ready``), so that the import does not hold up the event loop.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

from streamapi.linear_regex import RegexError, compile_linear
from streamapi.text.jsonschema import GenerationBudget, SchemaGenerator

# Past this depth a rule takes its cheapest alternative, so recursion ends.
_MAX_DEPTH = 12
_FALLBACKS = ("notes.txt", "x", "0", "a", "")
_FILE_RULE = re.compile(r"(?i)file|path")


_lark: SimpleNamespace | None = None


def grammar_ready() -> bool:
    """Whether Lark is imported (by the first Lark grammar this process read)."""
    return _lark is not None


def _lark_api() -> SimpleNamespace:
    global _lark
    if _lark is None:
        from lark.exceptions import LarkError
        from lark.lexer import PatternStr
        from lark.load_grammar import load_grammar

        _lark = SimpleNamespace(
            LarkError=LarkError, PatternStr=PatternStr, load_grammar=load_grammar
        )
    return _lark


def freeform_input(
    fmt: Mapping[str, Any],
    rng: random.Random,
    hints: Sequence[str],
    budget: GenerationBudget | None = None,
) -> str:
    """A custom tool call's input for ``fmt`` (a Responses ``format``), from ``hints``;
    a value generated for a regular expression spends ``budget`` (the answer's)."""
    words = [h for h in hints if h.strip()]
    if fmt.get("type") != "grammar":
        return " ".join(words[:6]) or "Done."
    definition = str(fmt.get("definition", ""))
    if fmt.get("syntax") == "regex":
        return _regex_value(definition, rng, words, budget, file_like=False)
    lark = _lark_api()
    try:
        return _LarkSentence(definition, rng, words, budget).text()
    except (lark.LarkError, RecursionError, KeyError):
        return " ".join(words[:6])


class _LarkSentence:
    def __init__(
        self,
        definition: str,
        rng: random.Random,
        hints: Sequence[str],
        budget: GenerationBudget | None,
    ) -> None:
        self._rng = rng
        self._budget = budget
        grammar, _ = _lark_api().load_grammar(definition, "<tool grammar>", [], False)
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
        if isinstance(pattern, _lark_api().PatternStr):
            return str(pattern.value)
        file_like = bool(_FILE_RULE.search(rule))
        return _regex_value(
            pattern.to_regexp(), self._rng, self._hints, self._budget, file_like=file_like
        )


def _regex_value(
    expression: str,
    rng: random.Random,
    hints: Sequence[str],
    budget: GenerationBudget | None,
    *,
    file_like: bool,
) -> str:
    """The first candidate ``expression`` matches whole (the request's words, then stock
    ones), else a string generated from it. The client's expression runs in RE2, in time
    linear in the candidate (Python's ``re`` could backtrack for seconds on the loop)."""
    try:
        compiled = compile_linear(f"^(?:{expression})$")
    except RegexError:
        return hints[0] if hints else ""
    words = [h.lower() for h in hints[:3]]
    candidates = (
        [f"{w}.txt" for w in words] if file_like else [" ".join(hints[:4]), *hints[:3], *words]
    )
    for candidate in (*candidates, *_FALLBACKS):
        if compiled.search(candidate):
            return candidate
    schema = {"type": "string", "pattern": expression}
    value = SchemaGenerator(schema, rng, hints, budget).generate()
    return value if isinstance(value, str) and compiled.search(value) else ""
