"""What a MONAI bundle exported by ``oncofl export-bundle`` says about itself: ``configs/metadata.json`` in MONAI's
bundle metadata schema (``meta_schema_20240725.json``, the keys ``monai.bundle.verify_metadata`` checks), with the
preprocessing parameters and a federated-learning provenance block, and ``docs/README.md``.

The provenance is read from the run's own records by :mod:`oncofl.model_card`'s readers (the job configs,
``participation.json``, ``aggregation.json``, ``privacy.json``, the cross-site results, the TensorBoard curve, the
model hashes); what a job definition folder does not record is said to be "not recorded". It names sites, counts,
settings, metrics and file names only: no path, nothing read from a site's data.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from ..model_card import INTENDED_USE, TASK_TEXT, RunRecord, key_metric, read_run, sites
from ..provenance import installed
from .job import client_config

SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = "0.1.0"
NOT_RECORDED = "not recorded"
REQUIRED_PACKAGES = ("oncofl", "pydicom", "highdicom", "nibabel", "scipy", "fire")
GLOBAL_MODEL_COLUMN = "SRV_FL_global_model.pt"  # the cross-site matrix's column of the final global model
CONFIG, META, LOGGING, MODEL_PT, MODEL_TS, README = (
    "configs/inference.json",
    "configs/metadata.json",
    "configs/logging.conf",
    "models/model.pt",
    "models/model.ts",
    "docs/README.md",
)


def run_record(folder: Path) -> tuple[RunRecord, bool]:
    """The run's records (:func:`oncofl.model_card.read_run`) where ``folder`` is a finished run's server folder,
    else a record of the job definition's configs alone; and whether the folder is a run."""
    if (folder / "app_server" / "config" / "config_fed_server.json").is_file():
        return read_run(folder), True
    client = client_config(folder)
    server = client.parent / "config_fed_server.json"
    meta = folder / "meta.json"
    name = json.loads(meta.read_text()).get("name", folder.name) if meta.is_file() else folder.name
    server_config = json.loads(server.read_text()) if server.is_file() else {}
    return RunRecord(job=name, server=server_config, client=json.loads(client.read_text())), False


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _workflow(run: RunRecord) -> dict[str, Any]:
    return run.server.get("workflows", [{}])[0] if run.server.get("workflows") else {}


def _dp(run: RunRecord, recorded: bool) -> dict[str, Any] | str:
    dp = run.executor.get("dp")
    if not dp:
        return "none (DP-SGD off)"
    spent = {site: entries[-1]["epsilon"] for site, entries in sorted(run.privacy.get("sites", {}).items())}
    return {
        "epsilon_budget": dp.get("epsilon_budget"),
        "delta": dp.get("delta"),
        "max_grad_norm": dp.get("max_grad_norm"),
        "epsilon_spent": spent if spent else NOT_RECORDED,
        "stopped_after_round": run.privacy.get("stopped_after_round") if recorded else NOT_RECORDED,
    }


def _aggregation(run: RunRecord) -> dict[str, Any]:
    aggregator = run.component("aggregator")
    decisions = [
        f"round {r['round']}: {site} {kind}"
        for r in run.aggregation.get("rounds", [])
        for kind in ("refused", "rejected", "clipped")
        for site in sorted(r.get(kind, {}))
    ]
    return {
        "aggregator": aggregator.get("path", NOT_RECORDED).split(".")[-1],
        "settings": run.aggregation.get("settings") or aggregator.get("args", NOT_RECORDED),
        "updates_refused_rejected_or_bounded": decisions if run.aggregation else NOT_RECORDED,
    }


def validation_metrics(run: RunRecord, holdout: dict[str, float] | None) -> dict[str, Any]:
    """The run's recorded scores of the final global model: each site's cross-site score on its validation data and
    their mean, the learning curve's last round (mean over sites), and held-out scores where given."""
    key = key_metric(run)
    cross = {
        site: row[GLOBAL_MODEL_COLUMN][key]
        for site, row in sorted(run.cross_site.items())
        if key in row.get(GLOBAL_MODEL_COLUMN, {})
    }
    last = max((r for curve in run.curve.values() for r in curve), default=None)
    at_last = [curve[last] for curve in run.curve.values() if last is not None and last in curve]
    return {
        "key_metric": key,
        "cross_site_final_global_model": cross or NOT_RECORDED,
        "cross_site_final_global_model_mean": float(np.mean(list(cross.values()))) if cross else NOT_RECORDED,
        "learning_curve_last_round": {"round": last, "mean": float(np.mean(at_last))} if at_last else NOT_RECORDED,
        "held_out": dict(holdout) if holdout else NOT_RECORDED,
    }


