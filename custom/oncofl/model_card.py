"""A model card for a finished run, written from what the run itself recorded.

    oncofl model-card --job-dir workspace/simulator/server/simulate_job            # -> app_server/model_card.md
    oncofl model-card --job-dir DIR --out card.md --holdout "final global=0.91" --data-summary "3 sites, synthetic"

The card is built from a finished job's server folder (the simulator's ``<workspace>/server/simulate_job``, or a
job's results downloaded from the server): the job's configs (task, network, algorithm, rounds, DP and robust
aggregation settings, the oncofl version and code hash it was built for), ``participation.json`` (who contributed to
each round, who was left out and why), ``aggregation.json`` (the updates the aggregator refused, rejected or
bounded), ``privacy.json`` (the epsilon every DP site spent), ``cross_site_val/cross_val_results.json`` (the
cross-site matrix), ``tb_events/`` (the sites' scores of the global model per round: the learning curve) and the
model files (SHA-256). It names sites, counts and metrics only: no path, no value read from a site's data.
``oncofl simulate`` writes one next to the global model at the end of every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .deploy.kit_install import sha256_file

FILE_NAME = "model_card.md"
INTENDED_USE = (
    "research on federated training across hospitals and a starting point for consortium studies. "
    "**Not a medical device**: not for diagnosis, screening or treatment planning."
)


@dataclass(frozen=True)
class TaskText:
    """What a card says of a task that no run records: what it is, its input and output, and its known limits."""

    what: str
    network: str
    input: str
    output: str
    limits: tuple[str, ...]


TASK_TEXT = {
    "prostate_seg": TaskText(
        what="whole-gland segmentation of the prostate on axial T2-weighted MRI (binary: background / gland)",
        network="MONAI 3D residual UNet, channels 16-32-64-128, strides 2-2-2, 2 residual units, InstanceNorm "
        "(about 1.2 M parameters)",
        input="one DICOM MR series per case, resampled to 2.5 x 2.5 x 4.0 mm (RAS), intensities scaled to the "
        "1st-99th percentile, centred 64 x 64 x 16 volume (160 x 160 x 64 mm)",
        output="2 channels of logits per voxel (background, gland); the metric is the foreground Dice per case",
        limits=(
            "fixed field of view around the image centre: a gland far off-centre is cropped",
            "binary gland only: no zonal or lesion labels",
            "synthetic anatomy is far simpler than real pelvic MRI: no real-patient performance is claimed",
        ),
    ),
    "breast_wdbc": TaskText(
        what="benign vs malignant breast mass from the 30 nucleus features of a fine-needle aspirate (WDBC)",
        network="small MLP on log-scaled features with federated standardization (input moments pooled by FedAvg)",
        input="the 30 WDBC features of one case (a table row)",
        output="2 logits (benign, malignant); the metric is accuracy",
        limits=(
            "569 cases of one institution (Wisconsin), dealt to simulated sites: not a multi-hospital cohort",
            "features are measured from digitized images by a fixed protocol: other protocols shift them",
        ),
    ),
    "breast_mammo_cls": TaskText(
        what="malignant vs benign/normal classification of a mammogram (MG DICOM)",
        network="MONAI 2D DenseNet121 (a small 2D network in the CPU variant)",
        input="one MG image: VOI applied, inverted where MONOCHROME1, canonical side, breast crop, padded square, "
        "resized to the job's image size",
        output="2 logits per image (benign/normal, malignant); the metric is AUC",
        limits=(
            "trained and measured on synthetic mammograms only: no real-patient performance is claimed",
            "one image at a time: no combination of views or priors",
        ),
    ),
    "lung_nodule_cls": TaskText(
        what="malignancy of an annotated lung nodule on chest CT",
        network="MONAI 3D ResNet with a strided stem",
        input="a 24^3 patch at 2 mm isotropic (RAS, HU) around each annotated nodule centre",
        output="2 logits per nodule (benign, malignant); the metric is AUC",
        limits=(
            "needs the nodule's position (detection is not part of the model)",
            "trained and measured on synthetic CT only: no real-patient performance is claimed",
        ),
    ),
}
COMMON_LIMITS = (
    "the performance in this card is measured on the participating sites' own validation data (and the held-out "
    "cases, where given); other scanners, protocols and populations may differ",
)


@dataclass
class RunRecord:
    """What a finished job's server folder says about the run (read by :func:`read_run`)."""

    job: str
    server: dict[str, Any]
    client: dict[str, Any]
    participation: dict[str, Any] = field(default_factory=dict)
    aggregation: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    cross_site: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, dict[int, float]] = field(default_factory=dict)  # site -> round -> score of the global model
    models: dict[str, str] = field(default_factory=dict)  # model file name -> sha256

    @property
    def executor(self) -> dict[str, Any]:
        return self.client["executors"][0]["executor"]["args"]

    def component(self, component_id: str) -> dict[str, Any]:
        return next((c for c in self.server.get("components", []) if c.get("id") == component_id), {})

    @property
    def workflow(self) -> dict[str, Any]:
        return self.server["workflows"][0]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_curve(tb_events: Path, key: str) -> dict[str, dict[int, float]]:
    """Per site, per round: the site's score of the round's global model (``<key>_global``, streamed to the server)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve: dict[str, dict[int, float]] = {}
    for site_dir in sorted(p for p in tb_events.glob("*") if p.is_dir()):
        events = EventAccumulator(str(site_dir))
        events.Reload()
        if f"{key}_global" in events.Tags()["scalars"]:
            curve[site_dir.name] = {int(e.step): float(e.value) for e in events.Scalars(f"{key}_global")}
    return curve


def server_folder(path: str | Path) -> Path:
    """The job's server folder (the one holding ``app_server/config``): ``path`` itself (the simulator's
    ``<workspace>/server/simulate_job``), or the one inside a POC or kit job's downloaded result
    (``<download>/<job id>/workspace``)."""
    path = Path(path)
    if (path / "app_server" / "config" / "config_fed_server.json").is_file():
        return path
    found = sorted(path.rglob("app_server/config/config_fed_server.json"), key=lambda p: len(p.parts))
    if not found or not (found[0].parent / "config_fed_client.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no app_server/config/config_fed_server.json and config_fed_client.json: not a job's "
            "server folder. Fix: pass the job's server folder, e.g. <workspace>/server/simulate_job for the "
            "simulator, or a POC or kit job's downloaded result"
        )
    return found[0].parents[2]


def _job_name(job_dir: Path, given: Path) -> str:
    """The job's name from the nearest ``meta.json`` between the server folder and the folder given."""
    for folder in (job_dir, *(p for p in job_dir.parents if p == given or given in p.parents)):
        name = _json(folder / "meta.json").get("name")
        if name:
            return name
    return job_dir.name


