"""What the simulator says: reasoning, tool calls or an answer, decided up front.

The planner turns a ``GenerationRequest`` into the exact deltas the simulator will
stream (an ``AnswerPlan``); pacing is the simulator's business. Every choice comes
from a ``random.Random`` seeded by the request's seed, the conversation and the
choice index, so equal requests get equal plans.

Everything is decided when the request is admitted (the engine needs the answer's
length and finish reason then), but a plan keeps only its tokens' text and lengths:
each ``TokenDelta`` is made when the stream reads it (``PlanReader``), so an open
stream holds a few bytes per token still to come rather than a delta object each.

It plays an agent's model as a plausible one would (docs/simulator.md, "Agents"):
it reads the latest turn (``turns.read_turn``: the user's own words, without the
harness's tagged context, and the tool results since, in whatever form they came),
calls at most the tools those words name (one, unless they name several and
parallel calls are allowed), fills their arguments from those words, and once a
tool's result is in, answers from it, or, when ``tool_choice`` requires a call,
hands it to the final-answer tool (smolagents' ``final_answer``, pydantic-ai's
``final_result``). So an agent's loop ends within a few turns.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from streamapi.engines.protocol import (
    Channel,
    FinishReason,
    GenerationRequest,
    PromptMessage,
    ScriptedToolCall,
    TokenDelta,
    ToolCallStart,
    ToolSpec,
)
from streamapi.engines.turns import UNNAMED_TOOL, Turn, read_turn
from streamapi.text.code_actions import write_code_action
from streamapi.text.edits import edit_format, files_in_chat, write_edit
from streamapi.text.fields import FieldForm, field_form, write_fields
from streamapi.text.freeform import freeform_input
from streamapi.text.instructions import (
    Length,
    asked_length,
    prompted_format,
    without_length_instructions,
)
from streamapi.text.jsonschema import GenerationBudget, SchemaGenerator
from streamapi.text.logprobs import logprob, top_logprobs
from streamapi.text.tokenizer import prefix_chars, tokenize
from streamapi.text.writer import (
    find_subject,
    greeting_reply,
    image_note,
    json_answer,
    key_terms,
    one_word,
    proper_nouns,
    write_answer,
    write_brief,
    write_reasoning,
    write_tool_answer,
)

# A nucleus of top_p keeps the fewest most likely tokens whose probabilities add up to
# top_p; a model's most likely token is practically never under 0.1 %, so at or below
# this top_p the nucleus is that one token and decoding is greedy, as with top_k 1.
GREEDY_TOP_P = 1e-3
# With ignore_eos the answer must reach max_tokens: write this many characters
# per wanted token, comfortably above the tokenizer's ~4.2.
_CHARS_PER_TOKEN_HEADROOM = 6
# Name parts that say what a function does, not what it is about.
_GENERIC_VERBS = frozenset(
    "get set fetch list find create update delete remove search lookup look call run make do "
    "add send check query read write compute calculate".split()
)
_WORDS = re.compile(r"[A-Za-z][a-z]*|[A-Z]+(?![a-z])|\d+")
# Tools that hand the agent's final output back (pydantic-ai's ``final_result``,
# ``final_result_<Type>``; the Agents SDK and others use similar words): once a
# result is in, a required call goes there first.
_OUTPUT_TOOL = re.compile(r"^(final|output|answer|respond|submit)", re.IGNORECASE)
# A schema value's budget when nothing caps the answer (an engine with no context length).
_UNCAPPED_TOKENS = 131_072
_OUTPUT_DESCRIBED = re.compile(
    r"\bfinal\s+(?:answer|result|response|output)\b|\bends? this conversation\b", re.IGNORECASE
)
# An output tool's argument that carries the answer itself (smolagents' ``answer``).
_ANSWER_FIELDS = frozenset(
    "answer final_answer result output response text content message reply summary".split()
)
# How much of a tool's result an output tool's answer repeats.
_ANSWER_CHARS = 300


# The generator of unseeded plans; a forked worker reseeds it, as the random module does
# its own, so that workers do not write the same answers.
_UNSEEDED = random.Random()
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_UNSEEDED.seed)


@dataclass(frozen=True, slots=True)
class _Run:
    """Deltas in a row on one channel: a tool call's opening delta, if any, then tokens."""

    channel: Channel
    tool_index: int
    start: ToolCallStart | None
    text: str
    """The run's tokens, concatenated."""
    lengths: bytes
    """Each token's length in characters, a byte each: the tokenizer's tokens are at most
    eight characters long."""

    @property
    def size(self) -> int:
        return (self.start is not None) + len(self.lengths)

    def cut(self, size: int) -> _Run:
        """The run's first ``size`` deltas."""
        if size >= self.size:
            return self
        lengths = self.lengths[: size - (self.start is not None)]
        text = self.text[: sum(lengths)]
        return _Run(self.channel, self.tool_index, self.start, text, lengths)


