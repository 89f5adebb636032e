#!/usr/bin/env bash
# Create .venv, install the pinned requirements and oncofl itself (editable; idempotent: skips work when nothing
# changed). Afterwards `oncofl` and `import oncofl` work in .venv with no repository path set.
# CPU hosts get the CPU wheel of torch 2.13.0 first, so requirements.txt does not pull a multi-GB CUDA build.
# GPU sites: install your CUDA build of torch into .venv first; this script then leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.oncofl-requirements"
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements.txt "setuptools>=70.1"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
