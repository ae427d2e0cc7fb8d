"""OpenAI wire models: chat and legacy completions, embeddings, models, errors.

Names follow the official SDK (``ChatCompletionChunk``, ``ChoiceDelta``...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# OpenAI takes 4 stop sequences; vLLM any number. Enough for real use, bounded for safety.
MAX_STOP_SEQUENCES = 16
StopList = Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)]
_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class Request(BaseModel):
    """Base of request models: unknown fields allowed, types checked strictly."""

    # strict: a string where a number belongs is the client's bug, and OpenAI says so.
    model_config = ConfigDict(extra="allow", strict=True)


class Response(BaseModel):
    """Base of response models (documentation and non-streamed bodies)."""

    model_config = ConfigDict(extra="forbid")


# --- shared request parts ---------------------------------------------------------


class StreamOptions(Request):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = Field(
        default=None, description="vLLM extension: running usage on every chunk."
    )


class FunctionDefinition(Request):
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the arguments; generated arguments validate."
    )
    strict: bool | None = None


class ChatFunctionTool(Request):
    type: Literal["function"]
    function: FunctionDefinition


class CustomFormatGrammar(Request):
    definition: str
    syntax: Literal["lark", "regex"]


class CustomFormat(Request):
    type: Literal["text", "grammar"]
    grammar: CustomFormatGrammar | None = None


class CustomDefinition(Request):
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    format: CustomFormat | None = None


class ChatCustomTool(Request):
    """A free-form tool: its call's ``input`` is raw text, in ``format`` when one is given."""

    type: Literal["custom"]
    custom: CustomDefinition


ChatTool = Annotated[ChatFunctionTool | ChatCustomTool, Field(discriminator="type")]


class NamedFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: NamedFunction


class NamedCustomChoice(Request):
    type: Literal["custom"]
    custom: NamedFunction


class AllowedTools(Request):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(Request):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ChatToolChoice = Annotated[
    NamedToolChoice | NamedCustomChoice | AllowedToolsChoice, Field(discriminator="type")
]


class JSONSchemaFormat(Request):
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(Request):
    type: Literal["text"]


class ResponseFormatJSONObject(Request):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]


# --- chat completions request -----------------------------------------------------


class TextContentPart(Request):
    type: Literal["text"]
    text: str


class ImageURL(Request):
    url: str = Field(description="An https URL or a data: URL; the simulator does not fetch it.")
    # "original": the image at its own resolution (Codex CLI's view_image sends it).
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImageContentPart(Request):
    """An image: read by vision models (``--vision-model-pattern``), refused by the others."""

    type: Literal["image_url"]
    image_url: ImageURL


class OtherContentPart(Request):
    """An audio or file part, or a refusal: the simulator reads a note of it."""

    type: Literal["input_audio", "file", "refusal"]
    refusal: str | None = None
    file: dict[str, Any] | None = None


ContentPart = Annotated[
    TextContentPart | ImageContentPart | OtherContentPart, Field(discriminator="type")
]


class FunctionCall(Request):
    name: str
    arguments: str


class CustomCall(Request):
    name: str
    input: str


class ToolCall(Request):
    """A call made earlier: a function's (``function``) or a custom tool's (``custom``)."""

    id: str
    type: Literal["function", "custom"] = "function"
    function: FunctionCall | None = None
    custom: CustomCall | None = None

    @model_validator(mode="after")
    def _check_call(self) -> ToolCall:
        if getattr(self, self.type) is None:
            raise ValueError(f"a {self.type} tool call needs its '{self.type}' object")
        return self

    @property
    def name(self) -> str:
        return self.function.name if self.function else self.custom.name if self.custom else ""

    @property
    def arguments(self) -> str:
        """A function's JSON arguments, or a custom tool's raw input."""
        return (
            self.function.arguments if self.function else self.custom.input if self.custom else ""
        )


