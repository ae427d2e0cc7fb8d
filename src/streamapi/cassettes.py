"""Cassettes: recorded upstream exchanges, their file format, redaction and matching.

A cassette is one JSON-lines file (docs/record-replay.md). Its first line is a
header with the format version; then each exchange is a run of lines sharing
one ``exchange`` number, in the order things happened:

- ``request``: the upstream's name, the endpoint, the model and the JSON body
  as sent upstream, and its headers, redacted;
- ``response``: the upstream's status and the headers that matter;
- ``event`` (one per SSE event, ``data`` and the ``event``/``error`` fields) or
  ``body`` (a non-streamed body, e.g. an error's), each with ``offset_ms`` from
  the request's start;
- ``end``: how the exchange ended (``eof``, ``dropped``, ``timeout``,
  ``unreachable``, ``cancelled``) and the error message, if any.

One event a line keeps a recording diff-friendly. This module is pure: the
standard library only, and of the server only the match keys (``replay_keys.py``,
standard library only too), so settings, engines and tools all read cassettes the
same way.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from streamapi.replay_keys import ANSWER_PARAMS, DEFAULT_MATCH

FORMAT: Final = "streamapi-cassette"
VERSION: Final = 1
REDACTED: Final = "[redacted]"

EndKind = Literal["eof", "dropped", "timeout", "unreachable", "cancelled"]
END_KINDS: Final[frozenset[str]] = frozenset(
    {"eof", "dropped", "timeout", "unreachable", "cancelled"}
)

# Headers never written, whatever the user adds (compared lower-case).
DEFAULT_REDACTED_HEADERS: Final = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "anthropic-api-key",
    "x-goog-api-key",
    "openai-organization",
    "openai-project",
    "cookie",
    "set-cookie",
)
# JSON paths in a request body: dots between keys, ``*`` any one key or index,
# ``**`` any depth (so ``**.api_key`` is an ``api_key`` anywhere).
DEFAULT_REDACTED_PATHS: Final = (
    "**.api_key",
    "**.apiKey",
    "**.access_token",
    "**.authorization",
)
# Request headers that say nothing about the exchange (transport details).
_NOISE_HEADERS: Final = frozenset(
    {"host", "content-length", "connection", "accept-encoding", "user-agent"}
)
# Response headers kept: what changes how a client reads the answer.
KEPT_RESPONSE_HEADERS: Final = frozenset(
    {"content-type", "retry-after", "retry-after-ms", "x-request-id"}
)

# --- matching ---------------------------------------------------------------

# Harness context wrapped in a tag (Claude Code's <system-reminder>, Codex's
# <environment_context>, <user_instructions>...): its opening and closing tags.
_TAG: Final = re.compile(r"<(/?)([A-Za-z][\w-]*)(?:\s[^<>]*)?>")


class CassetteError(ValueError):
    """A cassette cannot be read; the message names the file and the line."""


# --- the recorded exchange --------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One SSE event as received, or (``kind == "body"``) a non-streamed body."""

    offset_ms: float
    data: str
    kind: Literal["event", "body"] = "event"
    event: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Exchange:
    """One request sent upstream and everything that came back."""

    upstream: str
    endpoint: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_offset_ms: float = 0.0
    events: list[RecordedEvent] = field(default_factory=list)
    end: EndKind = "eof"
    end_offset_ms: float = 0.0
    message: str | None = None
    started_at: float | None = None
    """Unix time the request started (absent in cassettes recorded before it was kept):
    ``streamapi bench --replay`` spaces the requests as they arrived."""
    source: str = ""
    """Where it was read from, ``file:line`` (empty for one being recorded)."""

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    def lines(self, number: int) -> list[dict[str, Any]]:
        """The exchange as cassette lines, numbered ``number``."""
        out: list[dict[str, Any]] = [
            {
                "kind": "request",
                "exchange": number,
                "upstream": self.upstream,
                "endpoint": self.endpoint,
                "model": self.model,
                **({} if self.started_at is None else {"started_at": self.started_at}),
                "headers": self.headers,
                "body": self.body,
            }
        ]
        if self.status is not None:
            out.append(
                {
                    "kind": "response",
                    "exchange": number,
                    "offset_ms": self.response_offset_ms,
                    "status": self.status,
                    "headers": self.response_headers,
                }
            )
        for event in self.events:
            line: dict[str, Any] = {
                "kind": event.kind,
                "exchange": number,
                "offset_ms": event.offset_ms,
                "data": event.data,
            }
            if event.event is not None:
                line["event"] = event.event
            if event.error is not None:
                line["error"] = event.error
            out.append(line)
        end: dict[str, Any] = {
            "kind": "end",
            "exchange": number,
            "offset_ms": self.end_offset_ms,
            "how": self.end,
        }
        if self.message is not None:
            end["message"] = self.message
        out.append(end)
        return out


