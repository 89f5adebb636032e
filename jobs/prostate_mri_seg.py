"""Writes the job folder ``jobs/prostate_mri_seg/`` from the job's definition in the installed package
(:mod:`oncofl.jobs.prostate_mri_seg`); options: ``--help``. The same as ``oncofl job export prostate_mri_seg``.

    python jobs/prostate_mri_seg.py                          # regenerate the committed job folder (settings only)
"""

from pathlib import Path

from oncofl.jobs.prostate_mri_seg import export, main

__all__ = ["export"]

if __name__ == "__main__":
    main(default_out=str(Path(__file__).resolve().parent))
