"""Anthropic Messages wire models (``POST /v1/messages``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from streamapi.schemas.openai import Request, StopList


class TextBlock(Request):
    type: Literal["text"]
    text: str


class ToolUseBlock(Request):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Request):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


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


class OtherBlock(Request):
    """Documents: accepted by the schema, refused by the text-only engine."""

    type: Literal["document"]


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | ImageBlock | OtherBlock,
    Field(discriminator="type"),
]


class MessageParam(Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock] | None = None

    @model_validator(mode="after")
    def _check_content(self) -> MessageParam:
        # An assistant's null content is an empty reply, as chat takes it.
        if self.content is None and self.role != "assistant":
            raise ValueError("a user message needs content")
        return self


class Tool(Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(Request):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


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
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = Field(
        default=None, description="Structured outputs: format.schema is the answer's JSON Schema."
    )
    output_format: JSONOutputFormat | None = Field(
        default=None,
        description="The structured outputs beta's spelling of output_config.format.",
    )
    seed: int | None = Field(default=None, description="Extension: a deterministic answer.")
