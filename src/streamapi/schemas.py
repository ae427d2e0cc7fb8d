"""OpenAI wire models: requests, responses, stream chunks and the error envelope.

Names follow the official SDK (``ChatCompletionChunk``, ``ChoiceDelta``...).
Request models accept unknown fields, as vLLM does: clients send vendor
extensions (``ignore_eos``, ``continuous_usage_stats``) that must not be
rejected. Pure data, no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _Request(BaseModel):
    # strict: a string where a number belongs is the client's bug, and OpenAI says so.
    model_config = ConfigDict(extra="allow", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class OtherContentPart(_Request):
    """An image, audio or file part: accepted by the schema, refused by the text-only engine."""

    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextContentPart | OtherContentPart, Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    """One message of ``messages``: content is a string or a list of parts."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_role_rules(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self


class StreamOptions(_Request):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions`` in OpenAI's form. Unknown fields are ignored."""

    model: str | None = Field(
        default=None, description="Model to use; the first served model when omitted."
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated by OpenAI.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Wins over max_tokens when both are given."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX)
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = Field(
        default=None,
        description="vLLM extension: ignore end of answer and stop sequences; generate exactly "
        "max_tokens tokens (load testers use it for fixed output lengths).",
    )


class PromptRequest(_Request):
    """The original spec's form: one prompt, always streamed."""

    prompt: str = Field(description="The user's prompt; treated as one user message.")
    stream: bool = Field(description="Must be true.")


# --- responses ------------------------------------------------------------------


class PromptTokensDetails(_Response):
    cached_tokens: int = Field(description="Prompt tokens found in the prefix cache.")


class CompletionUsage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletionMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class Choice(_Response):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(_Response):
    """A whole chat completion (``stream`` false)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: CompletionUsage


class ChoiceDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Response):
    index: int
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Response):
    """One ``data:`` event of a chat completion stream."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class Model(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(_Response):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Response):
    """Every error, before or during a stream."""

    error: ErrorBody


class Health(_Response):
    status: Literal["healthy", "draining"]


class Load(_Response):
    server_load: int = Field(description="Generation requests in flight (streams included).")


def dump(model: BaseModel) -> dict[str, Any]:
    """A response model as the JSON-ready dict the wire carries."""
    return model.model_dump(mode="json")
