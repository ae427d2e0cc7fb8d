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
    detail: Literal["auto", "low", "high"] | None = None


class InputOther(Request):
    """Files and audio: accepted by the schema, refused by the text-only engine."""

    type: Literal["input_file", "input_audio"]


InputContent = Annotated[InputText | InputImage | InputOther, Field(discriminator="type")]


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


class FunctionCallOutputItem(Request):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputContent]


class ReasoningItem(Request):
    """Earlier reasoning handed back by the client; it adds nothing to the prompt."""

    type: Literal["reasoning"]


class CompactionItem(Request):
    """The window ``POST /v1/responses/compact`` returned, handed back as input."""

    type: Literal["compaction"]
    encrypted_content: str = Field(max_length=10_485_760)
    id: str | None = None


def _item_type(value: Any) -> str:
    # Messages may omit "type"; everything else names itself.
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[CompactionItem, Tag("compaction")],
    Discriminator(_item_type),
]


class FunctionTool(Request):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(Request):
    type: Literal["function"]
    name: str


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
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
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
