"""The Responses API (``/v1/responses``): output items, their event stream, and a store.

A stream is ``response.created``, ``response.in_progress``, then for each
output item (reasoning, message or function call) its ``*.added`` events
before its deltas and its ``*.done`` events after, and finally
``response.completed`` (``response.incomplete`` when ``max_output_tokens``
cut it). Every event names itself in ``event:`` and ``type`` and carries a
``sequence_number`` from 0, and the stream ends with ``data: [DONE]`` (Open
Responses requires it; OpenAI's SDKs stop on it). Finished responses are kept
in the state store (``state.base.ResponseStorage``: this process's memory, bounded
in count and bytes, or Redis) for ``previous_response_id``; a WebSocket
connection keeps its ``store: false`` responses in a ``LocalResponses`` of its
own. The same events feed the WebSocket mode (one JSON message each) and
background runs (``serving.response_runs``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamapi import sse
from streamapi.engines.protocol import (
    GenerationRequest,
    OutputFormat,
    PromptMessage,
    PromptToolCall,
    TokenDelta,
)
from streamapi.errors import APIError, InvalidRequestError
from streamapi.schemas.responses import (
    AllowedToolsChoice,
    ApplyPatchCallItem,
    ApplyPatchCallOutputItem,
    BuiltinToolChoice,
    CompactionItem,
    CompactRequest,
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputAudio,
    InputFile,
    InputImage,
    InputText,
    LocalShellCallItem,
    LocalShellCallOutputItem,
    MessageItem,
    NamedFunctionChoice,
    ReasoningItem,
    ResponseRequest,
    ShellCallItem,
    ShellCallOutputItem,
    TextFormatJSONObject,
    TextFormatJSONSchema,
    ToolsItem,
)
from streamapi.serving import compaction
from streamapi.serving.client_tools import ToolBook, builtin_action, responses_tools
from streamapi.serving.generation import Admission, Generation, Job
from streamapi.serving.request_limits import check_metadata
from streamapi.serving.schema_checks import SchemaChecks, check_tool_choice
from streamapi.serving.stream_errors import GenerationFailed
from streamapi.serving.usage import Usage
from streamapi.state.base import ResponseStorage, StateUnavailableError
from streamapi.state.local import LocalResponses
from streamapi.text.tokenizer import count_chat_tokens

logger = logging.getLogger(__name__)

Encode = Callable[[str, dict[str, Any]], bytes]
"""How one event leaves: an SSE frame, a WebSocket message, or a background run's log."""


def sse_event(kind: str, payload: dict[str, Any]) -> bytes:
    return sse.encode_event(kind, payload)


def json_event(kind: str, payload: dict[str, Any]) -> bytes:
    """A WebSocket message: the event's JSON alone (its ``type`` names it)."""
    return orjson.dumps(payload)


