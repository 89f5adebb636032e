"""Writes the job folder ``jobs/breast_wdbc/`` from the job's definition in the installed package
(:mod:`oncofl.jobs.breast_wdbc`); options: ``--help``. The same as ``oncofl job export breast_wdbc``.

    python jobs/breast_wdbc.py                          # regenerate the committed job folder (settings only)
"""

from pathlib import Path

from oncofl.jobs.breast_wdbc import export, main

__all__ = ["export"]

if __name__ == "__main__":
    main(default_out=str(Path(__file__).resolve().parent))
