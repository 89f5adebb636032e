"""Definition of the ``breast_wdbc`` FLARE job; running it (re)writes the job folder ``jobs/breast_wdbc/``.

    python jobs/breast_wdbc.py                          # regenerate the committed job folder
    python jobs/breast_wdbc.py --out /tmp/jobs --num-rounds 20

Breast cancer diagnosis on the real Wisconsin (Diagnostic) data (task ``breast_wdbc``), the shared FedAvg job shape.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedavg import build_fedavg_job, cli  # noqa: E402
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
    **options: Any,
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
        **options,
    )
    return export_job(job, out_dir)


if __name__ == "__main__":
    cli(export, __doc__)
