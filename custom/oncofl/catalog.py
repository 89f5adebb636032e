"""The catalog: every job oncofl ships, the task it trains and its demo data, in one table.

The command line (``oncofl job export``, ``simulate``, ``make-data``, ``report``), the benchmark, the GPU check and
the tests all read this table; adding a job is one entry here (see README, "Add a task").

A job is defined by ``oncofl.jobs.<name>`` and committed as ``jobs/<name>/``; it trains the task
``oncofl.tasks.<task>``. Its demo data (3 sites, a held-out set and a site config per site) is written by
``<data_module>.generate(out, seed=0, **options)``, by default into ``data/<data_folder>``. Importing this module
imports nothing else: a job's definition and its data writer are imported when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Job:
    name: str  # the job: oncofl.jobs.<name>, jobs/<name>/, `oncofl job export <name>`
    task: str  # the task it trains: oncofl.tasks.<task>
    data_kind: str  # its demo data: `oncofl make-data <data_kind>`
    data_module: str  # the module whose generate(out, seed=0, **options) writes the demo data
    data_folder: str  # where `oncofl simulate` puts the demo data by default: data/<data_folder>
    data_summary: str  # what the demo data is, in a few words (make-data's help)
    imaging: bool = False  # DICOM imaging: in the benchmark and, at its GPU size, in tests/e2e/test_gpu_jobs.py
    gpu_data: Mapping[str, Any] = field(default_factory=dict, hash=False)  # generate() options of the GPU-size data
    evidence_report: bool = False  # `oncofl report --task <task>` runs it

    def definition(self) -> ModuleType:
        """The job's definition: ``export(out_dir, **options)`` and ``main(argv)``."""
        return importlib.import_module(f"oncofl.jobs.{self.name}")

    def write_demo_data(self, out: str | Path, seed: int = 0, **options: Any) -> Path:
        """Write the demo data into ``out``; returns the folder (it holds ``site_configs/``)."""
        return importlib.import_module(self.data_module).generate(out, seed=seed, **options)


JOBS: tuple[Job, ...] = (
    Job(
        "prostate_mri_seg",
        "prostate_seg",
        data_kind="prostate",
        data_module="oncofl.synthetic",
        data_folder="synthetic",
        data_summary="prostate MRI series + masks",
        imaging=True,
        evidence_report=True,
    ),
    Job(
        "breast_mammo_cls",
        "breast_mammo_cls",
        data_kind="mammo",
        data_module="oncofl.synthetic_mammo",
        data_folder="synthetic_mammo",
        data_summary="mammograms",
        imaging=True,
        gpu_data={"scale": 4},  # 832 x 640 detector images (0.26 mm), which the job resizes to 512 x 512
        evidence_report=True,
    ),
    Job(
        "lung_nodule_cls",
        "lung_nodule_cls",
        data_kind="lung",
        data_module="oncofl.synthetic_lung",
        data_folder="synthetic_lung",
        data_summary="chest CT + nodule list",
        imaging=True,
        evidence_report=True,
    ),
    Job(
        "breast_wdbc",
        "breast_wdbc",
        data_kind="wdbc",
        data_module="oncofl.wdbc",
        data_folder="breast_wdbc",
        data_summary="scikit-learn's Breast Cancer Wisconsin, dealt to 3 sites",
        evidence_report=True,
    ),
)


def _find(attribute: str, value: str, what: str) -> Job:
    for job in JOBS:
        if getattr(job, attribute) == value:
            return job
    available = ", ".join(getattr(job, attribute) for job in JOBS)
    raise ValueError(f"unknown {what} '{value}'; available: {available}")


def by_job(name: str) -> Job:
    """The catalog entry of job ``name`` (ValueError naming the jobs if there is none)."""
    return _find("name", name, "job")


def by_task(task: str) -> Job:
    """The catalog entry of the job that trains ``task`` (ValueError naming the tasks if there is none)."""
    return _find("task", task, "task")


def by_data_kind(kind: str) -> Job:
    """The catalog entry whose demo data ``oncofl make-data <kind>`` writes."""
    return _find("data_kind", kind, "data kind")