class ChatMessage(Request):
    """One message of ``messages``: content is a string or a list of parts."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_role_rules(self) -> ChatMessage:
        # An assistant's null content is an empty reply (vLLM accepts it; `llm -c`
        # sends one after an empty answer); every other role needs content.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self


class ChatCompletionRequest(Request):
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
    top_k: int | None = Field(
        default=None, ge=-1, description="vLLM extension: 1 decodes greedily; 0 or -1 is off."
    )
    n: int | None = Field(default=None, ge=1)
    stop: str | StopList | None = None
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX)
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = Field(
        default=None,
        description="Any value but 'none' makes the simulator reason first "
        "(streamed as reasoning_content).",
    )
    ignore_eos: bool | None = Field(
        default=None,
        description="vLLM extension: ignore end of answer and stop sequences; generate exactly "
        "max_tokens tokens (load testers use it for fixed output lengths).",
    )
    # Set for the simple prompt form, whose answers keep their minimum length
    # whatever the prompt says of length.
    _prompt_form: bool = PrivateAttr(default=False)

    @property
    def prompt_form(self) -> bool:
        """Whether this request came in the simple prompt form ``{"prompt", "stream"}``."""
        # Read from Pydantic's dict of private attributes: ``self._prompt_form`` goes
        # through ``BaseModel.__getattr__``, ~3 µs a request.
        private = self.__pydantic_private__
        return bool(private and private.get("_prompt_form"))

    def from_prompt_form(self) -> ChatCompletionRequest:
        """Mark this request as the simple prompt form's (see ``prompt_form``)."""
        self._prompt_form = True
        return self


class PromptRequest(Request):
    """The simple prompt form of /v1/chat/completions: one prompt, always streamed."""

    prompt: str = Field(description="The user's prompt; treated as one user message.")
    stream: bool = Field(description="Must be true.")


# --- legacy completions request ------------------------------------------------------


class CompletionRequest(Request):
    """``POST /v1/completions``: OpenAI's legacy text completions."""

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, a list of strings, or token ids (counted, not decoded)."
    )
    max_tokens: int | None = Field(
        default=16,
        ge=0,
        description="16 when omitted, as OpenAI. 0 (with echo) scores the prompt only.",
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(
        default=None, ge=-1, description="vLLM extension: 1 decodes greedily; 0 or -1 is off."
    )
    n: int | None = Field(default=None, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    stop: str | StopList | None = None
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX)
    suffix: str | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = None


# --- vLLM's tokenizer routes ------------------------------------------------------------


class TokenizeRequest(Request):
    """``POST /tokenize`` (vLLM): a ``prompt``, or chat ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    return_token_strs: bool | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class TokenizeResponse(Response):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Request):
    """``POST /detokenize`` (vLLM): token ids back to text."""

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(Response):
    prompt: str


# --- embeddings request --------------------------------------------------------------


class EmbeddingRequest(Request):
    """``POST /v1/embeddings``."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(default=None, ge=1, le=8192)
    encoding_format: Literal["float", "base64"] | None = "float"
    user: str | None = None


# --- responses -------------------------------------------------------------------------


class PromptTokensDetails(Response):
    cached_tokens: int = 0


class CompletionTokensDetails(Response):
    reasoning_tokens: int = 0


class CompletionUsage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Response):
    content: list[TokenLogprob] | None
    refusal: None = None


class ResponseFunctionCall(Response):
    name: str
    arguments: str = Field(description="JSON text, as OpenAI sends it.")


class ChatCompletionMessageToolCall(Response):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ChatCompletionMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    reasoning_content: str | None = Field(
        default=None, description="The simulator's reasoning (vLLM and DeepSeek's field)."
    )


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(Response):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(Response):
    """A whole chat completion (``stream`` false)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: CompletionUsage


class ChoiceDeltaFunctionCall(Response):
    name: str | None = None
    arguments: str


class ChoiceDeltaToolCall(Response):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaFunctionCall


class ChoiceDelta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChunkChoice(Response):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Response):
    """One ``data:`` event of a chat completion stream."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class CompletionLogprobs(Response):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for an echoed first token.")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(Response):
    """A legacy completion, whole or as one stream event (the shape is the same)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class Embedding(Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of float32 bytes.")


class EmbeddingUsage(Response):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(Response):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Response):
    """Every error, before or during a stream."""

    error: ErrorBody


class Health(Response):
    status: Literal["healthy"]
    state: dict[str, Any] | None = Field(
        default=None,
        description="With --state-url: whether the shared state store answers (ok), its "
        "failures so far (errors) and the last one. A failing store does not fail /health.",
    )


class Load(Response):
    server_load: int = Field(description="Generation requests in flight (streams included).")
    tasks: int = Field(description="asyncio tasks alive in the server's event loop.")
