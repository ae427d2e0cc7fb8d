"""HTTP routes, one module per API: parse, validate, dispatch to ``serving``, wrap.

``ROUTERS`` hold every route but the admin API's; ``ERROR_DIALECTS`` says
which routes answer errors in SSE (for curl) or in Anthropic's envelope.
"""

from __future__ import annotations

from fastapi import APIRouter

from streamapi.api import anthropic, openai, ops, responses, responses_ws, tokens
from streamapi.errors import ErrorDialects

ROUTERS: tuple[APIRouter, ...] = (
    openai.router,
    responses.router,
    responses_ws.router,
    anthropic.router,
    tokens.router,
    ops.router,
)

ERROR_DIALECTS = ErrorDialects(
    sse_paths=openai.SSE_PATHS,
    anthropic_paths=anthropic.PATHS,
    anthropic_prefixes=anthropic.PREFIXES,
)
