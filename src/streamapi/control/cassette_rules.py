"""A cassette as rules: one rule per recorded exchange, for users who edit answers by hand.

``streamapi cassette to-rules`` writes what this module builds. Each rule
matches what identifies the recorded request in the rules grammar (the model,
the system prompt, the last user message, the tools offered, the turn, the
latest tool result, and ``sequence`` when several recordings match alike) and
answers with the recorded text, reasoning and tool calls, reassembled from the
recorded SSE events (or a non-streamed body). What the grammar can say of the
rest is kept: an error status as ``error``, a broken stream as a ``fault``
placed after the words that arrived, the recorded pace as ``timing``. What it
cannot say (the recorded finish reason and usage: the simulator counts and
ends the scripted words itself) is left out, and the docs say so.

The rules are validated with the rules schema before they are returned, so
the output always passes ``streamapi rules check``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from streamapi.cassettes import Exchange
from streamapi.control.rules import parse_rules
from streamapi.text.tokenizer import count_tokens

# What a request that was never answered turns into: the gateway's own statuses.
_UNANSWERED_STATUS = {"timeout": 504, "unreachable": 502}


@dataclass
class _Answer:
    """What one recorded exchange answered, reassembled."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    done: bool = False
    error: dict[str, Any] | None = None
    token_offsets: list[float] = field(default_factory=list)


def cassette_rules(exchanges: Sequence[Exchange]) -> list[dict[str, Any]]:
    """One rule (as plain data, ready for YAML) per exchange, in the cassette's order."""
    rules = [_rule(exchange) for exchange in exchanges]
    _number_alike(rules)
    # The schema is the judge: a rule it rejects is a bug here, named with the exchange.
    parse_rules(rules, source="the converted cassette")
    return rules


def dump_rules(rules: list[dict[str, Any]], *, source: str) -> str:
    """The rules file's YAML text, headed by a comment naming the cassette."""
    head = f"# Rules converted from {source} by `streamapi cassette to-rules`.\n"
    body = yaml.safe_dump(
        {"rules": rules}, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False
    )
    return head + body


def _rule(exchange: Exchange) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": _name(exchange), "match": _match(exchange.body)}
    respond, timing = _respond(exchange)
    rule["respond"] = respond
    if timing:
        rule["timing"] = timing
    return rule


def _name(exchange: Exchange) -> str:
    # ``source`` is ``file:line``; the line is enough to find it in the cassette.
    line = exchange.source.rpartition(":")[2]
    return f"{exchange.upstream or 'exchange'}-line-{line}" if line else exchange.upstream