class PreviousResponseNotFoundError(InvalidRequestError):
    code = "previous_response_not_found"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished response: its body, and the conversation a follow-up continues."""

    body: dict[str, Any]
    messages: tuple[PromptMessage, ...]
    call_names: dict[str, str]
    owner: str | None = None
    """The name of the API key that made it; None with auth off (one tenant)."""


@dataclass(frozen=True, slots=True)
class ResponseJob:
    """A checked Responses request and the request fields its Response echoes."""

    job: Job
    echo: dict[str, Any]
    messages: tuple[PromptMessage, ...]
    call_names: dict[str, str]
    store: bool
    background: bool = False
    tools: ToolBook = field(default_factory=ToolBook)
    encrypted_reasoning: bool = False
    """``include`` asked for ``reasoning.encrypted_content``."""
    owner: str | None = None
    """The name of the API key asking; None with auth off."""


class ResponseService:
    """Serves ``/v1/responses``, for one tenant at a time (``for_owner``).

    A stored Response belongs to the API key that made it: asked for by another
    key (to read it, continue it or compact it), it is not found, as an unknown
    id is, so a key learns nothing of another's responses.
    """

    def __init__(
        self,
        generation: Generation,
        store: ResponseStorage,
        owner: str | None = None,
        previous: tuple[str, StoredResponse] | None = None,
    ) -> None:
        self._generation = generation
        self._store = store
        self._owner = owner
        self._previous = previous
        """The response this request continues, as ``load`` fetched it."""

    def for_owner(self, owner: str | None) -> ResponseService:
        """This service as the key named ``owner`` sees it (None: auth is off)."""
        return ResponseService(self._generation, self._store, owner)

    def owns(self, owner: str | None) -> bool:
        """Whether something made by ``owner`` is this tenant's."""
        return owner == self._owner

    async def load(
        self, response_id: str | None, session: LocalResponses | None = None
    ) -> ResponseService:
        """This service, holding ``response_id`` for ``prepare`` and ``compact`` to continue.

        ``session`` is a WebSocket connection's own store (its ``store: false``
        responses), looked in first. 503 if the store fails; an unknown id, or
        another key's, is ``prepare``'s 400.
        """
        if response_id is None:
            return self
        data = None if session is None else await session.get(response_id)
        if data is None:
            data = await self._store.get(response_id)
        previous = None if data is None else _thawed(data)
        if previous is None or not self.owns(previous.owner):
            return self
        return ResponseService(self._generation, self._store, self._owner, (response_id, previous))

    async def retrieve(self, response_id: str) -> dict[str, Any] | None:
        data = await self._store.get(response_id)
        if data is None or not self.owns(data.get("owner")):
            return None
        body: dict[str, Any] = data["body"]
        return body

    def prepare(self, request: ResponseRequest) -> ResponseJob:
        """Check everything that can fail before the first byte (after ``load``)."""
        generation = self._generation
        check_metadata(request.metadata)
        model = generation.resolve_model(request.model)
        history, call_names = self._history(request.previous_response_id)
        loaded: list[Any] = []
        messages = [
            *history,
            *_input_messages(
                request.input,
                call_names,
                lambda detail, param: generation.image_tokens(model, detail, param=param),
                loaded,
            ),
        ]
        if request.instructions:
            messages.insert(0, PromptMessage("system", request.instructions))
        checks = SchemaChecks.of(generation.settings)
        checks.tool_count(len(request.tools or ()), param="tools")
        book = responses_tools(request.tools or [], checks, loaded)
        tools = book.specs
        choice = request.tool_choice
        tool_choice = _tool_choice(choice, called=bool(tools), offered=bool(request.tools))
        check_tool_choice(tools, tool_choice, param="tool_choice")
        effort = request.reasoning.effort if request.reasoning else None
        template = GenerationRequest(
            model=model,
            messages=tuple(messages),
            max_tokens=request.max_output_tokens,
            seed=request.seed,
            temperature=request.temperature,
            top_p=request.top_p,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            output_format=_output_format(request, checks),
            reasoning=generation.reasons(model, None if effort is None else effort != "none"),
        )
        job = generation.job([template], id_prefix="resp_")
        background = bool(request.background)
        store = request.store is not False
        if background and not store:
            raise InvalidRequestError(
                "Background responses must be stored: background needs store true.",
                param="background",
            )
        return ResponseJob(
            job=job,
            echo=_echo(request, tools_given=request.tools or [], tool_choice=choice),
            messages=tuple(messages),
            call_names=call_names,
            store=store,
            background=background,
            tools=book,
            encrypted_reasoning="reasoning.encrypted_content" in (request.include or ()),
            owner=self._owner,
        )

    def compact(self, request: CompactRequest) -> dict[str, Any]:
        """``POST /v1/responses/compact``: the conversation as a window to start over from.

        As OpenAI's, the window keeps the user's messages as they are and puts
        everything else (the assistant's answers, tool calls and their
        results) in one compaction item, to be handed back as input; the
        instructions are not kept. The simulator does not summarise: the item
        holds those messages whole (``serving.compaction``).
        """
        generation = self._generation
        model = generation.resolve_model(request.model)
        history, call_names = self._history(request.previous_response_id)
        given = request.input if request.input is not None else []
        messages = [
            *history,
            *_input_messages(
                given,
                call_names,
                lambda detail, param: generation.image_tokens(model, detail, param=param),
            ),
        ]
        if not messages:
            raise InvalidRequestError(
                "Nothing to compact: give input or a previous_response_id.", param="input"
            )
        users = [m for m in messages if m.role == "user"]
        others = [m for m in messages if m.role != "user"]
        output: list[dict[str, Any]] = [
            {
                "id": f"msg_{secrets.token_hex(16)}",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_text", "text": m.content}],
            }
            for m in users
        ]
        output.append(
            {
                "id": f"cmp_{secrets.token_hex(16)}",
                "type": "compaction",
                "encrypted_content": compaction.encode(others),
            }
        )
        prompt = count_chat_tokens(m.content for m in messages)
        window = count_chat_tokens(m.content for m in others)
        return {
            "id": f"resp_{secrets.token_hex(16)}",
            "object": "response.compaction",
            "created_at": int(time.time()),
            "model": model,
            "output": output,
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": window,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + window,
            },
        }

    def _history(self, previous_id: str | None) -> tuple[tuple[PromptMessage, ...], dict[str, str]]:
        if previous_id is None:
            return (), {}
        loaded = self._previous
        previous = loaded[1] if loaded is not None and loaded[0] == previous_id else None
        if previous is None:
            raise PreviousResponseNotFoundError(
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
            )
        return previous.messages, dict(previous.call_names)

    async def stream(self, response: ResponseJob, admission: Admission) -> AsyncIterator[bytes]:
        """The SSE stream, from ``response.created`` to its terminal event and ``[DONE]``."""
        async for frame in self.events(response, admission, sse_event):
            yield frame
        yield sse.DONE

    async def events(
        self,
        response: ResponseJob,
        admission: Admission,
        encode: Encode,
        *,
        session: LocalResponses | None = None,
        websocket: bool = False,
    ) -> AsyncIterator[bytes]:
        """Every event of one response, each as ``encode`` renders it.

        Over a WebSocket a failure is ``response.failed`` alone: the client
        takes an ``error`` message as the end of the turn, so an ``error``
        followed by ``response.failed`` would end this turn and the next.
        """
        builder = _Builder(response, encode, websocket=websocket)
        # A background response is queued until its first token: it has its
        # response.queued, and its response.in_progress comes with that token.
        queued = response.background
        try:
            first = "queued" if queued else "in_progress"
            yield builder.event("response.created", response=builder.body(first))
            yield builder.event(f"response.{first}", response=builder.body(first))
            async for batch in self._generation.batches(admission):
                if queued:
                    queued = False
                    yield builder.event(
                        "response.in_progress", response=builder.body("in_progress")
                    )
                for _, delta in batch:
                    for frame in builder.add(delta):
                        yield frame
            for frame in builder.close_item():
                yield frame
            status = builder.status()
            body = builder.body(status)
            await self._keep(response, builder, body, session)
            yield builder.event(f"response.{status}", response=body)
        except Exception as exc:
            for frame in self._generation.stream_error(exc, response.job.id, builder.failure):
                yield frame

    async def complete(self, response: ResponseJob, admission: Admission) -> dict[str, Any]:
        """The whole Response object (``stream`` false)."""
        builder = _Builder(response, sse_event)
        async for batch in self._generation.batches(admission):
            for _, delta in batch:
                builder.add(delta)
        builder.close_item()
        body = builder.body(builder.status())
        await self._keep(response, builder, body)
        return body

    async def _keep(
        self,
        response: ResponseJob,
        builder: _Builder,
        body: dict[str, Any],
        session: LocalResponses | None = None,
    ) -> None:
        if not response.store and session is None:
            return
        said: list[PromptMessage] = []
        names = dict(response.call_names)
        for item in builder.output:
            if item["type"] == "message":
                said.append(PromptMessage("assistant", item["content"][0]["text"]))
            elif "call_id" in item:
                call = _said_call(item)
                names[call.id] = call.name
                said.append(
                    PromptMessage("assistant", f"{call.name}({call.arguments})", tool_calls=(call,))
                )
        conversation = tuple(m for m in response.messages if m.role != "system")
        stored = StoredResponse(body, (*conversation, *said), names, response.owner)
        if response.store:
            # A failure of the shared store is counted there; the answer stands.
            with suppress(StateUnavailableError):
                await self._store.put(body["id"], _frozen(stored))
        elif session is not None:
            await session.put(body["id"], _frozen(stored))