def fl_provenance(run: RunRecord, recorded: bool, model: dict[str, str], holdout: dict[str, float] | None) -> dict:
    """The federated-learning provenance block: job, rounds, sites, algorithm, aggregation, DP, metrics, the model's
    sha256, and the oncofl the job was built for and the one that exported the bundle."""
    workflow = _workflow(run)
    rounds = run.participation.get("rounds", [])
    names = sites(run)
    return {
        "job": run.job,
        "task": run.executor["task"],
        "source": "a finished run's records" if recorded else "a job definition (no run records)",
        "rounds_run": len(rounds) if rounds else NOT_RECORDED,
        "rounds_planned": workflow.get("args", {}).get("num_rounds", NOT_RECORDED),
        "min_sites_per_round": workflow.get("args", {}).get("min_clients", NOT_RECORDED),
        "number_of_sites": len(names) if names else NOT_RECORDED,
        "sites": names or NOT_RECORDED,
        "algorithm": run.executor.get("algorithm", "fedavg"),
        "server_workflow": workflow.get("path", NOT_RECORDED).split(".")[-1],
        "aggregation": _aggregation(run),
        "differential_privacy": _dp(run, recorded),
        "local_training": {
            k: run.executor[k] for k in ("local_epochs", "batch_size", "learning_rate") if k in run.executor
        },
        "metrics": validation_metrics(run, holdout),
        "model": model,
        "models_recorded_by_run": dict(run.models) if recorded else NOT_RECORDED,
        "job_built_for_oncofl": run.component("oncofl_provenance").get("args", NOT_RECORDED),
        "exported_with_oncofl": installed(),
    }


def network_data_format(params: dict[str, Any], network: dict[str, Any], classes: int) -> dict[str, Any]:
    """MONAI's ``network_data_format``: the preprocessed volume in, the logits out, the label map on the source grid
    after the inverse mapping (``post_processed_outputs``)."""
    shape = [int(n) for n in params["volume_size"]]
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": "MR",
        "num_channels": int(network.get("in_channels", 1)),
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {"0": "T2w, RAS, resampled and percentile-scaled by oncofl's preprocessing"},
    }
    pred = {
        "type": "image",
        "format": "segmentation",
        "num_channels": classes,
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": [],  # logits: unbounded
        "is_patch_data": False,
        "channel_def": {"0": "background", **{str(i): f"class {i} logit" for i in range(1, classes)}},
    }
    label = {**pred, "format": "labels", "num_channels": 1, "spatial_shape": ["*", "*", "*"], "dtype": "uint8"}
    label["value_range"], label["channel_def"] = [0, classes - 1], {"0": "label map on the source series' grid"}
    return {"inputs": {"image": image}, "outputs": {"pred": pred}, "post_processed_outputs": {"label": label}}


def bundle_metadata(
    spec: Any, params: dict[str, Any], network: dict[str, Any], provenance: dict[str, Any], torchscript: dict
) -> dict[str, Any]:
    """``configs/metadata.json``: the schema's keys, the preprocessing parameters, the provenance block."""
    text = TASK_TEXT.get(spec.name)
    classes = len(spec.segments) + 1
    metrics = provenance["metrics"]
    scores = {
        f"{metrics['key_metric']} cross-site mean, final global model": metrics["cross_site_final_global_model_mean"]
    }
    return {
        "schema": SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by oncofl export-bundle from job {provenance['job']}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {name: _package_version(name) for name in REQUIRED_PACKAGES},
        "name": f"oncofl {spec.name} ({provenance['job']})",
        "task": text.what if text else spec.name,
        "description": f"{spec.name} trained by federated learning (NVIDIA FLARE, oncofl job {provenance['job']}); "
        "inference runs oncofl's own preprocessing and its inverse, writing a DICOM-SEG and a NIfTI mask",
        "authors": "the oncofl consortium that ran the job",
        "copyright": "the consortium's member institutions; see the consortium agreement",
        "data_source": "the participating sites' own data, which never left them (not part of this bundle)",
        "data_type": "dicom",
        "image_classes": text.input if text else "see network_data_format",
        "label_classes": "0 background, " + ", ".join(f"{i} {s.label}" for i, s in enumerate(spec.segments, 1)),
        "pred_classes": text.output if text else f"{classes} channels of logits",
        "eval_metrics": {k: v for k, v in scores.items() if v != NOT_RECORDED},
        "intended_use": INTENDED_USE,
        "references": [],
        "network_data_format": network_data_format(params, network, classes),
        "preprocessing": {"task": spec.name, **params, "steps": text.input if text else "the task's prepare_input"},
        "torchscript": torchscript,
        "federated_learning": provenance,
    }