# --- redaction --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redactor:
    """What a cassette must never hold: header values, body paths, and known secrets."""

    headers: frozenset[str] = frozenset(DEFAULT_REDACTED_HEADERS)
    paths: tuple[tuple[str, ...], ...] = tuple(tuple(p.split(".")) for p in DEFAULT_REDACTED_PATHS)
    secrets: tuple[str, ...] = ()

    @classmethod
    def with_extra(
        cls, headers: Iterable[str] = (), paths: Iterable[str] = (), secrets: Iterable[str] = ()
    ) -> Redactor:
        """The defaults plus the user's header names and JSON paths, and the secrets to scrub."""
        return cls(
            headers=frozenset(DEFAULT_REDACTED_HEADERS) | {h.lower() for h in headers},
            paths=tuple(tuple(p.split(".")) for p in (*DEFAULT_REDACTED_PATHS, *paths)),
            # Longest first, so that a key containing another is scrubbed whole.
            secrets=tuple(sorted({s for s in secrets if s}, key=len, reverse=True)),
        )

    def request_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {
            name.lower(): REDACTED if name.lower() in self.headers else value
            for name, value in headers.items()
            if name.lower() not in _NOISE_HEADERS
        }

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {
            name.lower(): value
            for name, value in headers.items()
            if name.lower() in KEPT_RESPONSE_HEADERS and name.lower() not in self.headers
        }

    def body(self, body: Any) -> Any:
        """A copy of ``body`` with every redacted path's value replaced."""
        copy = json.loads(json.dumps(body))
        for path in self.paths:
            _redact_path(copy, path)
        return copy

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced (a key pasted into a message too)."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def _redact_path(node: Any, path: Sequence[str]) -> None:
    if not path:
        return
    head, rest = path[0], path[1:]
    if head == "**":
        _redact_path(node, rest)
        for child in _children(node):
            _redact_path(child, path)
        return
    if isinstance(node, dict):
        for key in list(node):
            if head in ("*", key):
                if rest:
                    _redact_path(node[key], rest)
                else:
                    node[key] = REDACTED
    elif isinstance(node, list) and (head == "*" or head.isdigit()):
        for index, child in enumerate(node):
            if head in ("*", str(index)):
                if rest:
                    _redact_path(child, rest)
                else:
                    node[index] = REDACTED


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return list(node)
    return []


# --- reading and writing ----------------------------------------------------


def header_line() -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION}


