"""``oncofl export-bundle``: a trained global model and its job as a MONAI bundle that MONAI's own runner executes.

    oncofl export-bundle --job <workspace>/server/simulate_job --out prostate_bundle
    python -m monai.bundle run --config_file prostate_bundle/configs/inference.json \\
        --meta_file prostate_bundle/configs/metadata.json --bundle_root prostate_bundle --input SERIES --output_dir OUT

The bundle holds ``configs/inference.json`` (the network built from ``network_def``, the task's network class with
the job's arguments, a MONAI inferer, and :class:`BundlePredictor`: oncofl's own preprocessing, inverse mapping and
DICOM-SEG writer, the code path of ``oncofl predict``), ``configs/metadata.json`` (MONAI's metadata schema, the
preprocessing parameters, the run's federated-learning provenance), ``models/model.pt`` (a plain state dict),
``models/model.ts`` (TorchScript, where scripting works) and ``docs/README.md``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError, OncoFLError, SiteDataError
from ..model_card import parse_holdout
from ..progress import say
from ..tasks import TaskSpec, get_task
from .bundle_metadata import (
    CONFIG,
    LOGGING,
    LOGGING_CONF,
    META,
    MODEL_PT,
    MODEL_TS,
    README,
    bundle_metadata,
    example_shape,
    fl_provenance,
    readme,
    run_record,
    runner_command,
)
from .inputs import find_inputs
from .job import read_job_settings
from .model import TrainedModel, file_sha256, load_model, with_weights
from .run import predict_inputs
from .tables import CaseResult


class InfererNetwork(torch.nn.Module):
    """The bundle's network run through the bundle's MONAI inferer (``inferer(inputs, network)``), so a user who
    swaps the config's ``inferer`` (say, for a ``SlidingWindowInferer``) changes what prediction runs.

    Args:
        network: the network ``network_def`` built, holding the bundle's weights.
        inferer: a MONAI inferer (``SimpleInferer`` in the exported config: the whole preprocessed volume at once).
    """

    def __init__(self, network: torch.nn.Module, inferer: Any) -> None:
        super().__init__()
        self.network = network
        self.inferer = inferer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.inferer(inputs, self.network)


def list_inputs(source: str | Path, task: str) -> list[str]:
    """The inputs a run predicts, by ``oncofl predict``'s rule (:func:`oncofl.predict.inputs.find_inputs`); the
    config's ``dataset``."""
    if not str(source):
        raise SiteDataError(
            "no input given",
            fix="pass --input with what oncofl predict takes: a series folder or file, a folder of studies, a datalist",
        )
    return [str(item.path) for item in find_inputs(get_task(task), source)]


class BundlePredictor:
    """What the bundle's ``run`` calls: the config's network with the bundle's weights, fed and mapped back by
    oncofl's own code path (:func:`oncofl.predict.predict_series`, ``write_prediction``), as ``oncofl predict``.

    Args:
        network: the network the config's ``network_def`` built (the task's network class).
        checkpoint: the bundle's ``models/model.pt`` (a plain state dict, read with ``weights_only``).
        task: the oncofl task (e.g. ``prostate_seg``): its preprocessing, inverse mapping and DICOM-SEG segments.
        params: the task's preprocessing parameters as the job trained with them.
        inferer: the MONAI inferer the network runs through.
        device: where the network runs.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoint: str,
        task: str,
        params: dict[str, Any],
        inferer: Any,
        device: torch.device | str,
    ) -> None:
        model = with_weights(network, checkpoint, task, params=dict(params), device=torch.device(device))
        self.model: TrainedModel = replace(model, network=InfererNetwork(model.network, inferer).eval())

    def run(self, source: str | Path, output_dir: str | Path, *, log=say) -> list[CaseResult]:
        """Predict every input of ``source`` into ``output_dir`` as ``oncofl predict`` does
        (:func:`oncofl.predict.predict_inputs`). Raises when an input failed (after the others were written) or none
        was found, so the runner exits non-zero."""
        results = predict_inputs(self.model, find_inputs(self.model.spec, source), output_dir, log=log)
        if not results or any(result.error for result in results):
            raise SiteDataError(
                "no input was found or some inputs could not be predicted (see the lines above)",
                fix="pass --input with what oncofl predict takes: a series folder or file, a folder, a datalist",
            )
        return results


def network_arguments(spec: TaskSpec, network: dict[str, Any]) -> dict[str, Any]:
    """Every argument of the task's network: its defaults with the job's settings over them (JSON types)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(spec.build_network).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    merged = {**defaults, **network}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def inference_config(spec: TaskSpec, network: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``configs/inference.json``: MONAI's inference properties (``bundle_root``, ``device``, ``dataset_dir``,
    ``dataset``, ``network_def``, ``inferer``, ``evaluator``) over oncofl's components, and ``run``."""
    target = f"{spec.build_network.__module__}.{spec.build_network.__qualname__}"
    return {
        "imports": ["$import torch", "$from oncofl.predict.bundle import list_inputs"],
        "bundle_root": ".",
        "input": "",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "task": spec.name,
        "preprocessing_params": params,
        "network_def": {"_target_": target, **network},
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "inferer": {"_target_": "SimpleInferer"},
        "dataset_dir": "@input",
        "dataset": "$list_inputs(@dataset_dir, @task)",
        "predictor": {
            "_target_": "oncofl.predict.bundle.BundlePredictor",
            "network": "@network",
            "checkpoint": "@checkpoint",
            "task": "@task",
            "params": "@preprocessing_params",
            "inferer": "@inferer",
            "device": "@device",
        },
        "evaluator": "@predictor",
        "run": ["$@evaluator.run(@dataset_dir, @output_dir)"],
    }