def _run(
    tokens: list[str],
    channel: Channel = "content",
    *,
    tool_index: int = 0,
    start: ToolCallStart | None = None,
) -> list[_Run]:
    """``tokens`` as a run (none if it would hold no delta)."""
    if not tokens and start is None:
        return []
    return [_Run(channel, tool_index, start, "".join(tokens), bytes(map(len, tokens)))]


def _size(runs: Iterable[_Run]) -> int:
    return sum(run.size for run in runs)


def _cut(runs: list[_Run], size: int) -> list[_Run]:
    """The first ``size`` deltas of ``runs``."""
    kept: list[_Run] = []
    for run in runs:
        if size <= 0:
            break
        kept.append(run.cut(size))
        size -= run.size
    return kept


class AnswerPlan:
    """Every delta a request will stream; the last one carries the finish reason.

    Iterating makes the deltas one at a time (``PlanReader``); ``total`` and
    ``token_count`` are known without making any.
    """

    __slots__ = ("_runs", "finish_reason", "logprobs", "matched_stop", "token_count", "total")

    def __init__(
        self,
        runs: list[_Run],
        finish_reason: FinishReason,
        *,
        matched_stop: str | None = None,
        logprobs: int | None = None,
    ) -> None:
        self._runs = tuple(runs)
        self.finish_reason: FinishReason = finish_reason
        self.matched_stop = matched_stop
        self.logprobs = logprobs
        """None: no log probabilities; k: each token's, with k alternatives."""
        self.token_count = _size(runs)
        """Generated tokens (a tool call's opening delta counts as one)."""
        # A plan with no token is one empty delta that carries the finish reason.
        self.total = self.token_count or 1
        """Deltas."""

    def __iter__(self) -> PlanReader:
        return PlanReader(self)

    def __eq__(self, other: object) -> bool:
        """Plans are equal when they stream the same deltas."""
        return isinstance(other, AnswerPlan) and self.deltas == other.deltas

    __hash__ = None  # type: ignore[assignment]  # equal by value, and not immutable

    @property
    def deltas(self) -> list[TokenDelta]:
        """Every delta, made now."""
        return list(self)

    @property
    def tokens(self) -> list[str]:
        """The text of every token, on all channels."""
        return [d.text for d in self if d.is_token]

    @property
    def text(self) -> str:
        """The content channel's text."""
        return "".join(run.text for run in self._runs if run.channel == "content")