def dumps_exchanges(exchanges: Sequence[Exchange], redactor: Redactor | None = None) -> str:
    """The cassette's text: the header line, then each exchange's lines."""
    lines = [json.dumps(header_line())]
    for number, exchange in enumerate(exchanges, start=1):
        lines += [json.dumps(line, ensure_ascii=False) for line in exchange.lines(number)]
    text = "\n".join(lines) + "\n"
    return redactor.scrub(text) if redactor is not None else text


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_cassette(path: Path) -> list[Exchange]:
    """Every exchange of one cassette file; ``CassetteError`` names the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CassetteError(f"cannot read cassette {path}: {exc}") from None
    exchanges: dict[int, Exchange] = {}
    ended: set[int] = set()
    first_line: dict[int, int] = {}
    seen_header = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"cassette {path}, line {number}"
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CassetteError(f"{where}: not JSON ({exc.msg}); is the file truncated?") from None
        if not isinstance(line, dict):
            raise CassetteError(f"{where}: expected a JSON object")
        if not seen_header:
            if line.get("format") != FORMAT:
                raise CassetteError(f"{where}: not a streamapi cassette (no format header)")
            if line.get("version") != VERSION:
                raise CassetteError(
                    f"{where}: format version {line.get('version')!r}, this streamapi reads "
                    f"version {VERSION}"
                )
            seen_header = True
            continue
        try:
            _read_line(line, exchanges, ended, first_line, number, f"{path}:{number}")
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CassetteError(f"{where}: {problem}") from None
    if not seen_header:
        raise CassetteError(f"cassette {path}, line 1: empty file, no format header")
    for key, line_number in first_line.items():
        if key not in ended:
            raise CassetteError(
                f"cassette {path}, line {line_number}: exchange {key} has no 'end' line; "
                "is the file truncated?"
            )
    return list(exchanges.values())


def _read_line(
    line: dict[str, Any],
    exchanges: dict[int, Exchange],
    ended: set[int],
    first_line: dict[int, int],
    number: int,
    source: str,
) -> None:
    kind = line["kind"]
    key = line["exchange"]
    if not isinstance(key, int):
        raise ValueError("'exchange' must be an integer")
    if kind == "request":
        if key in exchanges:
            raise ValueError(f"exchange {key} starts twice")
        body = line["body"]
        if not isinstance(body, dict):
            raise ValueError("'body' must be an object")
        started_at = line.get("started_at")
        if started_at is not None and (
            isinstance(started_at, bool) or not isinstance(started_at, int | float)
        ):
            raise ValueError("'started_at' must be a number (Unix time)")
        exchanges[key] = Exchange(
            upstream=str(line.get("upstream", "")),
            endpoint=str(line["endpoint"]),
            body=body,
            headers=dict(line.get("headers") or {}),
            started_at=None if started_at is None else float(started_at),
            source=source,
        )
        first_line[key] = number
        return
    exchange = exchanges.get(key)
    if exchange is None:
        raise ValueError(f"exchange {key} has no 'request' line before this one")
    if key in ended:
        raise ValueError(f"exchange {key} continues after its 'end' line")
    offset = float(line["offset_ms"])
    if kind == "response":
        exchange.status = int(line["status"])
        exchange.response_headers = dict(line.get("headers") or {})
        exchange.response_offset_ms = offset
    elif kind in ("event", "body"):
        data = line["data"]
        if not isinstance(data, str):
            raise ValueError("'data' must be a string")
        exchange.events.append(
            RecordedEvent(offset, data, kind, line.get("event"), line.get("error"))
        )
    elif kind == "end":
        how = line["how"]
        if how not in END_KINDS:
            raise ValueError(f"'how' must be one of {', '.join(sorted(END_KINDS))}, not {how!r}")
        exchange.end = how
        exchange.end_offset_ms = offset
        message = line.get("message")
        exchange.message = message if isinstance(message, str) else None
        ended.add(key)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def cassette_files(path: Path) -> list[Path]:
    """A ``.jsonl`` file itself, or a directory's ``*.jsonl`` files by name."""
    if path.suffix == ".jsonl" or path.is_file():
        return [path]
    return sorted(path.glob("*.jsonl"))


def load_exchanges(path: Path) -> list[Exchange]:
    """Every exchange under ``path`` (a cassette file or a directory of them)."""
    if not path.exists():
        raise CassetteError(f"no cassette at {path}")
    return [exchange for file in cassette_files(path) for exchange in read_cassette(file)]


# --- recording --------------------------------------------------------------


class Tape:
    """One exchange being recorded; ``Recorder.save`` writes it when it ends."""

    def __init__(
        self,
        recorder: Recorder,
        exchange: Exchange,
        clock: Callable[[], float],
    ) -> None:
        self._recorder = recorder
        self._clock = clock
        self._start = clock()
        self.exchange = exchange
        self._ended = False

    def _offset(self) -> float:
        return round((self._clock() - self._start) * 1000, 3)

    def response(self, status: int, headers: Mapping[str, str]) -> None:
        self.exchange.status = status
        self.exchange.response_headers = self._recorder.redactor.response_headers(headers)
        self.exchange.response_offset_ms = self._offset()

    def event(self, data: str, event: str | None = None, error: str | None = None) -> None:
        self.exchange.events.append(RecordedEvent(self._offset(), data, "event", event, error))

    def body(self, data: str) -> None:
        self.exchange.events.append(RecordedEvent(self._offset(), data, "body"))

    def end(self, how: EndKind, message: str | None = None) -> None:
        """How the exchange ended; the first call wins (a later close changes nothing)."""
        if self._ended:
            return
        self._ended = True
        self.exchange.end = how
        self.exchange.message = message
        self.exchange.end_offset_ms = self._offset()

    def save(self) -> None:
        """Write the exchange (an exchange never ended is one the client cancelled)."""
        self.end("cancelled")
        self._recorder.save(self.exchange)