def _frozen(stored: StoredResponse) -> dict[str, Any]:
    """``stored`` as JSON-ready data, for the state store."""
    return {
        "body": stored.body,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "name": m.name,
                "tool_calls": [[c.id, c.name, c.arguments] for c in m.tool_calls],
                "tool_call_id": m.tool_call_id,
            }
            for m in stored.messages
        ],
        "call_names": stored.call_names,
        "owner": stored.owner,
    }


def _thawed(data: dict[str, Any]) -> StoredResponse:
    messages = tuple(
        PromptMessage(
            m["role"],
            m["content"],
            name=m["name"],
            tool_calls=tuple(PromptToolCall(*call) for call in m["tool_calls"]),
            tool_call_id=m["tool_call_id"],
        )
        for m in data["messages"]
    )
    return StoredResponse(data["body"], messages, dict(data["call_names"]), data.get("owner"))


_ITEM_KINDS = {"content": "message", "reasoning": "reasoning"}
_ID_PREFIXES = {
    "message": "msg_",
    "reasoning": "rs_",
    "function_call": "fc_",
    "custom_tool_call": "ctc_",
    "shell_call": "sh_",
    "local_shell_call": "lsh_",
    "apply_patch_call": "apc_",
}
# Calls whose items carry their action whole: nothing of them streams before it is known.
_WHOLE_CALLS = frozenset({"shell_call", "local_shell_call", "apply_patch_call"})


