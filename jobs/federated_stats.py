"""Writes the statistics job folders ``jobs/stats_prostate/``, ``jobs/stats_lung/``, ``jobs/stats_mammo/`` from the
definition in the installed package (:mod:`oncofl.fedstats.job`). The same as ``oncofl job export stats_<kind>``.

    python jobs/federated_stats.py                          # regenerate the committed job folders (settings only)
"""

from pathlib import Path

from oncofl.fedstats.job import STATS_JOBS, export, main

__all__ = ["export"]

if __name__ == "__main__":
    for name in STATS_JOBS.values():
        main([name], default_out=str(Path(__file__).resolve().parent))
