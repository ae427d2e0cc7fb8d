"""Server settings: one object, read once at start-up and passed down.

Every field is also an environment variable ``STREAMAPI_<FIELD_NAME>`` and a
``streamapi serve --<field-name>`` option; the descriptions below are the
``--help`` text and the documentation's settings reference (generated from them by
``docs/hooks/settings_reference.py``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamapi.fault_grammar import FaultSyntaxError, parse_fault_choices
from streamapi.keys import KeyRing, load_keys
from streamapi.linear_regex import RegexError, compile_linear
from streamapi.replay_keys import DEFAULT_MATCH, parse_match_keys
from streamapi.routes_file import RoutesTable, load_routes

if TYPE_CHECKING:
    from streamapi.cassettes import Exchange

LatencyProfile = Literal["default", "instant", "8b-1gpu", "70b-8gpu"]


@dataclass(frozen=True, slots=True)
class LatencyPreset:
    """The settings a latency profile presets (see ``LATENCY_PROFILES``)."""

    time_to_first_token_ms: float
    prefill_overhead_ms: float
    prefill_ms_per_token: float
    inter_token_latency_ms: float
    load_factor: float
    kv_cache_tokens: int
    max_num_seqs: int


# The GPU figures are orders of magnitude taken from public benchmarks of models
# of that class, not measurements: they give a real deployment's shape, not its
# exact numbers. The GPU profiles keep vLLM's default of 256 running sequences; the
# others run 1024 at once, above the 500 streams one server core keeps clean
# (docs/performance.md), so the engine never queues what the server could serve.
LATENCY_PROFILES: Final[dict[LatencyProfile, LatencyPreset]] = {
    "default": LatencyPreset(100.0, 0.0, 0.0, 5.0, 1.0, 2_097_152, 1024),
    "instant": LatencyPreset(0.0, 0.0, 0.0, 0.0, 0.0, 2_097_152, 1024),
    "8b-1gpu": LatencyPreset(5.0, 15.0, 0.06, 7.0, 2.0, 450_000, 256),
    "70b-8gpu": LatencyPreset(10.0, 25.0, 0.1, 18.0, 2.0, 1_200_000, 256),
}
# Context lengths: Claude models have 200k tokens; any other simulated model gets the
# 128k of today's common open models, so clients' default max_tokens (pydantic-ai's
# Anthropic model asks 16384, or 64000 for claude-sonnet-4-5) fit.
DEFAULT_MAX_MODEL_LEN: Final = 131_072
CLAUDE_MAX_MODEL_LEN: Final = 200_000
_CLAUDE_MODEL = re.compile(r"claude", re.IGNORECASE)
# Model names up to this long have what is derived from them (their context length,
# whether they reason) remembered, for this many names.
MODEL_NAME_CACHED_CHARS: Final = 256
MODEL_NAMES_KEPT: Final = 256


class Settings(BaseSettings):
    """streamapi serve: an OpenAI-compatible streaming LLM API server.

    Every option is also read from the environment as STREAMAPI_<OPTION>, with
    the option's dashes as underscores (STREAMAPI_INTER_TOKEN_LATENCY_MS=20).
    Options given on the command line win over the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="STREAMAPI_",
        extra="ignore",
        validate_default=True,
        cli_prog_name="streamapi serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    # --- listening -----------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to listen on.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the server and of uvicorn."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes on the same address (a listening socket each, with "
        "SO_REUSEPORT where the OS has it), each with its own event loop, engine, metrics, "
        "Responses store, control state and concurrency caps (the caps and limits are per "
        "process unless --state-url shares them). 1 serves from this process alone.",
    )
    tracemalloc_frames: int = Field(
        default=0,
        ge=0,
        le=100,
        description="A debugging aid: above 0, trace every allocation made once the server "
        "has started (this many frames each) and, on each SIGUSR1, write a tracemalloc "
        "snapshot of the live heap to streamapi-PID-N.tracemalloc in the temporary directory "
        "($TMPDIR). Slows the server. bench/stream_memory.py reads them. 0: off.",
    )

    # --- models ---------------------------------------------------------------
    served_model_names: list[str] = Field(
        default=["sim-small"],
        min_length=1,
        description="Model names listed by /v1/models. The first one answers requests that "
        "name no model. On the command line: a JSON list or comma-separated names. The "
        "simulator serves those the routes file does not route; the routes file's other "
        "models are listed after them.",
    )
    routes_file: Path | None = Field(
        default=None,
        description="Routing table (YAML, or JSON if the name ends in .json): upstream "
        "OpenAI-compatible servers and the model names each serves (see the documentation's "
        "Gateway page). Checked at start-up; errors name the entry and field.",
    )
    accept_unknown_models: bool = Field(
        default=True,
        description="Answer requests for a model that is not listed (the response names the "
        "requested model). When off, such requests get 404 model_not_found, as OpenAI does.",
    )
    max_model_len: int = Field(
        default=DEFAULT_MAX_MODEL_LEN,
        ge=16,
        description="Context length in tokens of every simulated model. A prompt plus "
        "max_tokens beyond it gets 400 context_length_exceeded. Default: 131072, and "
        "200000 for models whose name contains 'claude'.",
    )

    # --- simulator content ----------------------------------------------------
    min_answer_chars: int = Field(
        default=1378,
        ge=0,
        description="The simulator's answers are at least this many characters long "
        "(before max_tokens or stop cut them).",
    )
    seed: int | None = Field(
        default=None,
        description="Seed for requests that carry none. Set it to make every answer "
        "deterministic; requests with their own seed are always deterministic.",
    )

    reasoning: bool = Field(
        default=False,
        description="Make every model reason before answering (reasoning_content in chat, "
        "reasoning items in Responses, thinking blocks in Messages).",
    )
    reasoning_model_pattern: str = Field(
        default=r"(?i)(reason|think|\br1\b|^o[1-9])",
        description="Models whose name matches this regular expression (RE2 syntax) reason "
        "before answering; requests can also ask (reasoning_effort, reasoning, thinking).",
    )
    vision_model_pattern: str = Field(
        default=r"(?i)(vision|gpt-4o|gpt-4\.1|gpt-4-turbo|gpt-5|claude|gemini|llava|pixtral|"
        r"[-_.]vl\b|qwen.*vl)",
        description="Models whose name matches this regular expression (RE2 syntax) read images "
        "(image_url parts in chat, input_image in Responses, image blocks in Messages); "
        "each image counts 85 prompt tokens at detail 'low', else 765. Other models answer "
        "400 to an image.",
    )
    embedding_dimensions: int = Field(
        default=1536, ge=1, le=8192, description="Length of embeddings when a request sets none."
    )
    responses_store_size: int = Field(
        default=1000,
        ge=0,
        description="Responses kept in memory for previous_response_id and GET "
        "/v1/responses/{id}; the least recently used are dropped first. 0 stores none.",
    )
    responses_store_max_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=0,
        description="Bytes the stored Responses may hold in this process (each counted as "
        "its JSON); past it the least recently used are dropped, and one larger alone is not "
        "stored. 0: only the count caps them.",
    )
    background_events_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Bytes of events the background Responses keep for replay (GET "
        "?stream=true), all runs together; past it finished runs' events are forgotten "
        "first, then running runs stop keeping text deltas (the .done events and the final "
        "Response still carry all of it). 0: no cap.",
    )

    # --- engine model: latency ------------------------------------------------
    latency_profile: LatencyProfile = Field(
        default="default",
        description="Named preset for the six latency and KV settings below (default, instant, "
        "8b-1gpu, 70b-8gpu); each of those settings given explicitly wins over the preset. "
        "See the documentation's Engine model page.",
    )
    time_to_first_token_ms: float = Field(
        default=100.0,
        ge=0,
        le=600_000,
        description="Latency from a sequence's prefill to its first token that holds its "
        "slot but not the engine. A lone request's time to first token is this plus "
        "prefill-overhead-ms plus prefill-ms-per-token per uncached prompt token. "
        "Default: the latency profile's (100 in the default profile).",
    )
    prefill_overhead_ms: float = Field(
        default=0.0,
        ge=0,
        le=600_000,
        description="Fixed cost of an engine step that prefills, paid once per step by "
        "every running sequence. Default: the latency profile's (0 in the default profile).",
    )
    prefill_ms_per_token: float = Field(
        default=0.0,
        ge=0,
        le=1_000,
        description="Prefill cost of each uncached prompt token admitted in a step, paid by "
        "every running sequence. Default: the latency profile's (0 in the default profile).",
    )
    inter_token_latency_ms: float = Field(
        default=5.0,
        ge=0,
        le=60_000,
        description="Duration of a decode step with one running sequence: a lone request's "
        "delay between two tokens. Default: the latency profile's (5 in the default profile).",
    )
    load_factor: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="How much a full batch slows a decode step: a step with r decoding "
        "sequences lasts inter-token-latency-ms x (1 + load-factor x (r-1)/(max-num-seqs-1)). "
        "Default: the latency profile's (1 in the default profile).",
    )
    latency_jitter_pct: float = Field(
        default=0.0,
        ge=0,
        le=70,
        description="Each step's duration is multiplied by a factor drawn uniformly from "
        "1 +/- this percentage, from a generator seeded by --seed when it is set.",
    )

    # --- engine model: capacity -----------------------------------------------
    max_num_seqs: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Most sequences (choices) the simulated engine runs at once (vLLM's "
        "name); more wait in its queue. Default: the latency profile's (1024 in the "
        "default and instant profiles, vLLM's 256 in the GPU profiles).",
    )
    max_waiting_requests: int = Field(
        default=1000,
        ge=0,
        le=1_000_000,
        description="Most sequences waiting for a free slot; beyond that a request gets 429 "
        "rate_limit_exceeded with Retry-After before its stream starts.",
    )
    kv_cache_tokens: int = Field(
        default=2_097_152,
        ge=16,
        description="Simulated KV-cache budget in tokens: a sequence is admitted only when "
        "its prompt plus planned output fits in what running sequences leave free. Must be "
        "at least max-model-len. Default: the latency profile's (2097152 in the default "
        "profile: 1024 sequences of 2,000 tokens each).",
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="Remember prompt prefixes (in 16-token blocks, up to kv-cache-tokens of "
        "them): a prompt that starts like a recent one prefills only its new tokens, and "
        "usage.prompt_tokens_details.cached_tokens says how many were cached.",
    )
    enable_latency_headers: bool = Field(
        default=False,
        description="Honour the per-request test headers x-streamapi-ttft-ms, "
        "x-streamapi-itl-ms and x-streamapi-output-tokens. Off by default: a public server "
        "must not let clients choose their own latency.",
    )

    # --- output framing ---------------------------------------------------------
    tokens_per_event: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Tokens carried by each streamed SSE event of chat and legacy "
        "completions. The Responses and Anthropic Messages streams send one delta event per "
        "token whatever this says, as those APIs do.",
    )

    # --- request bounds -------------------------------------------------------
    max_prompt_chars: int = Field(
        default=5000,
        ge=1,
        description='Longest accepted prompt in the simple prompt form {"prompt": ...} of '
        "/v1/chat/completions; longer gets 400.",
    )
    max_n: int = Field(
        default=16, ge=1, le=128, description="Largest accepted n (choices per request)."
    )
    max_tools: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="Most tools one request may offer (OpenAI's documented limit); more gets "
        "400 too_many_tools before any schema is checked.",
    )
    max_schema_properties: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Most properties the JSON Schemas of one request (tools, response format) "
        "may declare between them (OpenAI's limit for one structured-output schema); more gets "
        "400 schema_too_large. Each costs about half a millisecond of CPU to check.",
    )
    max_embedding_floats: int = Field(
        default=2048 * 1536,
        ge=1,
        description="Most numbers one embeddings request may ask for: inputs x dimensions "
        "(default: 2,048 inputs of 1,536 dimensions); more gets 400.",
    )
    max_top_logprobs_total: int = Field(
        default=100,
        ge=0,
        description="Largest n x top_logprobs (alternatives listed at each token, summed "
        "over a request's choices); more gets 400. n=16 with top_logprobs=20 would list 336 "
        "log probabilities per token.",
    )
    max_request_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body; larger gets 413 before it is read.",
    )
    max_concurrent_requests: int = Field(
        default=0,
        ge=0,
        description="Most generation requests (streams, and non-streamed ones) open at once; "
        "one more gets 429 with Retry-After before its body is read (a cheap refusal under "
        "overload); set it below what one worker keeps clean. 0: no cap.",
    )
    max_concurrent_requests_per_key: int = Field(
        default=0,
        ge=0,
        description="The same cap for each API key (a keys file entry may set its own). 0: no cap.",
    )
    concurrency_retry_after_s: float = Field(
        default=1.0,
        gt=0,
        description="Retry-After sent with a 429 for a concurrency cap.",
    )

    # --- shared state (docs/scaling-out.md) ------------------------------------
    state_url: str | None = Field(
        default=None,
        description="Redis (or Valkey) URL, redis://host:port/db, holding the state every "
        "worker and replica pointed at it shares: rate limits, concurrency caps, the admin "
        "API's changes and rules, rule sequence counters, the journal and the Responses "
        "store. Start-up fails if it is unreachable. Unset: each process keeps its own.",
    )
    state_prefix: str = Field(
        default="streamapi:",
        min_length=1,
        description="Prefix of every key in the state store: servers with different "
        "prefixes share nothing.",
    )
    state_timeout_s: float = Field(
        default=0.25,
        gt=0,
        le=30,
        description="Longest wait for one call to the state store; past it the call fails "
        "(see --state-fail-closed).",
    )
    state_fail_closed: bool = Field(
        default=False,
        description="When the state store fails, refuse requests under rate limits and "
        "concurrency caps with 503 instead of letting them through uncounted.",
    )
    state_lease_ttl_s: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="How long a concurrency slot held by a process that died stays taken "
        "in the state store.",
    )

    # --- auth and CORS --------------------------------------------------------
    api_keys: list[SecretStr] = Field(
        default=[],
        description="API keys accepted as 'Authorization: Bearer <key>' or 'x-api-key' on "
        "every route but /health, /ping, /metrics and the docs. With no key here or in "
        "api-keys-file, auth is off and any key clients send is ignored.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="YAML or JSON file of named keys (or their SHA-256), each with an "
        "optional model allow-list and concurrency cap (see the documentation's Keys, limits "
        "and CORS page).",
    )
    cors_allow_origins: list[str] = Field(
        default=[],
        description="Origins allowed by CORS ('*' for any); empty turns CORS off. A request "
        "whose Origin header names another origin gets 403 before any work (browsers send "
        "Origin; SDKs and curl do not).",
    )
    forwarded_allow_ips: list[str] = Field(
        default=[],
        description="Addresses (or networks, or '*') of the proxies trusted to set "
        "X-Forwarded-For and X-Forwarded-Proto, as uvicorn's --forwarded-allow-ips: with auth "
        "off, rate limits count per client address, taken from X-Forwarded-For only when the "
        "connection comes from one of these. Empty: trust none, not even loopback.",
    )

    # --- streaming and lifecycle ---------------------------------------------
    ping_interval_s: float = Field(
        default=0,
        ge=0,
        description="Seconds between SSE keep-alive comments (': ping') on idle streams; "
        "0 turns them off. Off by default because some clients (openai-go) choke on them.",
    )
    send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A stream whose client takes longer than this to accept one write is "
        "dropped and its resources freed (checked four times per timeout: within 1.5 times "
        "this).",
    )
    keep_alive_timeout_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="Idle keep-alive connections are closed after this many seconds (set it "
        "above a load balancer's idle timeout).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="A connection must deliver a request's headers within this many seconds "
        "of opening (or of a keep-alive request's first byte), else 408 and it is closed "
        "(slowloris). 0: no deadline.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="A request's whole body must arrive within this many seconds of its "
        "headers, else the connection is closed. 0: no deadline.",
    )
    max_connections: int = Field(
        default=10_000,
        ge=0,
        description="Most open connections per worker, WebSockets included; one more gets "
        "503 and is closed before anything is read. 0: no cap.",
    )
    websocket_idle_timeout_s: float = Field(
        default=300.0,
        ge=0,
        description="A Responses WebSocket with no turn running and no message from its "
        "client for this many seconds gets an error event (websocket_idle_timeout) and is "
        "closed. 0: never.",
    )
    shutdown_grace_period_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, open streams may run this long; streams still open then "
        "end with an in-stream error event and [DONE].",
    )

    # --- record and replay (docs/record-replay.md) ---------------------------------
    record_dir: Path | None = Field(
        default=None,
        description="Record every exchange with an upstream of the routes file to cassettes: "
        "a directory (one <upstream>.jsonl each) or one .jsonl file. Exchanges already there "
        "are kept; each file is rewritten atomically after every exchange.",
    )
    record_redact_headers: list[str] = Field(
        default_factory=list,
        description="Header names whose values a cassette must not hold, besides the built-in "
        "ones (Authorization, X-Api-Key, Api-Key, OpenAI-Organization, Cookie...).",
    )
    record_redact_paths: list[str] = Field(
        default_factory=list,
        description="JSON paths of request body fields a cassette must not hold, besides the "
        "built-in ones (**.api_key...): keys separated by dots, * any one key or index, ** "
        "any depth.",
    )
    replay_dir: Path | None = Field(
        default=None,
        description="Answer requests routed to an upstream from the recordings in this "
        "cassette directory or .jsonl file, without sending anything upstream. Read and "
        "checked at start-up.",
    )
    replay_speed: float = Field(
        default=1.0,
        ge=0,
        description="Replayed timing: the recorded offsets divided by this (2 twice as fast); "
        "0 replays at once.",
    )
    replay_miss: Literal["simulator", "upstream", "error"] = Field(
        default="error",
        description="A request no recording matches: 'error' (404 naming the nearest "
        "recording and what differed), 'simulator', or 'upstream' (sent upstream, and "
        "recorded with --record: new episodes).",
    )
    replay_match: str = Field(
        default=",".join(DEFAULT_MATCH),
        description="What must be equal for a recording to match, comma-separated: endpoint, "
        "model, messages, system, last_user_message, tools, tool_names, params (every "
        "parameter that changes the answer), user_text (what the user typed, tagged context "
        "left out), assistant_turns (the assistant's text and tool calls, ids left out), "
        "agent (a coding agent's session: endpoint, model, tool_names, params, user_text, "
        "assistant_turns) or one parameter by name (temperature, seed...).",
    )
    replay_ordered: bool = Field(
        default=False,
        description="The N-th request matching a set of recordings gets the N-th of them "
        "(agent loops whose turns look alike under --replay-match).",
    )

    # --- test control (docs/testing/) ---------------------------------------------
    rules_file: Path | None = Field(
        default=None,
        description="A YAML or JSON file of rules: scripted answers, errors, faults and "
        "timing for the requests they match (first match wins; no match is answered by the "
        "simulator). Checked at every request and reloaded when it changes; `streamapi "
        "rules check FILE` validates one.",
    )
    enable_fault_headers: bool = Field(
        default=False,
        description="Honour the per-request X-Streamapi-Fault header (an error status "
        "before the stream, or a fault during it). Off by default: a public server must not "
        "let clients hold slots with stalls on purpose.",
    )
    fault_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Fraction (0 to 1) of generation requests that get a fault drawn at "
        "random from --fault-kinds (seeded by --seed when it is set).",
    )
    fault_kinds: str = Field(
        default="status=429|status=500|mid_stream_error,after=10|drop,after=10",
        description="The faults --fault-rate draws from, one at random per faulted request, "
        "separated by '|'; each in the X-Streamapi-Fault grammar.",
    )
    rate_limit_requests_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests per minute allowed to each API key by name (with auth off, each "
        "client address) and model, as a token bucket; beyond it 429 with Retry-After. "
        "0: no limit.",
    )
    rate_limit_tokens_per_minute: int = Field(
        default=0,
        ge=0,
        description="Tokens per minute (prompt plus max_tokens, or what the context leaves) "
        "allowed to each API key by name (with auth off, each client address) and model, as a "
        "token bucket; beyond "
        "it 429 with Retry-After. 0: no limit.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Turns on the admin API under /admin (latency, faults, rules and rate "
        "limits at runtime, the request journal, reset) for requests with 'Authorization: "
        "Bearer <key>'. Unset: no admin API. Prefer the environment variable: command lines "
        "are visible to other users.",
    )
    journal_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Requests kept in the admin API's journal (with --admin-key); the "
        "oldest are dropped first.",
    )
    journal_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="Bytes the journal may hold in this process (an estimate per entry; "
        "texts a client makes long are cut to 1,000 characters); past it the oldest entries "
        "are dropped. 0: only --journal-size caps it.",
    )
    dashboard: bool = Field(
        default=True,
        description="Serve the live dashboard and playground at /dashboard (engine, request "
        "waterfall with --admin-key, latency histograms, a chat playground, admin controls). "
        "Its page and files hold no data; its live events need the admin key when one is set "
        "(and with API keys on, one must be set).",
    )
    dashboard_max_subscribers: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="Most /dashboard/events streams open at once; one more gets 429. The "
        "numbers are read once per tick for all of them.",
    )

    @field_validator("fault_kinds")
    @classmethod
    def _check_fault_kinds(cls, kinds: str) -> str:
        try:
            parse_fault_choices(kinds)
        except FaultSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return kinds

    @field_validator("admin_key")
    @classmethod
    def _check_admin_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("must not be empty")
        return key

    _routes: RoutesTable = PrivateAttr(default_factory=RoutesTable)
    _keys: KeyRing = PrivateAttr(default_factory=KeyRing)
    _recordings: list[Exchange] = PrivateAttr(default_factory=list)
    _model_lens: dict[str, int | None] = PrivateAttr(default_factory=dict)

    @field_validator("replay_match")
    @classmethod
    def _check_match(cls, keys: str) -> str:
        return ",".join(parse_match_keys(keys))

    @field_validator("reasoning_model_pattern", "vision_model_pattern")
    @classmethod
    def _check_pattern(cls, pattern: str) -> str:
        try:
            compile_linear(pattern)
        except RegexError as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _apply_latency_profile(self) -> Settings:
        given = self.model_fields_set
        for name, value in asdict(LATENCY_PROFILES[self.latency_profile]).items():
            if name not in given:
                setattr(self, name, value)
        if self.kv_cache_tokens < self.max_model_len:
            raise ValueError(
                f"kv_cache_tokens ({self.kv_cache_tokens}) must be at least max_model_len "
                f"({self.max_model_len}), or no long request could ever run"
            )
        return self

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        names = [name.strip() for name in self.served_model_names]
        if any(not name for name in names):
            raise ValueError("served_model_names must not contain empty names")
        if len(set(names)) != len(names):
            raise ValueError("served_model_names must not repeat a name")
        self.served_model_names = names
        return self

    @model_validator(mode="after")
    def _load_files(self) -> Settings:
        # Read once at start-up, so a bad file stops the server with a message
        # naming the entry and field rather than failing its first request.
        if self.routes_file is not None:
            self._routes = load_routes(self.routes_file)
        self._keys = load_keys(self.api_keys, self.api_keys_file)
        if self.replay_dir is None and self.record_dir is None:
            return self
        # Imported only to record or replay: a server that does neither keeps none of the
        # cassette code in memory (docs/performance.md, "Idle memory").
        from streamapi.cassettes import CassetteError, load_exchanges

        try:
            if self.replay_dir is not None:
                self._recordings = load_exchanges(self.replay_dir)
            if self.record_dir is not None and self.record_dir.exists():
                # The recorder keeps what is there: a bad file must stop start-up too.
                load_exchanges(self.record_dir)
        except CassetteError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def default_model(self) -> str:
        """The model that answers requests which name none."""
        return self.served_model_names[0]

    @property
    def routes(self) -> RoutesTable:
        """The routing table of ``routes_file`` (empty without one)."""
        return self._routes

    @property
    def recordings(self) -> list[Exchange]:
        """The exchanges of ``replay_dir``, read at start-up (empty without one)."""
        return self._recordings

    @property
    def keys(self) -> KeyRing:
        """The API keys of ``api_keys`` and ``api_keys_file`` (empty: auth is off)."""
        return self._keys

    @property
    def model_names(self) -> list[str]:
        """Every model served: ``served_model_names``, then the routes file's other models."""
        names = list(self.served_model_names)
        return names + [name for name in self._routes.models if name not in names]

    def max_model_len_of(self, model: str) -> int | None:
        """The context length checked for ``model``: None lets its upstream check.

        Asked once per request, and remembered per model name (up to
        ``MODEL_NAMES_KEPT`` names of up to ``MODEL_NAME_CACHED_CHARS`` characters,
        as clients may send names of their own): reading it costs Pydantic attribute
        lookups and a pattern search, and the settings do not change once the app is
        made.
        """
        if len(model) > MODEL_NAME_CACHED_CHARS:
            return self._max_model_len_of(model)
        # Pydantic's dict of private attributes: ``self._model_lens`` goes through
        # ``BaseModel.__getattr__``.
        private = self.__pydantic_private__
        assert private is not None
        lens: dict[str, int | None] = private["_model_lens"]
        try:
            return lens[model]
        except KeyError:
            limit = self._max_model_len_of(model)
            if len(lens) >= MODEL_NAMES_KEPT:
                lens.clear()  # clients' own model names: bounded
            lens[model] = limit
            return limit

    def _max_model_len_of(self, model: str) -> int | None:
        route = self._routes.models.get(model)
        if route is not None and route.max_model_len is not None:
            return route.max_model_len
        if route is not None and route.engine != "simulator":
            return None
        if "max_model_len" not in self.model_fields_set and _CLAUDE_MODEL.search(model):
            # Within the KV cache, which must hold one whole request.
            return min(CLAUDE_MAX_MODEL_LEN, self.kv_cache_tokens)
        return self.max_model_len