class PlanReader:
    """A plan's deltas, each made when it is read (once per token: the stream's hot path)."""

    __slots__ = ("_next_run", "_offset", "_plan", "_position", "_run", "_token")

    def __init__(self, plan: AnswerPlan) -> None:
        self._plan = plan
        self._position = 0  # deltas read
        self._run: _Run | None = None  # the run being read; None for a plan with no token
        self._next_run = 0
        self._token = 0  # the next token of the run; -1: its opening tool-call delta
        self._offset = 0  # characters of the run's text read
        self._advance()

    def __iter__(self) -> PlanReader:
        return self

    def __next__(self) -> TokenDelta:
        plan = self._plan
        position = self._position
        if position >= plan.total:
            raise StopIteration
        self._position = position + 1
        run = self._run
        if run is None:
            return TokenDelta("", plan.finish_reason, matched_stop=plan.matched_stop)
        token = self._token
        if token < 0:
            delta = TokenDelta("", None, run.channel, run.start, run.tool_index)
        else:
            offset = self._offset
            end = self._offset = offset + run.lengths[token]
            text = run.text[offset:end]
            delta = TokenDelta(text, None, run.channel, None, run.tool_index)
            if plan.logprobs is not None:
                delta.logprob = logprob(text, position)
                delta.top_logprobs = top_logprobs(text, position, plan.logprobs)
        token += 1
        if token < len(run.lengths):
            self._token = token
        else:
            self._advance()
        if position + 1 == plan.total:
            delta.finish_reason = plan.finish_reason
            delta.matched_stop = plan.matched_stop
        return delta

    def _advance(self) -> None:
        """On to the next run's first delta (the last run stays, read to its end)."""
        runs = self._plan._runs
        if self._next_run < len(runs):
            run = self._run = runs[self._next_run]
            self._next_run += 1
            self._token = -1 if run.start is not None else 0
            self._offset = 0


