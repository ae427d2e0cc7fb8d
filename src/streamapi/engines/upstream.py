"""An engine that streams from an OpenAI-compatible server (vLLM, Ollama, llama.cpp, ...).

Each ``GenerationRequest`` becomes one streamed ``POST /chat/completions`` on
the upstream, sent through the engine's one pooled ``httpx.AsyncClient``; the
upstream's chunks become ``TokenDelta``s, so every route (chat, completions,
Responses, Messages) serves an upstream model exactly as it serves the
simulator's.

Before the first byte of the client's response (``UpstreamStream.open``): the
request is sent, retried with backoff on connection errors and on 429/503
(honouring ``Retry-After``), and its status and first event are awaited, so
that a refusal is an HTTP status: unreachable 502, timeout 504, an upstream
4xx its own status and message, a 5xx 502. After that every failure is an
in-stream error. Closing the stream closes the upstream connection at once,
which is how a client's disconnect reaches the upstream.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from streamapi.cassettes import EndKind, Recorder, Tape
from streamapi.engines.protocol import (
    FinishReason,
    GenerationRequest,
    PromptMessage,
    TokenDelta,
    ToolCallStart,
    ToolSpec,
    UsageReport,
)
from streamapi.engines.sse_decoder import SSEDecoder, SSEEvent
from streamapi.errors import APIError, UpstreamError, UpstreamTimeoutError, retry_after_headers
from streamapi.metrics import Metrics
from streamapi.routes_file import UpstreamConfig
from streamapi.text.tokenizer import count_tokens

logger = logging.getLogger(__name__)

_MAX_ERROR_BODY_BYTES = 64 * 1024
_MAX_BACKOFF_S = 8.0
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "eos": "stop",
}
# Roles every OpenAI-compatible server knows; "developer" is OpenAI's newer name
# for "system", which llama.cpp's and older vLLM's chat templates reject.
_ROLES = {"developer": "system"}


class UpstreamEngine:
    """Proxies one OpenAI-compatible server; ``stream`` sends ``request.model`` as is."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._metrics = metrics
        self.recorder = recorder
        """Records every exchange to a cassette when set (``--record``)."""
        # What the OpenAI SDK sends, streams included: servers written for it
        # (streamapi among them) then answer errors as JSON rather than SSE.
        headers = {"Accept": "application/json"}
        key = config.key(os.environ if environ is None else environ)
        if key is not None:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(
                connect=config.connect_timeout_s,
                read=config.read_timeout_s,
                write=config.read_timeout_s,
                pool=config.connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
        )

    @property
    def latency_control(self) -> None:
        """None: an upstream's latency is its own."""
        return None

    def stream(self, request: GenerationRequest) -> UpstreamStream:
        """The choice's stream; nothing is sent until ``open`` (or the first ``anext``)."""
        return UpstreamStream(self, request)

    async def aclose(self) -> None:
        """Close the pooled client and its connections."""
        await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    def count(self, *, status: int | None = None, error: str | None = None) -> None:
        if self._metrics is None:
            return
        if status is not None:
            self._metrics.upstream_request(self.name, status)
        if error is not None:
            self._metrics.upstream_error(self.name, error)

    def count_retry(self) -> None:
        if self._metrics is not None:
            self._metrics.upstream_retry(self.name)

    def count_finished(self, finish_reason: str, usage: UsageReport) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        # The same engine metrics the simulator records, from the upstream's usage.
        metrics.request_success(finish_reason)
        metrics.generation_tokens.inc(usage.completion_tokens)
        metrics.request_generation_tokens.observe(usage.completion_tokens)
        if usage.prompt_tokens is not None:
            metrics.prompt_tokens.inc(usage.prompt_tokens)
            metrics.request_prompt_tokens.observe(usage.prompt_tokens)