def export_torchscript(network: torch.nn.Module, path: Path, example: torch.Tensor, extra: dict[str, str]) -> dict:
    """``models/model.ts`` by MONAI's ``convert_to_torchscript`` (``torch.jit.script``; the scripted model's output
    on ``example`` checked against the network's); where scripting fails, no file and the reason."""
    from monai.networks.utils import convert_to_torchscript

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.9+ marks torch.jit.script deprecated; it still works
            convert_to_torchscript(
                network, str(path), extra_files=extra, verify=True, inputs=[example], device=torch.device("cpu")
            )
    except Exception as e:  # noqa: BLE001 - any scripting failure means: no TorchScript file, and why
        path.unlink(missing_ok=True)
        return {"file": None, "skipped": f"torch.jit.script failed ({type(e).__name__}: {str(e)[:300]})"}
    method = "torch.jit.script of network_def with models/model.pt (MONAI convert_to_torchscript, output verified)"
    return {"file": MODEL_TS, "method": method, "sha256": file_sha256(path)}


def _empty_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OncoFLError(
            "the bundle folder exists and is not empty", fix="pass --out with a new or empty folder", path=str(out)
        )
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def _source_model(job_dir: Path, model: str | Path | None, global_model: Path | None) -> Path:
    source = Path(model) if model else global_model
    if source is None:
        raise ModelFileError(
            "the job folder holds no trained model (a job definition, not a finished run)",
            fix="pass --model with the run's global model (FL_global_model.pt), or --job with the run's server folder",
            path=str(job_dir),
        )
    return source


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def export_bundle(
    job_dir: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    holdout: dict[str, float] | None = None,
    he_context: str | Path | None = None,
) -> Path:
    """Write the MONAI bundle of ``model`` (default: the global model of the finished run in ``job_dir``) trained by
    the job in ``job_dir`` (a job folder or a run's server folder) to the new folder ``out``; returns ``out``. An HE
    job's encrypted model is decrypted with a hospital's client context (``he_context``): the bundle then holds the
    model in clear."""
    job_dir = Path(job_dir)
    settings = read_job_settings(job_dir)
    source = _source_model(job_dir, model, settings.global_model)
    trained = load_model(
        source, settings.task, network=settings.network, params=settings.params, device=torch.device("cpu"),
        he_context=he_context,
    )  # fmt: skip
    out = _empty_folder(Path(out))
    torch.save({k: v.detach().cpu() for k, v in trained.network.state_dict().items()}, out / MODEL_PT)
    network = network_arguments(trained.spec, settings.network)
    config = inference_config(trained.spec, network, trained.params)
    _write_json(out / CONFIG, config)
    (out / LOGGING).write_text(LOGGING_CONF)
    run, recorded = run_record(job_dir)
    identity = {"file": source.name, "sha256": trained.sha256, "bundle_sha256": file_sha256(out / MODEL_PT)}
    provenance = fl_provenance(run, recorded, identity, holdout)
    meta = bundle_metadata(trained.spec, trained.params, network, provenance, {})
    example = torch.rand(1, *example_shape(trained.spec.name, trained.params, network))
    extra = {"metadata.json": json.dumps(meta), "inference.json": json.dumps(config)}
    meta["torchscript"] = export_torchscript(trained.network, out / MODEL_TS, example, extra)
    _write_json(out / META, meta)
    (out / README).write_text(readme(meta, config))
    return out


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the bundle was written, 2 when the job, the model or the output folder cannot be used."""
    parser = argparse.ArgumentParser(prog="oncofl export-bundle", description=__doc__.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--job", required=True, help="a finished run's server folder (settings, global model, "
                        "run records) or a job folder (then --model)")  # fmt: skip
    parser.add_argument("--model", help="the model file (default: the run's FL_global_model.pt)")
    parser.add_argument("--he-context", help="an HE job's model is encrypted: decrypt it with a hospital's kit's "
                        "startup/client_context.tenseal (the bundle then holds the model in clear)")  # fmt: skip
    parser.add_argument("--out", required=True, help="the bundle folder to write (new or empty)")
    parser.add_argument("--holdout", action="append", default=[], help="a held-out score, NAME=VALUE (repeatable)")
    args = parser.parse_args(argv)
    try:
        out = export_bundle(
            args.job, args.out, model=args.model, holdout=parse_holdout(args.holdout), he_context=args.he_context
        )
    except OncoFLError as e:
        print(e.local_message())
        return 2
    except ValueError as e:  # a --holdout that is not NAME=NUMBER
        parser.error(str(e))
    print(f"MONAI bundle written to {out}; run it with:\n  {runner_command(str(out))}")
    return 0
