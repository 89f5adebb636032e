#!/usr/bin/env bash
# Run on a lent GPU machine (see DEVELOPERS guide): the CUDA tests, the preprocessing and training benchmarks.
# The GPU host has torch + cupy but not nvflare/monai/pydicom...: carry them as wheels in .whl/ (pip download
# --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl nvflare==2.9.0 monai==1.6.1 pydicom nibabel
# pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls highdicom pydicom-data pyhocon msgpack
# gunicorn flask-jwt-extended flask-sqlalchemy sqlalchemy docker) and run with carry [".whl"].
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cupy', cupy.__version__)"
python -m pytest -q -p no:cacheprovider -m gpu tests/unit 2>&1 | tail -5
python scripts/benchmark_preprocess.py --repeats 5
# site training speed: (a) pipeline vs (b) compute-only ceiling vs (c) naive DataLoader, every imaging task
python scripts/benchmark.py --repeats 7 --steps 30
# one executor round on the GPU and the DDP path (a second GPU makes the latter NCCL; one GPU skips it)
python -m pytest -q -p no:cacheprovider tests/integration/test_executor_round.py tests/unit/test_distributed.py 2>&1 | tail -3
