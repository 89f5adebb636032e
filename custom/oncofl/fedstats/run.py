"""``oncofl stats``: the federated statistics job of a task in the FLARE simulator, on the task's demo data (written
first if absent) or on ``--data`` (a folder with ``site_configs/<site>.json``).

    oncofl stats --task prostate_seg
    oncofl stats --task lung_nodule_cls --data data/synthetic_lung --out workspace/stats_lung --min-count 5

Prints where the JSON and the plots are, and the per-site / per-vendor summary. docs/statistics.md says what each
site computes and what leaves it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..simulate import run_simulator, site_data
from .job import OUTPUT, STATS_JOBS, export
from .plots import summary_table


def run(task: str, data: Path, out: Path, sites: list[str], min_count: int) -> tuple[int, Path]:
    """Export the task's statistics job into ``out/jobs`` and run it; returns (exit code, the statistics JSON).

    Args:
        task: the imaging task.
        data: the sites' data folder (holds ``site_configs/``).
        out: where the job folder, the simulator workspace and its log go.
        sites: the simulated sites' names.
        min_count: the job's minimum count per group.
    """
    job = export(out / "jobs", task=task, min_count=min_count)
    log = out / "simulator.log"
    print(f"running {job.name} in the FLARE simulator with {', '.join(sites)} (log: {log}) ...", flush=True)
    result = run_simulator(job, out / "workspace", data / "site_configs", sites, log_file=log, timeout=1800)
    print(f"finished in {result.seconds:.0f} s (exit {result.returncode})")
    return result.returncode, result.job_dir / OUTPUT


def main(argv: list[str] | None = None) -> int:
    """``oncofl stats``: run the statistics job of a task in the simulator and print where its output is.

    Args:
        argv: the command line (default: ``sys.argv[1:]``).

    Returns:
        the exit code: 0 when the statistics were written.
    """
    parser = argparse.ArgumentParser(
        prog="oncofl stats", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="prostate_seg", choices=sorted(STATS_JOBS))
    parser.add_argument("--data", default=None, help="site data (default: the task's demo data, made if absent)")
    parser.add_argument("--out", default="workspace/stats", help="job folder, simulator workspace and log")
    parser.add_argument(
        "--min-count", type=int, default=3, help="a group with fewer images or cases at a site is not sent (at least 1)"
    )
    parser.add_argument("--sites", nargs="+", default=["site-1", "site-2", "site-3"])
    args = parser.parse_args(argv)
    if args.min_count < 1:
        parser.error("--min-count must be at least 1")
    data = site_data(args.task, args.data)
    code, stats_file = run(args.task, data, Path(args.out).resolve(), args.sites, args.min_count)
    if code != 0 or not stats_file.is_file():
        print(f"the statistics job failed; see {Path(args.out) / 'simulator.log'}", file=sys.stderr)
        return code or 1
    print(f"statistics (JSON) : {stats_file}")
    for png in sorted(stats_file.parent.glob("*.png")):
        print(f"plot              : {png}")
    print(
        "\nmeans per site and vendor group (as sent; '-': not sent)\n"
        + summary_table(json.loads(stats_file.read_text()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
