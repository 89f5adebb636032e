"""Definition of the ``breast_wdbc`` FLARE job; running it (re)writes the job folder ``jobs/breast_wdbc/``.

    python jobs/breast_wdbc.py                          # regenerate the committed job folder
    python jobs/breast_wdbc.py --out /tmp/jobs --num-rounds 20

Breast cancer diagnosis on the real Wisconsin (Diagnostic) data (task ``breast_wdbc``), the shared FedAvg job shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import by_job
from .builder import build_fedavg_job, cli
from .builder import export as export_job

JOB = by_job("breast_wdbc")  # its catalog entry: the task it trains, its demo data


def export(
    out_dir: str | Path,
    *,
    num_rounds: int = 10,
    min_clients: int = 2,
    local_epochs: int = 10,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    ship_code: bool = False,
    **options: Any,
) -> Path:
    """Write ``<out_dir>/breast_wdbc/`` and return it."""
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
