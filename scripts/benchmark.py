"""Site training speed, measured side by side in one run on one device, for each imaging task:

  (a) pipeline  the project's site path: cached preprocessed cases held on the device (DeviceData), the task's
                augmentation on whole batches, AMP / channels-last as the Trainer chooses, through Trainer.train
  (b) ceiling   the same model, batch size and precision on one real batch already on the device: forward, loss,
                backward, optimizer step, nothing else
  (c) naive     a plain MONAI Dataset + DataLoader (2 workers, per-sample random flips on the CPU, pageable memory)
                feeding the same model in fp32

    python scripts/benchmark.py                              # every imaging task, synthetic CI-size data
    python scripts/benchmark.py --tasks prostate_seg --repeats 9 --data data/synthetic --device cuda
    python scripts/benchmark.py --data-root /tmp/gpu_data --json out.json --profile-below 0.9

Each measurement: warm-up runs, then the median of ``--repeats`` timed runs, the device synchronized around each.
Prints samples/s, (a)/(b), (a)/(c) and the peak device memory of (a). Results: docs/benchmarks.md (card named).
Where (a)/(b) misses a goal, two ways to say where the time goes:
``--ablate-below R``: where (a)/(b) < R, (a) once more with the task's batch augmentation left out (identity);
``--profile-below R``: where (a)/(b) < R on a GPU, one run of (a) and of (b) under the torch profiler (wall vs GPU
kernel time per step, the costliest operations). The profiler's start-up took minutes on one VM: use it off the lease.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from oncofl.catalog import JOBS, by_task
from oncofl.engine import DeviceData, Trainer, autocast
from oncofl.simulate import executor_args
from oncofl.site.runtime import build_trainer, load_splits
from oncofl.site.settings import TrainSettings
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task

TASKS = tuple(job.task for job in JOBS if job.imaging)  # the imaging tasks, in the catalog's order


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_rate(run, samples: int, device: torch.device, warmup: int, repeats: int) -> float:
    """Samples per second: the median over ``repeats`` timed calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    _sync(device)
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        rates.append(samples / (time.perf_counter() - start))
    return statistics.median(rates)


def site_data(task: str, data_root: Path | None, site: str = "site-1"):
    """The site config of one site of the task's data (written on the first call)."""
    job = by_task(task)
    root = Path(data_root) if data_root else Path(tempfile.gettempdir()) / "oncofl_benchmark" / job.data_folder
    if not (root / "site_configs").is_dir():
        job.write_demo_data(root, seed=0)
    config = load_site_config(root / "site_configs" / f"{site}.json", site_name=site)
    return config


def _profile(run, device: torch.device, steps: int, label: str) -> dict:
    """One call of ``run`` (``steps`` training steps) under the torch profiler: wall ms and GPU kernel ms per step,
    and the operations with the most self time on the device."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    run()  # warm
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        run()
        _sync(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.self_device_time_total > 0]
    kernel_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(ops, key=lambda e: e.self_device_time_total, reverse=True)[:8]
    return {
        "label": label,
        "wall_ms_per_step": 1e3 * wall / steps,
        "gpu_kernel_ms_per_step": kernel_us / 1e3 / steps,
        "top_device_ops": [(e.key[:60], round(e.self_device_time_total / 1e3 / steps, 3)) for e in top],
    }


def committed_job_args(task: str) -> dict:
    """The executor arguments of the task's job as committed (its definition's defaults)."""
    with tempfile.TemporaryDirectory() as tmp:
        return executor_args(by_task(task).definition().export(Path(tmp)))


def benchmark_task(
    task: str,
    device: torch.device,
    *,
    data_root,
    warmup: int,
    repeats: int,
    steps: int,
    profile_below: float = 0.0,
    ablate_below: float = 0.0,
) -> dict:
    """(a), (b) and (c) for one task (its committed job's batch size, network and learning rate) on ``steps``
    batches drawn from site-1's training cases (cycled if few); the ablation and profiles where asked for."""
    spec, args = get_task(task), committed_job_args(task)
    batch, network, lr = args.get("batch_size", 4), args.get("network"), args.get("learning_rate", 1e-3)
    config = site_data(task, data_root)
    split = load_splits(config, spec, spec.params(args.get("preprocess")), ("training",))["training"]
    pick = np.arange(steps * batch) % len(split.images)  # exactly `steps` batches
    rate = lambda run, samples: _median_rate(run, samples, device, warmup, repeats)  # noqa: E731

    # (a) the site pipeline: one "epoch" of the picked cases, held on the device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer(spec, device, TrainSettings(task=task, learning_rate=lr, network=network))
    data = DeviceData.from_numpy(split.images[pick], split.labels[pick], device)
    site_epoch = lambda: trainer.train(data, epochs=1, batch_size=batch)  # noqa: E731
    pipeline = rate(site_epoch, len(pick))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    # (b) the ceiling; (c) naive
    compute_only = _compute_only(trainer, data, batch, steps, device)
    ceiling = rate(compute_only, steps * batch)
    naive = rate(_naive_epochs(spec, split, pick, batch, network, lr, device), len(pick))

    no_augment = None
    if pipeline / ceiling < ablate_below:
        no_augment = _without_augmentation(trainer, site_epoch, rate, len(pick))
    profiles = []
    if device.type == "cuda" and pipeline / ceiling < profile_below:
        profiles = [
            _profile(site_epoch, device, steps, "(a) pipeline"),
            _profile(compute_only, device, steps, "(b) ceiling"),
        ]
    return {
        "pipeline_without_augment": no_augment,
        "profiles": profiles,
        "task": task,
        "batch": batch,
        "cases": len(split.images),
        "pipeline": pipeline,
        "ceiling": ceiling,
        "naive": naive,
        "peak_gib": peak,
        "precision": str(trainer.dtype).replace("torch.", "") if trainer.dtype else "fp32",
    }


def _compute_only(trainer: Trainer, data: DeviceData, batch: int, steps: int, device: torch.device):
    """(b): ``steps`` optimizer steps of the trainer's model, precision and memory format on one real batch already
    on the device -- forward, loss, backward, step, nothing else."""
    model, optimizer, loss_fn = trainer.model, trainer.optimizer, trainer.loss_fn
    x, y = data.images[:batch].clone(), data.labels[:batch].clone()
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def compute_only():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, trainer.dtype):
                loss = loss_fn(model(x), y)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(optimizer)
            trainer.scaler.update()

    return compute_only


