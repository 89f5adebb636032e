"""Writes the job folder ``jobs/breast_mammo_cls/`` from the job's definition in the installed package
(:mod:`oncofl.jobs.breast_mammo_cls`); options: ``--help``. The same as ``oncofl job export breast_mammo_cls``.

    python jobs/breast_mammo_cls.py                          # regenerate the committed job folder (settings only)
"""

from pathlib import Path

from oncofl.jobs.breast_mammo_cls import export, main

__all__ = ["export"]

if __name__ == "__main__":
    main(default_out=str(Path(__file__).resolve().parent))
