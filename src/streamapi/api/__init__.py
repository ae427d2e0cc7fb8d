"""HTTP routes, one module per API: parse, validate, dispatch to ``serving``, wrap.

``router`` holds every route; ``ERROR_DIALECTS`` says which routes answer
errors in SSE (for curl) or in Anthropic's envelope.
"""

from __future__ import annotations

from fastapi import APIRouter

from streamapi.api import anthropic, openai, ops, responses
from streamapi.errors import ErrorDialects

router = APIRouter()
for _module in (openai, responses, anthropic, ops):
    router.include_router(_module.router)

ERROR_DIALECTS = ErrorDialects(sse_paths=openai.SSE_PATHS, anthropic_paths=anthropic.PATHS)
