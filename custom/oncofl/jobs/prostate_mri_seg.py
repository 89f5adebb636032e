"""Definition of the ``prostate_mri_seg`` FLARE job; running it (re)writes the job folder ``jobs/prostate_mri_seg/``.

    python jobs/prostate_mri_seg.py                     # regenerate the committed job folder
    python jobs/prostate_mri_seg.py --out /tmp/jobs --num-rounds 10 --local-epochs 4

Prostate MRI whole-gland segmentation (task ``prostate_seg``), the shared FedAvg job shape (:mod:`oncofl.jobs.builder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import by_job
from ..dicom.series import SPACING_POLICIES
from .builder import build_fedavg_job, cli
from .builder import export as export_job

JOB = by_job("prostate_mri_seg")  # its catalog entry: the task it trains, its demo data


def export(
    out_dir: str | Path,
    *,
    num_rounds: int = 5,
    min_clients: int = 2,
    local_epochs: int = 6,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    spacing_policy: str = "refuse",
    dropout_timeout: int = 600,
    ship_code: bool = False,
    **options: Any,
) -> Path:
    """Write ``<out_dir>/prostate_mri_seg/`` and return it. ``dropout_timeout``: seconds cross-site evaluation waits
    for a site that dropped out (its model, then its scores) before finishing with the others."""
    if spacing_policy not in SPACING_POLICIES:
        raise ValueError(f"spacing_policy must be one of {SPACING_POLICIES}, got {spacing_policy!r}")
    job = build_fedavg_job(
        JOB.name,
        task=JOB.task,
        num_rounds=num_rounds,
        min_clients=min_clients,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        preprocess={"spacing_policy": spacing_policy},  # a series with a gap: "refuse" it or "resample" it
        submit_model_timeout=dropout_timeout,
        validation_timeout=3 * dropout_timeout,
        **options,
    )
    return export_job(job, out_dir, ship_code=ship_code)


def main(argv: list[str] | None = None, default_out: str = "jobs") -> None:
    cli(export, __doc__, argv, default_out)


if __name__ == "__main__":
    main()