class Recorder:
    """Keeps recorded exchanges and rewrites their cassette atomically after each one.

    ``path`` is a ``.jsonl`` file (every upstream in it) or a directory (one
    ``<upstream>.jsonl`` each). Exchanges already in the file are kept: new
    ones are appended, which is how a replayed cassette records new episodes.
    """

    def __init__(self, path: Path, redactor: Redactor) -> None:
        self.path = path
        self.redactor = redactor
        self._lock = threading.Lock()
        self._files: dict[Path, list[Exchange]] = {}
        for file in cassette_files(path) if path.exists() else []:
            self._files[file] = read_cassette(file)

    def file_of(self, upstream: str) -> Path:
        if self.path.suffix == ".jsonl":
            return self.path
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in upstream)
        return self.path / f"{safe or 'upstream'}.jsonl"

    def tape(
        self,
        upstream: str,
        endpoint: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        clock: Callable[[], float],
    ) -> Tape:
        exchange = Exchange(
            upstream=upstream,
            endpoint=endpoint,
            body=self.redactor.body(dict(body)),
            headers=self.redactor.request_headers(headers),
            # Wall-clock, to the millisecond: when it arrived, for a load replay.
            started_at=round(time.time(), 3),
        )
        return Tape(self, exchange, clock)

    def save(self, exchange: Exchange) -> None:
        file = self.file_of(exchange.upstream)
        with self._lock:
            exchanges = self._files.setdefault(file, [])
            exchanges.append(exchange)
            write_atomic(file, dumps_exchanges(exchanges, self.redactor))


# --- matching ---------------------------------------------------------------


