"""Update compression: bytes each site sends per round, and the held-out metric after the same rounds, for fp32 and
each ``--compression`` setting, side by side in one run (the FLARE simulator, every site, the job's defaults).

    python scripts/compression_compare.py --task breast_wdbc --seeds 0 1 2
    python scripts/compression_compare.py --task prostate_seg --seeds 0 --out docs/evidence/compression_prostate

Bytes: what each site's quantizer logged (:data:`oncofl.compression.SITE_RECORD`): the update's arrays, and their
scales and code maps, before and after (FLARE's message framing adds a few hundred bytes to either). fp32: the
update's size before quantization. Held-out: the final global model on the seed's held-out cases; the paired
difference to fp32 is per seed (same data, same initial model).

Then, for one seed, what a site's update loses when the full model or only the weight difference is quantized (the
privacy filter off): site-1 trains one round from fp32's final global model, and its weights and its weight
difference are each quantized, decoded and compared with the true update; also their sizes after a general-purpose
lossless compressor (zlib) on the quantized bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.dxo import MetaKey

from oncofl.catalog import by_task
from oncofl.compression import SITE_RECORD, dequantize_update, quantize_update
from oncofl.constants import COMPRESSIONS
from oncofl.engine import DeviceData, resolve_device
from oncofl.evaluation import load_checkpoint
from oncofl.report import job_settings, run_federated
from oncofl.site.runtime import build_trainer, load_splits
from oncofl.site.settings import TrainSettings
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task

SETTINGS = ("fp32", *COMPRESSIONS)
BYTES_LINE = re.compile(re.escape(SITE_RECORD) + r" \((\w+)\): \d+ of \d+ tensors quantized, (\d+) -> (\d+) bytes")


def site_bytes(ws: Path) -> dict[str, list[tuple[int, int]]]:
    """Per site, (bytes before, bytes after) of every update its quantizer logged, in order."""
    out = {}
    for log in sorted(ws.glob("site-*/log.txt")):
        out[log.parent.name] = [(int(m[2]), int(m[3])) for m in BYTES_LINE.finditer(log.read_text(errors="replace"))]
    return out


def run_setting(task: str, setting: str, data: Path, work: Path) -> dict:
    options = {} if setting == "fp32" else {"compression": setting}
    result = run_federated(task, setting, options, data, work, {})
    sizes = site_bytes(work / "ws")
    after = [a for per_site in sizes.values() for _, a in per_site]
    before = [b for per_site in sizes.values() for b, _ in per_site]
    return {
        "held_out": result["held_out"],
        "bytes_per_update": statistics.mean(after) if after else None,
        "fp32_bytes": statistics.mean(before) if before else None,
        "updates": len(after),
        "seconds": result["seconds"],
        "global_model": str(Path(result["server_log"]).parent / "simulate_job" / "app_server" / "FL_global_model.pt"),
    }


def one_round_update(task: str, data: Path, job_dir: Path, start: Path) -> tuple[dict, dict]:
    """site-1's weights before and after one round of local training from the checkpoint ``start``."""
    settings = job_settings(job_dir)
    spec = get_task(task)
    config = load_site_config(data / "site_configs" / "site-1.json", site_name="site-1")
    train = load_splits(config, spec, spec.params(settings.get("preprocess")), splits=("training",))["training"]
    device = resolve_device(config.gpu_ids)
    job = TrainSettings(task=task, learning_rate=settings["learning_rate"], network=settings.get("network"))
    trainer = build_trainer(spec, device, job)
    before = load_checkpoint(start)
    trainer.model.load_state_dict({k: torch.as_tensor(v) for k, v in before.items()})
    train_d = DeviceData.from_numpy(train.images, train.labels, device)
    trainer.train(train_d, epochs=settings["local_epochs"], batch_size=settings["batch_size"])
    after = {k: v.detach().cpu().numpy().copy() for k, v in trainer.model.state_dict().items()}
    return before, after