class Planner:
    """Plans answers for the simulator."""

    def __init__(self, *, min_answer_chars: int = 1378, seed: int | None = None) -> None:
        self._min_answer_chars = min_answer_chars
        self._seed = seed

    def plan(self, request: GenerationRequest) -> AnswerPlan:
        rng = self._rng(request)
        turn = read_turn(request.messages)
        question = turn.question
        script = request.script
        calls = choose_tools(request, turn) if script is None else []
        # One budget for every value this answer generates from a client's schema:
        # work in proportion to max_tokens, whatever the schema asks for.
        budget = GenerationBudget.for_tokens(
            request.max_tokens if request.max_tokens is not None else _UNCAPPED_TOKENS
        )
        runs: list[_Run] = []
        if script is not None and script.reasoning is not None:
            runs += _run(tokenize(script.reasoning), "reasoning")
        elif request.reasoning:
            names = [c.name for c in script.tool_calls] if script else [t.name for t in calls]
            thought = write_reasoning(question, rng, tool_names=names)
            runs += _run(tokenize(thought), "reasoning")
        finish: FinishReason = "stop"
        matched: str | None = None
        if calls:
            runs += _tool_call_runs(calls, request, turn, rng, budget)
            finish = "tool_calls"
        else:
            text = self._answer(request, turn, rng, budget) if script is None else script.text
            if not _fixed_length(request):
                text, matched = _cut_at_stop(text, request.stop)
            # Only what max_tokens lets through, and one more to tell "length"
            # from "stop": a long answer capped short is the load-test case.
            limit = (
                None if request.max_tokens is None else max(0, request.max_tokens - _size(runs)) + 1
            )
            runs += _run(tokenize(text, limit))
            if request.output_tokens is not None:
                runs = _cut(runs, request.output_tokens)
            if script is not None and script.tool_calls and matched is None:
                runs += _scripted_call_runs(script.tool_calls, rng)
                finish = "tool_calls"
        size = _size(runs)
        if request.max_tokens is not None and size > request.max_tokens:
            runs = _cut(runs, request.max_tokens)
            finish, matched = "length", None
        elif budget.spent:  # a value cut short by its budget is never finished as whole
            finish, matched = "length", None
        elif request.max_tokens is not None and size == request.max_tokens:
            # A real engine that is stopped by the limit reports "length" even
            # when the answer would have ended on that very token.
            finish = "length" if request.ignore_eos else finish
        return AnswerPlan(runs, finish, matched_stop=matched, logprobs=request.logprobs)

    def _answer(
        self,
        request: GenerationRequest,
        turn: Turn,
        rng: random.Random,
        budget: GenerationBudget,
    ) -> str:
        question = turn.question
        fmt = request.output_format
        if fmt.type == "json_schema" and fmt.schema is not None:
            hints = _hints(question)
            return json.dumps(
                SchemaGenerator(fmt.schema, rng, hints, budget).generate(), ensure_ascii=False
            )
        form = _field_form(request.messages)
        if form is not None:
            return write_fields(form, rng, budget)
        system = [m.content for m in request.messages if m.role in ("system", "developer")]
        code = write_code_action(
            "\n".join(system),
            question,
            [output for _, output in turn.results],
            lambda: _hints(question),
            lambda: write_brief(question, rng, sentences=1),
        )
        if code is not None:
            return code
        edits = edit_format(system)
        if edits is not None:
            users = [m.content for m in request.messages if m.role == "user"]
            edit = write_edit(question, files_in_chat(users), edits)
            if edit is not None:
                return edit
        instructions = _instructions(request.messages, question)
        prompted = prompted_format(instructions, json_mode=fmt.type == "json_object")
        if prompted is not None:
            value = SchemaGenerator(prompted.schema, rng, _hints(question), budget).generate()
            if prompted.markdown:
                return f"```json\n{json.dumps(value, ensure_ascii=False, indent=2)}\n```"
            return json.dumps(value, ensure_ascii=False)
        if fmt.type == "json_object":
            return json.dumps(json_answer(question, rng), ensure_ascii=False)
        min_chars = self._min_answer_chars
        wanted = _fixed_length(request)
        if wanted:
            min_chars = max(min_chars, wanted * _CHARS_PER_TOKEN_HEADROOM)
        length = asked_length(instructions) if request.length_instructions and not wanted else None
        results = list(turn.results)
        images = _images(request.messages)
        # An agent CLI's smoke test ("Say hello", tools offered) is greeted back.
        smoke = bool(request.tools) and not (results or images or wanted)
        greeting = greeting_reply(question) if smoke else None
        if greeting is not None:
            return greeting
        if length is not None:
            return _brief(without_length_instructions(question), length, results, images, rng)
        if results:
            text = write_tool_answer(question, results, rng, min_chars=min_chars)
        else:
            # Only what max_tokens lets through is read, so only that much is written
            # (with a stop sequence, the whole answer is searched for it).
            cap = request.max_tokens
            max_chars = prefix_chars(cap + 1) if cap is not None and not request.stop else None
            text = write_answer(question, rng, min_chars=min_chars, max_chars=max_chars)
        return f"{image_note(images)} {text}" if images else text

    def _rng(self, request: GenerationRequest) -> random.Random:
        seed = request.seed if request.seed is not None else self._seed
        greedy = is_greedy(request)
        if seed is None and greedy:
            seed = 0  # greedy decoding is deterministic with or without a seed
        if seed is None:
            # Any draw will do: one generator, seeded from the system's randomness, serves
            # every unseeded plan (seeding one per request cost more than its draws).
            return _UNSEEDED
        conversation = hashlib.sha256()
        for message in request.messages:
            conversation.update(f"{message.role}\x00{message.content}\x01".encode())
        choice = 0 if greedy else request.choice_index
        return random.Random(f"{seed}:{choice}:{conversation.hexdigest()}")


def _brief(
    question: str,
    length: Length,
    results: list[tuple[str, str]],
    images: int,
    rng: random.Random,
) -> str:
    """An answer of the length the prompt asked for, opening with the tool's result or the
    image, when there is one."""
    if length.words == 1:
        return one_word(question)
    lead = image_note(images) if images else ""
    if results:
        name, output = results[-1]
        shown = " ".join(output.split())
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        lead = f"`{name}` returned {shown.rstrip('.')}."
    return write_brief(question, rng, sentences=length.sentences, words=length.words, lead=lead)


def is_greedy(request: GenerationRequest) -> bool:
    """Whether sampling keeps only the most likely token: temperature 0, top_k 1, top_p ~0."""
    top_p = request.top_p
    return (
        request.temperature == 0
        or request.top_k == 1
        or (top_p is not None and top_p <= GREEDY_TOP_P)
    )


def _fixed_length(request: GenerationRequest) -> int | None:
    """The answer's length when it is imposed: a test's ``output_tokens``, or ``ignore_eos``."""
    if request.output_tokens is not None:
        return request.output_tokens
    return request.max_tokens if request.ignore_eos else None


