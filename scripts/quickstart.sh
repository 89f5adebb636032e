#!/usr/bin/env bash
# One command on a fresh machine: install, make synthetic data for 3 sites (if absent), run the prostate job in the
# FLARE simulator, print where the global model, cross-site matrix and TensorBoard logs are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/oncofl simulate "$@"
