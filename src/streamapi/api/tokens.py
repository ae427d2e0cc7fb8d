"""vLLM's tokenizer routes: ``POST /tokenize`` and ``POST /detokenize``.

They use the simulator's tokenizer (``text.tokenizer``), whose ids are computed
from a token's text and back, so they are stable across processes; a chat's
tokens include the framing tokens that usage counts (``chat_prompt_tokens``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from streamapi.api.common import (
    ERRORS,
    check_model_access,
    json_response,
    read_json,
    refuse_if_draining,
    state_of,
    validate,
)
from streamapi.errors import InvalidRequestError
from streamapi.schemas.openai import (
    ChatMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    TextContentPart,
    TokenizeRequest,
    TokenizeResponse,
)
from streamapi.text.tokenizer import chat_prompt_tokens, decode, token_id, tokenize

router = APIRouter()


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    summary="Tokenize a prompt or a chat (vLLM)",
    description="`prompt`, or `messages` as in chat completions (framing tokens included, "
    "as chat usage counts them). The ids are the simulator tokenizer's, stable across "
    "processes; `/detokenize` turns them back into text.",
    responses=ERRORS,
)
async def tokenize_route(request: Request) -> Response:
    state = state_of(request)
    refuse_if_draining(state["lifecycle"])
    parsed = validate(TokenizeRequest, await read_json(request))
    model = state["generation"].resolve_model(parsed.model)
    check_model_access(request, model)
    if parsed.messages is not None:
        tokens = chat_prompt_tokens(
            (message.role, _text(index, message)) for index, message in enumerate(parsed.messages)
        )
    else:
        tokens = tokenize(parsed.prompt or "")
    return json_response(
        {
            "count": len(tokens),
            "max_model_len": state["settings"].max_model_len_of(model),
            "tokens": [token_id(token) for token in tokens],
            "token_strs": tokens if parsed.return_token_strs else None,
        }
    )


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    summary="Turn token ids back into text (vLLM)",
    responses=ERRORS,
)
async def detokenize_route(request: Request) -> Response:
    state = state_of(request)
    refuse_if_draining(state["lifecycle"])
    parsed = validate(DetokenizeRequest, await read_json(request))
    check_model_access(request, state["generation"].resolve_model(parsed.model))
    try:
        text = decode(parsed.tokens)
    except ValueError as exc:
        raise InvalidRequestError(f"Invalid token id: {exc}.", param="tokens") from None
    return json_response({"prompt": text})


def _text(index: int, message: ChatMessage) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part_index, part in enumerate(content):
        if not isinstance(part, TextContentPart):
            raise InvalidRequestError(
                f"This model only reads text: content parts of type '{part.type}' are not "
                "supported.",
                param=f"messages[{index}].content[{part_index}].type",
            )
        parts.append(part.text)
    return "\n".join(parts)