def choose_tools(request: GenerationRequest, turn: Turn | None = None) -> list[ToolSpec]:
    """The tools this request calls, by the documented ``tool_choice`` rule.

    ``"auto"`` and ``"required"`` call the tools the user's own words name (several only
    when they name several and parallel calls are allowed); once results are in, ``"auto"``
    answers (or calls a named tool not answered yet) and ``"required"`` calls the output
    tool. ``turn`` is ``read_turn(request.messages)``, when the caller has it.
    """
    tools, choice = request.tools, request.tool_choice
    if not tools or choice == "none":
        return []
    if choice not in ("auto", "required"):
        return [t for t in tools if t.name == choice][:1]
    turn = turn if turn is not None else read_turn(request.messages)
    # With one tool offered, a request that fits it (its name, or one of its
    # description's key terms) calls it, as a real model does: LlamaIndex's
    # structured prediction offers its output class as the one tool.
    needed = 1 if len(tools) == 1 else 2
    named = _fewest(
        [t for t in tools if _names(t, turn.question, terms_needed=needed)], turn.question
    )
    if turn.results:
        answered = turn.answered
        # A result of a call whose name is unknown might answer any tool: none is pending.
        pending = [] if UNNAMED_TOOL in answered else [t for t in named if t.name not in answered]
        if pending:
            return pending[:1]
        return [_next_required(tools, turn)] if choice == "required" else []
    if choice == "required" and not named:
        outputs = [t for t in tools if _is_output_tool(t)]
        named = outputs[:1] or [tools[0]]
    return named if request.parallel_tool_calls else named[:1]


def _fewest(named: list[ToolSpec], question: str) -> list[ToolSpec]:
    """The named tools, less those another one names better: "search the web" names
    ``WebSearch`` (web, search) rather than ``WebFetch`` (web)."""
    stems = {w.lower()[:5] for w in _WORDS.findall(question) if len(w) >= 3}
    matched = {
        t.name: {w.lower()[:5] for w in _WORDS.findall(t.name) if w.lower()[:5] in stems}
        for t in named
    }
    return [t for t in named if not any(matched[t.name] < matched[o.name] for o in named)]


def _is_output_tool(tool: ToolSpec) -> bool:
    """Whether a tool hands the agent's final answer back (by its name or description)."""
    return bool(_OUTPUT_TOOL.match(tool.name) or _OUTPUT_DESCRIBED.search(tool.description))


def _next_required(tools: tuple[ToolSpec, ...], turn: Turn) -> ToolSpec:
    """The tool a required choice calls once results are in: an output tool, else a tool
    not answered yet, else the first tool."""
    outputs = [t for t in tools if _is_output_tool(t)]
    if outputs:
        return outputs[0]
    fresh = [t for t in tools if t.name not in turn.answered]
    return (fresh or list(tools))[0]


def _names(tool: ToolSpec, question: str, *, terms_needed: int = 2) -> bool:
    """Whether ``question`` names the tool: a word of its name that says what it is about, its
    whole name with a key term of its description ("Read the file"), or ``terms_needed`` of
    its description's key terms."""
    if not question:
        return False
    stems = {w.lower()[:5] for w in _WORDS.findall(question) if len(w) >= 3}
    name_words = [w.lower() for w in _WORDS.findall(tool.name) if len(w) >= 3]
    specific = [w for w in name_words if w not in _GENERIC_VERBS]
    whole = re.search(rf"(?<![\w-]){re.escape(tool.name)}(?![\w-])", question, re.IGNORECASE)
    if whole and specific:
        return True
    if any(w[:5] in stems for w in specific):
        return True
    described = {w.lower()[:5] for w in key_terms(tool.description, "") if len(w) >= 5}
    hits = len(described & stems)
    # A name that is only a verb ("Read", "Write") is named with what it acts on.
    return hits >= (1 if whole else terms_needed)


