"""``oncofl``: one command for what users do. ``oncofl <command> --help`` for each command's options.

oncofl simulate [--job prostate_mri_seg] [--data DIR]   run a job in the FLARE simulator on local data
oncofl stats --task prostate_seg [--data DIR] [--out DIR]  federated statistics: how different are the sites?
oncofl model-card --job-dir DIR [--out FILE]            the model card of a finished run (from its records)
oncofl job export <job> [--out jobs] [options]          write a job folder (settings only)
oncofl make-data <prostate|mammo|lung|wdbc> --out DIR   synthetic (or scikit-learn) data for 3 sites
oncofl datasets prepare <dataset> --source D --out DIR  a public dataset as downloaded -> per-site datalists
oncofl check-site --config oncofl_site.json             check a site's data before joining
oncofl report --task prostate_seg                       evidence report: federated vs centralized vs local
oncofl predict --job RUN --input DIR --out DIR          a trained model on new studies -> DICOM-SEG / SR, CSV
oncofl export-bundle --job RUN_DIR [--model M] --out DIR  a trained global model + its job -> a MONAI bundle
oncofl poc <demo|prepare|start|submit|...>               the one-workstation rehearsal (real POC)
oncofl provision <provision|add-site|kits|...>           the consortium's startup kits
oncofl site <install|configure|preflight> --kit KIT      a hospital's steps with its kit
oncofl version                                          version and code hash of the installed oncofl
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .catalog import JOBS, by_data_kind, by_job

# commands run by a module's main(argv), imported only when the command runs; the others are below (LOCAL)
MODULES = {
    "simulate": "oncofl.simulate",
    "stats": "oncofl.fedstats.run",
    "model-card": "oncofl.model_card",
    "report": "oncofl.report",
    "predict": "oncofl.predict",
    "datasets": "oncofl.datasets",
    "export-bundle": "oncofl.predict.bundle",
    "poc": "oncofl.deploy.poc",
    "provision": "oncofl.deploy.provision",
    "site": "oncofl.deploy.site",
}


def job_main(argv: list[str]) -> int:
    from .fedstats.job import STATS_JOBS
    from .fedstats.job import main as stats_job_main

    names = [job.name for job in JOBS] + list(STATS_JOBS.values())  # training jobs, then the statistics jobs
    if len(argv) < 2 or argv[0] != "export" or argv[1] not in (*names, "all"):
        print(f"usage: oncofl job export <{'|'.join(names)}|all> [--out DIR] [options; --help]", file=sys.stderr)
        return 2
    for name in names if argv[1] == "all" else [argv[1]]:  # all: every job with its defaults (after a change)
        if name in STATS_JOBS.values():
            stats_job_main([name, *argv[2:]])
        else:
            by_job(name).definition().main(argv[2:])
    return 0


def make_data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oncofl make-data", description="write demo data for 3 sites + held-out")
    kinds = "; ".join(f"{job.data_kind}: {job.data_summary} (task {job.task})" for job in JOBS)
    parser.add_argument("kind", choices=sorted(job.data_kind for job in JOBS), help=kinds)
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--realistic", action="store_true", help="prostate: clinical matrix sizes (384x384x24 class)")
    parser.add_argument("--case-factor", type=float, default=1.0, help="prostate: multiply every site's case count")
    parser.add_argument("--scale", type=float, default=1.0, help="mammo: detector resolution x this (16: full size)")
    args = parser.parse_args(argv)
    options = {
        "prostate": {"realistic": args.realistic, "case_factor": args.case_factor},
        "mammo": {"scale": args.scale},
    }.get(args.kind, {})
    out = by_data_kind(args.kind).write_demo_data(args.out, seed=args.seed, **options)
    print(f"{args.kind} data written to {out} (site configs in {Path(out) / 'site_configs'})")
    return 0


def check_site_main(argv: list[str]) -> int:
    """Exit 0 when every case is readable, 1 otherwise, 2 for a bad config. The printed report names files (it is for
    the site's IT); ``--json`` prints only the aggregate summary, which holds no path and no patient identifier."""
    from .datacheck import check_site
    from .errors import OncoFLError
    from .site_config import load_site_config

    parser = argparse.ArgumentParser(prog="oncofl check-site", description=check_site_main.__doc__)
    parser.add_argument("--config", required=True, help="the site's oncofl_site.json")
    parser.add_argument("--site", default="", help="the FLARE client name (checked against site_name)")
    parser.add_argument("--headers-only", action="store_true", help="skip pixel decoding (fast)")
    parser.add_argument("--json", action="store_true", help="print the aggregate summary as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_site_config(args.config, site_name=args.site)
    except OncoFLError as e:
        print(e.local_message(), file=sys.stderr)
        return 2
    report = check_site(config, decode=not args.headers_only)
    print(json.dumps(report.summary(), indent=2) if args.json else report.local_text())
    return 0 if report.ok else 1


def version_main(argv: list[str]) -> int:
    from .provenance import installed

    info = installed()
    print(f"oncofl {info['version']} (code sha256 {info['code_sha256']}) at {Path(__file__).resolve().parent}")
    return 0


LOCAL = {"job": job_main, "make-data": make_data_main, "check-site": check_site_main, "version": version_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in {*MODULES, *LOCAL}:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    if command in LOCAL:
        return int(LOCAL[command](rest) or 0)
    module = importlib.import_module(MODULES[command])
    sys.argv = [f"oncofl {command}", *rest]  # argparse's usage line names the subcommand
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
