"""What federation costs one site: the FLARE job's wall time against standalone training of the same local epochs,
on the same device and data, measured one after the other in one run.

    python scripts/fl_overhead.py                        # prostate job schedule (5 rounds x 6 epochs), site-1
    python scripts/fl_overhead.py --rounds 3 --epochs 2 --data data/synthetic

FL: the real simulator, one client (the job exported with min_clients=1), from start to finish: start-up, every
round's task fetch, global-model evaluation, training, upload, aggregation, then cross-site evaluation. Standalone:
the same Trainer on the same cached data for rounds x epochs, with the same per-round evaluation of the model on the
validation split (the executor scores the global model before and the local one after each round). Prints both, the
ratio, and the FL time spent inside training as the client logged it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from oncofl import synthetic
from oncofl.engine import DeviceData, resolve_device
from oncofl.jobs.prostate_mri_seg import export
from oncofl.simulate import executor_args, run_simulator
from oncofl.site.runtime import build_trainer, load_splits
from oncofl.site.settings import TrainSettings
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task

ROUND_LINE = re.compile(r"round (\d+): global .* (\d+) steps in ([\d.]+) s")


def standalone(config, args: dict, rounds: int, epochs: int) -> float:
    spec = get_task(args["task"])
    params = spec.params(args.get("preprocess"))
    splits = load_splits(config, spec, params)  # from the warm cache, as the FL client's rounds
    train, val = splits["training"], splits["validation"]
    device = resolve_device(config.gpu_ids)
    started = time.perf_counter()
    job = TrainSettings(task=args["task"], learning_rate=args["learning_rate"], network=args.get("network"))
    trainer = build_trainer(spec, device, job)
    train_d = DeviceData.from_numpy(train.images, train.labels, device)
    val_d = DeviceData.from_numpy(val.images, val.labels, device)
    for _ in range(rounds):
        trainer.evaluate(val_d, batch_size=args["batch_size"])
        trainer.train(train_d, epochs=epochs, batch_size=args["batch_size"])
        trainer.evaluate_all(val_d, batch_size=args["batch_size"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data", default=None, help="synthetic prostate data (made if absent)")
    parser.add_argument("--site", default="site-1")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="oncofl_overhead_"))
    data = Path(args.data).resolve() if args.data else work / "data"
    if not (data / "site_configs").is_dir():
        synthetic.generate(data, seed=0)
    job = export(work / "jobs", num_rounds=args.rounds, local_epochs=args.epochs, min_clients=1)
    exec_args = executor_args(job)
    config = load_site_config(data / "site_configs" / f"{args.site}.json", site_name=args.site)
    standalone(config, exec_args, 1, 1)  # fills the cache and warms up, as the FL client's first round would

    log = work / "simulator.log"
    fl = run_simulator(job, work / "ws", data / "site_configs", [args.site], timeout=3600, log_file=log)
    if fl.returncode != 0:
        print(log.read_text()[-3000:])
        return 1
    alone = standalone(config, exec_args, args.rounds, args.epochs)
    inside = sum(float(m.group(3)) for m in ROUND_LINE.finditer(log.read_text()))
    device = resolve_device(config.gpu_ids)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.rounds} rounds x {args.epochs} local epochs, one site ({args.site})")
    print(f"standalone training + per-round evaluation : {alone:8.1f} s")
    print(f"FLARE job, wall (start-up to cross-site)   : {fl.seconds:8.1f} s   ratio {fl.seconds / alone:.2f}")
    print(f"  of which the client's training rounds     : {inside:8.1f} s")
    print(f"  everything else (start-up, transfers, aggregation, cross-site eval): {fl.seconds - inside:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
