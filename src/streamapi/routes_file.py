"""The routing table: which engine serves each model name, read from a YAML or JSON file.

```yaml
upstreams:
  vllm:
    base_url: http://127.0.0.1:8000/v1
    api_key_env: VLLM_API_KEY        # or api_key: "..." (a secret: never logged)
models:
  llama-8b: {upstream: vllm, upstream_model: meta-llama/Llama-3.1-8B-Instruct}
  sim-small: {engine: simulator}
```

Every model of the file is served by the engine it names; every name of
``--served-model-names`` that the file does not list is served by the
simulator. Errors name the file, the entry and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator


class UpstreamConfig(BaseModel):
    """One OpenAI-compatible server: where it is, its key, its timeouts and retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="The upstream's OpenAI base URL, up to and including /v1 "
        "(http://127.0.0.1:8000/v1); /chat/completions is appended."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: Bearer <key>'; never logged."
    )
    api_key_env: str | None = Field(
        default=None, description="Read the key from this environment variable instead."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect timeout.")
    read_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest wait for any byte of the answer, the first one included "
        "(a timeout before the first byte is a 504).",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries before the first byte, for connection errors and 429/503 only.",
    )
    retry_backoff_s: float = Field(
        default=0.25, ge=0, description="First backoff; it doubles on each retry, up to 8 s."
    )
    max_retry_after_s: float = Field(
        default=10.0,
        ge=0,
        description="A 429/503 whose Retry-After asks for longer is not retried but answered.",
    )
    max_connections: int = Field(
        default=256, ge=1, description="Connections the pooled client may open to it."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> UpstreamConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give api_key or api_key_env, not both")
        return self

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def key(self, environ: Mapping[str, str]) -> SecretStr | None:
        """The API key, from the file or the environment."""
        if self.api_key_env is not None:
            value = environ.get(self.api_key_env)
            return SecretStr(value) if value else None
        return self.api_key


class ModelRoute(BaseModel):
    """What serves one model name: the simulator, or an upstream under its own model name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["simulator", "upstream"] = Field(
        default="upstream", description="'upstream' (the default when upstream is set)."
    )
    upstream: str | None = Field(default=None, description="A name under 'upstreams'.")
    upstream_model: str | None = Field(
        default=None, description="The model name the upstream knows; default: the served name."
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="Context length to check before sending; default for an upstream: none "
        "(the upstream checks), for the simulator: --max-model-len.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_engine(cls, data: Any) -> Any:
        if isinstance(data, dict) and "engine" not in data and "upstream" not in data:
            return {**data, "engine": "simulator"}
        return data

    @model_validator(mode="after")
    def _upstream_named(self) -> ModelRoute:
        if self.engine == "upstream" and self.upstream is None:
            raise ValueError("an upstream route needs 'upstream'")
        if self.engine == "simulator" and (self.upstream or self.upstream_model):
            raise ValueError("a simulator route takes no 'upstream' or 'upstream_model'")
        return self


class RoutesTable(BaseModel):
    """The whole routes file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    models: dict[str, ModelRoute] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _upstreams_exist(self) -> RoutesTable:
        for name, route in self.models.items():
            if not name.strip():
                raise ValueError("models: a model name must not be empty")
            if route.upstream is not None and route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(
                    f"models.{name}.upstream: unknown upstream '{route.upstream}' "
                    f"(defined: {known})"
                )
        return self

    def upstream_of(self, model: str) -> tuple[str, UpstreamConfig, str] | None:
        """The upstream's name, its config and its model name, if ``model`` goes upstream."""
        route = self.models.get(model)
        if route is None or route.upstream is None:
            return None
        return route.upstream, self.upstreams[route.upstream], route.upstream_model or model


class RoutesFileError(ValueError):
    """The routes file cannot be read or is invalid; the message says where."""


def load_routes(path: Path) -> RoutesTable:
    """Read and check a routes file (``.json`` is JSON, anything else YAML)."""
    # Imported here: only a server that reads a YAML file needs PyYAML in memory.
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesFileError(f"cannot read routes file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RoutesFileError(f"routes file {path} is not valid: {exc}") from None
    try:
        table = RoutesTable.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            # A check of the whole file names its entry in the message itself.
            (f"{'.'.join(str(p) for p in error['loc'])}: " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors(include_url=False)
        )
        raise RoutesFileError(f"routes file {path}: {problems}") from None
    for name, upstream in table.upstreams.items():
        if upstream.api_key_env is not None and not os.environ.get(upstream.api_key_env):
            raise RoutesFileError(
                f"routes file {path}: upstreams.{name}.api_key_env: environment variable "
                f"{upstream.api_key_env} is not set"
            )
        if not upstream.base_url.startswith(("http://", "https://")):
            raise RoutesFileError(
                f"routes file {path}: upstreams.{name}.base_url: must start with http:// "
                f"or https://, got {upstream.base_url!r}"
            )
    return table
