"""What the simulator says: reasoning, tool calls or an answer, decided up front.

The planner turns a ``GenerationRequest`` into the exact list of deltas the
simulator will stream; pacing is the simulator's business. Every choice comes
from a ``random.Random`` seeded by the request's seed, the conversation and the
choice index, so equal requests get equal plans.

Tool calls follow a documented rule (docs/api/chat-completions.md, "Tool calls"): ``tool_choice``
``"none"`` never calls, a named function or ``"required"`` always calls, and
``"auto"`` calls the tools the last user message names (with one tool offered, one
key term of its description is enough). Once a tool's result is
in, ``"required"`` calls another tool (an output tool such as pydantic-ai's
``final_result`` first), as a real model does: repeating the answered call
would loop a client's agent until its request limit.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
from dataclasses import dataclass, replace

from streamapi.engines.protocol import (
    FinishReason,
    GenerationRequest,
    PromptMessage,
    ScriptedToolCall,
    TokenDelta,
    ToolCallStart,
    ToolSpec,
)
from streamapi.text.freeform import freeform_input
from streamapi.text.instructions import (
    Length,
    asked_length,
    prompted_format,
    without_length_instructions,
)
from streamapi.text.jsonschema import SchemaGenerator
from streamapi.text.logprobs import logprob, top_logprobs
from streamapi.text.tokenizer import tokenize
from streamapi.text.writer import (
    find_subject,
    image_note,
    json_answer,
    key_terms,
    one_word,
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


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    """Every delta a request will stream; the last one carries the finish reason."""

    deltas: list[TokenDelta]

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.deltas[-1].finish_reason

    @property
    def tokens(self) -> list[str]:
        """The text of every token, on all channels."""
        return [d.text for d in self.deltas if d.is_token]

    @property
    def text(self) -> str:
        """The content channel's text."""
        return "".join(d.text for d in self.deltas if d.channel == "content")


class Planner:
    """Plans answers for the simulator."""

    def __init__(self, *, min_answer_chars: int = 1378, seed: int | None = None) -> None:
        self._min_answer_chars = min_answer_chars
        self._seed = seed

    def plan(self, request: GenerationRequest) -> AnswerPlan:
        rng = self._rng(request)
        question = _question(request.messages)
        script = request.script
        calls = choose_tools(request) if script is None else []
        deltas: list[TokenDelta] = []
        if script is not None and script.reasoning is not None:
            deltas += [TokenDelta(t, channel="reasoning") for t in tokenize(script.reasoning)]
        elif request.reasoning:
            names = [c.name for c in script.tool_calls] if script else [t.name for t in calls]
            thought = write_reasoning(question, rng, tool_names=names)
            deltas += [TokenDelta(t, channel="reasoning") for t in tokenize(thought)]
        finish: FinishReason = "stop"
        matched: str | None = None
        if calls:
            deltas += _tool_call_deltas(calls, request, rng)
            finish = "tool_calls"
        else:
            text = self._answer(request, question, rng) if script is None else script.text
            if not _fixed_length(request):
                text, matched = _cut_at_stop(text, request.stop)
            # Only what max_tokens lets through, and one more to tell "length"
            # from "stop": a long answer capped short is the load-test case.
            limit = (
                None if request.max_tokens is None else max(0, request.max_tokens - len(deltas)) + 1
            )
            deltas += map(TokenDelta, tokenize(text, limit))
            if request.output_tokens is not None:
                deltas = deltas[: request.output_tokens]
            if script is not None and script.tool_calls and matched is None:
                deltas += _scripted_call_deltas(script.tool_calls, rng)
                finish = "tool_calls"
        if request.max_tokens is not None and len(deltas) > request.max_tokens:
            deltas = deltas[: request.max_tokens]
            finish, matched = "length", None
        elif request.max_tokens is not None and len(deltas) == request.max_tokens:
            # A real engine that is stopped by the limit reports "length" even
            # when the answer would have ended on that very token.
            finish = "length" if request.ignore_eos else finish
        if request.logprobs is not None:
            deltas = _with_logprobs(deltas, request.logprobs)
        if not deltas:
            return AnswerPlan([TokenDelta("", finish, matched_stop=matched)])
        deltas[-1] = replace(deltas[-1], finish_reason=finish, matched_stop=matched)
        return AnswerPlan(deltas)

    def _answer(self, request: GenerationRequest, question: str, rng: random.Random) -> str:
        fmt = request.output_format
        if fmt.type == "json_schema" and fmt.schema is not None:
            hints = _hints(question)
            return json.dumps(
                SchemaGenerator(fmt.schema, rng, hints).generate(), ensure_ascii=False
            )
        instructions = _instructions(request.messages)
        prompted = prompted_format(instructions, json_mode=fmt.type == "json_object")
        if prompted is not None:
            value = SchemaGenerator(prompted.schema, rng, _hints(question)).generate()
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
        results = _tool_results(request.messages)
        images = _images(request.messages)
        if length is not None:
            return _brief(without_length_instructions(question), length, results, images, rng)
        if results:
            text = write_tool_answer(question, results, rng, min_chars=min_chars)
        else:
            text = write_answer(question, rng, min_chars=min_chars)
        return f"{image_note(images)} {text}" if images else text

    def _rng(self, request: GenerationRequest) -> random.Random:
        seed = request.seed if request.seed is not None else self._seed
        greedy = is_greedy(request)
        if seed is None and greedy:
            seed = 0  # greedy decoding is deterministic with or without a seed
        if seed is None:
            return random.Random(secrets.randbits(64))
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
    return request.temperature == 0 or request.top_k == 1 or request.top_p <= GREEDY_TOP_P


