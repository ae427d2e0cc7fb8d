"""OpenAI Responses API wire models (``POST /v1/responses``).

Only requests are modelled strictly; the response objects are built as dicts
in ``serving.responses`` and checked against the official SDK's types in tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from streamapi.schemas.openai import Request


class InputText(Request):
    type: Literal["input_text", "output_text", "text", "refusal"]
    text: str = ""


class InputImage(Request):
    """An image: read by vision models (``--vision-model-pattern``), refused by the others."""

    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    # "original": the image at its own resolution (Codex CLI's view_image sends it).
    detail: Literal["auto", "low", "high", "original"] | None = None


class InputFile(Request):
    """A file: the simulator reads its name (or id) only, as a note in the prompt."""

    type: Literal["input_file"]
    filename: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    file_data: str | None = None


class InputAudio(Request):
    """Audio: the simulator reads a note that it is there."""

    type: Literal["input_audio"]


InputOther = InputFile | InputAudio


InputContent = Annotated[
    InputText | InputImage | InputFile | InputAudio, Field(discriminator="type")
]


class MessageItem(Request):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputContent] | None = None

    @model_validator(mode="after")
    def _check_content(self) -> MessageItem:
        # An assistant's null content is an empty reply, as chat takes it.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self


class FunctionCallItem(Request):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None


class CustomToolCallItem(Request):
    """A call of a custom (free-form) tool: ``input`` is its raw text."""

    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str
    namespace: str | None = None


class LocalShellCallItem(Request):
    type: Literal["local_shell_call"]
    call_id: str
    action: dict[str, Any]


class ShellCallItem(Request):
    type: Literal["shell_call"]
    call_id: str
    action: dict[str, Any]


class ApplyPatchCallItem(Request):
    type: Literal["apply_patch_call"]
    call_id: str
    operation: dict[str, Any]


ClientCallItem = (
    FunctionCallItem | CustomToolCallItem | LocalShellCallItem | ShellCallItem | ApplyPatchCallItem
)
"""Calls of the tools a client runs itself: each is answered by its ``*_output`` item."""


class CustomToolCallOutputItem(Request):
    type: Literal["custom_tool_call_output"]
    call_id: str
    output: str | list[InputContent]


class LocalShellCallOutputItem(Request):
    """``id`` is the call's id (the SDK's name for it on this one item)."""

    type: Literal["local_shell_call_output"]
    id: str
    output: str


class ShellCallOutputItem(Request):
    """``output`` holds one ``{stdout, stderr, outcome}`` per command run."""

    type: Literal["shell_call_output"]
    call_id: str
    output: list[dict[str, Any]]


class ApplyPatchCallOutputItem(Request):
    type: Literal["apply_patch_call_output"]
    call_id: str
    status: str | None = None
    output: str | None = None


HISTORY_ITEM_TYPES = (
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "web_search_call",
    "tool_search_call",
    "configuration_update",
    "image_generation_call",
    "code_interpreter_call",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "compaction_trigger",
    "item_reference",
    "program",
    "program_output",
)


class HistoryItem(Request):
    """Hosted tools' calls and results, and other items that carry no conversation text.

    Accepted as the SDK defines them; they add nothing to the prompt (the
    simulator never ran the hosted tool they record).
    """

    # An item reference may leave its type out.
    type: Literal[HISTORY_ITEM_TYPES] = "item_reference"  # type: ignore[valid-type]


class FunctionCallOutputItem(Request):
    """A function's output; the SDK lets ``call_id`` go (a program's call): then ``name``."""

    type: Literal["function_call_output"]
    call_id: str | None = None
    name: str | None = None
    output: str | list[InputContent]


class ReasoningItem(Request):
    """Earlier reasoning handed back by the client; it adds nothing to the prompt.

    ``encrypted_content`` (from ``include: ["reasoning.encrypted_content"]``)
    is checked when it is this server's own.
    """

    type: Literal["reasoning"]
    encrypted_content: str | None = Field(default=None, max_length=10_485_760)


class CompactionItem(Request):
    """The window ``POST /v1/responses/compact`` returned, handed back as input."""

    type: Literal["compaction"]
    encrypted_content: str = Field(max_length=10_485_760)
    id: str | None = None


def _item_tag(value: Any) -> str:
    # Messages may omit "type", and so may an item reference (an id alone);
    # everything else names itself. Every hosted tool's item shares one model.
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None:
            kind = "message" if "role" in value or "id" not in value else "item_reference"
    else:
        kind = getattr(value, "type", "message")
    return "history" if kind in HISTORY_ITEM_TYPES else str(kind)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[CustomToolCallItem, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputItem, Tag("custom_tool_call_output")]
    | Annotated[LocalShellCallItem, Tag("local_shell_call")]
    | Annotated[LocalShellCallOutputItem, Tag("local_shell_call_output")]
    | Annotated[ShellCallItem, Tag("shell_call")]
    | Annotated[ShellCallOutputItem, Tag("shell_call_output")]
    | Annotated[ApplyPatchCallItem, Tag("apply_patch_call")]
    | Annotated[ApplyPatchCallOutputItem, Tag("apply_patch_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[CompactionItem, Tag("compaction")]
    | Annotated["ToolsItem", Tag("tool_search_output")]
    | Annotated["ToolsItem", Tag("additional_tools")]
    | Annotated[HistoryItem, Tag("history")],
    Discriminator(_item_tag),
]


class FunctionTool(Request):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None


class CustomTextFormat(Request):
    type: Literal["text"]


class CustomGrammarFormat(Request):
    """The input's grammar: Lark (``lark``) or a regular expression (``regex``)."""

    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: str