def read_run(job_dir: str | Path) -> RunRecord:
    """Everything the card needs from a finished job's server folder (see :func:`server_folder`)."""
    given = Path(job_dir)
    job_dir = server_folder(given)
    config = job_dir / "app_server" / "config"
    run = RunRecord(
        job=_job_name(job_dir, given),
        server=_json(config / "config_fed_server.json"),
        client=_json(config / "config_fed_client.json"),
        participation=_json(job_dir / "participation.json"),
        aggregation=_json(job_dir / "aggregation.json"),
        privacy=_json(job_dir / "privacy.json"),
        cross_site=_json(job_dir / "cross_site_val" / "cross_val_results.json"),
    )
    if (job_dir / "tb_events").is_dir():
        run.curve = read_curve(job_dir / "tb_events", key_metric(run))
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        if (job_dir / "app_server" / name).is_file():
            run.models[name] = sha256_file(job_dir / "app_server" / name)
    return run


def key_metric(run: RunRecord) -> str:
    from .tasks import get_task

    return get_task(run.executor["task"]).key_metric


def sites(run: RunRecord) -> list[str]:
    """The sites the run names: expected in a round, in the cross-site matrix or on the learning curve."""
    rounds = run.participation.get("rounds", [])
    found = {s for r in rounds for s in r.get("expected", [])} | set(run.cross_site) | set(run.curve)
    return sorted(found)


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_value(c) for c in row) + " |" for row in rows]


def what_section(run: RunRecord) -> list[str]:
    task = run.executor["task"]
    text = TASK_TEXT.get(task)
    model = run.component("model")
    args = ", ".join(f"{k}={v}" for k, v in sorted(model.get("args", {}).items())) or "the task's defaults"
    lines = ["## What the model is", ""]
    lines.append(f"- **Task**: `{task}`" + (f": {text.what}" if text else ""))
    lines.append(f"- **Network**: `{model.get('path', '?')}` ({args})" + (f": {text.network}" if text else ""))
    if text:
        lines += [f"- **Input**: {text.input}", f"- **Output**: {text.output}"]
    lines += [f"- **Intended use**: {INTENDED_USE}", ""]
    return lines


