#!/usr/bin/env bash
# GPU evidence in one go on a fresh CUDA machine (issue 24); prints a short table last.
#
#   bash scripts/gpu_check.sh                 # every step: tests jobs bench prep
#   bash scripts/gpu_check.sh jobs bench      # only these steps (a rerun after a fix)
#
# Steps: tests  the gpu-marked unit/integration tests (CuPy == CPU preprocessing within 1e-4, CUDA + AMP training,
#               DDP over NCCL with one rank, through the executor too)
#        jobs   the committed prostate / mammography (512^2 DenseNet121) / lung jobs in the FLARE simulator, side by
#               side: held-out metric initial -> final, and each site's peak GPU memory (tests/e2e/test_gpu_jobs.py)
#        bench  scripts/benchmark.py: (a) site pipeline, (b) compute-only ceiling, (c) naive MONAI DataLoader
#        prep   scripts/benchmark_preprocess.py: DICOM series -> normalized tensor, GPU (CuPy) vs CPU
# The machine needs torch (CUDA) and CuPy; nvflare, monai, pydicom, nibabel, nvflare's own needs and setuptools travel
# as wheels in .whl/ (see docs/benchmarks.md, "GPU evidence"); oncofl is then installed from this checkout. Logs and
# JSON go to $OUT (the device tool's folder) or /tmp/oncofl_gpu_out.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-/tmp/oncofl_gpu_out}"
WORK="${ONCOFL_GPU_WORK:-/tmp/oncofl_gpu}"
mkdir -p "$RESULTS" "$WORK"
PY="${PYTHON:-python3}"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" || exit 1
fi
# oncofl itself, installed from this checkout as a site installs it (setuptools >= 70.1: carry its wheel in .whl/)
if ! "$PY" -c "import oncofl" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" || exit 1
fi
export PYTHONUNBUFFERED=1 ONCOFL_GPU_DATA="$WORK/data" ONCOFL_GPU_REPORT="$RESULTS"
STEPS="${*:-tests jobs bench prep}"
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rA)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/device.txt"
"$PY" -c "import torch, cupy, nvflare, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'cupy', cupy.__version__, 'nvflare', nvflare.__version__, 'monai', monai.__version__, 'cpus', __import__('os').cpu_count())" \
  | tee -a "$RESULTS/device.txt"

# step NAME SECONDS CMD...: run with a time limit, log to $RESULTS/NAME.log, record rc and seconds
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$RESULTS/steps.txt"
  tail -n 8 "$RESULTS/$name.log"
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# the imaging tasks' synthetic sites at their GPU size (oncofl.catalog), written once (in parallel) and shared by
# the jobs and the benchmark
if wants jobs || wants bench; then
  step data 300 "$PY" - <<'EOF'
import os, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from oncofl.catalog import JOBS
root = Path(os.environ["ONCOFL_GPU_DATA"])
work = [job for job in JOBS if job.imaging and not (root / job.data_folder / "site_configs").is_dir()]
with ProcessPoolExecutor(3) as pool:
    done = [pool.submit(job.write_demo_data, root / job.data_folder, seed=0, **job.gpu_data) for job in work]
    print([str(f.result()) for f in done])
EOF
fi

# the correctness tests beside the jobs (both need the GPU briefly; the benchmark below runs alone)
if wants tests; then
  # FLARE's 8/4-bit quantization path against ours: needs bitsandbytes, which the device machine lacks unless its
  # wheel is carried in .whl/
  compression=()
  "$PY" -c "import bitsandbytes" 2>/dev/null && compression=(tests/unit/test_compression.py) \
    || echo "bitsandbytes missing: tests/unit/test_compression.py not run (carry its wheel in .whl/)"
  step tests 420 "${PYTEST[@]}" -m gpu tests/unit/test_preprocess.py tests/unit/test_engine.py "${compression[@]}" \
    tests/unit/test_distributed.py tests/integration/test_executor_round.py &
  TESTS_PID=$!
fi
if wants jobs; then
  xdist=()
  "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 3)
  step jobs 600 "${PYTEST[@]}" "${xdist[@]}" -m gpu tests/e2e/test_gpu_jobs.py
fi
[ -n "${TESTS_PID:-}" ] && wait "$TESTS_PID"

if wants bench; then
  # where (a)/(b) misses 0.9: (a) again without the augmentation (the profiler took minutes to start on the H200 VM,
  # so it is off unless PROFILE_BELOW is set)
  step bench "${BENCH_LIMIT:-300}" "$PY" scripts/benchmark.py --data-root "$WORK/data" --repeats "${BENCH_REPEATS:-5}" \
    --steps "${BENCH_STEPS:-20}" --json "$RESULTS/benchmark.json" --ablate-below 0.9 --profile-below "${PROFILE_BELOW:-0}"
  grep -E "^(profile|ablation) " "$RESULTS/bench.log"
fi
if wants prep; then
  step prep "${PREP_LIMIT:-300}" "$PY" scripts/benchmark_preprocess.py --repeats 5 --json "$RESULTS/preprocess.json"
fi

echo
echo "== GPU evidence: $(head -n 1 "$RESULTS/device.txt")"
cat "$RESULTS/steps.txt"
for name in tests jobs; do
  [ -f "$RESULTS/$name.log" ] && echo "$name: $(grep -E "(passed|failed|error|skipped)" "$RESULTS/$name.log" | tail -n 1)"
done
"$PY" - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("gpu_job_*.json")):
    r = json.loads(f.read_text())
    peaks = r["site_peak_gib"]
    worst = max((v[1] for v in peaks.values()), default=float("nan"))
    proc = r["process_peak_gib"]
    print(f"job {r['task']:17} held-out {r['initial']:.3f} -> final {r['final']:.3f} (best {r['best']:.3f}) "
          f"{r['seconds']:.0f} s; site peak reserved {worst:.2f} GiB; largest process {proc if proc is None else round(proc, 2)} GiB")
if (out / "benchmark.json").is_file():
    for r in json.loads((out / "benchmark.json").read_text())["rows"]:
        print(f"bench {r['task']:17} b{r['batch']} {r['precision']:>8}: (a) {r['pipeline']:8.1f} (b) {r['ceiling']:8.1f} "
              f"(c) {r['naive']:8.1f} samples/s  a/b {r['pipeline'] / r['ceiling']:.2f}  a/c {r['pipeline'] / r['naive']:.2f}  "
              f"peak {r['peak_gib']:.2f} GiB")
if (out / "preprocess.json").is_file():
    for r in json.loads((out / "preprocess.json").read_text())["rows"]:
        ratio = lambda g: f"{r['cpu_s'] / g:7.1f}x" if g else "      -"
        print(f"prep {r['stage'][:46]:46} CPU {r['cpu_s']:7.3f} s  GPU {r['gpu_s'] or 0:7.4f} s {ratio(r['gpu_s'])}  "
              f"with copies {r['gpu_with_copies_s'] or 0:7.4f} s {ratio(r['gpu_with_copies_s'])}")
EOF
