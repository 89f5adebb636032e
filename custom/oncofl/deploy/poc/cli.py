"""``oncofl poc``: the command line of the POC (the commands are in the package docstring, :mod:`oncofl.deploy.poc`).

:func:`build_parser` declares the options, one small function per command runs it (:data:`COMMANDS`), :func:`main`
ties them together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..job_control import DEFAULT_JOB, JobInterrupted
from .controller import Poc
from .layout import DEFAULT_PORT, DEFAULT_ROOT, SERVER, SITES
from .rehearsal import demo

VIAS = ["console", "cli", "api"]
JOB_HELP = "a job folder, or a job name (built from the installed oncofl)"


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as usage  # the package's docstring: every command and what it does

    parser = argparse.ArgumentParser(description=usage, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="where the POC lives")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--gpus", nargs="*", default=[], help="bind hospitals to GPUs: hospital-a=0 hospital-b=1,2")
    p.add_argument("--data", default=None, help="existing synthetic data folder (default: <root>/data, made)")
    p.add_argument("--he", action="store_true", help="provision CKKS contexts for homomorphic-encryption jobs")
    sub.add_parser("start")
    sub.add_parser("status")
    p = sub.add_parser("submit")
    p.add_argument("--job", default=DEFAULT_JOB, help=JOB_HELP)
    p.add_argument("--via", choices=VIAS, default="console")
    p.add_argument("--gpus-per-site", type=int, default=0)
    for name in ("wait", "download", "resume"):
        sub.add_parser(name).add_argument("job_id")
    p = sub.add_parser("start-site", help="(re)start one participant from its kit, e.g. after it crashed")
    p.add_argument("name", choices=[SERVER, *SITES])
    sub.add_parser("stop")
    sub.add_parser("clean")
    p = sub.add_parser("demo")
    p.add_argument("--job", default=DEFAULT_JOB, help=JOB_HELP)
    p.add_argument("--via", choices=VIAS, default="console")
    p.add_argument("--timeout", type=float, default=1800)
    return parser


def parse_gpus(items: list[str], parser: argparse.ArgumentParser) -> dict[str, list[int]]:
    """``hospital-a=0 hospital-b=1,2`` as ``{"hospital-a": [0], "hospital-b": [1, 2]}``; a usage error otherwise."""
    gpus = {}
    for item in items:
        site, _, ids = item.partition("=")
        if site not in SITES or not ids:
            parser.error(f"--gpus expects <hospital>=<id>[,<id>] with hospital in {SITES}, got '{item}'")
        gpus[site] = [int(i) for i in ids.split(",")]
    return gpus


def prepare(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    poc.prepare(parse_gpus(args.gpus, parser), Path(args.data) if args.data else None)
    print(f"POC ready under {poc.root} (port {poc.port}); kits in {poc.prod}")
    return 0


def start(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    poc.start()
    print(f"server and {', '.join(SITES)} running")
    return 0


def status(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    state = poc.status()
    for name, pids in state["processes"].items():
        print(f"{name:12} running, PIDs {pids}")
    print(f"connected clients: {', '.join(state['connected_clients']) or 'none'}")
    for job in state["jobs"]:
        print(f"job {job.get('job_id')} {job.get('job_name', '')} {job.get('status')}")
    return 0


def submit(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(poc.submit(args.job, args.via, gpus_per_site=args.gpus_per_site))
    return 0


def wait(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Exit 3 when the server lost the job (``oncofl poc resume`` continues it)."""
    try:
        meta = poc.wait(args.job_id)
    except JobInterrupted as e:
        print(e, file=sys.stderr)
        return 3
    print(f"{args.job_id}: {meta.get('status')} after {meta.get('duration')}")
    return 0


def download(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(poc.download(args.job_id))
    return 0


def resume(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(poc.resume(args.job_id))
    return 0


def start_site(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    poc.start_site(args.name)
    return 0


def stop(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    left = poc.stop()
    print("stopped" + (f"; killed leftover PIDs {left}" if left else ""))
    return 0


def clean(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    poc.clean()
    return 0


def run_demo(poc: Poc, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return demo(poc, args.job, args.via, args.timeout)


COMMANDS = {
    "prepare": prepare,
    "start": start,
    "status": status,
    "submit": submit,
    "wait": wait,
    "download": download,
    "resume": resume,
    "start-site": start_site,
    "stop": stop,
    "clean": clean,
    "demo": run_demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    poc = Poc(Path(args.root), port=args.port, he=getattr(args, "he", False))
    return COMMANDS[args.cmd](poc, args, parser)
