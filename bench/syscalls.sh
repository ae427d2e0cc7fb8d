#!/bin/bash
# System calls per request of a paced chat stream, counted by strace: a figure that does
# not move with the machine's load, beside the CPU figures that do.
#
#   bench/syscalls.sh COMMIT [COMMIT ...]
#
# For each commit: its tree's server (from a git worktree) pinned to core 0, paced at
# 20 ms a token; a warm-up of 20 short requests; then `strace -c -f` attached while this
# checkout's load generator sends 200 requests of 64 tokens (`--ignore-eos`, usage asked
# for), 50 at a time. Prints each system call's count per request (strace's own cost
# slows the server, not the counts). Needs strace (apt-get install -y strace) and the
# repository's venv active.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18160}
REQUESTS=200
TREE=$(mktemp -d)/tree
for sha in "$@"; do
  git worktree add -q --detach "$TREE" "$sha"
  PYTHONPATH="$TREE/src" taskset -c 0 python -m streamapi serve --host 127.0.0.1 --port "$PORT" \
    --time-to-first-token-ms 0 --inter-token-latency-ms 20 --load-factor 0 \
    --max-num-seqs 100000 --max-waiting-requests 100000 --log-level warning > /dev/null 2>&1 &
  server=$!
  for _ in $(seq 50); do curl -s -o /dev/null "127.0.0.1:$PORT/health" && break; sleep 0.2; done
  python -m streamapi.bench --url "http://127.0.0.1:$PORT" --concurrency 8 --requests 20 \
    --max-tokens 8 --ignore-eos > /dev/null 2>&1
  strace -c -f -p "$server" -o "$TREE.strace" 2> /dev/null &
  tracer=$!
  sleep 1
  python -m streamapi.bench --url "http://127.0.0.1:$PORT" --concurrency 50 --requests "$REQUESTS" \
    --max-tokens 64 --ignore-eos > /dev/null 2>&1
  kill -INT "$tracer"; wait "$tracer" || true
  kill -TERM "$server"; wait "$server" || true
  echo "$sha: system calls per request ($REQUESTS requests of 64 tokens, paced)"
  awk -v n="$REQUESTS" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ && $4 / n >= 0.1 {
    printf "  %-14s %7.2f\n", $NF, $4 / n }' "$TREE.strace"
  git worktree remove --force "$TREE"
done