def _naive_epochs(spec, split, pick: np.ndarray, batch: int, network, lr: float, device: torch.device):
    """(c): one epoch of the picked cases through a MONAI Dataset + DataLoader (2 workers, per-sample random flips on
    the CPU) into a fresh copy of the task's network, fp32."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandFlipd

    keys = ["image", "label"] if spec.label_kind == "mask" else ["image"]  # a mask flips with its image
    flips = Compose([RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(split.images.ndim - 2)])
    items = [{"image": split.images[i], "label": split.labels[i]} for i in pick]
    loader = DataLoader(
        Dataset(items, transform=flips), batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True
    )
    naive_model = spec.build_network(**(network or {})).to(device)
    naive_opt = torch.optim.Adam(naive_model.parameters(), lr=lr)
    naive_loss = spec.make_loss()

    def naive_epochs():
        naive_model.train()
        for item in loader:
            images = torch.as_tensor(item["image"]).to(device)
            labels = torch.as_tensor(item["label"]).to(device).long()
            naive_opt.zero_grad(set_to_none=True)
            naive_loss(naive_model(images), labels).backward()
            naive_opt.step()

    return naive_epochs


def _without_augmentation(trainer: Trainer, site_epoch, rate, samples: int) -> float:
    """(a) once more with the task's batch augmentation left out (identity): samples per second."""
    spec = trainer.task
    trainer.task = replace(spec, augment=lambda images, labels, generator: (images, labels))
    try:
        return rate(site_epoch, samples)
    finally:
        trainer.task = spec


def table(rows: list[dict], device_name: str) -> str:
    lines = [
        f"device: {device_name}",
        f"{'task':18} {'batch':>5} {'prec':>8} {'(a) pipeline':>13} {'(b) ceiling':>12} {'(c) naive':>10} "
        f"{'a/b':>6} {'a/c':>6} {'peak GiB':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r['task']:18} {r['batch']:>5} {r['precision']:>8} {r['pipeline']:>13.1f} {r['ceiling']:>12.1f} "
            f"{r['naive']:>10.1f} {r['pipeline'] / r['ceiling']:>6.2f} {r['pipeline'] / r['naive']:>6.2f} "
            f"{r['peak_gib']:>9.2f}"
        )
    lines.append("samples/s, medians; (a) site pipeline, (b) compute-only ceiling, (c) naive MONAI DataLoader fp32")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="data folder of the task (one task only); made if absent")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run (about)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-root", default=None, help="folder holding each task's data folder (made if absent)")
    parser.add_argument("--json", default=None, help="also write the rows (and any profiles) to this JSON file")
    parser.add_argument("--profile-below", type=float, default=0.0, help="profile tasks whose (a)/(b) is below this")
    parser.add_argument(
        "--ablate-below", type=float, default=0.0, help="time (a) without augmentation where (a)/(b) is below this"
    )
    return parser


def diagnoses(rows: list[dict]) -> list[str]:
    """Where time goes, per row that was ablated or profiled: one line per ablation and per profile."""
    lines = []
    for row in rows:
        if row["pipeline_without_augment"] is not None:
            rate = row["pipeline_without_augment"]
            lines.append(
                f"ablation {row['task']}: (a) without augmentation {rate:.1f} samples/s, "
                f"{rate / row['ceiling']:.2f} x (b) (with augmentation {row['pipeline'] / row['ceiling']:.2f})"
            )
        for prof in row["profiles"]:
            lines.append(
                f"profile {row['task']} {prof['label']}: {prof['wall_ms_per_step']:.2f} ms wall per step, "
                f"{prof['gpu_kernel_ms_per_step']:.2f} ms in GPU kernels; most device time: "
                + ", ".join(f"{name} {ms} ms" for name, ms in prof["top_device_ops"][:5])
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.data and len(args.tasks) > 1:
        parser.error("--data goes with one --tasks entry")
    if args.data and args.data_root:
        parser.error("--data and --data-root exclude each other")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    options = {k: getattr(args, k) for k in ("warmup", "repeats", "steps", "profile_below", "ablate_below")}
    rows = []
    for task in args.tasks:
        data = Path(args.data_root) / by_task(task).data_folder if args.data_root else args.data
        rows.append(benchmark_task(task, device, data_root=data, **options))
        print(table(rows[-1:], name).splitlines()[2], flush=True)  # each row as soon as it is measured
        if args.json:
            Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    for line in diagnoses(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    print(table(rows, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
