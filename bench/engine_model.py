"""Load a real streamapi server past max_num_seqs; compare clients, /metrics and the model.

    python bench/engine_model.py [--requests 16] [--max-num-seqs 4] [--max-tokens 50] ...

Starts ``python -m streamapi serve`` on a free 127.0.0.1 port, sends one
"occupier" request with a long prompt and then ``--requests`` streamed requests
at once (``ignore_eos``, so each has exactly ``--max-tokens`` tokens), times each
client's frames, scrapes ``/metrics`` during and after the run, and prints
three views of the same run:

- per request: the model's prediction (the engine model's formulas replayed, by the
  small independent simulation below, on the clients' actual send times), and
  what the client measured;
- totals and means: clients, ``/metrics``, model.

It talks HTTP only and imports nothing of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from launch import start_streamapi
from prometheus_client.parser import text_string_to_metric_families

QUESTION = "Explain how an inference server batches requests"


@dataclass
class Client:
    sent_at: float = 0.0
    status: int = 0
    retry_after: str = ""
    content_at: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def ttft(self) -> float:
        return self.content_at[0] - self.sent_at

    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.content_at, self.content_at[1:], strict=False)]

    def e2e(self) -> float:
        return self.content_at[-1] - self.sent_at


@dataclass
class Predicted:
    queue: float = 0.0
    ttft: float = 0.0
    e2e: float = 0.0


def predict(
    arrivals: list[float], *, tokens: list[int], prompts: list[int], args: argparse.Namespace
) -> list[Predicted]:
    """The engine model (docs/engine-model.md) replayed on these arrivals (seconds),
    token counts and prompt lengths."""

    def decode_ms(d: int) -> float:
        fill = (d - 1) / (args.max_num_seqs - 1) if args.max_num_seqs > 1 else 0.0
        return args.itl_ms * (1 + args.load_factor * fill) if d else 0.0

    out = [Predicted() for _ in arrivals]
    waiting = sorted(range(len(arrivals)), key=arrivals.__getitem__)
    produced: dict[int, int] = {}  # the batch
    warming: dict[int, float] = {}  # prefilled: first token due then
    joining: list[int] = []  # into the batch at the next step
    step_end: float | None = None
    now = arrivals[waiting[0]]
    latency_s = args.ttft_ms / 1000

    def token(i: int, at: float) -> bool:
        produced[i] = produced.get(i, 0) + 1
        if produced[i] == 1:
            out[i].ttft = at - arrivals[i]
        if produced[i] < tokens[i]:
            return False
        out[i].e2e = at - arrivals[i]
        del produced[i]
        return True

    while waiting or produced or warming or joining:
        if step_end is not None and now >= step_end:
            for i in list(produced):
                if produced[i] == 0 and latency_s > 0:
                    warming[i] = now + latency_s
                    del produced[i]
                else:
                    token(i, now)
            step_end = None
        for i, due in sorted(warming.items(), key=lambda item: item[1]):
            if due <= now:
                del warming[i]
                if not token(i, due):
                    joining.append(i)
                    del produced[i]
        if step_end is None:
            produced.update((i, 1) for i in joining)
            joining.clear()
            decoding = len(produced)
            admitted: list[int] = []
            while waiting and arrivals[waiting[0]] <= now:
                if len(produced) + len(warming) >= args.max_num_seqs:
                    break
                i = waiting.pop(0)
                out[i].queue = now - arrivals[i]
                produced[i] = 0
                admitted.append(i)
            if produced:
                step_ms = decode_ms(decoding)
                if admitted:
                    uncached = sum(prompts[i] for i in admitted)
                    step_ms += args.prefill_overhead_ms + args.prefill_ms_per_token * uncached
                step_end = now + step_ms / 1000
        events = [*warming.values()]
        if step_end is not None:
            events.append(step_end)
        elif waiting:
            events.append(max(now, arrivals[waiting[0]]))
        if not events:
            break
        now = min(events)
    return out


async def run_client(http: httpx.AsyncClient, body: dict[str, object], client: Client) -> None:
    client.sent_at = time.monotonic()
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        client.status = response.status_code
        client.retry_after = response.headers.get("retry-after", "")
        pending = b""
        async for piece in response.aiter_raw():
            now = time.monotonic()
            *frames, pending = (pending + piece).split(b"\n\n")
            for frame in frames:
                payload = frame.removeprefix(b"data: ")
                if payload == b"[DONE]" or client.status != 200:
                    continue
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    client.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    client.completion_tokens = chunk["usage"]["completion_tokens"]
                if any(c["delta"].get("content") for c in chunk.get("choices", [])):
                    client.content_at.append(now)


def scrape(base_url: str) -> dict[str, float]:
    """Unlabelled-by-reason samples by name (labels other than model_name summed)."""
    text = httpx.get(base_url + "/metrics").text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def start_server(args: argparse.Namespace, log: str) -> tuple[subprocess.Popen[bytes], str]:
    return start_streamapi(
        [
            "--log-level", "warning",
            "--max-num-seqs", str(args.max_num_seqs),
            "--max-waiting-requests", str(args.max_waiting_requests),
            "--time-to-first-token-ms", str(args.ttft_ms),
            "--prefill-overhead-ms", str(args.prefill_overhead_ms),
            "--prefill-ms-per-token", str(args.prefill_ms_per_token),
            "--inter-token-latency-ms", str(args.itl_ms),
            "--load-factor", str(args.load_factor),
            "--kv-cache-tokens", str(args.kv_cache_tokens),
            "--no-enable-prefix-caching",  # identical prompts: every request prefills in full
        ],
        log=Path(log),
        timeout_s=15,
    )  # fmt: skip


async def load(
    args: argparse.Namespace, base_url: str
) -> tuple[list[Client], dict[str, float], dict[str, float]]:
    body = {
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
    }
    limits = httpx.Limits(max_connections=args.requests + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        # Open every connection first, so the clients' clocks start at a request, not a TCP
        # handshake (not what the server or the model can see); then one request warms
        # the server's code paths, and its figures are left out of the run's.
        await asyncio.gather(*(http.get("/health") for _ in range(args.requests)))
        await run_client(http, {**body, "max_tokens": 1}, Client())
        baseline = await asyncio.to_thread(scrape, base_url)
        # The occupier's long prefill keeps the engine in one step while the burst
        # arrives, so all of the burst queues for the same step boundary, whatever
        # order and spacing the requests reach the server in.
        occupier = Client()
        long_prompt = {"role": "user", "content": " ".join(["word"] * args.occupier_words)}
        tasks = [
            asyncio.ensure_future(
                run_client(http, {**body, "messages": [long_prompt], "max_tokens": 1}, occupier)
            )
        ]
        await asyncio.sleep(0.05)
        clients = [occupier] + [Client() for _ in range(args.requests)]
        tasks += [asyncio.ensure_future(run_client(http, body, c)) for c in clients[1:]]
        await asyncio.sleep(args.scrape_after_s)
        during = await asyncio.to_thread(scrape, base_url)
        await asyncio.gather(*tasks)
    return clients, during, baseline


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report(
    args: argparse.Namespace,
    clients: list[Client],
    during: dict[str, float],
    after: dict[str, float],
) -> None:
    occupier, burst = clients[0], clients[1:]
    served = [c for c in clients if c.status == 200]
    refused = [c for c in clients if c.status != 200]
    model = predict(
        [c.sent_at for c in served],
        tokens=[len(c.content_at) for c in served],
        prompts=[c.prompt_tokens for c in served],
        args=args,
    )
    predicted = dict(zip(map(id, served), model, strict=True))
    ms = 1000.0

    print(f"one occupier ({occupier.prompt_tokens}-token prompt, 1 token), then "
          f"{len(burst)} streamed requests at once ({burst[0].prompt_tokens}-token prompt, "
          f"{args.max_tokens} tokens); max_num_seqs={args.max_num_seqs}, "
          f"TTFT={args.ttft_ms} ms, prefill={args.prefill_overhead_ms} ms + "
          f"{args.prefill_ms_per_token} ms/token, ITL={args.itl_ms} ms, "
          f"load_factor={args.load_factor}")  # fmt: skip
    print(f"\n/metrics {args.scrape_after_s:.2f} s into the run: "
          f"running={during.get('vllm:num_requests_running', 0):.0f} "
          f"waiting={during.get('vllm:num_requests_waiting', 0):.0f} "
          f"kv_cache_usage={during.get('vllm:kv_cache_usage_perc', 0):.4f}")  # fmt: skip
    print("\nby place in the queue (ms; model = the engine model's formulas replayed on the")
    print("clients' send times; the burst's requests are identical, so rank k is compared")
    print("with the model's rank k)")
    print(f"{'k':>3} {'queue model':>12} {'TTFT model':>11} {'TTFT client':>12} "
          f"{'e2e model':>10} {'e2e client':>11} {'mean ITL client':>16}")  # fmt: skip
    p = predicted[id(occupier)]
    print(f"{'occ':>3} {p.queue * ms:>12.1f} {p.ttft * ms:>11.1f} {occupier.ttft() * ms:>12.1f} "
          f"{p.e2e * ms:>10.1f} {occupier.e2e() * ms:>11.1f} {'':>16}")  # fmt: skip
    ranked = sorted((c for c in burst if c.status == 200), key=Client.ttft)
    expected = sorted((predicted[id(c)] for c in ranked), key=lambda p: p.ttft)
    for k, (c, p) in enumerate(zip(ranked, expected, strict=True), 1):
        itl = mean(c.itls()) * ms
        print(f"{k:>3} {p.queue * ms:>12.1f} {p.ttft * ms:>11.1f} {c.ttft() * ms:>12.1f} "
              f"{p.e2e * ms:>10.1f} {c.e2e() * ms:>11.1f} {itl:>16.2f}")  # fmt: skip
    for c in refused:
        print(f"  refused: HTTP {c.status}, Retry-After {c.retry_after}")

    def server_mean(name: str) -> float:
        count = after.get(f"{name}_count", 0.0)
        return after.get(f"{name}_sum", 0.0) / count if count else float("nan")

    itls = [gap for c in served for gap in c.itls()]
    model_itls = [
        (p.e2e - p.ttft) / (len(c.content_at) - 1)
        for c, p in zip(served, model, strict=True)
        for _ in range(len(c.content_at) - 1)
    ]
    lines = [
        ("requests finished", len(served), after.get("vllm:request_success_total", 0), len(model)),
        ("generation tokens", sum(c.completion_tokens for c in served),
         after.get("vllm:generation_tokens_total", 0), sum(len(c.content_at) for c in served)),
        ("prompt tokens", sum(c.prompt_tokens for c in served),
         after.get("vllm:prompt_tokens_total", 0), sum(c.prompt_tokens for c in served)),
        ("mean TTFT (ms)", mean([c.ttft() for c in served]) * ms,
         server_mean("vllm:time_to_first_token_seconds") * ms, mean([p.ttft for p in model]) * ms),
        ("mean ITL (ms)", mean(itls) * ms, server_mean("vllm:inter_token_latency_seconds") * ms,
         mean(model_itls) * ms),
        ("mean e2e (ms)", mean([c.e2e() for c in served]) * ms,
         server_mean("vllm:e2e_request_latency_seconds") * ms, mean([p.e2e for p in model]) * ms),
        ("mean queue time (ms)", float("nan"),
         server_mean("vllm:request_queue_time_seconds") * ms, mean([p.queue for p in model]) * ms),
        ("mean prefill time (ms)", float("nan"),
         server_mean("vllm:request_prefill_time_seconds") * ms,
         mean([p.ttft - p.queue for p in model]) * ms),
    ]  # fmt: skip
    print(f"\n{'all requests':<24}{'clients':>12}{'/metrics':>12}{'model':>12}")
    for name, client, server, model_value in lines:
        print(f"{name:<24}{client:>12.1f}{server:>12.1f}{model_value:>12.1f}")
    errors = after.get("streamapi_errors_total", 0)
    disconnects = after.get("streamapi_client_disconnects_total", 0)
    print(f"\n429 refusals: {len(refused)} (streamapi_errors_total: {errors:.0f}); "
          f"client disconnects: {disconnects:.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--max-waiting-requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=50)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--prefill-overhead-ms", type=float, default=20.0)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.5)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--load-factor", type=float, default=1.0)
    parser.add_argument("--kv-cache-tokens", type=int, default=8192)
    parser.add_argument("--occupier-words", type=int, default=2000)
    parser.add_argument("--scrape-after-s", type=float, default=1.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server, base_url = start_server(args, os.path.join(tmp, "server.log"))
        try:
            clients, during, baseline = asyncio.run(load(args, base_url))
            after = scrape(base_url)
            # The warm-up request's counts and sums are not the run's.
            after = {name: v - baseline.get(name, 0.0) for name, v in after.items()}
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(args, clients, during, after)


if __name__ == "__main__":
    main()
