"""Where test control meets the serving path: ``Control.plan`` and the ``ControlPlan`` it returns.

For every generation request, ``api.common.respond`` calls ``Control.plan``
after the protocol's ``prepare`` and before admission. In that order it

1. counts the request against its rate limits (429 if over, headers either way),
2. reads the ``X-Streamapi-Fault`` header (with ``--enable-fault-headers``),
3. finds the first matching rule,
4. settles the faults: the header's, else the rule's, else one drawn at ``--fault-rate``,
5. refuses with the rule's error or a ``status=`` fault (an ``APIError``, so each
   route answers in its own shape),
6. puts the rule's scripted answer into every choice's ``GenerationRequest``,
   so the engine streams it and every protocol renders and counts it.

The ``ControlPlan`` then merges the rule's timing into the per-request overrides,
``arm``s the admission's engine streams with the mid-stream faults (and the
journal's token count), wraps the frames for the frame-level faults, and turns a
dropped non-streamed answer into a cut connection.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from streamapi import scope_keys
from streamapi.control.dropped_response import DroppedResponse
from streamapi.control.fault_errors import ErrorContext, status_error
from streamapi.control.fault_frames import watch_frames
from streamapi.control.fault_streams import CountedStream, FaultedStream, Watch
from streamapi.control.journal import Journal, JournalEntry
from streamapi.control.ratelimit import RateLimiter
from streamapi.control.rules import ENDPOINT_PATHS, Facts, Matched, RuleBook, parse_rules
from streamapi.engines.protocol import Engine, LatencyControl
from streamapi.errors import InvalidRequestError
from streamapi.fault_grammar import (
    FAULT_HEADER,
    NO_FAULTS,
    FaultSet,
    FaultSyntaxError,
    parse_fault_choices,
    parse_faults,
)
from streamapi.serving.generation import Admission, Job, TestOverrides
from streamapi.settings import Settings
from streamapi.sse import AbortConnection
from streamapi.state.base import ConfigSnapshot, SharedState, StateUnavailableError

logger = logging.getLogger(__name__)


class Control:
    """Test control for one app: rules, faults, counted rate limits and the journal.

    Built from ``settings`` (``RulesError`` if the rules file is invalid); the
    admin API changes it at runtime (``update``) and ``reset_all`` puts the
    settings back. Rate limits are counted in ``state``'s buckets (this process's
    memory, or Redis). With a Redis store (``--state-url``) rule sequence counters
    and the journal are counted there too, and the admin API's changes are written
    there first and applied by every process.
    """

    def __init__(self, settings: Settings, state: SharedState) -> None:
        self.settings = settings
        self.shared = state if state.kind == "redis" else None
        """The store shared with other processes, or None (this process alone)."""
        self.rules = RuleBook(settings.rules_file)
        self.limiter = RateLimiter(
            state.buckets,
            settings.rate_limit_requests_per_minute,
            settings.rate_limit_tokens_per_minute,
        )
        self.journal = (
            Journal(
                settings.journal_size,
                None if self.shared is None else self.shared.journal,
                max_bytes=settings.journal_max_bytes,
            )
            if settings.admin_key is not None
            else None
        )
        # The admin API's changes in force: sections latency, faults, rate_limits, rules.
        self._document: dict[str, Any] = {}
        if self.shared is not None:
            self.shared.config.watch(self._apply_snapshot)
        self.fault_rate = settings.fault_rate
        self.fault_kinds = settings.fault_kinds
        self._fault_choices = parse_fault_choices(settings.fault_kinds)
        # Faults drawn at random are reproducible when the server has a seed.
        self._rng = random.Random(settings.seed)
        self._latency: LatencyControl | None = None

    # --- the serving path ------------------------------------------------------------

    def bind_engine(self, engine: Engine) -> None:
        """The engine whose latency the admin API reads and changes (the app's lifespan)."""
        self._latency = engine.latency_control
        if "latency" in self._document:
            # The shared configuration was read before the engine started.
            self._apply(self._document, ("latency",))

    async def plan(self, request: Request, job: Job, *, streamed: bool) -> ControlPlan:
        """Decide everything about ``job`` before admission; refusals raise ``APIError``."""
        state: dict[str, Any] = request.scope.setdefault("state", {})
        entry: JournalEntry | None = state.get(scope_keys.JOURNAL_ENTRY)
        # The matched route's path: building request.url parses the whole URL.
        endpoint = ENDPOINT_PATHS.get(getattr(request.scope.get("route"), "path", ""))
        template = job.choices[0]
        facts = Facts.of(endpoint, template, request.headers)
        if entry is not None:
            entry.model, entry.stream, entry.prompt_tokens = job.model, streamed, job.prompt_tokens
            entry.describe_user(facts.user)
            principal = state.get(scope_keys.PRINCIPAL)
            entry.key_name = None if principal is None else principal.name
        if self.limiter.enabled:
            identity = identify(request.scope)
            if entry is not None:
                entry.identity = identity
            state[scope_keys.RATELIMIT_HEADERS] = await self.count(identity, job)
        faults = self._header_faults(request)
        matched = self.rules.match(facts) if self.shared is None else await self._match(facts)
        if entry is not None and matched is not None:
            entry.rule = matched.label
        context = ErrorContext(
            model=job.model,
            prompt_tokens=job.prompt_tokens,
            max_tokens=template.max_tokens or 0,
            # The model's own context length (a routes file may give one per model).
            max_model_len=self.settings.max_model_len_of(job.model) or self.settings.max_model_len,
        )
        if faults is None and matched is not None:
            answer = matched.rule.respond
            if answer.error is not None:
                raise status_error(
                    answer.error.status,
                    context,
                    retry_after_s=answer.error.retry_after_s,
                    message=answer.error.message,
                    type_=answer.error.type,
                    code=answer.error.code,
                )
            if answer.fault is not None:
                faults = parse_faults(answer.fault)
        if faults is None and self.fault_rate and self._rng.random() < self.fault_rate:
            faults = self._rng.choice(self._fault_choices)
        faults = faults or NO_FAULTS
        if entry is not None and faults.faults:
            entry.fault = faults.spec
        before = faults.before_stream
        if before is not None:
            assert before.status is not None
            raise status_error(before.status, context, retry_after_s=before.retry_after_s)
        return ControlPlan(
            job=_scripted(job, matched),
            watch=Watch(faults, context, scope_keys.arrival_time(request.scope), entry)
            if entry is not None or faults.faults
            else None,
            timing=self._timing(matched),
        )

    async def count(self, identity: str, job: Job) -> dict[str, str]:
        """Count ``job`` against ``identity``'s rate limits: the ``x-ratelimit-*`` headers,
        or ``RateLimitError``. The Responses WebSocket counts each turn here too."""
        if not self.limiter.enabled:
            return {}
        cost = job.prompt_tokens + sum(choice.max_tokens or 0 for choice in job.choices)
        return await self.limiter.admit(identity, job.model, cost)

    async def _match(self, facts: Facts) -> Matched | None:
        """``RuleBook.match`` with the sequence counters in the shared store.

        If the store fails, rules with a ``sequence`` condition do not match
        (their count is unknown); the others do.
        """
        rules = self.rules.rules()
        accepted = [(i, rule) for i, rule in enumerate(rules) if rule.match.accepts(facts)]
        if not accepted:
            return None
        generation = self._document.get("rules_generation", 0)
        names = [
            f"{generation}:{i}:{hashlib.sha256(rule.model_dump_json().encode()).hexdigest()}"
            for i, rule in accepted
        ]
        try:
            counts = await self.shared.counters.increment(names) if self.shared else []
        except StateUnavailableError:
            counts = [0] * len(accepted)
        for (index, rule), sequence in zip(accepted, counts, strict=True):
            wanted = rule.match.sequence
            if wanted is None or sequence in wanted:
                return Matched(rule, index, sequence, facts)
        return None

    def _header_faults(self, request: Request) -> FaultSet | None:
        spec = request.headers.get(FAULT_HEADER)
        if spec is None or not self.settings.enable_fault_headers:
            return None
        try:
            return parse_faults(spec)
        except FaultSyntaxError as exc:
            raise InvalidRequestError(
                f"Invalid {FAULT_HEADER} header: {exc}.", param=FAULT_HEADER
            ) from None

    def _timing(self, matched: Matched | None) -> tuple[float, float] | None:
        timing = None if matched is None else matched.rule.timing
        if timing is None:
            return None
        # What the rule leaves out keeps the engine's current value.
        latency = self.latency() or {}
        settings = self.settings
        ttft = timing.ttft_ms
        itl = timing.inter_token_ms
        return (
            ttft
            if ttft is not None
            else latency.get("time_to_first_token_ms", settings.time_to_first_token_ms),
            itl
            if itl is not None
            else latency.get("inter_token_latency_ms", settings.inter_token_latency_ms),
        )

    # --- runtime configuration (the admin API) ---------------------------------------

    def latency(self) -> dict[str, float] | None:
        """The engine's latency settings now, or None if the engine has none to change."""
        return None if self._latency is None else self._latency.latency()

    def set_latency(self, changes: dict[str, float]) -> None:
        """Change the engine's latency model; running sequences feel it from their next step."""
        if self._latency is None:
            raise InvalidRequestError("This engine has no latency settings to change.")
        self._latency.set_latency(changes)

    def set_faults(self, *, rate: float | None = None, kinds: str | None = None) -> None:
        """Change ``--fault-rate`` and ``--fault-kinds`` (``FaultSyntaxError`` if invalid)."""
        if kinds is not None:
            self._fault_choices = parse_fault_choices(kinds)
            self.fault_kinds = kinds
        if rate is not None:
            self.fault_rate = rate

    def reset(self) -> None:
        """Back to the settings: rules from the file, faults, limits, latency; journal emptied.

        The buckets are emptied by whoever resets the store (``reset_all``).
        """
        settings = self.settings
        self.rules.revert()
        self.set_faults(rate=settings.fault_rate, kinds=settings.fault_kinds)
        self.limiter.requests_per_minute = settings.rate_limit_requests_per_minute
        self.limiter.tokens_per_minute = settings.rate_limit_tokens_per_minute
        if self._latency is not None:
            self._latency.reset_latency()
        if self.journal is not None:
            self.journal.clear()

    async def update(self, changes: dict[str, Any]) -> None:
        """Apply the admin API's ``changes`` (checked already) here and, when shared, everywhere.

        Sections ``latency``, ``faults`` and ``rate_limits`` are merged field by
        field; ``rules`` (a list of rules as JSON, or None for the file's)
        replaces. With a shared store the change is written there first: if that
        fails (``StateUnavailableError``, a 503) nothing changed anywhere.
        """
        document = {**self._document}
        for section in ("latency", "faults", "rate_limits"):
            if section in changes:
                document[section] = {**document.get(section, {}), **changes[section]}
        if "rules" in changes:
            document["rules"] = changes["rules"]
            document["rules_generation"] = document.get("rules_generation", 0) + 1
        if self.shared is not None:
            await self.shared.config.write(document)
        if "rate_limits" in changes:
            # New limits start with full buckets, in every process.
            await self.limiter.buckets.reset()
        self._apply(document, changes.keys())

    async def reset_all(self) -> None:
        """``reset``, and with a shared store, the whole cluster's (written there first)."""
        if self.shared is not None:
            await self.shared.reset()
        else:
            await self.limiter.buckets.reset()
        self._document = {}
        self.reset()

    def _apply_snapshot(self, snapshot: ConfigSnapshot) -> None:
        """Another process's change (the shared store's poller)."""
        if snapshot.document is None:
            if self._document:
                self._document = {}
                self.reset()
            return
        self._apply(snapshot.document, ("latency", "faults", "rate_limits", "rules"))

    def _apply(self, document: dict[str, Any], sections: Any) -> None:
        previous, self._document = self._document, document
        settings = self.settings
        if "latency" in sections and self._latency is not None:
            self._latency.reset_latency()
            self._latency.set_latency(document.get("latency", {}))
        if "faults" in sections:
            faults = document.get("faults", {})
            self.set_faults(
                rate=faults.get("rate", settings.fault_rate),
                kinds=faults.get("kinds", settings.fault_kinds),
            )
        if "rate_limits" in sections:
            limits = document.get("rate_limits", {})
            self.limiter.requests_per_minute = limits.get(
                "requests_per_minute", settings.rate_limit_requests_per_minute
            )
            self.limiter.tokens_per_minute = limits.get(
                "tokens_per_minute", settings.rate_limit_tokens_per_minute
            )
        generation = document.get("rules_generation", 0)
        if "rules" in sections and generation != previous.get("rules_generation", 0):
            rules = document.get("rules")
            if rules is None:
                self.rules.revert()
            else:
                self.rules.replace(parse_rules(rules, source="the shared configuration"))


@dataclass(frozen=True, slots=True)
class ControlPlan:
    """What ``Control.plan`` decided for one request, and how to apply it."""

    job: Job
    """The job to admit: the checked one, with the rule's script in every choice."""
    watch: Watch | None
    """Shared by the armed streams and frames; None when there is nothing to watch."""
    timing: tuple[float, float] | None
    """The rule's (time to first token, inter-token latency) in ms, if it sets them."""

    def overrides(self, asked: TestOverrides | None) -> TestOverrides | None:
        """The test headers' overrides, with the rule's timing where they set none."""
        if self.timing is None:
            return asked
        ttft, itl = self.timing
        if asked is None:
            return TestOverrides(time_to_first_token_ms=ttft, inter_token_latency_ms=itl)
        return TestOverrides(
            time_to_first_token_ms=asked.time_to_first_token_ms
            if asked.time_to_first_token_ms is not None
            else ttft,
            inter_token_latency_ms=asked.inter_token_latency_ms
            if asked.inter_token_latency_ms is not None
            else itl,
            output_tokens=asked.output_tokens,
        )

    def arm(self, admission: Admission) -> None:
        """Wrap the admission's engine streams with the mid-stream faults and counting."""
        watch = self.watch
        if watch is None:
            return

        def ended() -> None:
            # A cut made on purpose is not a client disconnect.
            admission.ended = True

        watch.on_drop = ended
        # A fault counts tokens as they are framed, so it takes each delta alone; the
        # journal's count alone does not, and ready tokens then share writes.
        wrap = FaultedStream if watch.faults.faults else CountedStream
        admission.streams[:] = [wrap(stream, watch) for stream in admission.streams]

    def frames(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream's frames, with the frame-level faults applied."""
        return frames if self.watch is None else watch_frames(frames, self.watch)

    async def answer(self, work: Awaitable[Response]) -> Response:
        """A whole answer; one dropped mid-way becomes a connection cut mid-body."""
        try:
            return await work
        except AbortConnection:
            return DroppedResponse()


def identify(scope: Mapping[str, Any]) -> str:
    """Who a request counts against: its authenticated key's name, else its client address.

    Never a header the client chose: with keys on, ``middleware.EdgeMiddleware`` has put
    the key that authenticated in the scope (whichever header carried it), so a second,
    junk key in the other header cannot mint a fresh bucket. With auth off it is
    the peer's address, which ``X-Forwarded-For`` replaces only when the peer is a
    proxy named in ``--forwarded-allow-ips``.
    """
    principal = scope_keys.state_of(scope).get(scope_keys.PRINCIPAL)
    if principal is not None:
        return f"key:{principal.name}"
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


def _scripted(job: Job, matched: Matched | None) -> Job:
    script = None if matched is None else matched.script()
    if script is None:
        return job
    return replace(job, choices=tuple(replace(c, script=script) for c in job.choices))