class UpstreamStream:
    """One choice streamed from the upstream; an async iterator of ``TokenDelta``s."""

    def __init__(self, engine: UpstreamEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self._response: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._decoder = SSEDecoder()
        self._events: deque[SSEEvent] = deque()
        self._pending: deque[TokenDelta] = deque()
        self._opened = False
        self._closed = False
        self._ended = False
        self._translator = _Translator(request)
        self._tape: Tape | None = None

    # --- before the first byte ---------------------------------------------

    async def open(self) -> None:
        """Send the request and wait for the upstream's status and first event.

        Raises the ``APIError`` the client should get as an HTTP status.
        Idempotent: later calls do nothing.
        """
        if self._opened:
            return
        self._opened = True
        await self._connect()
        # Wait for the first event too: an upstream that accepts the request and
        # then fails at once (llama.cpp answers an oversized prompt with 200 and
        # an error event) still gets the client a status, not a broken stream.
        event = await self._next_event(first=True)
        if event is None:
            raise UpstreamError(
                f"The upstream '{self._engine.name}' closed the stream before any event."
            )
        error = _event_error(event)
        if error is not None:
            self._engine.count(error="error_event")
            raise _error_from_body(error, status=None, upstream=self._engine.name)
        self._events.appendleft(event)

    async def _connect(self) -> None:
        """Send the request (retrying) until a 200 sets ``_chunks``; else raise its error."""
        engine, config = self._engine, self._engine.config
        payload = chat_payload(self._request)
        headers = {}
        if self._request.request_id:
            headers["X-Request-Id"] = self._request.request_id
        if engine.recorder is not None:
            self._tape = engine.recorder.tape(
                engine.name,
                "/chat/completions",
                {**engine.client.headers, **headers},
                payload,
                asyncio.get_running_loop().time,
            )
        attempt = 0
        while True:
            retry_in: float | None = None
            try:
                request = engine.client.build_request(
                    "POST", config.chat_url, json=payload, headers=headers
                )
                response = await engine.client.send(request, stream=True)
            except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout) as exc:
                # Nothing reached the upstream whole: safe to retry.
                kind, doing = _UNSENT_TIMEOUTS[type(exc)]
                engine.count(error=kind)
                if attempt >= config.max_retries:
                    raise self._record_end("timeout", self._timeout(doing)) from None
            except httpx.TimeoutException:
                # The request was sent and nothing came back in time: no retry,
                # it may be running upstream.
                engine.count(error="timeout")
                raise self._record_end("timeout", self._timeout("waiting for its answer")) from None
            except httpx.TransportError as exc:
                engine.count(error="connect")
                if attempt >= config.max_retries:
                    unreachable = UpstreamError(
                        f"The upstream '{engine.name}' is unreachable ({_reason(exc)})."
                    )
                    raise self._record_end("unreachable", unreachable) from None
            else:
                engine.count(status=response.status_code)
                if response.status_code == 200:
                    self._response = response
                    break
                retry_in = _retry_after_s(response.headers)
                if (
                    response.status_code in (429, 503)
                    and attempt < config.max_retries
                    and (retry_in is None or retry_in <= config.max_retry_after_s)
                ):
                    await response.aclose()
                else:
                    raise await self._status_error(response)
            attempt += 1
            engine.count_retry()
            delay = retry_in if retry_in is not None else _backoff_s(config, attempt)
            logger.info(
                "Retrying upstream '%s' in %.2f s (attempt %d of %d)",
                engine.name,
                delay,
                attempt + 1,
                config.max_retries + 1,
            )
            await asyncio.sleep(delay)
        if self._tape is not None:
            self._tape.response(self._response.status_code, self._response.headers)
        self._chunks = self._response.aiter_bytes()

    def _record_end(self, how: EndKind, error: APIError) -> APIError:
        if self._tape is not None:
            self._tape.end(how, error.message)
        return error

    async def _status_error(self, response: httpx.Response) -> APIError:
        try:
            body = await _read_bounded(response)
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
        if self._tape is not None:
            self._tape.response(response.status_code, response.headers)
            self._tape.body(body.decode("utf-8", errors="replace"))
            self._tape.end("eof")
        return self._error_of_status(response.status_code, response.headers, body)

    def _error_of_status(self, status: int, headers: Mapping[str, str], body: bytes) -> APIError:
        engine = self._engine
        engine.count(error=f"status_{status // 100}xx")
        parsed = _parse_error_body(body)
        error = _error_from_body(parsed, status=status, upstream=engine.name)
        if status == 429:
            retry = _retry_after_s(headers)
            if retry is not None:
                error.headers.update(retry_after_headers(retry))
        logger.info("Upstream '%s' answered %d: %s", engine.name, status, error.message)
        return error

    def _timeout(self, doing: str) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(f"The upstream '{self._engine.name}' timed out {doing}.")

    # --- after it -------------------------------------------------------------

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> TokenDelta:
        if not self._opened:
            await self.open()
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            event = await self._next_event(first=False)
            if event is None:
                self._end(done=False)
                continue
            error = _event_error(event)
            if error is not None:
                self._engine.count(error="error_event")
                upstream_error = _error_from_body(error, status=None, upstream=self._engine.name)
                raise UpstreamError(upstream_error.message)
            if event.data.strip() == "[DONE]":
                self._end(done=True)
                continue
            try:
                chunk = json.loads(event.data)
            except ValueError:
                logger.warning("Upstream '%s' sent an event that is not JSON", self._engine.name)
                continue
            if isinstance(chunk, dict):
                self._pending.extend(self._translator.chunk(chunk))
        return self._pending.popleft()

    def _end(self, *, done: bool) -> None:
        translator = self._translator
        self._ended = True
        if self._tape is not None:
            self._tape.end("eof")  # at [DONE] the rest is not read: it ended there
        if translator.finish_reason is None and not done:
            # Neither a finish_reason nor [DONE]: the answer was cut short.
            self._engine.count(error="truncated")
            raise UpstreamError(
                f"The upstream '{self._engine.name}' ended the stream before the answer ended."
            )
        final = translator.final()
        self._engine.count_finished(final.finish_reason or "stop", translator.usage())
        self._pending.append(final)

    async def _next_event(self, *, first: bool) -> SSEEvent | None:
        """The next event, or None at the end of the stream."""
        assert self._chunks is not None
        while not self._events:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._recorded(self._decoder.close())
                if self._tape is not None:
                    self._tape.end("eof")
                if not self._events:
                    return None
                break
            except httpx.TimeoutException:
                self._engine.count(error="timeout")
                doing = "before its first event" if first else "mid-stream"
                raise self._record_end("timeout", self._timeout(doing)) from None
            except httpx.TransportError as exc:
                self._engine.count(error="dropped")
                lost = UpstreamError(
                    f"The connection to the upstream '{self._engine.name}' was lost "
                    f"({_reason(exc)})."
                )
                raise self._record_end("dropped", lost) from None
            self._recorded(self._decoder.feed(chunk))
        return self._events.popleft()

    def _recorded(self, events: list[SSEEvent]) -> None:
        """Queue decoded events, taping each as received when recording."""
        if self._tape is not None:
            for event in events:
                self._tape.event(event.data, event.event, event.error)
        self._events.extend(events)

    async def aclose(self) -> None:
        """Close the upstream response now: its connection is dropped, not drained."""
        if self._closed:
            return
        self._closed = True
        self._opened = True
        self._ended = True
        response = self._response
        if response is not None:
            if self._translator.finish_reason is None and not response.is_closed:
                logger.info("Cancelling the upstream '%s' request", self._engine.name)
            await response.aclose()
        if self._tape is not None:
            # Off the event loop: the whole cassette is rewritten atomically.
            await asyncio.to_thread(self._tape.save)


