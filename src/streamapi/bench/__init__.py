"""``streamapi bench``: a load generator for any OpenAI-compatible streaming endpoint.

It imports nothing of the server it measures, so it can drive streamapi, vLLM,
Ollama or any other server that streams chat or legacy completions over SSE.

The client is deliberately lean so that one process can hold thousands of
streams without becoming the bottleneck:

- raw HTTP/1.1 over ``asyncio.Protocol`` (uvloop when installed): the bytes of
  each TCP read are decoded (chunked transfer encoding, then SSE) in the
  ``data_received`` callback, so there is no task switch per event;
- one clock reading per TCP read, shared by the events it carries: events
  that arrived together are timed together, as a client would see them;
- keep-alive connections reused request after request, so a long run does not
  exhaust ephemeral ports with ``TIME_WAIT`` sockets;
- samples kept in flat ``array('d')`` buffers and sorted once at the end.

It reports its own CPU time per event (``client.cpu_us_per_event``) so that a
run can show the client was not the limit.

Its modules: ``sse`` (the SSE parser), ``client`` (the HTTP connection),
``stats`` (samples and percentiles), ``config`` (the target and the load),
``runner`` (the load itself), ``report`` (the JSON report and its text) and
``cli`` (``main``).
"""

from streamapi.bench.cli import main
from streamapi.bench.client import discover_model
from streamapi.bench.config import BenchConfig, Target, parse_length, resolve_target
from streamapi.bench.report import format_report
from streamapi.bench.runner import run
from streamapi.bench.sse import SSEParser
from streamapi.bench.stats import percentile, summarize

__all__ = [
    "BenchConfig",
    "SSEParser",
    "Target",
    "discover_model",
    "format_report",
    "main",
    "parse_length",
    "percentile",
    "resolve_target",
    "run",
    "summarize",
]
