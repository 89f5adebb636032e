#!/usr/bin/env bash
# Create .venv and install the project's requirements (idempotent: skips work when nothing changed).
# CPU hosts get the CPU wheel of torch 2.13.0 first, so requirements.txt does not pull a multi-GB CUDA build.
# GPU sites: install your CUDA build of torch into .venv first; this script then leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.oncofl-requirements"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
