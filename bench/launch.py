"""Start and stop `streamapi serve` and `redis-server` for the bench scripts: loopback, bounded."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def start_streamapi(
    options: Sequence[str],
    *,
    log: Path | None = None,
    timeout_s: float = 20.0,
    cpu: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """A `streamapi serve` on a free loopback port with ``options``, once it is healthy.

    Settings come only from ``options``: STREAMAPI_* variables of the caller's
    environment are dropped. Output goes to ``log`` (or nowhere). ``cpu`` pins
    the server to that core; ``env`` adds variables to its environment.
    """
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPI_")}
    server_env |= env or {}
    command = [sys.executable, "-m", "streamapi", "serve", "--host", HOST, "--port", str(port)]
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [*command, *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env,
            preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})),
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    base = f"http://{HOST}:{port}"
    if wait_healthy(process, base, timeout_s=timeout_s):
        return process, base
    process.kill()
    process.wait(timeout=10)
    raise SystemExit(
        f"streamapi did not start within {timeout_s:g} s" + (f"; see {log}" if log else "")
    )


def wait_healthy(process: subprocess.Popen[bytes], base: str, *, timeout_s: float) -> bool:
    """Whether the server at ``base`` answered ``GET /health`` with 200 within
    ``timeout_s`` (False at once if ``process`` has exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.05)
    return False


def stop(process: subprocess.Popen[bytes], *, timeout_s: float = 40.0) -> int:
    """SIGTERM (the server drains), then SIGKILL if it outlasts ``timeout_s``; the exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


def start_redis(directory: Path, *, timeout_s: float = 10.0) -> tuple[subprocess.Popen[bytes], str]:
    """A ``redis-server`` on a free loopback port, no persistence; its URL once it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"redis-server exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://{HOST}:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    process.wait(timeout=10)
    raise SystemExit(f"redis-server did not answer within {timeout_s:g} s")


def real_engine_dir() -> Path:
    """Where deploy/real-engine/build.sh put llama-server and the tiny model."""
    configured = os.environ.get("STREAMAPI_REAL_ENGINE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "streamapi-real-engine"


def start_llama_server(
    *,
    slots: int = 8,
    context: int = 4096,
    threads: int = 1,
    log: Path | None = None,
    timeout_s: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """llama.cpp's llama-server with the tiny model on a free loopback port; its root URL.

    It serves the model as ``tiny-random-llama``. The binary and model come from
    ``real_engine_dir()`` (deploy/real-engine/build.sh makes both).
    """
    folder = real_engine_dir()
    binary, model = folder / "bin" / "llama-server", folder / "tiny.gguf"
    if not (binary.is_file() and model.is_file()):
        raise SystemExit(f"no llama-server or model in {folder}: run deploy/real-engine/build.sh")
    port = free_port()
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [
                str(binary), "-m", str(model), "--host", HOST, "--port", str(port),
                "-a", "tiny-random-llama", "-c", str(context), "-np", str(slots),
                "--kv-unified", "-t", str(threads), "--metrics",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    raise SystemExit(f"llama-server did not start within {timeout_s:g} s")