def match_view(endpoint: str, body: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """What ``keys`` compare of a request: equal views match."""
    messages = body.get("messages") or []
    view: dict[str, Any] = {}
    for key in keys:
        if key == "endpoint":
            view[key] = endpoint
        elif key == "model":
            view[key] = body.get("model")
        elif key == "messages":
            view[key] = messages
        elif key == "system":
            view[key] = [
                m.get("content")
                for m in messages
                if isinstance(m, dict) and m.get("role") in ("system", "developer")
            ]
        elif key == "last_user_message":
            users = [m.get("content") for m in messages if isinstance(m, dict)
                     and m.get("role") == "user"]  # fmt: skip
            view[key] = users[-1] if users else None
        elif key == "tools":
            view[key] = body.get("tools")
        elif key == "tool_names":
            view[key] = sorted(
                str((tool.get("function") or {}).get("name"))
                for tool in body.get("tools") or ()
                if isinstance(tool, dict)
            )
        elif key == "params":
            view[key] = {name: body[name] for name in ANSWER_PARAMS if name in body}
        elif key == "user_text":
            view[key] = _user_text(messages)
        elif key == "assistant_turns":
            view[key] = _assistant_turns(messages)
        else:
            view[key] = body.get(key)
    return view


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _plain(text: str) -> str:
    """``text`` without tagged harness context, its whitespace collapsed."""
    return " ".join(_untagged(text).split())


def _untagged(text: str) -> str:
    """``text`` without its tag-wrapped elements (a tag never closed stays as text).

    One pass pairs the tags with a stack of open ones, a second drops the outermost
    pairs: linear in the text whatever it holds (a request's text is the client's).
    """
    pairs: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []  # open tags: name, where the tag began
    open_names: dict[str, int] = {}
    for tag in _TAG.finditer(text):
        closing, name = tag.group(1), tag.group(2)
        if not closing:
            stack.append((name, tag.start()))
            open_names[name] = open_names.get(name, 0) + 1
        elif open_names.get(name):
            while True:  # close it, and every tag opened inside it and never closed
                opened, begin = stack.pop()
                open_names[opened] -= 1
                if opened == name:
                    break
            pairs.append((begin, tag.end()))
    kept: list[str] = []
    resume = 0
    for begin, end in sorted(pairs):
        if begin >= resume:  # not inside an element already dropped
            kept += [text[resume:begin], " "]
            resume = end
    kept.append(text[resume:])
    return "".join(kept)


def _user_text(messages: Sequence[Any]) -> list[str]:
    """What the user typed: each user message's text without tagged context (no tool
    results, no reminders, no environment blocks), empty ones left out."""
    texts = (
        _plain(_text_of(m.get("content")))
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user"
    )
    return [text for text in texts if text]


def _assistant_turns(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Each assistant message's text and tool calls (name, arguments parsed), ids left
    out: in a replay they are what the recording answered, whoever echoes them back."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = []
        for call in message.get("tool_calls") or ():
            function = (call.get("function") if isinstance(call, dict) else None) or {}
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    arguments = " ".join(arguments.split())
            calls.append([function.get("name"), arguments])
        turns.append({"text": _plain(_text_of(message.get("content"))), "tool_calls": calls})
    return turns


@dataclass(frozen=True, slots=True)
class Miss:
    """No recording matched: the nearest one and what differed, for the error message."""

    nearest: Exchange | None
    differences: tuple[str, ...]
    exhausted: int = 0

    def describe(self, sent_model: str) -> str:
        if self.exhausted:
            return (
                f"All {self.exhausted} recordings matching this request for model "
                f"'{sent_model}' were already replayed (ordered replay)."
            )
        if self.nearest is None:
            return f"No recording for model '{sent_model}': the cassettes hold no exchange."
        return (
            f"No recording matches this request for model '{sent_model}'. Nearest: "
            f"{self.nearest.source}, which differs in {'; '.join(self.differences)}."
        )


class Matcher:
    """Finds the recording for a request; in ordered mode the N-th match gets the N-th."""

    def __init__(
        self,
        exchanges: Sequence[Exchange],
        keys: Sequence[str] = DEFAULT_MATCH,
        *,
        ordered: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        self.keys = tuple(keys)
        self.ordered = ordered
        self._redactor = redactor or Redactor()
        self._exchanges = list(exchanges)
        self._views = [_canonical(match_view(e.endpoint, e.body, self.keys)) for e in exchanges]
        self._played: dict[str, int] = {}
        self._lock = threading.Lock()

    def find(self, endpoint: str, body: Mapping[str, Any]) -> Exchange | Miss:
        # The request is compared as it would be recorded: redacted the same way.
        view = match_view(endpoint, self._redactor.body(dict(body)), self.keys)
        wanted = _canonical(view)
        found = [e for e, v in zip(self._exchanges, self._views, strict=True) if v == wanted]
        if found and not self.ordered:
            return found[0]
        if found:
            with self._lock:
                turn = self._played.get(wanted, 0)
                self._played[wanted] = turn + 1
            if turn < len(found):
                return found[turn]
            return Miss(found[-1], (), exhausted=len(found))
        return self._nearest(view)

    def _nearest(self, view: Mapping[str, Any]) -> Miss:
        best: tuple[int, Exchange, list[str]] | None = None
        for exchange in self._exchanges:
            recorded = match_view(exchange.endpoint, exchange.body, self.keys)
            differences = [
                _difference(key, recorded[key], view[key])
                for key in self.keys
                if _canonical(recorded[key]) != _canonical(view[key])
            ]
            if best is None or len(differences) <= best[0]:
                best = (len(differences), exchange, differences)
        if best is None:
            return Miss(None, ())
        return Miss(best[1], tuple(best[2]))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _difference(key: str, recorded: Any, sent: Any) -> str:
    if key == "messages" and isinstance(recorded, list) and isinstance(sent, list):
        if len(recorded) != len(sent):
            return f"messages ({len(recorded)} recorded, {len(sent)} sent)"
        for index, (a, b) in enumerate(zip(recorded, sent, strict=True)):
            if _canonical(a) != _canonical(b):
                return f"messages[{index}] (recorded {_short(a)}, sent {_short(b)})"
    if key == "params" and isinstance(recorded, dict) and isinstance(sent, dict):
        names = sorted(n for n in {*recorded, *sent} if recorded.get(n) != sent.get(n))
        return "params (" + ", ".join(
            f"{n}: recorded {_short(recorded.get(n))}, sent {_short(sent.get(n))}" for n in names
        ) + ")"  # fmt: skip
    return f"{key} (recorded {_short(recorded)}, sent {_short(sent)})"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
