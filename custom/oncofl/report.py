"""Evidence report for one task: centralized vs each site alone vs every federated algorithm, same held-out data.

    oncofl report --task breast_wdbc --seeds 0 1 2 --out docs/evidence/breast_wdbc
    oncofl report --task prostate_seg --seeds 0 1 2 --algorithms fedavg fedprox fedbn

Per seed the task's demo data and the networks' initial weights are drawn anew (``seed``: data, and the job's
``init_seed``, so the federated runs, centralized and each site alone start from the same weights); then

* **centralized**: the task's network trained on all sites' training cases pooled, for as many epochs as the job's
  rounds x local epochs (what a single hospital holding everything could do);
* **local <site>**: the same, on one site's training cases only;
* **federated <algorithm>**: the job (:mod:`oncofl.jobs`, with ``--algorithm``) in the FLARE simulator, 3 sites;
  ``+DP`` runs FedAvg with DP-SGD at every site and the job's epsilon budget.

Two scores per model and seed: **held-out** -- the task's key metric on the shared held-out cases (no site trained
on them) of the model each site ends up with (the global model; for site-local and personalized (FedBN) models, the
mean over the sites' models); **worst site** -- the lowest score over the sites, each on its own validation split.
The report (``report.md``), the raw numbers (``results.json``) and PNG plots (learning curves of the global model on
the sites' validation data per round; cross-site heat maps) are written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .algorithms import fedbn_refusal, scheduled_lr
from .catalog import JOBS, by_task
from .engine import DeviceData, Trainer, resolve_device
from .evaluation import holdout_metric
from .model_card import read_curve
from .report_unseen import (
    anchor_columns,
    fmt_interval,
    loso_name,
    loso_section,
    mean_sd,
    site_vendors,
    subgroup_datalists,
    subgroup_section,
)
from .simulate import executor_args, run_simulator
from .site.runtime import build_trainer, load_splits
from .site.settings import TrainSettings
from .site_config import load_site_config
from .tasks import get_task

PERSONALIZED = {"fedbn"}  # algorithms whose result is one model per site


def job_settings(job_dir: Path) -> dict[str, Any]:
    """The executor arguments and round count of an exported job folder."""
    args = executor_args(job_dir)
    server = json.loads((job_dir / "app" / "config" / "config_fed_server.json").read_text())
    args["num_rounds"] = server["workflows"][0]["args"]["num_rounds"]
    return args


def site_roots(data: Path) -> dict[str, Path]:
    """Each site's data root, from the site configs the simulator gives the sites."""
    roots = {}
    for config_file in sorted((data / "site_configs").glob("*.json")):
        site = config_file.stem
        roots[site] = load_site_config(config_file, site_name=site).data_root
    return roots


class Scorer:
    """The task's key metric of a checkpoint on the held-out set or on a site's validation split.

    Args:
        task: the task's name (e.g. ``breast_wdbc``).
        data: the demo data folder: ``holdout/`` (the held-out cases), ``site_configs/`` (each site's config,
            naming its data root); the caches are written under its ``cache/``.
        settings: the job's executor arguments (:func:`job_settings`); their ``network`` and ``preprocess`` build
            the network and preprocess the cases as the job does.
    """

    def __init__(self, task: str, data: Path, settings: dict[str, Any]) -> None:
        self.task, self.data = task, data
        self.kwargs = {"task": task, "network": settings.get("network"), "params": settings.get("preprocess")}
        self.sites = site_roots(data)
        self.groups = subgroup_datalists(data / "holdout", data / "cache" / "subgroups")  # {vendor: datalist}

    def holdout(self, checkpoint: Path | None, datalist: Path | None = None) -> float:
        return holdout_metric(
            checkpoint,
            self.data / "holdout",
            cache_dir=self.data / "cache" / "holdout",
            datalist=datalist,
            **self.kwargs,
        )

    def subgroups(self, checkpoints: list[Path | None]) -> dict[str, float]:
        """Per vendor: the metric on the held-out cases of that vendor (several checkpoints: their mean)."""
        return {
            vendor: float(np.mean([self.holdout(c, datalist) for c in checkpoints]))
            for vendor, datalist in self.groups.items()
        }

    def on_site(self, checkpoint: Path, site: str) -> float:
        cache = self.data / "cache" / f"{site}_validation"
        return holdout_metric(checkpoint, self.sites[site], split="validation", cache_dir=cache, **self.kwargs)


