"""The committed imaging jobs at their GPU sizes, in the real FLARE simulator, on a CUDA GPU (``scripts/gpu_check.sh``).

Each job runs as committed (prostate 3D UNet; mammography 512 x 512 DenseNet121; lung 3D ResNet), with every site in
every round as in the CPU end-to-end tests, on synthetic DICOM of 3 sites. Asserted: the global model learned on the
held-out cases (the CPU tests' thresholds), and each site fits a 24 GB card: the peak torch memory each site logs per
round, and the device memory each site's process held (NVML, the CUDA context and CuPy included).

``ONCOFL_GPU_DATA``: a folder holding ``synthetic/``, ``synthetic_mammo/`` and ``synthetic_lung/`` made beforehand
(the GPU check shares them with the benchmark); without it each test writes its own. ``ONCOFL_GPU_REPORT``: a folder
to write ``gpu_job_<task>.json`` with the measured numbers.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import psutil
import pytest
import torch

from oncofl.catalog import JOBS, by_task
from oncofl.evaluation import holdout_metric
from oncofl.simulate import executor_args, run_simulator

SITES = ["site-1", "site-2", "site-3"]
CARD_GIB = 24.0  # the smallest card a site is told it can use
TASKS = [job.task for job in JOBS if job.imaging]  # each at its GPU size: the catalog's gpu_data
PEAK = re.compile(r"peak GPU memory ([\d.]+) GiB allocated, ([\d.]+) GiB reserved")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def task_data(task: str, tmp_path: Path) -> Path:
    """The task's synthetic sites: the shared folder if one was made, else written here."""
    job = by_task(task)
    shared = os.environ.get("ONCOFL_GPU_DATA")
    root = Path(shared) / job.data_folder if shared else tmp_path / "data"
    if not (root / "site_configs").is_dir():
        job.write_demo_data(root, seed=0, **job.gpu_data)
    return root


class DeviceMemorySampler(threading.Thread):
    """Per site, the largest device memory its simulator worker process held (NVML, sampled every half second; the
    CUDA context and CuPy's pools included). Only this run's workers count: their command line names the workspace
    (``--simulator_root``), so jobs running side by side on one card are told apart."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(daemon=True)
        self.workspace = str(Path(workspace).resolve())
        self.peak_bytes: dict[str, int] = {}
        self.available = True
        self._owners: dict[int, str | None] = {}
        self._stop_event = threading.Event()

    def _site_of(self, pid: int) -> str | None:
        if pid not in self._owners:
            try:
                args = psutil.Process(pid).cmdline()
            except psutil.Error:
                return None  # gone, or not ours to read: asked again next time
            ours = "--simulator_root" in args and args[args.index("--simulator_root") + 1] == self.workspace
            self._owners[pid] = args[args.index("--client") + 1] if ours and "--client" in args else None
        return self._owners[pid]

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # NVML missing: the per-site torch peaks still stand
            self.available = False
            return
        while not self._stop_event.wait(0.5):
            try:
                processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # this driver/VM does not report per-process memory
                self.available = False
                return
            for proc in processes:
                site = self._site_of(proc.pid)
                if site is not None:
                    self.peak_bytes[site] = max(self.peak_bytes.get(site, 0), int(proc.usedGpuMemory or 0))

    def stop(self) -> dict[str, float] | None:
        """Stop sampling; per site the peak in GiB (None where NVML could not say)."""
        self._stop_event.set()
        self.join(timeout=10)
        if not self.available or not self.peak_bytes:
            return None
        return {site: round(b / 2**30, 2) for site, b in sorted(self.peak_bytes.items())}


def site_peaks(workspace: Path) -> dict[str, tuple[float, float]]:
    """Per site, the largest (allocated, reserved) GiB its rounds logged."""
    peaks: dict[str, tuple[float, float]] = {}
    for site in SITES:
        logs = [p for p in (workspace / site).rglob("log.txt")]
        found = [tuple(map(float, m.groups())) for p in logs for m in PEAK.finditer(p.read_text(errors="replace"))]
        if found:
            peaks[site] = (max(a for a, _ in found), max(r for _, r in found))
    return peaks


@pytest.mark.parametrize("task", TASKS)
def test_committed_job_learns_on_the_gpu_and_fits_a_24_gb_card(task, tmp_path):
    data = task_data(task, tmp_path)
    job = by_task(task).definition().export(tmp_path / "jobs", min_clients=3)
    sampler = DeviceMemorySampler(tmp_path / "ws")
    sampler.start()
    try:
        result = run_simulator(
            job, tmp_path / "ws", data / "site_configs", SITES, timeout=1500, log_file=tmp_path / "simulator.log"
        )
    finally:
        process_peaks = sampler.stop()
    assert result.returncode == 0, (tmp_path / "simulator.log").read_text()[-4000:]
    args = executor_args(job)
    settings = {"task": task, "network": args.get("network"), "params": args.get("preprocess")}
    initial, final, best = (
        holdout_metric(m, data / "holdout", **settings) for m in (None, result.global_model, result.best_model)
    )
    peaks = site_peaks(tmp_path / "ws")
    record = {
        "task": task,
        "device": torch.cuda.get_device_name(0),
        "initial": initial,
        "final": final,
        "best": best,
        "seconds": result.seconds,
        "site_peak_gib": peaks,
        "process_peak_gib": process_peaks,
    }
    print(json.dumps(record))
    if os.environ.get("ONCOFL_GPU_REPORT"):
        out = Path(os.environ["ONCOFL_GPU_REPORT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"gpu_job_{task}.json").write_text(json.dumps(record, indent=1))

    assert "SiteErrorReporter" not in result.server_log.read_text()  # no site failed a task
    assert sorted(peaks) == SITES, f"a site logged no GPU memory (not on the GPU?): {peaks}"
    assert all(reserved < CARD_GIB - 1 for _, reserved in peaks.values()), peaks  # 1 GiB for the CUDA context
    if process_peaks is not None:
        assert max(process_peaks.values()) < CARD_GIB, f"a site's process held too much device memory: {process_peaks}"
    # learning, with the CPU end-to-end tests' thresholds (tests/e2e/test_simulator.py)
    if task == "prostate_seg":
        assert initial <= 0.15 and final >= 0.70 and final - initial >= 0.50, record
    else:
        assert final - initial >= 0.2, record
        assert max(final, best) >= 0.70 and max(final, best) - initial >= 0.3, record