@dataclass(slots=True)
class _Item:
    index: int
    kind: str
    id: str
    texts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    namespace: str | None = None
    encrypted: bool = False

    @property
    def text(self) -> str:
        return "".join(self.texts)


class _Builder:
    """Builds one response's output items and numbers its events."""

    def __init__(self, response: ResponseJob, encode: Encode, *, websocket: bool = False) -> None:
        self._response = response
        self._encode = encode
        self._websocket = websocket
        self._sequence = 0
        self._item: _Item | None = None
        self.output: list[dict[str, Any]] = []
        self._usage = Usage.of(response.job)
        self._finish: str | None = None

    def failure(self, error: APIError) -> list[bytes]:
        """An ``error`` event, then ``response.failed``: how a Response stream breaks."""
        code = "server_error" if isinstance(error, GenerationFailed) else error.code
        failed = {"code": error.code or error.type, "message": error.message}
        terminal = self.event("response.failed", response=self.body("failed", error=failed))
        if self._websocket:
            return [terminal]
        # OpenAI's flat error event: a top-level "error" object (Open Responses'
        # form) would make the openai SDKs raise instead of yielding the event.
        return [self.event("error", code=code, message=error.message, param=error.param), terminal]

    def event(self, kind: str, **fields: Any) -> bytes:
        frame = self._encode(kind, {"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return frame

    def add(self, delta: TokenDelta) -> list[bytes]:
        self._usage.add(delta)
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
        if not delta.is_token:
            return []
        if delta.channel == "tool_call":
            name = (
                delta.tool_call.name if delta.tool_call else (self._item.name if self._item else "")
            )
            kind = self._response.tools.item_type(name)
        else:
            kind = _ITEM_KINDS[delta.channel]
        frames: list[bytes] = []
        if delta.tool_call is not None or self._item is None or self._item.kind != kind:
            frames += self.close_item()
            frames += self._open(kind, delta)
            if delta.tool_call is not None:
                return frames
        item = self._item
        assert item is not None
        item.texts.append(delta.text)
        where = {"item_id": item.id, "output_index": item.index}
        if kind == "message":
            frames.append(
                self.event(
                    "response.output_text.delta",
                    **where,
                    content_index=0,
                    delta=delta.text,
                    logprobs=[],
                )
            )
        elif kind == "reasoning":
            frames.append(
                self.event(
                    "response.reasoning_text.delta", **where, content_index=0, delta=delta.text
                )
            )
        elif kind == "custom_tool_call":
            frames.append(
                self.event("response.custom_tool_call_input.delta", **where, delta=delta.text)
            )
        elif kind == "function_call":
            frames.append(
                self.event("response.function_call_arguments.delta", **where, delta=delta.text)
            )
        return frames

    def close_item(self) -> list[bytes]:
        item, self._item = self._item, None
        if item is None:
            return []
        where = {"item_id": item.id, "output_index": item.index}
        frames = []
        if item.kind == "message":
            part = _output_text(item.text)
            frames.append(
                self.event(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=item.text,
                    logprobs=[],
                )
            )
            frames.append(
                self.event("response.content_part.done", **where, content_index=0, part=part)
            )
        elif item.kind == "reasoning":
            part = {"type": "reasoning_text", "text": item.text}
            frames.append(
                self.event("response.reasoning_text.done", **where, content_index=0, text=item.text)
            )
            frames.append(
                self.event("response.content_part.done", **where, content_index=0, part=part)
            )
        elif item.kind == "custom_tool_call":
            frames.append(
                self.event("response.custom_tool_call_input.done", **where, input=item.text)
            )
        elif item.kind in _WHOLE_CALLS:
            # Announced now that its action is known, as it is done.
            opened = {**_item_body(item, "completed"), "status": "in_progress"}
            frames.append(
                self.event("response.output_item.added", output_index=item.index, item=opened)
            )
            if item.kind == "shell_call":
                for number, command in enumerate(opened["action"]["commands"]):
                    at = {"output_index": item.index, "command_index": number}
                    frames.append(self.event("response.shell_call_command.added", **at, command=""))
                    frames.append(
                        self.event("response.shell_call_command.delta", **at, delta=command)
                    )
                    frames.append(
                        self.event("response.shell_call_command.done", **at, command=command)
                    )
        else:
            frames.append(
                self.event(
                    "response.function_call_arguments.done",
                    **where,
                    arguments=item.text,
                    name=item.name,
                )
            )
        # The item max_output_tokens cut short is incomplete, like the response.
        done = _item_body(item, "incomplete" if self._finish == "length" else "completed")
        self.output.append(done)
        frames.append(self.event("response.output_item.done", output_index=item.index, item=done))
        return frames

    def status(self) -> str:
        return "incomplete" if self._finish == "length" else "completed"

    def body(self, status: str, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_body(
            self._response,
            status,
            output=self.output,
            usage=None if status in _UNFINISHED else self._usage,
            error=error,
        )

    def _open(self, kind: str, delta: TokenDelta) -> list[bytes]:
        index = len(self.output)
        item = _Item(index, kind, f"{_ID_PREFIXES[kind]}{secrets.token_hex(16)}")
        if delta.tool_call is not None:
            item.call_id, item.name = delta.tool_call.id, delta.tool_call.name
            item.namespace = self._response.tools.namespaces.get(item.name)
        item.encrypted = self._response.encrypted_reasoning
        self._item = item
        if kind in _WHOLE_CALLS:
            return []  # added when closed (close_item)
        frames = [
            self.event(
                "response.output_item.added",
                output_index=index,
                item=_item_body(item, "in_progress"),
            )
        ]
        where = {"item_id": item.id, "output_index": index, "content_index": 0}
        if kind == "message":
            frames.append(self.event("response.content_part.added", **where, part=_output_text("")))
        elif kind == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            frames.append(self.event("response.content_part.added", **where, part=part))
        return frames


_UNFINISHED = frozenset({"queued", "in_progress"})


def response_body(
    response: ResponseJob,
    status: str,
    *,
    output: list[dict[str, Any]],
    usage: Usage | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object, with every field Open Responses requires (null where unset)."""
    job = response.job
    return {
        "id": job.id,
        "object": "response",
        "created_at": job.created,
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "background": response.background,
        "model": job.model,
        "output": [] if status in _UNFINISHED else list(output),
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        **response.echo,
        "usage": None
        if usage is None
        else {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": usage.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens,
        },
    }


def _item_body(item: _Item, status: str) -> dict[str, Any]:
    done = status != "in_progress"
    if item.kind == "message":
        content = [_output_text(item.text)] if done else []
        return {
            "id": item.id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }
    if item.kind == "reasoning":
        content = [{"type": "reasoning_text", "text": item.text}] if done else []
        body: dict[str, Any] = {
            "id": item.id,
            "type": "reasoning",
            "summary": [],
            "content": content,
            "status": status,
        }
        if item.encrypted:
            body["encrypted_content"] = compaction.encode_reasoning(item.text) if done else None
        return body
    call: dict[str, Any] = {
        "id": item.id,
        "type": item.kind,
        "status": status,
        "call_id": item.call_id,
    }
    if item.kind in _WHOLE_CALLS:
        return {**call, **builtin_action(item.kind, item.text)}
    call["name"] = item.name
    if item.kind == "custom_tool_call":
        call["input"] = item.text if done else ""
    else:
        call["arguments"] = item.text if done else ""
    if item.namespace is not None:
        call["namespace"] = item.namespace
    return call


def _said_call(item: dict[str, Any]) -> PromptToolCall:
    """An output item's call as the conversation keeps it for ``previous_response_id``."""
    kind = item["type"]
    if kind == "function_call":
        return PromptToolCall(item["call_id"], item["name"], item["arguments"])
    if kind == "custom_tool_call":
        return PromptToolCall(item["call_id"], item["name"], item["input"])
    detail = item.get("action") or item.get("operation") or {}
    return PromptToolCall(item["call_id"], kind.removesuffix("_call"), json.dumps(detail))


def _tool_choice(choice: Any, *, called: bool, offered: bool) -> str:
    """The engine's ``tool_choice`` for a Responses one."""
    if isinstance(choice, NamedFunctionChoice):
        return choice.name
    if isinstance(choice, BuiltinToolChoice):
        return choice.type
    if isinstance(choice, AllowedToolsChoice):
        choice = choice.mode
    elif choice is not None and not isinstance(choice, str):
        return "auto"  # a hosted tool's: the simulator never calls those
    if choice == "required" and offered and not called:
        return "auto"  # only hosted tools are offered, which the simulator never calls
    return str(choice or ("auto" if called else "none"))


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _input_messages(
    value: str | list[Any],
    call_names: dict[str, str],
    image_cost: Callable[[str | None, str], int],
    loaded: list[Any] | None = None,
) -> list[PromptMessage]:
    """The prompt messages of ``input``; ``call_names`` gains the calls it makes, and
    ``loaded`` the tools its ``tool_search_output`` and ``additional_tools`` items load.

    A tool call's output must answer a call made earlier in the conversation
    (as OpenAI checks it): one that answers nothing is a 400. Hosted tools'
    items and reasoning add nothing to the prompt.
    """
    if isinstance(value, str):
        return [PromptMessage("user", value)]
    messages = []
    for index, item in enumerate(value):
        if isinstance(item, MessageItem):
            param = f"input[{index}].content"
            images = [
                image_cost(part.detail, f"{param}[{part_index}].type")
                for part_index, part in enumerate(item.content or ())
                if isinstance(part, InputImage)
            ]
            text = _text(item.content)
            messages.append(
                PromptMessage(item.role, text, images=len(images), image_tokens=sum(images))
            )
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            arguments = item.arguments if isinstance(item, FunctionCallItem) else item.input
            messages.append(_call_message(call_names, item.call_id, item.name, arguments))
        elif isinstance(item, LocalShellCallItem | ShellCallItem):
            name = item.type.removesuffix("_call")
            messages.append(_call_message(call_names, item.call_id, name, json.dumps(item.action)))
        elif isinstance(item, ApplyPatchCallItem):
            operation = json.dumps(item.operation)
            messages.append(_call_message(call_names, item.call_id, "apply_patch", operation))
        elif isinstance(
            item,
            FunctionCallOutputItem
            | CustomToolCallOutputItem
            | LocalShellCallOutputItem
            | ShellCallOutputItem
            | ApplyPatchCallOutputItem,
        ):
            call_id = item.id if isinstance(item, LocalShellCallOutputItem) else item.call_id
            if call_id is None:  # a function output that names its function only
                named = item.name if isinstance(item, FunctionCallOutputItem) else None
                messages.append(PromptMessage("tool", _call_output(item), named))
                continue
            if call_id not in call_names:
                raise InvalidRequestError(
                    f"No tool call found for {item.type} with call_id {call_id}.",
                    param=f"input[{index}].call_id",
                )
            output = _call_output(item)
            messages.append(
                PromptMessage("tool", output, call_names[call_id], tool_call_id=call_id)
            )
        elif isinstance(item, ReasoningItem) and item.encrypted_content is not None:
            if (
                item.encrypted_content.startswith(compaction.REASONING_PREFIX)
                and compaction.decode_reasoning(item.encrypted_content) is None
            ):
                raise InvalidRequestError(
                    "The encrypted content of this reasoning item could not be verified.",
                    param=f"input[{index}].encrypted_content",
                )
        elif isinstance(item, ToolsItem):
            if loaded is not None:
                loaded += item.tools
        elif isinstance(item, CompactionItem):
            restored = compaction.decode(item.encrypted_content)
            if restored is None:
                raise InvalidRequestError(
                    "This compaction item was not made by this server's /v1/responses/compact.",
                    param=f"input[{index}].encrypted_content",
                )
            for message in restored:
                call_names.update((call.id, call.name) for call in message.tool_calls)
            messages += restored
    return messages


def _call_message(
    call_names: dict[str, str], call_id: str, name: str, arguments: str
) -> PromptMessage:
    call_names[call_id] = name
    call = PromptToolCall(call_id, name, arguments)
    return PromptMessage("assistant", f"{name}({arguments})", tool_calls=(call,))


def _call_output(item: Any) -> str:
    """What a tool call's output item says, as text."""
    if isinstance(item, ShellCallOutputItem):
        return "\n".join(
            "".join(str(part.get(key) or "") for key in ("stdout", "stderr"))
            for part in item.output
        )
    if isinstance(item, ApplyPatchCallOutputItem):
        return item.output or str(item.status or "completed")
    return _text(item.output)


def _text(content: str | list[Any] | None) -> str:
    """The text of a message's (or an output's) content; a file or audio part is a note."""
    if content is None:
        return ""  # an assistant's null content: an empty reply
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, InputText):
            texts.append(part.text)
        elif isinstance(part, InputFile):
            texts.append(f"[file {part.filename or part.file_id or part.file_url or ''}]".strip())
        elif isinstance(part, InputAudio):
            texts.append("[audio]")
        # images are counted by _input_messages, which refuses them for a text model
    return "\n".join(texts)


def _output_format(request: ResponseRequest, checks: SchemaChecks) -> OutputFormat:
    fmt = request.text.format if request.text else None
    if isinstance(fmt, TextFormatJSONSchema):
        checks.schema(fmt.schema_, param="text.format.schema")
        return OutputFormat("json_schema", fmt.schema_)
    if isinstance(fmt, TextFormatJSONObject):
        return OutputFormat("json_object")
    return OutputFormat()


def _echoed_tool(tool: Any) -> dict[str, Any]:
    # Open Responses requires description, parameters and strict on each echoed
    # function: null where the request left them out.
    echoed: dict[str, Any] = tool.model_dump(by_alias=True, exclude_none=True)
    if tool.type == "function":
        for key in ("description", "parameters", "strict"):
            echoed.setdefault(key, None)
    return echoed


def _echo(request: ResponseRequest, *, tools_given: list[Any], tool_choice: Any) -> dict[str, Any]:
    fmt = request.text.format if request.text and request.text.format else None
    return {
        "instructions": request.instructions,
        "metadata": request.metadata or {},
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "tool_choice": tool_choice.model_dump()
        if hasattr(tool_choice, "model_dump")
        else (tool_choice or "auto"),
        "tools": [_echoed_tool(t) for t in tools_given],
        "text": {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        },
        "reasoning": {
            "effort": request.reasoning.effort if request.reasoning else None,
            "summary": None,
        },
        "store": request.store is not False,
        "truncation": "disabled",
        "user": request.user,
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "top_logprobs": request.top_logprobs or 0,
        "max_tool_calls": request.max_tool_calls,
        # The tier a request is served at: "auto" (or none asked) is "default".
        "service_tier": request.service_tier
        if request.service_tier not in (None, "auto")
        else "default",
        "safety_identifier": request.safety_identifier,
        "prompt_cache_key": request.prompt_cache_key,
    }