def _centralized_trainer(
    task: str, data: Path, sites: list[str], settings: dict[str, Any], seed: int
) -> tuple[Trainer, DeviceData]:
    """The job's trainer (network, optimizer, seed) and the pooled training cases of ``sites`` on its device."""
    spec = get_task(task)
    params = spec.params(settings.get("preprocess"))
    parts = []
    for site in sites:
        config = load_site_config(data / "site_configs" / f"{site}.json", site_name=site)
        parts.append(load_splits(config, spec, params, ("training",))["training"])
    device = resolve_device()
    train = DeviceData.from_numpy(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]), device
    )
    torch.manual_seed(seed)
    job = TrainSettings(task=task, learning_rate=settings["learning_rate"], seed=seed, network=settings.get("network"))
    return build_trainer(spec, device, job), train


def train_pooled(task: str, data: Path, sites: list[str], settings: dict[str, Any], seed: int, out: Path) -> Path:
    """The job's network, optimizer and total epochs on the pooled training cases of ``sites``."""
    trainer, train = _centralized_trainer(task, data, sites, settings, seed)
    schedule = settings.get("lr_schedule", "constant")
    for r in range(settings["num_rounds"]):  # the job's learning rate schedule, one value per round's epochs
        lr = scheduled_lr(settings["learning_rate"], schedule, r, settings["num_rounds"])
        trainer.train(train, epochs=settings["local_epochs"], batch_size=settings["batch_size"], learning_rate=lr)
    torch.save({"model": trainer.model.state_dict()}, out)
    return out


def learning_curve(job_dir: Path, key: str) -> list[float]:
    """Per round: the mean over sites of the global model's score on their validation data (as they reported it)."""
    per_site = read_curve(job_dir / "tb_events", key)
    rounds = sorted({r for curve in per_site.values() for r in curve})
    return [float(np.mean([curve[r] for curve in per_site.values() if r in curve])) for r in rounds]


def run_federated(
    task: str,
    name: str,
    options: dict[str, Any],
    data: Path,
    work: Path,
    job_kwargs: dict[str, Any],
    sites: list[str] | None = None,
    left_out: str | None = None,
) -> dict[str, Any]:
    """One federated configuration in the FLARE simulator (``sites``: a subset of the sites, default all); its scores
    (held-out, per site, per vendor subgroup), curve, cross-site matrix and server logs. ``left_out``: a site not in
    the run, whose validation split the global model is also scored on (``unseen``)."""
    job_dir = by_task(task).definition().export(work / "jobs", **job_kwargs, **options)
    settings = job_settings(job_dir)
    sites = sorted(sites or site_roots(data))
    # each run reads its own copy of the sites' data: runs side by side never share a cache folder
    site_data = work / "site_data"
    if not site_data.exists():
        shutil.copytree(data, site_data, ignore=shutil.ignore_patterns("holdout", "cache"))
    result = run_simulator(job_dir, work / "ws", site_data / "site_configs", sites, log_file=work / "simulator.log")
    if result.returncode != 0:
        raise RuntimeError(f"{name}: simulator failed, see {work / 'simulator.log'}")
    scorer = Scorer(task, data, settings)
    key = get_task(task).key_metric
    if options.get("algorithm") in PERSONALIZED:
        models = {s: work / "ws" / s / "simulate_job" / f"app_{s}" / "local_model.pt" for s in sites}
        holdout = float(np.mean([scorer.holdout(m) for m in models.values()]))
    else:
        models = {s: result.global_model for s in sites}
        holdout = scorer.holdout(result.global_model)
    extras = {}
    for file in ("privacy.json", "aggregation.json", "participation.json"):
        if (result.job_dir / file).is_file():
            extras[file] = json.loads((result.job_dir / file).read_text())
    return {
        "held_out": holdout,
        "per_site": {s: scorer.on_site(m, s) for s, m in models.items()},
        "subgroups": scorer.subgroups(sorted(set(models.values()))),
        **({"unseen": {left_out: scorer.on_site(result.global_model, left_out)}} if left_out else {}),
        **({} if options.get("algorithm") in PERSONALIZED else best_selected(result, scorer)),
        "curve": learning_curve(result.job_dir, key),
        "cross_site": json.loads(result.cross_site.read_text()) if result.cross_site.is_file() else {},
        "seconds": result.seconds,
        "server_log": str(result.server_log),
        **extras,
    }