class _Translator:
    """Upstream chat chunks to ``TokenDelta``s, and the choice's usage."""

    def __init__(self, request: GenerationRequest) -> None:
        self._request = request
        self._tool_indexes: dict[int, int] = {}
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._arguments: dict[int, list[str]] = {}
        self._reported: dict[str, Any] | None = None
        self._matched_stop: str | None = None
        self.finish_reason: FinishReason | None = None

    def chunk(self, chunk: Mapping[str, Any]) -> list[TokenDelta]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            # Some servers (vLLM's continuous usage) send it on every chunk: the last wins.
            self._reported = usage
        deltas: list[TokenDelta] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            deltas += self._choice(choice)
        return deltas

    def _choice(self, choice: Mapping[str, Any]) -> list[TokenDelta]:
        deltas: list[TokenDelta] = []
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._reasoning.append(reasoning)
            deltas.append(TokenDelta(reasoning, channel="reasoning"))
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._content.append(content)
            deltas += self._scored(content, choice.get("logprobs"))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                deltas += self._tool_call(call)
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish_reason = _FINISH_REASONS.get(reason, "stop")
            stop = choice.get("stop_reason")
            if isinstance(stop, str) and stop in self._request.stop:
                self._matched_stop = stop
        return deltas

    def _scored(self, text: str, logprobs: Any) -> list[TokenDelta]:
        entries = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not entries or self._request.logprobs is None:
            return [TokenDelta(text)]
        # One delta per scored token keeps logprobs aligned with what is streamed.
        deltas = []
        for entry in entries:
            top = tuple(
                (str(alt.get("token", "")), float(alt.get("logprob", 0.0)))
                for alt in entry.get("top_logprobs") or ()
                if isinstance(alt, dict)
            )
            deltas.append(
                TokenDelta(
                    str(entry.get("token", "")),
                    logprob=float(entry.get("logprob", 0.0)),
                    top_logprobs=top,
                )
            )
        if "".join(d.text for d in deltas) != text:
            return [TokenDelta(text)]  # tokens that do not spell the text: keep the text
        return deltas

    def _tool_call(self, call: Mapping[str, Any]) -> list[TokenDelta]:
        # A custom tool's call carries "custom" with raw "input" instead of "arguments".
        custom = call.get("custom")
        function = (
            {"name": custom.get("name"), "arguments": custom.get("input")}
            if isinstance(custom, dict)
            else call.get("function") or {}
        )
        upstream_index = call.get("index")
        if not isinstance(upstream_index, int):
            upstream_index = len(self._tool_indexes)
        deltas: list[TokenDelta] = []
        index = self._tool_indexes.get(upstream_index)
        if index is None:
            index = self._tool_indexes[upstream_index] = len(self._tool_indexes)
            call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
            start = ToolCallStart(index, str(call_id), str(function.get("name") or ""))
            deltas.append(TokenDelta("", channel="tool_call", tool_call=start, tool_index=index))
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments)  # Ollama has sent objects, not strings
        if isinstance(arguments, str) and arguments:
            self._arguments.setdefault(index, []).append(arguments)
            deltas.append(TokenDelta(arguments, channel="tool_call", tool_index=index))
        return deltas

    def usage(self) -> UsageReport:
        """The upstream's usage if it sent one, else ours, counted on what it streamed."""
        reported = self._reported
        if reported is not None and isinstance(reported.get("completion_tokens"), int):
            details = reported.get("completion_tokens_details") or {}
            prompt_details = reported.get("prompt_tokens_details") or {}
            prompt = reported.get("prompt_tokens")
            reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
            cached = (
                prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
            )
            return UsageReport(
                completion_tokens=reported["completion_tokens"],
                prompt_tokens=prompt if isinstance(prompt, int) else None,
                reasoning_tokens=reasoning if isinstance(reasoning, int) else None,
                cached_tokens=cached if isinstance(cached, int) else None,
            )
        # Counted on the whole texts: a chunk may hold a token, several, or a
        # part of one (mockllm streams characters).
        reasoning_tokens = count_tokens("".join(self._reasoning))
        tokens = count_tokens("".join(self._content)) + reasoning_tokens
        tokens += sum(count_tokens("".join(parts)) for parts in self._arguments.values())
        return UsageReport(completion_tokens=tokens, reasoning_tokens=reasoning_tokens)

    def final(self) -> TokenDelta:
        reason = self.finish_reason
        if reason is None:
            reason = "tool_calls" if self._tool_indexes else "stop"
            self.finish_reason = reason
        return TokenDelta(
            "", finish_reason=reason, matched_stop=self._matched_stop, usage=self.usage()
        )


