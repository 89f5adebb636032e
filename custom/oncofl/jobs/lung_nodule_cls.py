"""Definition of the ``lung_nodule_cls`` FLARE job; running it (re)writes the job folder ``jobs/lung_nodule_cls/``.

    python jobs/lung_nodule_cls.py                          # regenerate the committed job folder
    python jobs/lung_nodule_cls.py --out /tmp/jobs --num-rounds 15

Lung nodule malignancy from chest CT (task ``lung_nodule_cls``), the shared FedAvg job shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import by_job
from .builder import build_fedavg_job, cli
from .builder import export as export_job

JOB = by_job("lung_nodule_cls")  # its catalog entry: the task it trains, its demo data


def export(
    out_dir: str | Path,
    *,
    num_rounds: int = 8,
    min_clients: int = 2,
    local_epochs: int = 3,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    ship_code: bool = False,
    **options: Any,
) -> Path:
    """Write ``<out_dir>/lung_nodule_cls/`` and return it."""
    job = build_fedavg_job(
        JOB.name,
        task=JOB.task,
        num_rounds=num_rounds,
        min_clients=min_clients,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        **options,
    )
    return export_job(job, out_dir, ship_code=ship_code)


def main(argv: list[str] | None = None, default_out: str = "jobs") -> None:
    cli(export, __doc__, argv, default_out)


if __name__ == "__main__":
    main()
