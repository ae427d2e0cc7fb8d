"""The admin API (``/admin``): test control at runtime, for requests with the admin key.

Mounted only when ``--admin-key`` is set. Every route needs ``Authorization:
Bearer <admin key>``, compared in constant time; anything else gets 401.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from streamapi.api.common import ERRORS, AppState, AppStateDep, check_admin_key
from streamapi.control.hooks import Control
from streamapi.control.rules import RulesError, parse_rules, parse_text
from streamapi.errors import InvalidRequestError
from streamapi.fault_grammar import FaultSyntaxError, parse_fault_choices
from streamapi.settings import Settings
from streamapi.state import PER_WORKER

_bearer = HTTPBearer(auto_error=False, description="The server's --admin-key.")


async def _authorize(
    state: AppStateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    key = state["settings"].admin_key
    given = None if credentials is None else credentials.credentials
    check_admin_key(key, given, what="send")


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(_authorize)],
    responses={401: {**ERRORS[400], "description": "Missing or wrong admin key."}},
)


class LatencyConfig(BaseModel):
    """The engine's latency model (the settings of the same names)."""

    model_config = ConfigDict(extra="forbid")

    time_to_first_token_ms: float | None = Field(default=None, ge=0, le=600_000)
    prefill_overhead_ms: float | None = Field(default=None, ge=0, le=600_000)
    prefill_ms_per_token: float | None = Field(default=None, ge=0, le=1_000)
    inter_token_latency_ms: float | None = Field(default=None, ge=0, le=60_000)
    load_factor: float | None = Field(default=None, ge=0, le=100)
    latency_jitter_pct: float | None = Field(default=None, ge=0, le=70)


class FaultConfig(BaseModel):
    """Random faults: the fraction of requests that get one, and the faults drawn from."""

    model_config = ConfigDict(extra="forbid")

    rate: float | None = Field(default=None, ge=0, le=1)
    kinds: str | None = Field(
        default=None, description="Fault specifications separated by '|' (--fault-kinds)."
    )