def chat_payload(request: GenerationRequest) -> dict[str, Any]:
    """The upstream's streamed chat request for one choice.

    Only what the client set is sent (``temperature`` and ``top_p`` when not
    the default 1, ``top_k`` when set), so the upstream's own defaults (a model's generation
    config in vLLM) still apply to the rest.
    """
    payload: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
        # Chunks may carry several tokens: only the upstream's count is exact.
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.stop:
        payload["stop"] = list(request.stop)
    if request.seed is not None:
        # Each choice is its own upstream request: distinct seeds keep n choices distinct.
        payload["seed"] = request.seed + request.choice_index
    if request.temperature != 1.0:
        payload["temperature"] = request.temperature
    if request.top_p != 1.0:
        payload["top_p"] = request.top_p
    if request.top_k > 0:
        payload["top_k"] = request.top_k  # vLLM's extra parameter
    if request.ignore_eos:
        payload["ignore_eos"] = True
    if request.tools:
        payload["tools"] = [_tool(tool) for tool in request.tools]
        choice = request.tool_choice
        payload["tool_choice"] = (
            choice
            if choice in ("none", "auto", "required")
            else {"type": "function", "function": {"name": choice}}
        )
        if not request.parallel_tool_calls:
            payload["parallel_tool_calls"] = False
    fmt = request.output_format
    if fmt.type == "json_object":
        payload["response_format"] = {"type": "json_object"}
    elif fmt.type == "json_schema":
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": dict(fmt.schema or {})},
        }
    if request.logprobs is not None:
        payload["logprobs"] = True
        if request.logprobs:
            payload["top_logprobs"] = request.logprobs
    if request.reasoning:
        payload["reasoning_effort"] = "medium"
    return payload


