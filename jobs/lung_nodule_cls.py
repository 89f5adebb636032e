"""Definition of the ``lung_nodule_cls`` FLARE job; running it (re)writes the job folder ``jobs/lung_nodule_cls/``.

    python jobs/lung_nodule_cls.py                          # regenerate the committed job folder
    python jobs/lung_nodule_cls.py --out /tmp/jobs --num-rounds 15

Lung nodule malignancy from chest CT (task ``lung_nodule_cls``), the shared FedAvg job shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedavg import REPO, build_fedavg_job  # noqa: E402
from fedavg import export as export_job  # noqa: E402

JOB_NAME = "lung_nodule_cls"


def export(
    out_dir: str | Path,
    *,
    num_rounds: int = 8,
    min_clients: int = 2,
    local_epochs: int = 3,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
) -> Path:
    """Write ``<out_dir>/lung_nodule_cls/`` and return it."""
    job = build_fedavg_job(
        JOB_NAME,
        task="lung_nodule_cls",
        num_rounds=num_rounds,
        min_clients=min_clients,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    return export_job(job, out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "jobs"), help="folder to write the job folder into")
    parser.add_argument("--num-rounds", type=int, default=8)
    parser.add_argument("--min-clients", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    job_dir = export(
        args.out,
        num_rounds=args.num_rounds,
        min_clients=args.min_clients,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
    )
    print(f"job written to {job_dir}")


if __name__ == "__main__":
    main()