def best_selected(result: Any, scorer: Scorer) -> dict[str, Any]:
    """The global model the job selected by the sites' validation metric (FLARE's model selector): its held-out score
    and the round it came from, as the server logged it ({} when the run saved none)."""
    if not result.best_model.is_file():
        return {}
    rounds = re.findall(r"new best validation metric at round (\d+)", result.server_log.read_text(errors="replace"))
    return {"best": {"held_out": scorer.holdout(result.best_model), "round": int(rounds[-1]) if rounds else None}}


def federated_configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The federated runs asked for: name -> job options (``--algorithms``, ``--dp-epsilon``, ``--extra``)."""
    configs = {a: {"algorithm": a} for a in args.algorithms}
    if args.dp_epsilon > 0:
        configs[f"fedavg+DP(eps={args.dp_epsilon:g})"] = {"dp_epsilon": args.dp_epsilon, **args.dp_options}
    for extra in args.extra:
        name, _, options = extra.partition("=")
        configs[name] = json.loads(options)
    return configs


def run_plan(args: argparse.Namespace, sites: list[str]) -> dict[str, dict[str, Any]]:
    """Every federated run of a seed: row name -> job options, its sites and the site it leaves out (if any)."""
    plan = {
        f"federated {n}": {"options": o, "sites": sites, "left_out": None} for n, o in federated_configs(args).items()
    }
    if getattr(args, "leave_one_out", False):  # FedAvg on all sites but one, for each site
        for site in sites:
            others = [s for s in sites if s != site]
            plan[loso_name(site)] = {"options": {}, "sites": others, "left_out": site}
    return plan


def run_seed(args: argparse.Namespace, seed: int, tmp: Path) -> dict[str, dict[str, Any]]:
    """Every row of the report for one seed (with ``--merge``: the federated runs asked for and the initial model)."""
    task, work = args.task, tmp / f"seed{seed}"
    data = by_task(task).write_demo_data(work / "data", seed=seed)
    sites = sorted(site_roots(data))
    # a seed draws the data and the initial weights, the same for every model of that seed
    job_kwargs = {**getattr(args, "job_options", {}), "init_seed": seed}
    if args.rounds:
        job_kwargs["num_rounds"] = args.rounds
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {
            # every site of the run in every round
            name: pool.submit(
                run_federated,
                task,
                name,
                run["options"],
                data,
                work / _slug(name),
                {**job_kwargs, "min_clients": len(run["sites"])},
                run["sites"],
                run["left_out"],
            )
            for name, run in run_plan(args, sites).items()
        }
        results = {name: f.result() for name, f in futures.items()}
    plain = by_task(task).definition().export(work / "plain", **{**job_kwargs, "min_clients": len(sites)})
    settings = job_settings(plain)
    scorer = Scorer(task, data, settings)
    # with --merge only the federated runs (and the cheap initial model): the rest is in the report
    if not args.merge or getattr(args, "rerun_pooled", False):
        results |= pooled_rows(task, data, settings, seed, work, scorer)
    results["initial model"] = {"held_out": scorer.holdout(None), "per_site": {}, "subgroups": scorer.subgroups([None])}
    results["initial model"]["vendors"] = site_vendors(data, sites)  # each site's scanner, for the report
    results["initial model"]["group_sizes"] = {
        vendor: len(json.loads(file.read_text())["testing"]) for vendor, file in scorer.groups.items()
    }
    return results


def pooled_rows(
    task: str, data: Path, settings: dict[str, Any], seed: int, work: Path, scorer: Scorer
) -> dict[str, dict[str, Any]]:
    """The centralized row (every site's training cases pooled) and one row per site training alone."""
    sites = sorted(scorer.sites)
    central = train_pooled(task, data, sites, settings, seed, work / "central.pt")
    results = {
        "centralized": {
            "held_out": scorer.holdout(central),
            "per_site": {s: scorer.on_site(central, s) for s in sites},
            "subgroups": scorer.subgroups([central]),
        }
    }
    local_models = {s: train_pooled(task, data, [s], settings, seed, work / f"{s}.pt") for s in sites}
    for s, m in local_models.items():
        per_site = {t: scorer.on_site(m, t) for t in sites}
        results[f"local {s}"] = {
            "held_out": scorer.holdout(m),
            "per_site": {s: per_site[s]},
            "cross": per_site,
            "subgroups": scorer.subgroups([m]),
        }
    results["local (each site its own)"] = {
        "held_out": float(np.mean([results[f"local {s}"]["held_out"] for s in sites])),
        "per_site": {s: results[f"local {s}"]["per_site"][s] for s in sites},
    }
    return results


def _slug(name: str) -> str:
    """A folder name FLARE's command lines take (no commas, spaces or parentheses)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(args: argparse.Namespace, runs: dict[int, dict[str, dict]], seconds: float) -> Path:
    """Write ``results.json``, ``report.md`` and its plots into ``args.out``; returns the report's path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({str(s): r for s, r in runs.items()}, indent=1) + "\n")
    seeds = sorted(runs)
    names = sorted(runs[seeds[0]], key=lambda n: n == "initial model")  # the reference row last, after a merge too
    lines = [
        f"# Evidence report: `{args.task}`",
        "",
        *[x for line in _provenance(args, out, seeds, seconds) for x in (line, "")],
        *_results_table(args.task, runs, seeds, names),
        *_selection_section(_key(args.task), runs, seeds, names),
        *loso_section(_key(args.task), runs, seeds),
        *subgroup_section(_key(args.task), runs, seeds, names),
        *_privacy_section(runs, seeds),
        *_learning_curves(args.task, runs[seeds[0]], seeds[0], names, out),  # seed 0 (or the first seed)
        *_cross_site_maps(args.task, runs[seeds[0]], names, out),
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _provenance(args: argparse.Namespace, out: Path, seeds: list[int], seconds: float) -> list[str]:
    """How the rows were made: this run; after a ``--merge`` the earlier report's lines for its other rows first."""
    made = (
        f"`oncofl report {getattr(args, 'command_line', '')}` on {time.strftime('%Y-%m-%d')} "
        f"({seconds / 60:.0f} min, CPU: {torch.get_num_threads()} threads; seeds {seeds})."
    )
    rerendered = "Tables re-rendered from results.json (nothing rerun) by "
    if not args.merge and not getattr(args, "rerender", False):
        return [f"Made by {made}"]
    old = (out / "report.md").read_text().splitlines() if (out / "report.md").is_file() else []
    if getattr(args, "rerender", False):
        kept = [line for line in old if line.startswith(("Made by", "Rows ")) and not line.startswith(rerendered)]
        return [*kept, rerendered + made.split(" (")[0] + "."]
    rows = f"Rows {', '.join(args.merged_names)} and the initial model (re)run by "
    # an earlier rerun of the same rows is replaced by this one, not listed beside it
    kept = [line for line in old if line.startswith(("Made by", "Rows ")) and not line.startswith(rows)]
    return [*kept, rows + made]


def _key(task: str) -> str:
    """The task's key metric as the report names it (``dice``, ``auc``, ``accuracy``)."""
    return get_task(task).key_metric.removeprefix("val_")


def _results_table(task: str, runs: dict[int, dict[str, dict]], seeds: list[int], names: list[str]) -> list[str]:
    """One row per model: held-out mean ± sd and 95 % interval, ratio to centralized, the paired differences to the
    anchors (centralized, best single site) with their 95 % intervals, worst site, then each seed's held-out score."""
    key = _key(task)
    central = [runs[s]["centralized"]["held_out"] for s in seeds if "centralized" in runs[s]]
    lines = [
        f"Held-out {key}: the shared held-out cases, no site trained on them (personalized / local: mean over the "
        "sites' models). Worst site: the lowest score over the sites, each on its own validation split, of the "
        f"model that site uses. Mean ± sd and the 95 % interval of the mean (Student's t) over {len(seeds)} seeds, "
        "each seed a new data split and initial model; ratio = held-out / centralized; Δ: the paired difference "
        "per seed to centralized and to the best single-site model of that seed, mean [95 % interval].",
        "",
        f"| model | held-out {key} | 95 % interval | ratio to centralized | Δ vs centralized | Δ vs best single site "
        "| worst site | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(seeds),
    ]
    for name in names:
        held = [runs[s][name]["held_out"] for s in seeds]
        worst = [min(runs[s][name]["per_site"].values()) for s in seeds if runs[s][name]["per_site"]]
        ratio = f"{statistics.mean(held) / statistics.mean(central):.3f}" if central else "-"
        interval = fmt_interval(held).split(" ", 1)[1]
        lines.append(
            f"| {name} | {mean_sd(held)} | {interval} | {ratio} | {' | '.join(anchor_columns(runs, seeds, name))} | "
            f"{mean_sd(worst) if worst else '-'} | " + " | ".join(f"{v:.4f}" for v in held) + " |"
        )
    return lines


def _selection_section(key: str, runs: dict[int, dict[str, dict]], seeds: list[int], names: list[str]) -> list[str]:
    """Per federated run: the final global model next to the one the job selected by the sites' validation metric
    (nothing when no row recorded a selection)."""
    shown = [n for n in names if all("best" in runs[s].get(n, {}) for s in seeds)]
    if not shown:
        return []
    lines = [
        "",
        "## The last round's model and the model selected by validation",
        "",
        f"The job hands out two global models: the last round's and the best by the sites' validation {key} (FLARE's "
        "model selector, over the sites whose updates were aggregated). Held-out mean ± sd over the seeds; the round "
        "each seed's selection came from.",
        "",
        f"| model | final: held-out {key} | selected: held-out {key} | selected at round (per seed) |",
        "|---|---|---|---|",
    ]
    for name in shown:
        final = [runs[s][name]["held_out"] for s in seeds]
        best = [runs[s][name]["best"]["held_out"] for s in seeds]
        rounds = ", ".join(str(runs[s][name]["best"]["round"]) for s in seeds)
        lines.append(f"| {name} | {mean_sd(final)} | {mean_sd(best)} | {rounds} |")
    return lines


def _privacy_section(runs: dict[int, dict[str, dict]], seeds: list[int]) -> list[str]:
    """Per DP run and seed: the epsilon budget and what each site spent (nothing without DP runs)."""
    privacy = [
        (s, n, r["privacy.json"])
        for s in seeds
        for n, r in runs[s].items()
        if "privacy.json" in r and r["privacy.json"]
    ]
    if not privacy:
        return []
    lines = ["", "## Differential privacy", ""]
    for s, name, p in privacy:
        spent = {site: entries[-1]["epsilon"] for site, entries in p["sites"].items()}
        lines.append(
            f"- seed {s}, {name}: budget ε = {p['epsilon_budget']:g}; spent per site "
            + ", ".join(f"{site} {eps:.3f}" for site, eps in sorted(spent.items()))
            + (f"; stopped after round {p['stopped_after_round']}" if p["stopped_after_round"] is not None else "")
        )
    return lines


def _pyplot():
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _learning_curves(task: str, runs: dict[str, dict], seed: int, names: list[str], out: Path) -> list[str]:
    """Plot one seed's learning curves (``learning_curves.png``); the report's lines showing it."""
    plt = _pyplot()
    key = get_task(task).key_metric.removeprefix("val_")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        curve = runs[name].get("curve")
        if curve:
            ax.plot(range(len(curve)), curve, marker="o", label=name)
    ax.axhline(runs["centralized"]["held_out"], color="k", linestyle="--", label="centralized (held-out)")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{key} of the global model (sites' validation data)")
    ax.set_title(f"{task}: learning curves, seed {seed}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)
    return ["", "## Learning curves", "", "![learning curves](learning_curves.png)", ""]


def _cross_site_maps(task: str, runs: dict[str, dict], names: list[str], out: Path) -> list[str]:
    """A heat map per run with a cross-site matrix (the federated runs of one seed); the report's lines showing them."""
    lines = []
    for name in names:
        cross = runs[name].get("cross_site")
        if cross:
            file = _cross_site_map(task, name, cross, out)
            lines += [f"![cross-site {name}]({file})", ""]
    return lines


def _cross_site_map(task: str, name: str, cross: dict[str, dict], out: Path) -> str:
    """Plot run ``name``'s cross-site matrix (rows: data of a site, columns: model) into ``out``; its file name."""
    plt = _pyplot()
    metric = get_task(task).key_metric
    data_sites = sorted(cross)
    models = sorted({m for row in cross.values() for m in row})
    matrix = np.array(
        [[cross[site].get(model, {}).get(metric, np.nan) for model in models] for site in data_sites], dtype=float
    )
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(models), 1.2 + 0.6 * len(data_sites)))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(models)), [m.replace("SRV_", "").replace("_model.pt", "") for m in models], rotation=30)
    ax.set_yticks(range(len(data_sites)), data_sites)
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("data of site")
    ax.set_title(f"cross-site {metric.removeprefix('val_')}: {name}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    file = f"cross_site_{_slug(name)}.png"
    fig.savefig(out / file, dpi=110)
    plt.close(fig)
    return file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = sorted(job.task for job in JOBS if job.evidence_report)
    parser.add_argument("--task", choices=tasks, default="breast_wdbc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="*", default=["fedavg", "fedprox", "fedopt", "scaffold", "fedbn"])
    parser.add_argument("--dp-epsilon", type=float, default=0.0, help="also run FedAvg + DP-SGD with this budget")
    parser.add_argument("--dp-options", type=json.loads, default={}, help="e.g. '{\"dp_max_grad_norm\": 5.0}'")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME=JSON",
        help='more federated runs, e.g. \'fedavg+percentile={"privacy_filter": "percentile"}\'',
    )
    parser.add_argument("--rounds", type=int, default=0, help="rounds of every job (default: the job's own)")
    parser.add_argument(
        "--job-options",
        type=json.loads,
        default={},
        help='options of every job, e.g. the CPU variant: \'{"image_size": 128, "small_network": true}\'',
    )
    parser.add_argument(
        "--leave-one-out",
        action="store_true",
        help="also run FedAvg on all sites but one, for each site, and score it on the site it left out",
    )
    parser.add_argument("--parallel", type=int, default=3, help="simulator runs at once")
    parser.add_argument("--out", default=None, help="report folder (default: docs/evidence/<task>)")
    parser.add_argument("--keep", default=None, help="keep the workspaces here (default: a temporary folder)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="run only the federated configurations named here and merge them into --out's results.json "
        "(replacing rows of the same name); centralized and local rows are read from it",
    )
    parser.add_argument(
        "--rerun-pooled",
        action="store_true",
        help="with --merge: also rerun the centralized and single-site rows (e.g. to add their subgroup scores)",
    )
    parser.add_argument(
        "--rerender", action="store_true", help="only write report.md again from --out's results.json (no run)"
    )
    return parser


def _previous_results(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """With ``--merge``: the earlier report's results, per seed (the same seeds as asked for); else nothing."""
    if not args.merge:
        return {}
    results_file = Path(args.out) / "results.json"
    if not results_file.is_file():
        parser.error(f"--merge needs an earlier report's {results_file}")
    previous = json.loads(results_file.read_text())
    if sorted(previous) != sorted(str(s) for s in args.seeds):
        parser.error(f"--merge: {results_file} has seeds {sorted(previous)}, not {args.seeds}")
    return previous


def _run_seeds(args: argparse.Namespace, previous: dict[str, dict[str, Any]]) -> dict[int, dict[str, dict]]:
    """Every seed's rows (merged into ``previous`` with ``--merge``), saved to ``results.partial.json`` as they come."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        for seed in args.seeds:
            runs[seed] = run_seed(args, seed, work)
            if args.merge:
                args.merged_names = [n for n in runs[seed] if n != "initial model"]
                runs[seed] = {**previous[str(seed)], **runs[seed]}  # same names keep their place, new ones last
            partial = Path(args.out) / "results.partial.json"  # a long run keeps what it has measured so far
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({str(s): r for s, r in runs.items()}, indent=1) + "\n")
            print(f"seed {seed}: " + ", ".join(f"{n} {r['held_out']:.4f}" for n, r in runs[seed].items()), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.command_line = " ".join(sys.argv[1:] if argv is None else argv)  # for the report's provenance line
    args.out = args.out or str(Path("docs") / "evidence" / args.task)
    spec = get_task(args.task)
    if "fedbn" in args.algorithms and fedbn_refusal(spec.build_network(), spec.local_state):
        print(f"fedbn left out: task {args.task}'s network keeps no normalization state (it would be fedavg)")
        args.algorithms = [a for a in args.algorithms if a != "fedbn"]
    if args.rerender:
        results = json.loads((Path(args.out) / "results.json").read_text())
        report = write_report(args, {int(s): r for s, r in results.items()}, 0.0)
        print(f"report re-rendered: {report}")
        return 0
    previous = _previous_results(parser, args)
    started = time.perf_counter()
    runs = _run_seeds(args, previous)
    report = write_report(args, runs, time.perf_counter() - started)
    (Path(args.out) / "results.partial.json").unlink(missing_ok=True)
    print(report.read_text())
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
