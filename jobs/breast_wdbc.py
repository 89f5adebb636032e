"""Definition of the ``breast_wdbc`` FLARE job; running it (re)writes the job folder ``jobs/breast_wdbc/``.

    python jobs/breast_wdbc.py                          # regenerate the committed job folder
    python jobs/breast_wdbc.py --out /tmp/jobs --num-rounds 20

Breast cancer diagnosis on the real Wisconsin (Diagnostic) data (task ``breast_wdbc``), the shared FedAvg job shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedavg import REPO, build_fedavg_job  # noqa: E402
from fedavg import export as export_job  # noqa: E402

JOB_NAME = "breast_wdbc"


def export(
    out_dir: str | Path,
    *,
    num_rounds: int = 10,
    min_clients: int = 2,
    local_epochs: int = 10,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
) -> Path:
    """Write ``<out_dir>/breast_wdbc/`` and return it."""
    job = build_fedavg_job(
        JOB_NAME,
        task="breast_wdbc",
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
    parser.add_argument("--num-rounds", type=int, default=10)
    parser.add_argument("--min-clients", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
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
