"""Limits on how much one request may make the server produce or keep: a small body must
not buy a huge answer (embeddings, log probabilities) or a large stored record
(``metadata``). Each refusal is a 400 naming the parameter, before any work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from streamapi.errors import InvalidRequestError

# OpenAI's documented metadata limits (chat completions, Responses).
METADATA_MAX_KEYS: Final = 16
METADATA_MAX_KEY_CHARS: Final = 64
METADATA_MAX_VALUE_CHARS: Final = 512
# Anthropic's Messages metadata holds one field: user_id, a string of at most 256 characters.
ANTHROPIC_USER_ID_MAX_CHARS: Final = 256


def check_metadata(metadata: object, *, param: str = "metadata") -> None:
    """400 unless ``metadata`` is OpenAI's: at most 16 string pairs, keys of at most 64
    characters, values of at most 512."""
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise InvalidRequestError(f"{param} must be an object of strings.", param=param)
    if len(metadata) > METADATA_MAX_KEYS:
        raise InvalidRequestError(
            f"{param} may hold at most {METADATA_MAX_KEYS} keys; got {len(metadata)}.",
            param=param,
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise InvalidRequestError(
                f"{param} keys may be at most {METADATA_MAX_KEY_CHARS} characters long; "
                f"got {len(key)}.",
                param=f"{param}.{key[:METADATA_MAX_KEY_CHARS]}",
            )
        if not isinstance(value, str):
            raise InvalidRequestError(f"{param} values must be strings.", param=f"{param}.{key}")
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise InvalidRequestError(
                f"{param} values may be at most {METADATA_MAX_VALUE_CHARS} characters long; "
                f"got {len(value)}.",
                param=f"{param}.{key}",
            )


def check_anthropic_metadata(metadata: Mapping[str, Any] | None) -> None:
    """400 unless ``metadata`` is Anthropic's: ``user_id`` (a string of at most 256
    characters, or null) and nothing else."""
    if metadata is None:
        return
    for key in metadata:
        if key != "user_id":
            raise InvalidRequestError(
                f"metadata.{key}: Extra inputs are not permitted", param=f"metadata.{key}"
            )
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise InvalidRequestError(
            "metadata.user_id: Input should be a valid string", param="metadata.user_id"
        )
    if isinstance(user_id, str) and len(user_id) > ANTHROPIC_USER_ID_MAX_CHARS:
        raise InvalidRequestError(
            f"metadata.user_id: String should have at most {ANTHROPIC_USER_ID_MAX_CHARS} "
            "characters",
            param="metadata.user_id",
        )


def check_top_logprobs(n: int, alternatives: int, *, limit: int, param: str) -> None:
    """400 when ``n`` choices of ``alternatives`` log probabilities at each token list more
    than ``limit`` per token position."""
    if n * alternatives > limit:
        raise InvalidRequestError(
            f"n x {param} may be at most {limit} (--max-top-logprobs-total); got "
            f"{n} x {alternatives} = {n * alternatives}.",
            param=param,
        )


def check_embedding_floats(inputs: int, dimensions: int, *, limit: int) -> None:
    """400 when ``inputs`` vectors of ``dimensions`` exceed ``limit`` numbers in all."""
    if inputs * dimensions > limit:
        raise InvalidRequestError(
            f"inputs x dimensions may be at most {limit} (--max-embedding-floats); got "
            f"{inputs} x {dimensions} = {inputs * dimensions}. Send fewer inputs per request.",
            param="input",
        )