class RateLimitConfig(BaseModel):
    """Counted rate limits per API key (or client address) and model; 0 is no limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)


class ConfigPatch(BaseModel):
    """What to change; sections and fields left out keep their values."""

    model_config = ConfigDict(extra="forbid")

    latency: LatencyConfig | None = None
    faults: FaultConfig | None = None
    rate_limits: RateLimitConfig | None = None


class RulesState(BaseModel):
    source: str | None = Field(description="'file' (--rules-file), 'admin' (PUT) or null.")
    path: str | None
    count: int
    error: str | None = Field(description="Why the file's last change was not loaded, if so.")


class ConfigView(BaseModel):
    latency: dict[str, float] | None = Field(
        description="Null when the engine has no latency model to change."
    )
    faults: dict[str, Any]
    rate_limits: dict[str, int]
    rules: RulesState
    state: dict[str, Any] = Field(
        description="Where shared state lives (local or redis), its health, and what is "
        "per process (per_worker) when it is not shared."
    )


class RulesView(RulesState):
    rules: list[dict[str, Any]]


class JournalRecord(BaseModel):
    """One request to a generation route (times in ms from its arrival)."""

    id: int
    time: float = Field(description="Unix time of its arrival.")
    method: str
    path: str
    endpoint: str | None = Field(description="chat, completions, responses or messages.")
    request_id: str | None
    model: str | None
    stream: bool | None
    identity: str | None = Field(
        description="What rate limits count it against: key:<hash of its API key>, or "
        "addr:<client address>. Only set when rate limits are on."
    )
    key_name: str | None = Field(description="The name of its API key (with --api-key).")
    user: str | None = Field(description="Its last user message (the first 500 characters).")
    status: int | None
    outcome: str = Field(
        description="in_progress, completed, error, dropped or client_disconnected."
    )
    prompt_tokens: int | None
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float | None
    rule: str | None = Field(description="The matched rule's name, or #<its place>.")
    fault: str | None = Field(description="The injected fault, as written.")
    error: dict[str, Any] | None = Field(description="type, code and message of its error.")
    process: str | None = Field(default=None, description="pid@host of the process that served it.")


class JournalView(BaseModel):
    entries: list[JournalRecord]


def _config(state: AppState) -> ConfigView:
    control = state["control"]
    limiter = control.limiter
    return ConfigView(
        latency=control.latency(),
        faults={"rate": control.fault_rate, "kinds": control.fault_kinds},
        rate_limits={
            "requests_per_minute": limiter.requests_per_minute,
            "tokens_per_minute": limiter.tokens_per_minute,
        },
        rules=_rules_state(control),
        state=state_report(state),
    )


def state_report(state: AppState) -> dict[str, Any]:
    """The state backend, its health, and the features that are per worker (item 4)."""
    shared = state["shared"]
    report: dict[str, Any] = {"backend": shared.kind, **shared.health.describe()}
    report["per_worker"] = per_worker_features(state["settings"], shared.kind)
    return report


def per_worker_features(settings: Settings, kind: str) -> list[str]:
    """What each of ``--workers N`` processes keeps for itself without a state URL."""
    if kind == "redis" or settings.workers <= 1:
        return []
    return list(PER_WORKER)


def _rules_state(control: Control) -> RulesState:
    book = control.rules
    return RulesState(
        source=book.source,
        path=None if book.path is None else str(book.path),
        count=len(book.rules()),
        error=book.error,
    )


@router.get("/config", response_model=ConfigView, summary="Read the test-control settings")
async def read_config(state: AppStateDep) -> ConfigView:
    return _config(state)


@router.patch(
    "/config",
    response_model=ConfigView,
    summary="Change latency, random faults or rate limits",
    description="Partial: only the sections and fields given change. Latency changes apply "
    "to running sequences from their next step; new rate limits start with full buckets.",
    responses={400: ERRORS[400]},
)
async def change_config(patch: ConfigPatch, state: AppStateDep) -> ConfigView:
    control = state["control"]
    # Check everything before changing anything.
    if patch.faults is not None and patch.faults.kinds is not None:
        try:
            parse_fault_choices(patch.faults.kinds)
        except FaultSyntaxError as exc:
            raise InvalidRequestError(
                f"Invalid fault kinds: {exc}.", param="faults.kinds"
            ) from None
    changes: dict[str, Any] = {}
    latency = {} if patch.latency is None else patch.latency.model_dump(exclude_none=True)
    if latency:
        if control.latency() is None:
            raise InvalidRequestError("This engine has no latency settings to change.")
        changes["latency"] = latency
    if patch.faults is not None:
        changes["faults"] = patch.faults.model_dump(exclude_none=True)
    if patch.rate_limits is not None:
        changes["rate_limits"] = patch.rate_limits.model_dump(exclude_none=True)
    # With --state-url this writes to the shared store first (503 there changes nothing).
    await control.update(changes)
    return _config(state)


def _rules_view(control: Control) -> RulesView:
    rules = [
        rule.model_dump(mode="json", by_alias=True, exclude_none=True)
        for rule in control.rules.rules()
    ]
    return RulesView(**_rules_state(control).model_dump(), rules=rules)


@router.get("/rules", response_model=RulesView, summary="Read the rules in force")
async def read_rules(state: AppStateDep) -> RulesView:
    return _rules_view(state["control"])


@router.put(
    "/rules",
    response_model=RulesView,
    summary="Replace the rules",
    description="The body is a rules file's content: JSON, or YAML with a YAML content type "
    "(`application/yaml`). The rules replace the file's until `DELETE /admin/rules` or a "
    "reset; their sequence counters start again. An invalid body gets 400 naming the rule "
    "and the field, and changes nothing.",
    responses={400: ERRORS[400]},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RulesFile"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def replace_rules(request: Request, state: AppStateDep) -> RulesView:
    body = (await request.body()).decode("utf-8", errors="replace")
    is_yaml = "yaml" in request.headers.get("content-type", "")
    try:
        if is_yaml:
            data = parse_text(body, source="the request body")
        else:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RulesError(f"the request body: not valid JSON: {exc}") from None
        rules = parse_rules(data, source="the request body")
    except RulesError as exc:
        raise InvalidRequestError(str(exc), param="rules") from None
    dumped = [rule.model_dump(mode="json", by_alias=True, exclude_unset=True) for rule in rules]
    await state["control"].update({"rules": dumped})
    return _rules_view(state["control"])


@router.delete(
    "/rules",
    response_model=RulesView,
    summary="Go back to the rules file",
    description="Drops rules set with PUT; the file's rules (if any) are read again.",
)
async def revert_rules(state: AppStateDep) -> RulesView:
    await state["control"].update({"rules": None})
    return _rules_view(state["control"])


@router.get(
    "/journal",
    response_model=JournalView,
    summary="The last requests to the generation routes",
    description="Oldest first; requests still running are listed with outcome in_progress.",
)
async def read_journal(
    state: AppStateDep,
    limit: Annotated[int | None, Query(ge=1, description="Only the last this many.")] = None,
) -> JournalView:
    journal = state["control"].journal
    entries = [] if journal is None else await journal.read(limit)
    return JournalView(entries=[JournalRecord(**entry) for entry in entries])


@router.delete("/journal", status_code=204, summary="Empty the journal")
async def clear_journal(state: AppStateDep) -> Response:
    journal = state["control"].journal
    if journal is not None:
        await journal.clear_all()
    return Response(status_code=204)


@router.post(
    "/reset",
    response_model=ConfigView,
    summary="Back to the settings",
    description="Rules from the file (sequence counters restarted), random faults, rate "
    "limits (buckets full) and latency as the settings give them; the journal emptied.",
)
async def reset(state: AppStateDep) -> ConfigView:
    await state["control"].reset_all()
    return _config(state)
