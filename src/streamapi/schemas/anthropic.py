"""Anthropic Messages wire models (``POST /v1/messages``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from streamapi.schemas.openai import Request, StopList


class TextBlock(Request):
    type: Literal["text"]
    text: str


class ToolUseBlock(Request):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(Request):
    """Earlier thinking handed back by the client; it adds nothing to the prompt."""

    type: Literal["thinking", "redacted_thinking"]


class ImageSource(Request):
    type: Literal["base64", "url", "file"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class ImageBlock(Request):
    """An image (base64, url or file): read by vision models, refused by the others."""

    type: Literal["image"]
    source: ImageSource


class DocumentBlock(Request):
    """A document: its text when its source is text (or content blocks), else a note."""

    type: Literal["document"]
    source: dict[str, Any]
    title: str | None = None


class SearchResultBlock(Request):
    """A search result the client found: its title and text are read."""

    type: Literal["search_result"]
    title: str
    source: str
    content: list[TextBlock]


class ToolReferenceBlock(Request):
    """A tool search's result: it loads the named tool (``defer_loading``) for later turns."""

    type: Literal["tool_reference"]
    tool_name: str


class BrowserStateBlock(Request):
    type: Literal["browser_state"]


ToolResultContent = Annotated[
    TextBlock
    | ImageBlock
    | SearchResultBlock
    | DocumentBlock
    | ToolReferenceBlock
    | BrowserStateBlock,
    Field(discriminator="type"),
]


class ToolResultBlock(Request):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None


class ServerToolUseBlock(Request):
    """A server tool's call in history (``web_search``...): read as its call's text."""

    type: Literal["server_tool_use", "mcp_tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


SERVER_RESULT_BLOCK_TYPES = (
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "advisor_tool_result",
    "mcp_tool_result",
    "container_upload",
    "compaction",
    "tool_addition",
    "tool_removal",
    "mcp_tool_listing",
    "fallback",
)


class ServerResultBlock(Request):
    """Server tools' results and other server-made blocks handed back in history.

    Accepted as the SDK defines them; they add nothing to the prompt.
    """

    type: Literal[SERVER_RESULT_BLOCK_TYPES]  # type: ignore[valid-type]


ContentBlock = Annotated[
    TextBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | ImageBlock
    | DocumentBlock
    | SearchResultBlock
    | ServerToolUseBlock
    | ServerResultBlock,
    Field(discriminator="type"),
]


class MessageParam(Request):
    """A turn; ``system`` turns (as Claude Code sends) hold text only."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock] | None = None

    @model_validator(mode="after")
    def _check_content(self) -> MessageParam:
        # An assistant's null content is an empty reply, as chat takes it; a system
        # turn may carry settings alone (the beta's per-turn output_config).
        if self.content is None and self.role == "user":
            raise ValueError("a user message needs content")
        if self.role == "system" and not isinstance(self.content, str):
            for block in self.content or ():
                if block.type not in ("text", "tool_addition", "tool_removal"):
                    raise ValueError(
                        f"a system message holds text and tool changes only, not '{block.type}'"
                    )
        return self


class Tool(Request):
    """A client tool the request defines (``type`` absent or ``custom``)."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    defer_loading: bool | None = None


CLIENT_TOOL_TYPES = (
    "bash_20241022",
    "bash_20250124",
    "text_editor_20241022",
    "text_editor_20250124",
    "text_editor_20250429",
    "text_editor_20250728",
    "memory_20250818",
    "computer_20241022",
    "computer_20250124",
    "computer_20251124",
)
SERVER_TOOL_TYPES = (
    "code_execution_20250522",
    "code_execution_20250825",
    "code_execution_20260120",
    "code_execution_20260521",
    "browser_toolset_20260801",
    "computer_toolset_20260801",
    "web_search_20250305",
    "web_search_20260209",
    "web_search_20260318",
    "web_fetch_20250910",
    "web_fetch_20260209",
    "web_fetch_20260309",
    "web_fetch_20260318",
    "advisor_20260301",
    "tool_search_tool_bm25_20251119",
    "tool_search_tool_bm25",
    "tool_search_tool_regex_20251119",
    "tool_search_tool_regex",
    "mcp_toolset",
)


class VersionedTool(Request):
    """One of Anthropic's own tools. Client tools (``bash_*``, ``text_editor_*``,
    ``memory_*``, ``computer_*``) are called with the input Anthropic documents; server
    tools are accepted and never called."""

    type: Literal[(*CLIENT_TOOL_TYPES, *SERVER_TOOL_TYPES)]  # type: ignore[valid-type]
    name: str | None = None
    defer_loading: bool | None = None


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "custom" if kind in (None, "custom") else "versioned"


AnyTool = Annotated[
    Annotated[Tool, Tag("custom")] | Annotated[VersionedTool, Tag("versioned")],
    Discriminator(_tool_tag),
]


class ToolChoice(Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(Request):
    # between_tools: Anthropic's newer models' way to turn thinking off (pydantic-ai sends it
    # for them); the simulator answers it as disabled.
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(default=None, ge=1)
    display: Literal["summarized", "omitted", "updates"] | None = Field(
        default=None,
        description="omitted: thinking blocks stream no text, only a signature; summarized and "
        "the beta's updates (Claude Code's stream-json mode) stream it.",
    )


class ContextManagementEdit(Request):
    """One edit of ``context_management``; the simulator reports what it would clear."""

    type: Literal["clear_thinking_20251015", "clear_tool_uses_20250919", "compact_20260112"]
    keep: Any = None
    trigger: dict[str, Any] | None = None


class ContextManagement(Request):
    edits: list[ContextManagementEdit] | None = None


class JSONOutputFormat(Request):
    """Structured outputs: the answer is JSON valid against ``schema``."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Request):
    format: JSONOutputFormat | None = None


class MessageTokensCount(BaseModel):
    """``POST /v1/messages/count_tokens``'s answer."""

    input_tokens: int


class MessageCreateRequest(Request):
    """``POST /v1/messages`` in Anthropic's form. Unknown fields are ignored."""

    model: str
    max_tokens: int = Field(ge=1, description="Required, as Anthropic requires it.")
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: StopList | None = None
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[AnyTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    context_management: ContextManagement | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = Field(
        default=None, description="Structured outputs: format.schema is the answer's JSON Schema."
    )
    output_format: JSONOutputFormat | None = Field(
        default=None,
        description="The structured outputs beta's spelling of output_config.format.",
    )
    seed: int | None = Field(default=None, description="Extension: a deterministic answer.")
