"""Definition of the ``prostate_mri_seg`` FLARE job; running it (re)writes the job folder ``jobs/prostate_mri_seg/``.

    python jobs/prostate_mri_seg.py                     # regenerate the committed job folder
    python jobs/prostate_mri_seg.py --out /tmp/jobs --num-rounds 10 --local-epochs 4

Prostate MRI whole-gland segmentation (task ``prostate_seg``) with the shared FedAvg job shape (jobs/fedavg.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedavg import REPO, build_fedavg_job  # noqa: E402
from fedavg import export as export_job  # noqa: E402

JOB_NAME = "prostate_mri_seg"


def export(
    out_dir: str | Path,
    *,
    num_rounds: int = 5,
    min_clients: int = 2,
    local_epochs: int = 6,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    spacing_policy: str = "refuse",
) -> Path:
    """Write ``<out_dir>/prostate_mri_seg/`` and return it."""
    job = build_fedavg_job(
        JOB_NAME,
        task="prostate_seg",
        num_rounds=num_rounds,
        min_clients=min_clients,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        preprocess={"spacing_policy": spacing_policy},  # a series with a gap: "refuse" it or "resample" it
    )
    return export_job(job, out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "jobs"), help="folder to write the job folder into")
    parser.add_argument("--num-rounds", type=int, default=5)
    parser.add_argument("--min-clients", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--spacing-policy", choices=["refuse", "resample"], default="refuse")
    args = parser.parse_args()
    job_dir = export(
        args.out,
        num_rounds=args.num_rounds,
        min_clients=args.min_clients,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        spacing_policy=args.spacing_policy,
    )
    print(f"job written to {job_dir}")


if __name__ == "__main__":
    main()