def exchange_rows(before: dict, after: dict) -> list[dict]:
    """Full weights vs weight difference, each quantized: the error of the update as the server decodes it
    (relative to the update's norm) and the bytes, raw and after zlib."""
    floats = [k for k in after if after[k].dtype.kind == "f"]
    delta = {k: (after[k] - before[k]).astype(np.float32) for k in floats}
    norm = float(np.sqrt(sum(np.sum(d.astype(np.float64) ** 2) for d in delta.values())))
    rows = []
    for setting in COMPRESSIONS:
        for exchange, payload in (("full", {k: after[k].copy() for k in floats}), ("diff", dict(delta))):
            params, states, sources, (_, _, size) = quantize_update(payload, setting)
            meta = {MetaKey.PROCESSED_ALGORITHM: setting, "quant_state": states, "source_datatype": sources}
            decoded = dequantize_update(params, meta)
            got = {k: decoded[k] - before[k] if exchange == "full" else decoded[k] for k in floats}
            error = float(np.sqrt(sum(np.sum((got[k] - delta[k]).astype(np.float64) ** 2) for k in floats)))
            packed = len(zlib.compress(b"".join(np.ascontiguousarray(v).tobytes() for v in params.values()), 6))
            rows.append(
                {
                    "setting": setting,
                    "exchange": exchange,
                    "bytes": size,
                    "zlib_bytes": packed,
                    "update_error": error / norm if norm else float("nan"),
                }
            )
    return rows


def summary(task: str, runs: dict[int, dict[str, dict]]) -> list[str]:
    seeds = sorted(runs)
    fp32_bytes = next(r["fp32_bytes"] for s in seeds for r in runs[s].values() if r["fp32_bytes"])
    key = get_task(task).key_metric
    lines = [
        f"| setting | bytes per site per round | smaller by | held-out {key} (seeds {', '.join(map(str, seeds))}) "
        "| mean | paired difference to fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        scores = [runs[s][setting]["held_out"] for s in seeds]
        size = runs[seeds[0]][setting]["bytes_per_update"] or fp32_bytes
        diffs = [runs[s][setting]["held_out"] - runs[s]["fp32"]["held_out"] for s in seeds]
        lines.append(
            f"| {setting} | {size:,.0f} | x{fp32_bytes / size:.2f} | {', '.join(f'{v:.4f}' for v in scores)} "
            f"| {statistics.mean(scores):.4f} | {statistics.mean(diffs):+.4f} (worst {min(diffs):+.4f}) |"
        )
    return lines


def exchange_table(rows: list[dict]) -> list[str]:
    lines = ["| setting | exchange | bytes | after zlib | error of the update / its norm |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['exchange']} | {r['bytes']:,} | {r['zlib_bytes']:,} | {r['update_error']:.4f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="breast_wdbc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--out", default=None, help="folder for results.json (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="oncofl_compression_"))
    out = Path(args.out) if args.out else work
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        data = by_task(args.task).write_demo_data(work / f"seed{seed}" / "data", seed=seed)
        runs[seed] = {}
        for setting in args.settings:
            runs[seed][setting] = run_setting(args.task, setting, data, work / f"seed{seed}" / setting)
            print(f"seed {seed} {setting}: {json.dumps({k: v for k, v in runs[seed][setting].items()})}", flush=True)
    seed = args.seeds[0]
    job_dir = work / f"seed{seed}" / "fp32" / "jobs"
    job_dir = next(p for p in job_dir.iterdir() if (p / "meta.json").is_file())
    data = work / f"seed{seed}" / "data"
    before, after = one_round_update(args.task, data, job_dir, Path(runs[seed]["fp32"]["global_model"]))
    rows = exchange_rows(before, after)
    (out / "results.json").write_text(json.dumps({"task": args.task, "runs": runs, "exchange": rows}, indent=1))
    print(f"\n{args.task}: {len(args.seeds)} seed(s), the job's defaults, every site (torch {torch.__version__})")
    print("\n".join(summary(args.task, runs)))
    print(f"\nfull weights vs weight difference, site-1, one round from fp32's final global model (seed {seed})")
    print("\n".join(exchange_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