def _algorithm_lines(run: RunRecord) -> list[str]:
    args, workflow = run.executor, run.workflow
    settings = run.aggregation.get("settings") or run.component("aggregator").get("args", {})
    lines = [
        f"- **Algorithm**: {args.get('algorithm', 'fedavg')} (server workflow `{workflow['path'].split('.')[-1]}`)"
    ]
    if settings:
        robust = ", ".join(f"{k} {v}" for k, v in settings.items())
        lines.append(f"- **Aggregation**: `RobustAggregator` ({robust})")
    rounds = run.participation.get("rounds", [])
    planned = workflow.get("args", {}).get("num_rounds", "?")
    least = workflow.get("args", {}).get("min_clients", "?")
    lines.append(f"- **Rounds**: {len(rounds)} run of {planned} planned; at least {least} sites per round")
    local = [f"{k.replace('_', ' ')} {args[k]}" for k in ("local_epochs", "batch_size", "learning_rate") if k in args]
    lines.append(f"- **Local training**: {', '.join(local) or 'the task defaults'}")
    if run.component("model_selector"):
        lines.append(
            f"- **Best model** (`best_FL_global_model.pt`): the global model with the highest mean `{key_metric(run)}` "
            "over the sites whose updates were aggregated"
        )
    lines.append(f"- **Sites**: {len(sites(run))} ({', '.join(sites(run))})")
    return lines


def encrypted(run: RunRecord) -> bool:
    """Whether the run's server aggregated CKKS ciphertexts (FLARE's HE components), so its model files are
    ciphertext."""
    return any(str(c.get("path", "")).startswith("nvflare.app_opt.he.") for c in run.server.get("components", []))


def _he_lines(run: RunRecord) -> list[str]:
    if not encrypted(run):
        return []
    return [
        "- **Homomorphic encryption**: every model a site sent was CKKS-encrypted and the server aggregated "
        "ciphertexts; the global model files below are ciphertext, which a hospital decrypts with its kit's "
        "client context (`oncofl predict --he-context`)"
    ]


def _privacy_lines(run: RunRecord) -> list[str]:
    dp = run.executor.get("dp")
    if not dp:
        return ["- **Privacy**: no differential privacy (DP-SGD off)", *_he_lines(run)]
    budget, delta = dp.get("epsilon_budget"), dp.get("delta")
    lines = [f"- **Privacy**: sample-level DP-SGD at every site, budget epsilon {budget:g}, delta {delta:g}"]
    lines[-1] += f", gradient clip {dp.get('max_grad_norm', '?')}"
    for site, entries in sorted(run.privacy.get("sites", {}).items()):
        last = entries[-1]
        lines.append(f"  - {site}: epsilon {last['epsilon']:.3f} spent after round {last['round']}")
    if run.privacy.get("stopped_after_round") is not None:
        lines.append(f"  - training stopped at the budget after round {run.privacy['stopped_after_round']}")
    if not run.privacy.get("sites"):
        lines.append("  - no site reported epsilon spent (privacy.json absent or empty)")
    return lines + _he_lines(run)


def _participation_lines(run: RunRecord) -> list[str]:
    rounds = run.participation.get("rounds", [])
    if not rounds:
        return ["Participation: not recorded (no participation.json).", ""]
    rows = []
    for r in rounds:
        left = ", ".join(f"{s} ({why})" for s, why in sorted(r.get("left_out", {}).items())) or "-"
        rows.append([r["round"], f"{len(r['contributed'])} of {len(r['expected'])}", ", ".join(r["contributed"]), left])
    return ["Participation per round:", "", *_table(["round", "sites", "contributed", "left out (why)"], rows), ""]


def _refusal_lines(run: RunRecord) -> list[str]:
    rows = []
    for r in run.aggregation.get("rounds", []):
        for kind in ("refused", "rejected", "clipped", "weights"):
            rows += [[r["round"], site, kind, why] for site, why in sorted(r.get(kind, {}).items())]
        rows += [[r["round"], "-", "note", note] for note in r.get("notes", [])]
    if not run.aggregation:
        return ["Aggregation decisions: not recorded (no aggregation.json: another aggregator).", ""]
    if not rows:
        return ["Aggregation decisions: none; every update received was combined as sent.", ""]
    return ["Aggregation decisions (updates refused, rejected as outliers, bounded or down-weighted):", ""] + [
        *_table(["round", "site", "decision", "reason"], rows),
        "",
    ]


def training_section(run: RunRecord, data_summary: str | None) -> list[str]:
    lines = ["## How it was trained", ""]
    if data_summary:
        lines.append(f"- **Data**: {data_summary}")
    lines += [*_algorithm_lines(run), *_privacy_lines(run), ""]
    return lines + _participation_lines(run) + _refusal_lines(run)


