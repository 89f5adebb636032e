"""Writes the job folder ``jobs/lung_nodule_cls/`` from the job's definition in the installed package
(:mod:`oncofl.jobs.lung_nodule_cls`); options: ``--help``. The same as ``oncofl job export lung_nodule_cls``.

    python jobs/lung_nodule_cls.py                          # regenerate the committed job folder (settings only)
"""

from pathlib import Path

from oncofl.jobs.lung_nodule_cls import export, main

__all__ = ["export"]

if __name__ == "__main__":
    main(default_out=str(Path(__file__).resolve().parent))
