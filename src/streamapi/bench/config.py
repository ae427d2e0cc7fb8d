"""What a run is asked to do: the target endpoint and the load's parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    """Where requests go: scheme, host, port and the route's path."""

    scheme: str
    host: str
    port: int
    path: str
    base_path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.path}"


def resolve_target(url: str, route: str) -> Target:
    """The endpoint for ``route`` under ``url`` (a server root, a ``/v1`` base or a full path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http:// or https:// URL, got {url!r}")
    path = parts.path.rstrip("/")
    suffix = "/chat/completions" if route == "chat" else "/completions"
    if path.endswith("/completions"):
        base = path.removesuffix("/chat/completions").removesuffix("/completions")
    elif path.endswith("/v1"):
        base, path = path, path + suffix
    else:
        base, path = path + "/v1", path + "/v1" + suffix
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, parts.hostname, port, path, base)


def parse_length(spec: str) -> tuple[int, int]:
    """``"64"`` (fixed) or ``"32-128"`` (uniform, inclusive) as ``(low, high)``."""
    low_text, _, high_text = spec.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if high_text else low
    except ValueError:
        raise ValueError(f"expected N or LOW-HIGH, got {spec!r}") from None
    if low < 0 or high < low:
        raise ValueError(f"expected 0 <= LOW <= HIGH, got {spec!r}")
    return low, high


@dataclass
class BenchConfig:
    """One run's parameters, as ``streamapi bench`` options give them."""

    url: str = "http://127.0.0.1:8080"
    route: str = "chat"
    model: str | None = None
    concurrency: int | None = None
    rate: float | None = None
    arrival: str = "poisson"
    requests: int | None = None
    duration_s: float | None = None
    prompt_tokens: tuple[int, int] = (32, 32)
    max_tokens: tuple[int, int] = (64, 64)
    ignore_eos: bool = False
    include_usage: bool = True
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    ramp_up_s: float = 0.0
    warmup_s: float = 0.0
    seed: int = 0
    progress: bool = True
    replay: str | None = None
    """A cassette file or directory whose recorded requests are sent at their recorded times."""
    replay_speed: float = 1.0