def _cross_site_lines(run: RunRecord, key: str) -> list[str]:
    if not run.cross_site:
        return ["Cross-site evaluation: not recorded (no cross_site_val/cross_val_results.json).", ""]
    models = sorted({m for row in run.cross_site.values() for m in row})
    rows = [[site, *(run.cross_site[site].get(m, {}).get(key, "-") for m in models)] for site in sorted(run.cross_site)]
    head = f"Cross-site `{key}` (rows: the site whose validation data scored the model; columns: the model):"
    return [head, "", *_table(["data site", *models], rows), ""]


def _curve_lines(run: RunRecord, key: str) -> list[str]:
    if not run.curve:
        return ["Learning curve: not recorded (no TensorBoard events on the server).", ""]
    sites = sorted(run.curve)
    rounds = sorted({r for scores in run.curve.values() for r in scores})
    rows = []
    for r in rounds:
        scores = [run.curve[s].get(r) for s in sites]
        present = [v for v in scores if v is not None]
        rows.append([r, sum(present) / len(present), *(v if v is not None else "-" for v in scores)])
    head = (
        f"Learning curve: each site's `{key}` on its validation data of the global model it received at the start of "
        "each round (round 0: the initial model), and their mean:"
    )
    return [head, "", *_table(["round", "mean", *sites], rows), ""]


def performance_section(run: RunRecord, holdout: dict[str, float] | None) -> list[str]:
    key = key_metric(run)
    lines = ["## How it performs", ""]
    if holdout:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in holdout.items())
        lines += [f"Held-out `{key}` (cases no site trained on): {scores}.", ""]
    return lines + _cross_site_lines(run, key) + _curve_lines(run, key)


def provenance_section(run: RunRecord) -> list[str]:
    built = run.component("oncofl_provenance").get("args", {})
    lines = ["## Provenance", ""]
    lines.append(f"- **oncofl version**: {built.get('version', 'not recorded')}")
    lines.append(f"- **code sha256**: `{built.get('code_sha256', 'not recorded')}` (the job config's ProvenanceCheck)")
    for name, digest in run.models.items():
        lines.append(f"- **{name}** sha256: `{digest}`" + (" (ciphertext)" if encrypted(run) else ""))
    if not run.models:
        lines.append("- model files: none in the server folder")
    return lines + [""]


def limits_section(run: RunRecord) -> list[str]:
    text = TASK_TEXT.get(run.executor["task"])
    limits = (*(text.limits if text else ()), *COMMON_LIMITS)
    return ["## Known limits", "", *(f"- {limit}" for limit in limits), ""]


def render(run: RunRecord, *, holdout: dict[str, float] | None = None, data_summary: str | None = None) -> str:
    """The card's Markdown."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"# Model card: {run.job} (`{run.executor['task']}`)",
        "",
        f"Generated by `oncofl model-card` on {stamp} from the run's own records (job configs, participation.json, "
        "aggregation.json, privacy.json, the cross-site results, the TensorBoard events, the model files). It names "
        "sites, counts and metrics only.",
        "",
    ]
    lines += what_section(run) + training_section(run, data_summary) + performance_section(run, holdout)
    lines += provenance_section(run) + limits_section(run)
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(
    job_dir: str | Path,
    out: str | Path | None = None,
    *,
    holdout: dict[str, float] | None = None,
    data_summary: str | None = None,
) -> Path:
    """Write the card of the finished job in ``job_dir`` to ``out`` (default: ``app_server/model_card.md``, next to
    the global model); returns its path."""
    run = read_run(job_dir)
    path = Path(out) if out else server_folder(job_dir) / "app_server" / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(run, holdout=holdout, data_summary=data_summary))
    return path


def parse_holdout(items: list[str]) -> dict[str, float]:
    scores = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            scores[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--holdout {item!r} is not NAME=NUMBER. Fix: e.g. --holdout 'final global=0.91'")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-dir", required=True, help="a finished job's server folder (<workspace>/server/...)")
    parser.add_argument("--out", default=None, help=f"the card (default: <job-dir>/app_server/{FILE_NAME})")
    parser.add_argument("--holdout", action="append", default=[], help="a held-out score, NAME=VALUE (repeatable)")
    parser.add_argument("--data-summary", default=None, help="one line on the data (counts only, no paths)")
    args = parser.parse_args(argv)
    try:
        path = write_model_card(
            args.job_dir, args.out, holdout=parse_holdout(args.holdout), data_summary=args.data_summary
        )
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"model card: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
