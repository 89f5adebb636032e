#!/usr/bin/env bash
# The test command (README, CI): install if needed, lint, then the whole suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
