"""The simulator against a real engine: the same load on llama.cpp's llama-server and on
streamapi's simulator with a latency profile fitted to it, side by side.

    python bench/real_engine.py [--requests-per-stream 4] [--max-tokens 64] [--levels 8,32]

Needs deploy/real-engine/build.sh (llama-server and the tiny model). Steps:

1. Start llama-server (8 slots, one thread) and measure it alone with `streamapi bench`
   (the client for every run here): a lone stream's time to first token and
   inter-token gap, and the inter-token gap with all 8 slots decoding. llama.cpp's own
   ``timings`` of a long prompt give its prefill cost per prompt token.
2. Fit the simulator's engine model to those (docs/engine-model.md):
   ``inter-token-latency-ms`` = the lone gap; ``load-factor`` = gap at 8 / lone gap - 1
   with ``max-num-seqs`` 8, so that a full batch decodes as slowly as llama.cpp's;
   ``prefill-ms-per-token`` = llama.cpp's prompt ms per token; ``time-to-first-token-ms``
   = the lone TTFT less that prefill of the bench's prompt.
3. Start the simulator with those settings and run the same closed-loop load (8 and 32
   streams, `--ignore-eos` so each stream is exactly --max-tokens long) on both, and
   print TTFT and inter-token percentiles side by side.

Loopback only; every run is bounded by its request count. It prints figures and
asserts nothing (timing belongs here, not in a test).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from launch import start_llama_server, start_streamapi, stop

MODEL = "tiny-random-llama"
SLOTS = 8


def bench(url: str, *, concurrency: int, requests: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `streamapi bench` run, its JSON report."""
    command = [
        sys.executable, "-m", "streamapi", "bench", "--url", url, "--model", MODEL,
        "--concurrency", str(concurrency), "--requests", str(requests),
        "--prompt-tokens", str(args.prompt_words), "--max-tokens", str(args.max_tokens),
        "--ignore-eos", "--seed", "1", "--json", "--no-progress", "--timeout", "300",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def p(report: dict[str, Any], metric: str, quantile: str) -> float:
    value = report[metric][quantile]
    return float(value) if value is not None else float("nan")


def prefill_ms_per_token(root: str) -> tuple[float, int]:
    """llama.cpp's own prompt cost per token on a long, uncached prompt, and that prompt's
    length in tokens for the bench's prompt size (its ``timings`` of one request each)."""
    with httpx.Client(base_url=root, timeout=120) as client:
        long_prompt = " ".join(f"w{i}" for i in range(500))
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": long_prompt}],
            "max_tokens": 1,
            "cache_prompt": False,
        }
        timings = client.post("/v1/chat/completions", json=body).json()["timings"]
        per_token = float(timings["prompt_per_token_ms"])
        short = " ".join(["word"] * 32)
        body["messages"] = [{"role": "user", "content": short}]
        usage = client.post("/v1/chat/completions", json=body).json()["usage"]
    return per_token, int(usage["prompt_tokens"])


def fit(root: str, args: argparse.Namespace) -> dict[str, float]:
    """The simulator settings that make it time like this llama-server (see the docstring)."""
    lone = bench(root, concurrency=1, requests=args.fit_requests, args=args)
    full = bench(root, concurrency=SLOTS, requests=SLOTS * 2, args=args)
    per_token, prompt_tokens = prefill_ms_per_token(root)
    itl = p(lone, "itl_ms", "p50")
    itl_full = p(full, "itl_ms", "p50")
    prefill = per_token * prompt_tokens
    return {
        "time-to-first-token-ms": round(max(0.0, p(lone, "ttft_ms", "p50") - prefill), 3),
        "prefill-ms-per-token": round(per_token, 4),
        "inter-token-latency-ms": round(itl, 3),
        "load-factor": round(max(0.0, itl_full / itl - 1), 3),
        "max-num-seqs": SLOTS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="8,32", help="concurrent streams, comma-separated")
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=32)
    parser.add_argument("--fit-requests", type=int, default=8)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    logs = Path(tempfile.mkdtemp(prefix="real-engine-bench-"))
    llama, llama_root = start_llama_server(slots=SLOTS, log=logs / "llama-server.log")
    simulator = None
    try:
        fitted = fit(llama_root, args)
        options = [f"--{name}={value}" for name, value in fitted.items()]
        print("fitted simulator profile: streamapi serve " + " ".join(options))
        simulator, sim_root = start_streamapi(
            ["--served-model-names", MODEL, *options], log=logs / "streamapi.log"
        )
        header = (
            f"{'streams':>7}  {'server':<12} {'TTFT p50':>9} {'p90':>8} {'p99':>8}"
            f"  {'ITL p50':>8} {'p90':>7} {'p99':>7}  {'tok/s':>7}"
        )
        print(header)
        for level in levels:
            requests = level * args.requests_per_stream
            for name, root in (("llama-server", llama_root), ("simulator", sim_root)):
                report = bench(root, concurrency=level, requests=requests, args=args)
                throughput = float(report["output_tokens_per_s"])
                print(
                    f"{level:>7}  {name:<12} {p(report, 'ttft_ms', 'p50'):>9.1f}"
                    f" {p(report, 'ttft_ms', 'p90'):>8.1f} {p(report, 'ttft_ms', 'p99'):>8.1f}"
                    f"  {p(report, 'itl_ms', 'p50'):>8.2f} {p(report, 'itl_ms', 'p90'):>7.2f}"
                    f" {p(report, 'itl_ms', 'p99'):>7.2f}  {throughput:>7.0f}",
                    flush=True,
                )
    finally:
        if simulator is not None:
            stop(simulator)
        llama.terminate()
        llama.wait(timeout=30)


if __name__ == "__main__":
    main()