def _match(body: dict[str, Any]) -> dict[str, Any]:
    """What the rules grammar can match of the recorded request."""
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    match: dict[str, Any] = {}
    if body.get("model"):
        match["model"] = str(body["model"])
    system = "\n".join(
        _text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    if system:
        match["system"] = {"equals": system}
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if last_user >= 0:
        content = messages[last_user].get("content")
        # The server flattens a list of parts; a string is compared whole.
        kind = "equals" if isinstance(content, str) else "contains"
        text = _text(content) if kind == "equals" else _longest_part(content)
        if text:
            match["user"] = {kind: text}
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    match["tools"] = bool(tools)
    names = [str((t.get("function") or {}).get("name") or "") for t in tools]
    if names and names[0]:
        match["tool_name"] = names[0]
    match["turn"] = sum(1 for m in messages if m.get("role") == "assistant")
    since = messages[last_user + 1 :]
    results = [_text(m.get("content")) for m in since if m.get("role") == "tool"]
    if results and results[-1]:
        match["tool_result"] = {"equals": results[-1]}
    return match


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip("\n")
    return "".join(_parts(content))


def _parts(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    texts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return [str(p.get("text", "")) for p in texts]


def _longest_part(content: Any) -> str:
    return max(_parts(content), key=len, default="")


def _number_alike(rules: list[dict[str, Any]]) -> None:
    """Recordings matched alike answer in turn (``sequence``), as ``--replay-ordered`` does."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        groups.setdefault(json.dumps(rule["match"], sort_keys=True), []).append(rule)
    for alike in groups.values():
        if len(alike) > 1:
            for number, rule in enumerate(alike, start=1):
                rule["match"]["sequence"] = number


# --- the answer -------------------------------------------------------------------------


def _respond(exchange: Exchange) -> tuple[dict[str, Any], dict[str, float]]:
    if exchange.status is None:
        status = _UNANSWERED_STATUS.get(exchange.end, 502)
        message = exchange.message or f"The upstream '{exchange.upstream}' failed."
        return {"error": {"status": status, "message": message}}, {}
    if exchange.status != 200:
        return {"error": _error_answer(exchange)}, {}
    answer = _reassemble(exchange)
    respond: dict[str, Any] = {"text": "".join(answer.text)}
    if answer.reasoning:
        respond["reasoning"] = "".join(answer.reasoning)
    if answer.calls:
        respond["tool_calls"] = [_call(answer.calls[i]) for i in sorted(answer.calls)]
    fault = _fault(exchange, answer)
    if fault is not None:
        respond["fault"] = fault
    return respond, _timing(exchange, answer)


def _error_answer(exchange: Exchange) -> dict[str, Any]:
    body = "".join(e.data for e in exchange.events if e.kind == "body")
    error: dict[str, Any] = {"status": exchange.status}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    found = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(found, dict):
        for key in ("message", "type", "code"):
            if isinstance(found.get(key), str):
                error[key] = found[key]
    elif isinstance(found, str):
        error["message"] = found
    elif body.strip():
        error["message"] = body.strip()[:500]
    retry = exchange.response_headers.get("retry-after")
    try:
        retry_s = float(retry) if retry is not None else None
    except ValueError:
        retry_s = None
    if retry_s is not None and 0 <= retry_s <= 3600:
        error["retry_after_s"] = retry_s
    return error


def _reassemble(exchange: Exchange) -> _Answer:
    answer = _Answer()
    for event in exchange.events:
        if event.data.strip() == "[DONE]":
            answer.done = True
            continue
        try:
            chunk = json.loads(event.data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk or event.event == "error":
            answer.error = chunk.get("error") if isinstance(chunk.get("error"), dict) else {}
            break
        for choice in chunk.get("choices") or ():
            first = isinstance(choice, dict) and choice.get("index", 0) == 0
            if first and _take_choice(answer, choice, event.kind == "body"):
                answer.token_offsets.append(event.offset_ms)
    return answer


def _take_choice(answer: _Answer, choice: dict[str, Any], whole: bool) -> bool:
    """Add one choice's delta (or, for a whole body, its message); True if it said something."""
    delta = choice.get("message" if whole else "delta") or {}
    if choice.get("finish_reason"):
        answer.finish_reason = str(choice["finish_reason"])
    said = False
    content = delta.get("content")
    if isinstance(content, str) and content:
        answer.text.append(content)
        said = True
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        answer.reasoning.append(reasoning)
        said = True
    for index, call in enumerate(delta.get("tool_calls") or ()):
        if not isinstance(call, dict):
            continue
        slot = answer.calls.setdefault(int(call.get("index", index)), {"arguments": ""})
        function = call.get("function") or {}
        if call.get("id"):
            slot["id"] = str(call["id"])
        if function.get("name"):
            slot["name"] = str(function["name"])
        if isinstance(function.get("arguments"), str):
            slot["arguments"] += function["arguments"]
        said = True
    return said


def _call(recorded: dict[str, Any]) -> dict[str, Any]:
    text = recorded.get("arguments", "")
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = None
    # An object reads and edits best as YAML; anything else is sent as recorded.
    call: dict[str, Any] = {
        "name": recorded.get("name") or "unnamed",
        "arguments": parsed if isinstance(parsed, dict) else text,
    }
    if recorded.get("id"):
        call["id"] = recorded["id"]
    return call


def _fault(exchange: Exchange, answer: _Answer) -> str | None:
    """The recorded failure, after the words that arrived (``after`` counts tokens)."""
    said = _tokens(answer)
    if answer.error is not None:
        status = answer.error.get("status") if isinstance(answer.error, dict) else None
        extra = f",status={status}" if isinstance(status, int) and 400 <= status <= 599 else ""
        return f"mid_stream_error,after={said}{extra}"
    if exchange.end in ("dropped", "timeout"):
        return f"drop,after={said}"
    if exchange.end == "eof" and answer.finish_reason is None and not answer.done:
        # Cut short with neither a finish reason nor [DONE]: a broken stream.
        return f"drop,after={said}"
    streamed = any(e.kind == "event" for e in exchange.events)
    if exchange.end == "eof" and answer.finish_reason is not None and not answer.done and streamed:
        return "no_done"
    return None


def _timing(exchange: Exchange, answer: _Answer) -> dict[str, float]:
    """The recorded pace: the first token's offset, then the recorded span spread over the
    tokens the server will send (an upstream event may carry several), so the stream lasts
    as long as it did."""
    offsets = answer.token_offsets
    if not offsets or all(e.kind == "body" for e in exchange.events):
        return {}
    timing = {"ttft_ms": round(offsets[0], 1)}
    tokens = _tokens(answer)
    if len(offsets) > 1 and tokens > 1:
        timing["itl_ms"] = round((offsets[-1] - offsets[0]) / (tokens - 1), 1)
    return timing


def _tokens(answer: _Answer) -> int:
    """How many tokens the server will count for the answer's words and calls."""
    said = count_tokens("".join(answer.reasoning)) + count_tokens("".join(answer.text))
    return said + sum(1 + count_tokens(c.get("arguments", "")) for c in answer.calls.values())