class CustomTool(Request):
    """A free-form tool: its call's ``input`` is raw text, in ``format`` when one is given."""

    type: Literal["custom"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    format: (
        Annotated[CustomTextFormat | CustomGrammarFormat, Field(discriminator="type")] | None
    ) = None
    defer_loading: bool | None = None


class NamespaceTool(Request):
    """A named group of functions; each is called by its own name, the call naming the group."""

    type: Literal["namespace"]
    name: str
    description: str | None = None
    tools: list[Annotated[FunctionTool | CustomTool, Field(discriminator="type")]]


class BuiltinClientTool(Request):
    """A tool OpenAI defines and the client runs: ``shell``, ``local_shell``, ``apply_patch``."""

    type: Literal["shell", "local_shell", "apply_patch"]


HOSTED_TOOL_TYPES = (
    "file_search",
    "computer",
    "computer_use_preview",
    "web_search",
    "web_search_2025_08_26",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "mcp",
    "code_interpreter",
    "programmatic_tool_calling",
    "image_generation",
    "tool_search",
)


class HostedTool(Request):
    """A tool OpenAI runs (or, for ``computer`` and ``tool_search``, one the simulator never
    needs): accepted, echoed, and never called."""

    type: Literal[HOSTED_TOOL_TYPES]  # type: ignore[valid-type]


ResponsesTool = Annotated[
    FunctionTool | CustomTool | NamespaceTool | BuiltinClientTool | HostedTool,
    Field(discriminator="type"),
]


class ToolsItem(Request):
    """Tools the conversation loads: a client tool search's output, or additional tools.

    They are callable from then on, deferred ones (``defer_loading``) included.
    """

    type: Literal["tool_search_output", "additional_tools"]
    tools: list[ResponsesTool]


class NamedFunctionChoice(Request):
    type: Literal["function", "custom"]
    name: str


class BuiltinToolChoice(Request):
    """``{"type": "shell"}`` or ``{"type": "apply_patch"}``: that tool must be called."""

    type: Literal["shell", "apply_patch", "local_shell"]


class AllowedToolsChoice(Request):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class HostedToolChoice(Request):
    """A hosted tool (or an MCP server's): the simulator never calls those, so ``auto``."""

    type: Literal[(*HOSTED_TOOL_TYPES, "computer_use")]  # type: ignore[valid-type]


ToolChoiceParam = Annotated[
    NamedFunctionChoice | BuiltinToolChoice | AllowedToolsChoice | HostedToolChoice,
    Field(discriminator="type"),
]


class TextFormatText(Request):
    type: Literal["text"]


class TextFormatJSONObject(Request):
    type: Literal["json_object"]


class TextFormatJSONSchema(Request):
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(Request):
    format: (
        Annotated[
            TextFormatText | TextFormatJSONObject | TextFormatJSONSchema,
            Field(discriminator="type"),
        ]
        | None
    ) = None


class ReasoningConfig(Request):
    effort: str | None = None
    summary: str | None = None


class ResponseRequest(Request):
    """``POST /v1/responses``. Unknown fields are ignored."""

    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = Field(
        default=None, description="Continue a stored response (kept in a bounded memory store)."
    )
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    seed: int | None = Field(default=None, description="Extension: a deterministic answer.")
    # Accepted and echoed in the Response (Open Responses requires them there);
    # the simulator's sampling does not model penalties or log probabilities.
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = Field(default=None, ge=1)
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    include: list[str] | None = Field(
        default=None,
        description='"reasoning.encrypted_content" gives reasoning items an opaque '
        "encrypted_content that a later request may hand back.",
    )
    background: bool | None = Field(
        default=False,
        description="Run after the request returns: poll GET /v1/responses/{id}, or stream it.",
    )


class CompactRequest(Request):
    """``POST /v1/responses/compact``: a conversation in, a shorter window out."""

    model: str
    input: str | list[InputItem] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    prompt_cache_key: str | None = None
