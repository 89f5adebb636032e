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

from ..errors import ModelFileError
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
    try:
        return read_run(folder), True  # a run's server folder, or a POC/kit job's downloaded result
    except FileNotFoundError:
        pass
    client = client_config(folder)
    server = client.parent / "config_fed_server.json"
    try:
        name = _json_file(folder / "meta.json").get("name", folder.name)
        return RunRecord(job=name, server=_json_file(server), client=json.loads(client.read_text())), False
    except (OSError, ValueError, AttributeError) as e:
        raise ModelFileError(
            f"the job's configs cannot be read as JSON objects ({type(e).__name__})",
            fix="pass a job folder written by oncofl job export, or a finished run's folder",
            path=str(folder),
            detail=str(e),
        ) from e


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else {}


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


# each task's network input: modality, what channel 0 holds after oncofl's preprocessing, its spatial shape from the
# preprocessing parameters (breast_wdbc: 30 features, no spatial shape)
NETWORK_INPUTS: dict[str, tuple[str, str, Any]] = {
    "prostate_seg": (
        "MR", "T2w, RAS, resampled and percentile-scaled by oncofl's preprocessing",
        lambda p: [int(n) for n in p["volume_size"]],
    ),
    "breast_mammo_cls": (
        "MG", "presentation values in [0, 1], canonical side, breast-cropped, square-padded and resized",
        lambda p: [int(p["image_size"])] * 2,
    ),
    "lung_nodule_cls": (
        "CT", "HU through the job's window, isotropic, the patch around the nodule centre",
        lambda p: [int(p["patch_size"])] * 3,
    ),
    "breast_wdbc": ("features", "log1p of the 30 WDBC nucleus features", lambda p: []),
}  # fmt: skip
WDBC_FEATURES = 30


def example_shape(task: str, params: dict[str, Any], network: dict[str, Any]) -> list[int]:
    """The network input's shape for one case, without the batch axis (``[C, *spatial]``; breast_wdbc ``[30]``)."""
    spatial = NETWORK_INPUTS[task][2](params)
    return [int(network.get("in_channels", 1)), *spatial] if spatial else [WDBC_FEATURES]


def network_data_format(spec: Any, params: dict[str, Any], network: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``network_data_format``: the preprocessed input, the logits out, and what oncofl makes of them
    (``post_processed_outputs``: the label map on the source grid, or the probability of malignancy)."""
    modality, channel, shape_of = NETWORK_INPUTS[spec.name]
    shape = example_shape(spec.name, params, network)
    image = {
        "type": "image" if shape_of(params) else "tabular",
        "format": "magnitude",
        "modality": modality,
        "num_channels": shape[0],
        "spatial_shape": shape[1:],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": spec.name == "lung_nodule_cls",
        "channel_def": {"0": channel},
    }
    classes = len(spec.segments) + 1 if spec.segments else 2
    names = ["background", *(s.label for s in spec.segments)] if spec.segments else ["benign or normal", "malignant"]
    pred = {
        "type": "image" if spec.segments else "probabilities",
        "format": "segmentation" if spec.segments else "classification",
        "num_channels": classes,
        "spatial_shape": shape[1:] if spec.segments else [],
        "dtype": "float32",
        "value_range": [],  # logits: unbounded
        "is_patch_data": False,
        "channel_def": {str(i): f"{name} logit" for i, name in enumerate(names)},
    }
    if spec.segments:
        post = {**pred, "format": "labels", "num_channels": 1, "spatial_shape": ["*", "*", "*"], "dtype": "uint8"}
        post["value_range"], post["channel_def"] = [0, classes - 1], {"0": "label map on the source series' grid"}
        return {"inputs": {"image": image}, "outputs": {"pred": pred}, "post_processed_outputs": {"label": post}}
    post = {**pred, "num_channels": 1, "value_range": [0, 1], "channel_def": {"0": "probability of malignancy"}}
    return {"inputs": {"image": image}, "outputs": {"pred": pred}, "post_processed_outputs": {"probability": post}}


DESCRIPTIONS = {
    True: "inference runs oncofl's own preprocessing and its inverse, writing a DICOM-SEG and a NIfTI mask",
    False: "inference runs oncofl's own preprocessing, writing the probability of malignancy (CSV/JSON) and, for "
    "DICOM inputs, a DICOM Structured Report",
}


def bundle_metadata(
    spec: Any, params: dict[str, Any], network: dict[str, Any], provenance: dict[str, Any], torchscript: dict
) -> dict[str, Any]:
    """``configs/metadata.json``: the schema's keys, the preprocessing parameters, the provenance block."""
    text = TASK_TEXT.get(spec.name)
    classes = ["background", *(s.label for s in spec.segments)] if spec.segments else ["benign or normal", "malignant"]
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
        + DESCRIPTIONS[bool(spec.segments)],
        "authors": "the oncofl consortium that ran the job",
        "copyright": "the consortium's member institutions; see the consortium agreement",
        "data_source": "the participating sites' own data, which never left them (not part of this bundle)",
        "data_type": "csv" if spec.name == "breast_wdbc" else "dicom",
        "image_classes": text.input if text else "see network_data_format",
        "label_classes": ", ".join(f"{i} {name}" for i, name in enumerate(classes)),
        "pred_classes": text.output if text else f"{len(classes)} channels of logits",
        "eval_metrics": {k: v for k, v in scores.items() if v != NOT_RECORDED},
        "intended_use": INTENDED_USE,
        "references": [],
        "network_data_format": network_data_format(spec, params, network),
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
        "writers as `oncofl predict`).",
        "",
        "```",
        runner_command(),
        "```",
        "",
        "Overrides (any config id can be overridden as `--<id> value`):",
        "",
        "- `--input`: what `oncofl predict --input` takes for this task (docs/predict.md in oncofl): a DICOM series "
        "folder or file, a folder of studies, a NIfTI volume, a feature CSV, or a datalist (`.json`; lung nodules: "
        "entries with `center_mm`)",
        "- `--output_dir`: where the outputs go (default `<bundle_root>/eval`)",
        "- `--bundle_root`: this folder (default `.`: run from inside it)",
        "- `--device`: e.g. `\"$torch.device('cpu')\"` (default: the first GPU when there is one)",
        f"- `--network_def#<arg>`: the network's arguments (`{config['network_def']['_target_']}`); they must fit "
        f"`{MODEL_PT}`",
        "",
        "Outputs, as `oncofl predict` writes them: segmentation: `<output_dir>/<series>/seg.dcm` (a DICOM-SEG "
        "referencing the source series) and `mask.nii.gz` (the label map on the series' grid; NIfTI inputs: the mask "
        "only); classification: `<output_dir>/sr/case-<n>.dcm` (a DICOM SR with the probability of malignancy, DICOM "
        "inputs); always `predictions.csv` and `predictions.json` (one row per input, named by number only). An input "
        "that cannot be read is reported and the run fails (non-zero exit) after the others were written.",
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