def _tool(tool: ToolSpec) -> dict[str, Any]:
    """A tool in chat's terms: a function, or a custom tool with its format."""
    if tool.format is None:
        function = {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        }
        return {"type": "function", "function": function}
    fmt: dict[str, Any] = {"type": "text"}
    if tool.format.get("type") == "grammar":
        grammar = {"syntax": tool.format.get("syntax"), "definition": tool.format.get("definition")}
        fmt = {"type": "grammar", "grammar": grammar}
    custom = {"name": tool.name, "description": tool.description, "format": fmt}
    return {"type": "custom", "custom": custom}


def _message(message: PromptMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _ROLES.get(message.role, message.role)}
    if message.tool_calls:
        # The simulator reads past calls as text ("name(arguments)" lines, which
        # every protocol's converter appends); an upstream gets them structured.
        text = message.content
        for call in message.tool_calls:
            text = text.replace(f"{call.name}({call.arguments})", "", 1)
        out["content"] = text.strip("\n") or None
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    else:
        out["content"] = message.content
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
    elif message.name:
        out["name"] = message.name
    return out


def _parse_error_body(body: bytes) -> Any:
    """JSON, or the first event of an SSE error body, or the text itself."""
    try:
        return json.loads(body)
    except ValueError:
        pass
    decoder = SSEDecoder()
    for event in [*decoder.feed(body), *decoder.close()]:
        error = _event_error(event)
        if error is not None:
            return error
    return body.decode("utf-8", errors="replace").strip()


def _event_error(event: SSEEvent) -> Any:
    """The error an event carries: llama.cpp's ``error:`` field or ``data: {"error": ...}``."""
    if event.error is not None:
        try:
            return json.loads(event.error)
        except ValueError:
            return event.error
    if '"error"' not in event.data:
        return None
    try:
        body = json.loads(event.data)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("error"):
        return body
    return None


def _error_from_body(body: Any, *, status: int | None, upstream: str) -> APIError:
    """An upstream's error body as ours: OpenAI's, vLLM's, llama.cpp's or plain text."""
    error = body.get("error", body) if isinstance(body, dict) else body
    message, type_, code, param = None, None, None, None
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        type_ = error.get("type") if isinstance(error.get("type"), str) else None
        raw_code = error.get("code")
        if isinstance(raw_code, str):
            code = raw_code
        elif status is None and isinstance(raw_code, int):
            status = raw_code  # llama.cpp and vLLM put the HTTP status in code
        param = error.get("param") if isinstance(error.get("param"), str) else None
    elif isinstance(error, str) and error:
        message = error
    if not isinstance(message, str) or not message:
        message = f"The upstream '{upstream}' answered {status or 'with an error'}."
    if status is None or not 400 <= status < 500:
        return UpstreamError(f"The upstream '{upstream}' failed: {message}")
    return UpstreamError.from_status(status, message, type_=type_, code=code, param=param)


async def _read_bounded(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= _MAX_ERROR_BODY_BYTES:
            break
    return bytes(body[:_MAX_ERROR_BODY_BYTES])


# Timeouts before the request reached the upstream whole: (metric label, what timed out).
_UNSENT_TIMEOUTS: dict[type[httpx.TimeoutException], tuple[str, str]] = {
    httpx.ConnectTimeout: ("connect_timeout", "connecting"),
    httpx.PoolTimeout: ("pool_timeout", "waiting for a free connection"),
    httpx.WriteTimeout: ("write_timeout", "sending the request"),
}


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff_s(config: UpstreamConfig, attempt: int) -> float:
    return float(min(_MAX_BACKOFF_S, config.retry_backoff_s * 2 ** (attempt - 1)))


def _reason(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__
