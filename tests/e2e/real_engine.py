"""llama.cpp's ``llama-server`` on a free loopback port, serving the tiny model of
``deploy/real-engine/make_model.py``: a real inference engine for the end-to-end tests.

``deploy/real-engine/build.sh`` builds the binary and the model into
``$STREAMAPI_REAL_ENGINE_DIR`` (default ``~/.cache/streamapi-real-engine``). Without
them the tests that need the engine are skipped, unless ``STREAMAPI_REQUIRE_REAL_ENGINE``
is set (``.ci/run`` sets it): there a missing engine is a failure.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import HOST, free_port

MODEL = "tiny-random-llama"
"""The name llama-server serves the model under (its ``-a``)."""
CONTEXT = 4096
SLOTS = 8
# The tool both real-engine suites offer.
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            # Closed values keep a grammar-constrained call from a random model short.
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
STARTUP_TIMEOUT_S = 60.0


def engine_dir() -> Path:
    """Where ``build.sh`` put ``bin/llama-server`` and ``tiny.gguf``."""
    configured = os.environ.get("STREAMAPI_REAL_ENGINE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "streamapi-real-engine"


def require_engine() -> tuple[Path, Path]:
    """The binary and the model; skips without them (fails when they are required)."""
    folder = engine_dir()
    binary, model = folder / "bin" / "llama-server", folder / "tiny.gguf"
    if binary.is_file() and model.is_file():
        return binary, model
    message = (
        f"llama-server or its model is missing from {folder} "
        "(run deploy/real-engine/build.sh; docs/development.md)"
    )
    if os.environ.get("STREAMAPI_REQUIRE_REAL_ENGINE"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class LlamaServer:
    """A running llama-server; ``stop``/``kill`` end it, ``start`` brings it back on its port."""

    binary: Path
    model: Path
    log_path: Path
    port: int
    extra: tuple[str, ...] = ()
    """More llama-server options (``--ignore-eos``...)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """Its OpenAI API, as a routes file's ``base_url``."""
        return self.root + "/v1"

    def start(self) -> None:
        command = [
            str(self.binary),
            "-m", str(self.model),
            "--host", HOST,
            "--port", str(self.port),
            "-a", MODEL,
            "-c", str(CONTEXT),
            "-np", str(SLOTS),
            # One context shared by the slots: every request may use all of it (the
            # over-context error is then at CONTEXT), as one prompt can on vLLM.
            "--kv-unified",
            "-t", "1",
            "--metrics",
            *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"llama-server exited at start-up:\n{self.log()}")
                try:
                    # 503 while the model loads, 200 once it serves.
                    if client.get(self.root + "/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"llama-server was not ready within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the engine dies mid-answer, its connections reset."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def slots(self) -> list[dict[str, Any]]:
        """``GET /slots``: each slot's state and the sampling parameters of its last task."""
        slots: list[dict[str, Any]] = httpx.get(self.root + "/slots", timeout=5).json()
        return slots

    def processing(self) -> int:
        """How many slots are generating now."""
        return sum(1 for slot in self.slots() if slot.get("is_processing"))

    def version(self) -> str:
        """The build, as ``llama-server --version`` prints it."""
        done = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, timeout=30
        )
        return (done.stdout + done.stderr).strip()


def start_llama_server(log_dir: Path, *extra: str) -> LlamaServer:
    """Start llama-server on a free port with ``extra`` options (skips or fails when it is
    not built)."""
    binary, model = require_engine()
    server = LlamaServer(binary, model, log_dir / "llama-server.log", free_port(), extra)
    server.start()
    return server


def calling_seed(client: Any, model: str, messages: Any, tools: Any, max_tokens: int) -> int:
    """The first seed (from 10) whose ``tool_choice: required`` answer makes its call
    within ``max_tokens``: llama.cpp lets the tiny model write text first, and how long
    depends on the model, whose vocabulary depends on the Python that made it."""
    for seed in range(10, 60):
        answer = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=tools,
            tool_choice="required",
            seed=seed,
            max_tokens=max_tokens,
        )
        if answer.choices[0].finish_reason == "tool_calls":
            return seed
    pytest.fail(f"no seed in 10..59 made a required tool call within {max_tokens} tokens")
