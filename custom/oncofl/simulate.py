"""Run a job in the FLARE simulator on site-local data, then say where the results are.

    oncofl simulate                                          # prostate job, synthetic data made if absent
    oncofl simulate --job jobs/prostate_mri_seg --data data/synthetic --workspace workspace/sim
    oncofl simulate --job lung_nodule_cls                    # a job name: built from the installed definition

Each simulated site reads its own site config from ``<data>/site_configs/<site>.json`` (via ONCOFL_SITE_CONFIG),
exactly as a hospital's client reads its ``local/oncofl_site.json``; the job folder itself holds no paths.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .catalog import by_task
from .evaluation import holdout_metric
from .jobs import class_allow_list, job_folder
from .model_card import write_model_card
from .site_config import ENV_VAR, load_site_config
from .tasks import get_task


@dataclass(frozen=True)
class SimulatorResult:
    returncode: int
    seconds: float
    job_dir: Path  # <workspace>/server/simulate_job

    @property
    def global_model(self) -> Path:
        return self.job_dir / "app_server" / "FL_global_model.pt"

    @property
    def best_model(self) -> Path:
        return self.job_dir / "app_server" / "best_FL_global_model.pt"

    @property
    def cross_site(self) -> Path:
        return self.job_dir / "cross_site_val" / "cross_val_results.json"

    @property
    def tb_events(self) -> Path:
        return self.job_dir / "tb_events"

    @property
    def server_log(self) -> Path:
        return self.job_dir.parent / "log.txt"


def run_simulator(
    job: str | Path,
    workspace: str | Path,
    site_configs: str | Path,
    sites: list[str],
    *,
    timeout: float = 1800,
    log_file: str | Path | None = None,
) -> SimulatorResult:
    """Run ``job`` with one simulated client per site (one thread each); the whole process group is stopped after."""
    workspace = Path(workspace).resolve()
    local = workspace / "local"  # FLARE's simulator copies it into the server's and every client's workspace
    local.mkdir(parents=True, exist_ok=True)
    (local / "resources.json").write_text(json.dumps({"class_allow_list": class_allow_list(drills=True)}, indent=1))
    env = {**os.environ, ENV_VAR: str(Path(site_configs).resolve())}
    cmd = [
        sys.executable,
        "-m",
        "oncofl.flare_simulator",  # FLARE's simulator, one start-up race closed
        str(Path(job).resolve()),
        "-w",
        str(workspace),
        "-c",
        ",".join(sites),
        "-t",
        str(len(sites)),
    ]
    out = open(log_file, "w") if log_file else None
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # timeout or interrupt: stop what we started, and only that
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if out:
            out.close()
    return SimulatorResult(rc, time.perf_counter() - started, workspace / "server" / "simulate_job")


def executor_args(job: str | Path) -> dict:
    """The OncoFLExecutor arguments of a job folder (task, network, ...)."""
    config = json.loads((Path(job) / "app" / "config" / "config_fed_client.json").read_text())
    return config["executors"][0]["executor"]["args"]


def job_task(job: str | Path) -> str:
    """The oncofl task a job folder runs."""
    return executor_args(job)["task"]


def site_data(task: str, data: str | Path | None) -> Path:
    """The sites' data to run ``task`` on: ``data``, else the task's demo data folder (``data/<data_folder>`` of its
    catalog entry); the demo data is written there first when the folder holds no site configs yet."""
    try:
        entry = by_task(task)
    except ValueError:
        entry = None  # a task no catalog entry names: no demo data
    if data is None and entry is None:
        raise LookupError(f"no demo data for task '{task}': pass --data <folder with site_configs/>")
    folder = Path(data or Path("data") / entry.data_folder)
    if not (folder / "site_configs").is_dir():
        if entry is None:
            raise LookupError(f"{folder} holds no site_configs/ and task '{task}' has no demo data to write there")
        print(f"making data for 3 sites in {folder} ...", flush=True)
        entry.write_demo_data(folder)
    return folder


def cross_site_table(path: Path) -> str:
    """The cross-site matrix as text: rows = data site, columns = model."""
    results = json.loads(path.read_text())
    models = sorted({m for row in results.values() for m in row})
    lines = ["data site  | " + " | ".join(f"{m[:26]:>26}" for m in models)]
    for site in sorted(results):
        cells = [results[site].get(m, {}) for m in models]
        lines.append(
            f"{site:10} | " + " | ".join(f"{next(iter(c.values())):26.4f}" if c else f"{'-':>26}" for c in cells)
        )
    return "\n".join(lines)


def holdout_scores(job: Path, task: str, holdout: Path, result: SimulatorResult) -> dict[str, float]:
    """The held-out scores of the initial, final and best global models ({} without a held-out folder)."""
    if not holdout.is_dir() or not result.best_model.is_file():
        return {}
    job_args = executor_args(job)
    settings = {"task": task, "network": job_args.get("network"), "params": job_args.get("preprocess")}
    root, config_file = holdout, holdout / "site_config.json"
    if config_file.is_file():  # written by `oncofl datasets prepare`: paths relative to the download, read in place
        config = load_site_config(config_file)
        root = config.data_root
        settings |= {
            "datalist": config.datalist,
            "converted_root": config.converted_root,
            "cache_dir": config.cache_dir,
        }
    models = {"initial": None, "final global": result.global_model, "best global": result.best_model}
    return {name: holdout_metric(model, root, **settings) for name, model in models.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="prostate_mri_seg", help="a job folder, or a job name (built here)")
    parser.add_argument("--data", default=None, help="site data (made if absent; default: data/<kind> of the job)")
    parser.add_argument("--workspace", default="workspace/simulator")
    parser.add_argument("--sites", nargs="+", default=["site-1", "site-2", "site-3"])
    args = parser.parse_args(argv)
    try:
        job = job_folder(args.job, Path(args.workspace).parent / "jobs")
    except ValueError as e:
        parser.error(str(e))

    task = job_task(job)
    try:
        data = site_data(task, args.data)
    except LookupError as e:
        parser.error(str(e))
    key = get_task(task).key_metric
    print(f"running {job} in the FLARE simulator with {', '.join(args.sites)} ...", flush=True)
    result = run_simulator(job, args.workspace, data / "site_configs", args.sites)
    if result.returncode != 0:
        print(f"simulator failed (exit {result.returncode}); see {result.server_log}", file=sys.stderr)
        return result.returncode
    print(f"\nfinished in {result.seconds:.0f} s")
    print(f"global model       : {result.global_model}")
    print(f"best global model  : {result.best_model}")
    print(f"cross-site matrix  : {result.cross_site}")
    print(f"TensorBoard events : {result.tb_events}   (tensorboard --logdir {result.tb_events})")
    if result.cross_site.is_file():
        print(f"\ncross-site {key} (rows: data of site, columns: model)\n" + cross_site_table(result.cross_site))
    holdout = holdout_scores(job, task, data / "holdout", result)
    if holdout:
        print(
            f"\nheld-out {key.removeprefix('val_')} (cases no site trained on): initial {holdout['initial']:.3f} -> "
            f"final global {holdout['final global']:.3f}, best global {holdout['best global']:.3f}"
        )
    summary = (
        f"{len(args.sites)} sites of oncofl's demo data ({by_task(task).data_summary})" if args.data is None else None
    )
    card = write_model_card(result.job_dir, holdout=holdout, data_summary=summary)
    print(f"\nmodel card         : {card}")
    print(f"predict new studies: oncofl predict --job {result.job_dir} --input STUDIES --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
