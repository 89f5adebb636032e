"""The federated statistics jobs, one per imaging task: ``stats_prostate``, ``stats_lung``, ``stats_mammo``.

Each is FLARE's statistics workflow -- ``StatisticsController`` (as
:class:`~oncofl.fedstats.server.GroupStatisticsController`) and a JSON writer with plots on the server,
``StatisticsExecutor`` over :class:`~oncofl.fedstats.site.ImagingStatistics` at each site -- with FLARE's
``StatisticsPrivacyFilter`` on every result a site sends: ``MinCountCleanser``, ``AddNoiseToMinMax``,
``HistogramBinsCleanser`` and our :class:`~oncofl.fedstats.privacy.GroupMinCountCleanser`, then the PHI gate.
The settings (minimum count, noise, bins) travel with the job; data paths stay in each site's config, and so does
the site's floor of the minimum count (``stats_min_count``), which the site's own code applies whatever the job says.

    oncofl job export stats_prostate [--out jobs] [--min-count 5]
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.executors.statistics.statistics_executor import StatisticsExecutor
from nvflare.app_common.statistics.histogram_bins_cleanser import HistogramBinsCleanser
from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser
from nvflare.app_common.statistics.min_max_cleanser import AddNoiseToMinMax
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from ..catalog import JOBS
from ..jobs.builder import export as export_job
from ..privacy import PHIGuardFilter
from ..provenance import ProvenanceCheck, installed
from .privacy import GroupMinCountCleanser, SiteStatisticsPrivacyFilter
from .server import GroupStatisticsController, StatsPlotWriter
from .site import INTENSITY, INTENSITY_RANGE, TASK_MODALITY, ImagingStatistics, features_of

# task -> job name, from the catalog's imaging jobs: stats_<data kind>
STATS_JOBS = {job.task: f"stats_{job.data_kind}" for job in JOBS if job.task in TASK_MODALITY}
STATS_TASKS = (StC.FED_STATS_PRE_RUN, StC.FED_STATS_TASK)  # the tasks a site's statistics executor answers
OUTPUT = "statistics/fed_stats.json"  # on the server, relative to the job's folder; the plots go next to it
CLEANSERS = ("min_count_cleanser", "min_max_noise", "hist_bins_cleanser", "group_min_count")  # the order they run


def task_of(name: str) -> str:
    """The imaging task of statistics job ``name`` (ValueError naming the jobs if there is none)."""
    for task, job in STATS_JOBS.items():
        if job == name:
            return task
    raise ValueError(f"unknown statistics job '{name}'; available: {', '.join(STATS_JOBS.values())}")


def build_stats_job(
    task: str,
    *,
    min_count: int = 3,
    min_noise: float = 0.1,
    max_noise: float = 0.3,
    max_bins_percent: float = 50.0,
    image_bins: int = 5,
    intensity_bins: int = 32,
    max_voxels_per_image: int = 20_000,
    min_clients: int = 2,
) -> FedJob:
    """The statistics job of one imaging task.

    Args:
        task: ``prostate_seg``, ``lung_nodule_cls`` or ``breast_mammo_cls`` (decides reader and intensity scale).
        min_count: a group, partition or feature with fewer images or cases at a site is not sent by that site
            (at least 1; a site's ``stats_min_count`` applies when it is higher).
        min_noise: AddNoiseToMinMax's lower noise level (fraction of the value).
        max_noise: its upper noise level.
        max_bins_percent: HistogramBinsCleanser: a histogram is sent only if bins < this % of its count.
        image_bins: bins of the per-image features' histograms (range: the sites' noised min..max).
        intensity_bins: bins of the intensity histogram (fixed range: HU for CT, scaled for MR / MG).
        max_voxels_per_image: voxels sampled per image for the intensity statistics.
        min_clients: sites the job needs to start.
    """
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count}")
    job = FedJob(name=STATS_JOBS[task], min_clients=min_clients)
    job.set_app_packages(["oncofl"])
    for add in (job.to_server, job.to_clients):
        add(ProvenanceCheck(**installed()), id="oncofl_provenance")
    low, high = INTENSITY_RANGE[TASK_MODALITY[task]]
    histogram = {"*": {"bins": image_bins}, INTENSITY: {"bins": intensity_bins, "range": [low, high]}}
    configs = {"count": {}, "sum": {}, "mean": {}, "stddev": {}, "histogram": histogram}
    job.to_server(GroupStatisticsController(statistic_configs=configs, writer_id="stats_writer"), id="controller")
    job.to_server(StatsPlotWriter(output_path=OUTPUT), id="stats_writer")
    generator = ImagingStatistics(task=task, max_voxels_per_image=max_voxels_per_image, min_count=min_count)
    job.to_clients(generator, id="stats_generator")
    job.to_clients(StatisticsExecutor(generator_id="stats_generator"), id="stats_executor", tasks=list(STATS_TASKS))
    cleansers = (
        MinCountCleanser(min_count=min_count),
        AddNoiseToMinMax(min_noise_level=min_noise, max_noise_level=max_noise),
        HistogramBinsCleanser(max_bins_percent=max_bins_percent),
        GroupMinCountCleanser(min_count=min_count),
    )
    for cleanser_id, cleanser in zip(CLEANSERS, cleansers):
        job.to_clients(cleanser, id=cleanser_id)
    result = FilterType.TASK_RESULT
    privacy = SiteStatisticsPrivacyFilter(result_cleanser_ids=list(CLEANSERS), features=list(features_of(task)))
    job.to_clients(privacy, filter_type=result, tasks=list(STATS_TASKS))
    job.to_clients(PHIGuardFilter(), filter_type=result, tasks=list(STATS_TASKS))  # last: the gate on every result
    return job


def export(out_dir: str | Path, *, task: str = "prostate_seg", **options) -> Path:
    """Write ``<out_dir>/stats_<kind>/`` (settings only) and return it.

    Args:
        out_dir: the folder to write the job folder into.
        task: the imaging task.
        options: see :func:`build_stats_job`.
    """
    return export_job(build_stats_job(task, **options), out_dir, guarded_tasks=STATS_TASKS)


def main(argv: list[str] | None = None, default_out: str = "jobs") -> None:
    """``oncofl job export stats_<kind> [--out DIR] [--min-count N] ...``: write one statistics job folder."""
    parser = argparse.ArgumentParser(prog="oncofl job export", description=__doc__)
    parser.add_argument("job", choices=list(STATS_JOBS.values()))
    parser.add_argument(
        "--out", default=default_out, help=f"folder to write the job folder into (default: {default_out})"
    )
    for p in inspect.signature(build_stats_job).parameters.values():
        if p.kind == p.KEYWORD_ONLY:
            flag = "--" + p.name.replace("_", "-")
            parser.add_argument(flag, type=type(p.default), default=p.default, help=f"default: {p.default}")
    args = vars(parser.parse_args(argv))
    out, name = args.pop("out"), args.pop("job")
    if args["min_count"] < 1:
        parser.error("--min-count must be at least 1")
    print(f"job written to {export(out, task=task_of(name), **args)}")
