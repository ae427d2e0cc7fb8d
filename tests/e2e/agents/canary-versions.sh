#!/usr/bin/env bash
# The canary (issue 20): the newest Claude Code and Codex CLI from npm, installed in a
# scratch folder (never in this project's lock), and the agent CLI tests run against them.
#
#   tests/e2e/agents/canary-versions.sh [SCRATCH_DIR] [PYTEST_ARGS...]
#
# A test that fails here and passes with the pinned versions shows what a new CLI
# version sends that streamapi does not take yet (the journal's 4xx names it).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../../.." && pwd)"
scratch="${1:-$(mktemp -d)}"
shift || true
mkdir -p "$scratch"
cd "$scratch"
[ -f package.json ] || npm init -y >/dev/null
npm install --no-audit --no-fund --loglevel error \
    @anthropic-ai/claude-code@latest @openai/codex@latest
echo "claude: $(HOME="$scratch" node_modules/.bin/claude --version)"
echo "codex: $(HOME="$scratch" node_modules/.bin/codex --version 2>/dev/null)"
cd "$repo"
CI=true AGENT_CLIS_DIR="$scratch" pytest -rP tests/e2e/test_agent_clis.py "$@"