def _tool_call_runs(
    calls: list[ToolSpec],
    request: GenerationRequest,
    turn: Turn,
    rng: random.Random,
    budget: GenerationBudget,
) -> list[_Run]:
    results = " ".join(output for _, output in turn.results)
    # Arguments come from the results when there are some (an output tool hands them on).
    hints = list(dict.fromkeys([*_hints(results), *_hints(turn.question)]))
    # Tokens past max_tokens (and the one that tells "length") are cut anyway.
    limit = None if request.max_tokens is None else request.max_tokens + 1
    runs: list[_Run] = []
    for index, tool in enumerate(calls):
        call_id = f"call_{rng.getrandbits(96):024x}"
        if tool.format is not None:
            text = freeform_input(tool.format, rng, hints, budget)  # a custom tool's raw input
        else:
            parameters = tool.parameters or {"type": "object"}
            arguments = SchemaGenerator(parameters, rng, hints, budget).generate()
            if _is_output_tool(tool):
                arguments = _with_answer(arguments, tool, turn, rng)
            text = json.dumps(arguments, ensure_ascii=False)
        start = ToolCallStart(index, call_id, tool.name)
        runs += _run(tokenize(text, limit), "tool_call", tool_index=index, start=start)
    return runs


def _scripted_call_runs(calls: tuple[ScriptedToolCall, ...], rng: random.Random) -> list[_Run]:
    runs: list[_Run] = []
    for index, call in enumerate(calls):
        call_id = call.id or f"call_{rng.getrandbits(96):024x}"
        start = ToolCallStart(index, call_id, call.name)
        runs += _run(tokenize(call.arguments), "tool_call", tool_index=index, start=start)
    return runs


def _with_answer(arguments: object, tool: ToolSpec, turn: Turn, rng: random.Random) -> object:
    """An output tool's arguments with the answer in its answer field (``answer``,
    ``result``...): the latest tool result, or else a one-sentence answer to the question."""
    if not isinstance(arguments, dict):
        return arguments
    properties = tool.parameters.get("properties")
    if not isinstance(properties, dict):
        return arguments
    fields = [
        name
        for name, schema in properties.items()
        if name.lower() in _ANSWER_FIELDS
        and isinstance(schema, dict)
        and schema.get("type") in ("string", None)
    ]
    if not fields:
        return arguments
    if turn.results:
        shown = " ".join(turn.results[-1][1].split())
        answer = shown if len(shown) <= _ANSWER_CHARS else shown[: _ANSWER_CHARS - 3] + "..."
    else:
        answer = write_brief(turn.question, rng, sentences=1)
    filled = {**arguments, fields[0]: answer}
    # The schema may bound the field (maxLength, a pattern): then the generated value stays.
    # Imported here, as the schema checks do: most servers never load jsonschema.
    from jsonschema import Draft202012Validator

    return filled if Draft202012Validator(tool.parameters).is_valid(filled) else arguments


def _field_form(messages: tuple[PromptMessage, ...]) -> FieldForm | None:
    """The field sections the system message and the last user message ask for (DSPy's)."""
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    if last_user is None:
        return None
    system = "\n".join(m.content for m in messages if m.role in ("system", "developer"))
    return field_form(system, last_user.content)


def _hints(question: str) -> list[str]:
    """Words a generated value may use: the question's names, then its key terms."""
    terms = key_terms(question, find_subject(question))
    return list(dict.fromkeys([*proper_nouns(question), *terms]))


def _instructions(messages: tuple[PromptMessage, ...], question: str) -> list[str]:
    """What a prompt's form is read from: system and developer messages, then the user's
    words of the turn (earlier turns, tool outputs and harness context are not
    instructions)."""
    texts = [m.content for m in messages if m.role in ("system", "developer")]
    return [*texts, question] if question else texts


def _images(messages: tuple[PromptMessage, ...]) -> int:
    """How many images the last user message holds."""
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return 0 if last_user is None else last_user.images


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """The text before the earliest stop sequence, and that sequence."""
    found = [(i, s) for s in stop if s and (i := text.find(s)) >= 0]
    if not found:
        return text, None
    cut, matched = min(found)
    return text[:cut], matched
