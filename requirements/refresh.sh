#!/usr/bin/env bash
# Refreshes the locks, on purpose (docs/development.md, "The lock"):
#   requirements/refresh.sh                 every package to its newest release
#   requirements/refresh.sh openai anthropic  only those (the rest stay as locked)
# ci.lock: every version CI and the README's test command install (all extras).
# lowest.lock: streamapi's own dependencies and the test extra at their lower bounds in
# pyproject.toml, which CI's in-process run proves.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || { echo "refresh.sh needs uv: pip install uv" >&2; exit 2; }
export UV_CUSTOM_COMPILE_COMMAND="requirements/refresh.sh"
common=(--universal --python-version 3.11 --quiet)
if [ $# -eq 0 ]; then upgrade=(--upgrade); else upgrade=(); for p in "$@"; do upgrade+=(--upgrade-package "$p"); done; fi
uv pip compile pyproject.toml --all-extras "${common[@]}" "${upgrade[@]}" -o requirements/ci.lock
uv pip compile pyproject.toml --extra test --resolution lowest-direct "${common[@]}" --upgrade \
    -o requirements/lowest.lock
git diff --stat -- requirements/ || true
