#!/bin/bash
# Measure commits one after the other, as docs/performance.md's "steps" tables do.
#
#   bench/steps.sh COMMIT [COMMIT ...]
#
# A COMMIT named `ceiling` runs this checkout's raw-ASGI ceiling (bench/servers/ceiling.py)
# the same way, for ratios taken beside it.
#
# For each commit: its tree's server (from a git worktree) pinned to core 0, this
# checkout's load generator on core 1, a warm-up of 50 short requests, then
#   unpaced: 20 streams for 5 s, 64 tokens each, 0 ms per token;
#   paced400: 400 streams for 8 s, 64 tokens each, 20 ms per token.
# Server CPU is utime + stime from /proc/PID/stat over the run. One line per run.
# PACED_STREAMS=200 runs the paced load with fewer streams (the mode is then named
# paced200): on a loaded machine the load generator keeps up with fewer.
# MAX_TOKENS=256 makes every stream longer (64 by default); two runs with different
# lengths split a paced event's CPU into what each event costs and what each request
# costs, spread over its events. MODES=paced runs the paced load alone.
# Needs a 2-core machine (taskset), and the repository's venv active.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18150}
PACED_STREAMS=${PACED_STREAMS:-400}
MAX_TOKENS=${MAX_TOKENS:-64}
MODES=${MODES:-unpaced paced}
TREE=$(mktemp -d)/tree
for sha in "$@"; do
  [ "$sha" = ceiling ] || git worktree add -q --detach "$TREE" "$sha"
  for mode in $MODES; do
    [ $mode = paced ] && mode=paced$PACED_STREAMS
    if [ $mode = unpaced ]; then
      pace=(--time-to-first-token-ms 0 --inter-token-latency-ms 0)
      load=(--concurrency 20 --duration 5)
    else
      pace=(--time-to-first-token-ms 0 --inter-token-latency-ms 20)
      load=(--concurrency "$PACED_STREAMS" --duration 8 --ramp-up 1.3 --warmup 1.3)
    fi
    if [ "$sha" = ceiling ]; then
      itl=${pace[3]}  # the ceiling's first token comes a tick after the request, as ours
      taskset -c 0 python bench/servers/ceiling.py --host 127.0.0.1 --port "$PORT" \
        --ttft-ms "$itl" --itl-ms "$itl" > /dev/null 2>&1 &
    else
      PYTHONPATH="$TREE/src" taskset -c 0 python -m streamapi serve --host 127.0.0.1 \
        --port "$PORT" "${pace[@]}" --load-factor 0 --max-num-seqs 100000 \
        --max-waiting-requests 100000 --log-level warning > /dev/null 2>&1 &
    fi
    server=$!
    for _ in $(seq 50); do curl -s -o /dev/null "127.0.0.1:$PORT/health" && break; sleep 0.2; done
    python -m streamapi.bench --url "http://127.0.0.1:$PORT" --concurrency 8 --requests 50 \
      --max-tokens 8 --ignore-eos > /dev/null 2>&1
    t0=$(awk '{print $14+$15}' "/proc/$server/stat")
    python -m streamapi.bench --url "http://127.0.0.1:$PORT" "${load[@]}" --max-tokens "$MAX_TOKENS" \
      --ignore-eos --cpu 1 --json > "$TREE.json" 2> /dev/null
    t1=$(awk '{print $14+$15}' "/proc/$server/stat")
    kill -TERM "$server"; wait "$server" || true
    python3 - "$sha" "$mode" "$t0" "$t1" "$(getconf CLK_TCK)" "$TREE.json" <<'PY'
import json, sys
sha, mode, t0, t1, hz, path = sys.argv[1:]
r = json.load(open(path))
cpu = (float(t1) - float(t0)) / float(hz)
ok, events = r["requests"]["ok"], r["events"]
if mode == "unpaced":
    print(f"{sha} unpaced: {r['events_per_s']:,.0f} events/s, {cpu / ok * 1e6:,.0f} us/request, "
          f"{cpu / events * 1e6:.1f} us/event")
else:
    print(f"{sha} {mode}: {r['events_per_s']:,.0f} events/s, {cpu / events * 1e6:.1f} us/event, "
          f"gap p99 {r['itl_ms']['p99']:.1f} ms, TTFT p99 {r['ttft_ms']['p99']:.1f} ms, "
          f"failed {r['requests']['failed']}")
PY
  done
  [ "$sha" = ceiling ] || git worktree remove --force "$TREE"
done
