"""API keys: who may call, which models each key may use, and its own concurrency cap.

Keys are kept only as SHA-256 digests and compared with ``hmac.compare_digest``
against every known digest, so neither the comparison's time nor its order says
which key (or how much of one) matched. A keys file lists named keys:

```yaml
keys:
  - name: team-a
    key: sk-team-a-...            # or key_sha256: <64 hex digits>
    models: [llama-8b, sim-small] # optional allow-list
    max_concurrent_requests: 8    # optional, overrides --max-concurrent-requests-per-key
```

A key's *name* is what logs and metrics show; the key itself never appears.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its key's name, allow-list and concurrency cap."""

    name: str
    models: frozenset[str] | None = None
    """None: every model."""
    max_concurrent_requests: int | None = None
    """None: the server's per-key setting."""

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Known key digests and their principals; empty means auth is off."""

    entries: tuple[tuple[bytes, Principal], ...] = field(default=())
    known: tuple[SecretStr, ...] = field(default=(), repr=False)
    """The keys given in plain (not as a digest): what a cassette must scrub."""

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal whose key is ``presented``, or None; constant time in the key."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for known, principal in self.entries:
            # No early exit: every digest is compared whatever matched before.
            if hmac.compare_digest(digest, known):
                found = principal
        return found


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = None
    max_concurrent_requests: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_key(self) -> _KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        return self

    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyEntry]


class KeysFileError(ValueError):
    """The keys file cannot be read or is invalid; the message says where."""


def load_keys(keys: Sequence[SecretStr], path: Path | None) -> KeyRing:
    """The keys of the settings (named ``key-1``...) and of the keys file."""
    entries: list[tuple[bytes, Principal]] = []
    known = list(keys)
    for number, key in enumerate(keys, start=1):
        secret = key.get_secret_value()
        if not secret:
            raise ValueError(f"api_keys[{number - 1}] is empty")
        entries.append((hashlib.sha256(secret.encode()).digest(), Principal(f"key-{number}")))
    if path is not None:
        from_file = _read_file(path)
        entries += [(digest, principal) for digest, principal, _ in from_file]
        known += [key for _, _, key in from_file if key is not None]
    digests = [digest for digest, _ in entries]
    if len(set(digests)) != len(digests):
        raise ValueError("the same API key is given twice")
    return KeyRing(tuple(entries), tuple(known))


def _read_file(path: Path) -> list[tuple[bytes, Principal, SecretStr | None]]:
    # Imported here: only a server that reads a YAML file needs PyYAML in memory.
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        parsed = _KeysFile.model_validate(data)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise KeysFileError(f"keys file {path} is not valid: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            # A check of the whole file names its entry in the message itself.
            (f"{'.'.join(str(p) for p in error['loc'])}: " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise KeysFileError(f"keys file {path}: {problems}") from None
    return [
        (
            entry.digest(),
            Principal(
                entry.name,
                None if entry.models is None else frozenset(entry.models),
                entry.max_concurrent_requests,
            ),
            entry.key,
        )
        for entry in parsed.keys
    ]
