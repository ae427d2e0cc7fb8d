"""Embeddings (``/v1/embeddings``): deterministic unit vectors derived from the input.

Equal inputs (and model) give equal vectors. A vector of ``d`` dimensions is
the first ``d`` components of the full-length one, renormalised, as OpenAI's
``text-embedding-3`` models shorten theirs, so shortened vectors stay
consistent with full ones.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from typing import Any

from streamapi.errors import InvalidRequestError
from streamapi.schemas.openai import EmbeddingRequest
from streamapi.serving.generation import Generation
from streamapi.serving.request_limits import check_embedding_floats
from streamapi.text.tokenizer import count_tokens

_MAX_INPUTS = 2048


class EmbeddingService:
    """Serves ``/v1/embeddings``."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation

    def check(self, request: EmbeddingRequest) -> None:
        """400 for a request ``create`` would refuse, at no cost: call it on the event loop."""
        settings = self._generation.settings
        self._generation.resolve_model(request.model)
        inputs = _inputs(request.input)
        dimensions = request.dimensions or settings.embedding_dimensions
        check_embedding_floats(len(inputs), dimensions, limit=settings.max_embedding_floats)

    def create(self, request: EmbeddingRequest) -> dict[str, Any]:
        """The embeddings of every input, with usage."""
        self.check(request)
        settings = self._generation.settings
        model = self._generation.resolve_model(request.model)
        inputs = _inputs(request.input)
        dimensions = request.dimensions or settings.embedding_dimensions
        full = max(dimensions, settings.embedding_dimensions)
        data = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            key = item if isinstance(item, str) else " ".join(map(str, item))
            prompt_tokens += count_tokens(item) if isinstance(item, str) else len(item)
            vector = embed(f"{model}\x00{key}", full, dimensions)
            encoded: list[float] | str = vector
            if request.encoding_format == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }


def embed(key: str, full: int, dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` taken from the ``full``-length vector of ``key``."""
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    components = [rng.gauss(0.0, 1.0) for _ in range(full)][:dimensions]
    norm = math.sqrt(sum(c * c for c in components)) or 1.0
    return [c / norm for c in components]


def _inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    items: list[str | list[int]]
    if isinstance(value, str):
        items = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [value]  # type: ignore[list-item]
    else:
        items = list(value)  # type: ignore[arg-type]
    if not items:
        raise InvalidRequestError("input must not be empty.", param="input")
    if len(items) > _MAX_INPUTS:
        raise InvalidRequestError(
            f"input may hold at most {_MAX_INPUTS} items; got {len(items)}.", param="input"
        )
    for index, item in enumerate(items):
        if not item:
            raise InvalidRequestError(f"input[{index}] must not be empty.", param=f"input[{index}]")
    return items