def _fixed_length(request: GenerationRequest) -> int | None:
    """The answer's length when it is imposed: a test's ``output_tokens``, or ``ignore_eos``."""
    if request.output_tokens is not None:
        return request.output_tokens
    return request.max_tokens if request.ignore_eos else None


def choose_tools(request: GenerationRequest) -> list[ToolSpec]:
    """The tools this request calls, by the documented ``tool_choice`` rule."""
    tools, choice = request.tools, request.tool_choice
    if not tools or choice == "none":
        return []
    if choice not in ("auto", "required"):
        return [t for t in tools if t.name == choice][:1]
    last = request.messages[-1] if request.messages else None
    question = last.content if last is not None and last.role == "user" else ""
    # With one tool offered, a request that fits it (its name, or one of its
    # description's key terms) calls it, as a real model does: LlamaIndex's
    # structured prediction offers its output class as the one tool.
    named = [t for t in tools if _names(t, question, terms_needed=1 if len(tools) == 1 else 2)]
    if choice == "required" and not named:
        named = [_next_required(tools, request.messages)]
    return named if request.parallel_tool_calls else named[:1]


def _next_required(tools: tuple[ToolSpec, ...], messages: tuple[PromptMessage, ...]) -> ToolSpec:
    """The tool a required choice calls when the conversation names none.

    The first tool, until results are in since the last user turn; then a tool
    not answered yet, an output tool first. Only when every tool has its result
    does it call the first output tool (or the first tool) again.
    """
    answered = {name for name, _ in _tool_results(messages)}
    if not answered:
        return tools[0]
    fresh = [t for t in tools if t.name not in answered] or list(tools)
    outputs = [t for t in fresh if _OUTPUT_TOOL.match(t.name)]
    return (outputs or fresh)[0]


def _names(tool: ToolSpec, question: str, *, terms_needed: int = 2) -> bool:
    """Whether ``question`` names the tool: its name, a word of it, or ``terms_needed`` of its
    description's key terms."""
    if not question:
        return False
    lowered = question.lower()
    if tool.name.lower() in lowered:
        return True
    stems = {w.lower()[:5] for w in _WORDS.findall(question) if len(w) >= 3}
    name_words = [w.lower() for w in _WORDS.findall(tool.name) if len(w) >= 3]
    if any(w[:5] in stems for w in name_words if w not in _GENERIC_VERBS):
        return True
    described = {w[:5] for w in key_terms(tool.description, "") if len(w) >= 5}
    return len(described & stems) >= terms_needed


def _tool_call_deltas(
    calls: list[ToolSpec], request: GenerationRequest, rng: random.Random
) -> list[TokenDelta]:
    hints = _hints(_question(request.messages))
    deltas: list[TokenDelta] = []
    for index, tool in enumerate(calls):
        call_id = f"call_{rng.getrandbits(96):024x}"
        if tool.format is not None:
            text = freeform_input(tool.format, rng, hints)  # a custom tool's raw input
        else:
            arguments = SchemaGenerator(tool.parameters or {"type": "object"}, rng, hints)
            text = json.dumps(arguments.generate(), ensure_ascii=False)
        start = ToolCallStart(index, call_id, tool.name)
        deltas.append(TokenDelta("", channel="tool_call", tool_call=start, tool_index=index))
        deltas += [TokenDelta(t, channel="tool_call", tool_index=index) for t in tokenize(text)]
    return deltas


def _scripted_call_deltas(
    calls: tuple[ScriptedToolCall, ...], rng: random.Random
) -> list[TokenDelta]:
    deltas: list[TokenDelta] = []
    for index, call in enumerate(calls):
        call_id = call.id or f"call_{rng.getrandbits(96):024x}"
        start = ToolCallStart(index, call_id, call.name)
        deltas.append(TokenDelta("", channel="tool_call", tool_call=start, tool_index=index))
        deltas += [
            TokenDelta(t, channel="tool_call", tool_index=index) for t in tokenize(call.arguments)
        ]
    return deltas


def _hints(question: str) -> list[str]:
    """Words a generated value may use: the question's proper nouns, then its key terms."""
    words = re.findall(r"[^\W\d_][\w'-]*", question)
    proper = [w for i, w in enumerate(words) if w[:1].isupper() and i > 0]
    terms = key_terms(question, find_subject(question))
    return list(dict.fromkeys([*proper, *terms]))


def _question(messages: tuple[PromptMessage, ...]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""


def _instructions(messages: tuple[PromptMessage, ...]) -> list[str]:
    """What a prompt's form is read from: system and developer messages, then the last
    user message (earlier turns and tool outputs are not instructions)."""
    texts = [m.content for m in messages if m.role in ("system", "developer")]
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return texts if last_user is None else [*texts, last_user.content]


def _images(messages: tuple[PromptMessage, ...]) -> int:
    """How many images the last user message holds."""
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return 0 if last_user is None else last_user.images


def _tool_results(messages: tuple[PromptMessage, ...]) -> list[tuple[str, str]]:
    """The tool outputs after the last user turn: the answers to the latest calls."""
    results: list[tuple[str, str]] = []
    for message in reversed(messages):
        if message.role == "user":
            break
        if message.role in ("tool", "function"):
            results.append((message.name or "tool", message.content))
    return results[::-1]


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """The text before the earliest stop sequence, and that sequence."""
    found = [(i, s) for s in stop if s and (i := text.find(s)) >= 0]
    if not found:
        return text, None
    cut, matched = min(found)
    return text[:cut], matched


def _with_logprobs(deltas: list[TokenDelta], alternatives: int) -> list[TokenDelta]:
    return [
        replace(
            delta,
            logprob=logprob(delta.text, position),
            top_logprobs=top_logprobs(delta.text, position, alternatives),
        )
        if delta.text
        else delta
        for position, delta in enumerate(deltas)
    ]