def runner_command(bundle: str = "BUNDLE", source: str = "INPUT", out: str = "OUT") -> str:
    """MONAI's own runner on this bundle: ``--input`` (a DICOM series folder, a folder of series folders, or a NIfTI
    volume) and ``--output_dir`` override the config's ``input`` and ``output_dir``; ``--bundle_root`` its root."""
    return (
        f"python -m monai.bundle run --config_file {bundle}/{CONFIG} --meta_file {bundle}/{META} "
        f"--bundle_root {bundle} --input {source} --output_dir {out}"
    )


def _provenance_lines(fl: dict[str, Any]) -> list[str]:
    dp = fl["differential_privacy"]
    dp_text = dp if isinstance(dp, str) else f"budget epsilon {dp['epsilon_budget']}, spent {dp['epsilon_spent']}"
    metrics = fl["metrics"]
    return [
        f"- job `{fl['job']}` (task `{fl['task']}`), from {fl['source']}",
        f"- rounds run: {fl['rounds_run']} (planned: {fl['rounds_planned']}); sites: {fl['number_of_sites']} "
        f"({', '.join(fl['sites']) if isinstance(fl['sites'], list) else fl['sites']})",
        f"- algorithm: {fl['algorithm']} (server workflow {fl['server_workflow']}); aggregation: "
        f"{fl['aggregation']['aggregator']} {fl['aggregation']['settings']}",
        f"- differential privacy: {dp_text}",
        f"- `{metrics['key_metric']}` of the final global model, cross-site mean over the sites' validation data: "
        f"{metrics['cross_site_final_global_model_mean']}; held-out: {metrics['held_out']}",
        f"- model: `{fl['model']['file']}` sha256 `{fl['model']['sha256']}`; `{MODEL_PT}` sha256 "
        f"`{fl['model']['bundle_sha256']}`",
        f"- oncofl {fl['exported_with_oncofl']['version']} (code sha256 `{fl['exported_with_oncofl']['code_sha256']}`)",
    ]


def readme(meta: dict[str, Any], config: dict[str, Any]) -> str:
    """``docs/README.md``: what the bundle is, how MONAI's runner runs it, its overrides, outputs and provenance."""
    ts = meta["torchscript"]
    ts_line = f"`{MODEL_TS}`: {ts['method']}" if ts.get("file") else f"no `{MODEL_TS}`: {ts['skipped']}"
    lines = [
        f"# {meta['name']}",
        "",
        f"{meta['description']}. Task: {meta['task']}.",
        "",
        f"**Intended use**: {meta['intended_use']}",
        "",
        "## Run it",
        "",
        "Needs `oncofl` installed (the bundle's components are oncofl's: the same preprocessing, inverse mapping and "
        "DICOM-SEG writer as `oncofl predict`).",
        "",
        "```",
        runner_command(),
        "```",
        "",
        "Overrides (any config id can be overridden as `--<id> value`):",
        "",
        "- `--input`: a DICOM series folder, a folder of series folders, or a NIfTI volume (`.nii`, `.nii.gz`)",
        "- `--output_dir`: where the outputs go (default `<bundle_root>/eval`)",
        "- `--bundle_root`: this folder (default `.`: run from inside it)",
        "- `--device`: e.g. `\"$torch.device('cpu')\"` (default: the first GPU when there is one)",
        f"- `--network_def#<arg>`: the network's arguments (`{config['network_def']['_target_']}`); they must fit "
        f"`{MODEL_PT}`",
        "",
        "Outputs: `<output_dir>/<series>/seg.dcm` (a DICOM-SEG referencing the source series) and `mask.nii.gz` (the "
        "label map on the series' grid); for a NIfTI input `<output_dir>/<name>/mask.nii.gz`. A series that cannot "
        "be read is reported and the run fails (non-zero exit) after the others were written.",
        "",
        f"Files: `{CONFIG}`, `{META}`, `{MODEL_PT}` (state dict, loads with `torch.load(weights_only=True)`), "
        f"{ts_line}.",
        "",
        "## Provenance",
        "",
        *_provenance_lines(meta["federated_learning"]),
        "",
        f"The full record is `federated_learning` in `{META}`; the preprocessing parameters are `preprocessing`.",
        "",
        "## License",
        "",
        f"No license file is included; copyright: {meta['copyright']}.",
    ]
    return "\n".join(lines) + "\n"


# the runner reads configs/logging.conf where it exists (Python's logging.config.fileConfig format)
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
