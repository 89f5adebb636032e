"""``oncofl predict``: a trained model on new studies.

Segmentation (prostate_seg): each series (DICOM folder or NIfTI file) -> ``<out>/<its path>/seg.dcm`` (DICOM-SEG
referencing the series; DICOM inputs) and ``mask.nii.gz`` on the series' own grid. Classification (breast_mammo_cls,
lung_nodule_cls, breast_wdbc): each image, nodule or case -> its probability of malignancy, and for DICOM inputs a
Structured Report ``<out>/sr/case-<number>.dcm`` referencing the image or series. Every run also writes
``<out>/predictions.csv`` and ``.json``: one row per input, named by its number only (``--identify`` adds its path and
UID). An input that cannot be read is reported with its reason and skipped; the others go on."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dicom.pixels import read_header
from ..dicom.series import SeriesVolume, list_series_files
from ..errors import ModelFileError, OncoFLError
from ..preprocess import GridMap
from ..progress import progress, say
from ..tasks import TASK_NAMES, get_task
from ..volume import is_nifti
from .classify import classify
from .inputs import PredictInput, find_inputs
from .job import read_job_settings
from .model import TrainedModel, load_model
from .outputs import write_mask, write_seg
from .tables import CaseResult, write_tables

SEG_NAME, MASK_NAME = "seg.dcm", "mask.nii.gz"


@dataclass(frozen=True)
class Prediction:
    """One series' prediction.

    Args:
        folder: the series folder.
        volume: the series as read.
        label: the predicted label map on the series' grid (uint8, 0 = background, n = the task's n-th segment).
        network_label: the same on the network's grid (before the inverse mapping).
        grid: the mapping between the two grids.
    """

    folder: Path
    volume: SeriesVolume
    label: np.ndarray
    network_label: np.ndarray
    grid: GridMap


def predict_series(model: TrainedModel, folder: str | Path) -> Prediction:
    """Read a series and preprocess it with the task's own code path, run the network, map the label map back onto
    the series' grid (nearest neighbour: the crop, the resampling and the reorientation undone)."""
    folder = Path(folder)
    volume, image, grid = model.spec.prepare_input(folder, model.params)
    network_label = model.predict_labels(image)
    return Prediction(folder, volume, grid.inverse(network_label), network_label, grid)


def write_prediction(model: TrainedModel, prediction: Prediction, out_dir: str | Path) -> tuple[Path | None, Path]:
    """``out_dir/seg.dcm`` (DICOM-SEG referencing the source series; None for a NIfTI input) and
    ``out_dir/mask.nii.gz``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg = None
    if not is_nifti(prediction.folder):
        seg = write_seg(
            prediction.label, prediction.volume, prediction.folder, model.spec, model.sha256, out_dir / SEG_NAME
        )
    return seg, write_mask(prediction.label, prediction.volume, out_dir / MASK_NAME)


def segment_volumes(model: TrainedModel, prediction: Prediction) -> dict[str, float]:
    """Per segment: its volume in ml on the source grid (``<label>_ml``)."""
    voxel_ml = float(np.prod(prediction.volume.spacing)) / 1000.0
    return {
        f"{segment.label.lower()}_ml": round(np.count_nonzero(prediction.label == number) * voxel_ml, 3)
        for number, segment in enumerate(model.spec.segments, start=1)
    }


def output_folder(out: Path, item: PredictInput) -> Path:
    """Where a segmentation input's files go: ``out/<its path under the input>`` (a NIfTI file without its
    suffix); ``out/case-<number>`` for a datalist path that would leave ``out``."""
    name = item.name[: -len(".nii.gz")] if item.name.lower().endswith(".nii.gz") else item.name
    name = name[: -len(".nii")] if name.lower().endswith(".nii") else name
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        return out / f"case-{item.number:04d}"
    return out.joinpath(*parts)


def segment(model: TrainedModel, item: PredictInput, out: Path, folder: Path | None = None) -> CaseResult:
    prediction = predict_series(model, item.path)
    files = write_prediction(model, prediction, folder or output_folder(out, item))
    uid = "" if is_nifti(item.path) else str(read_header(list_series_files(item.path)[0]).SeriesInstanceUID)
    return CaseResult(item, segment_volumes(model, prediction), files=tuple(f for f in files if f), uid=uid)


def predict_one(model: TrainedModel, item: PredictInput, out: Path, folder: Path | None = None) -> CaseResult:
    """One input through the model (segmentation into ``folder``, default :func:`output_folder`; or
    classification); a failure is returned with its local reason."""
    try:
        return segment(model, item, out, folder) if model.spec.segments else classify(model, item, out)
    except OncoFLError as e:
        return CaseResult(item, error=e.local_message())
    except Exception as e:  # noqa: BLE001 - one input's unexpected failure must not stop the others
        return CaseResult(item, error=f"{type(e).__name__}: {e}")


def predict_inputs(
    model: TrainedModel, inputs: list[PredictInput], out: str | Path, *, identify: bool = False, log=say
) -> list[CaseResult]:
    """Every input through the model, with a progress bar over them; each outcome logged (the local console: it
    names files); then the research tables (:mod:`oncofl.predict.tables`)."""
    out = Path(out)
    results, used = [], set()
    for item in progress(inputs, desc="predict", unit="study"):
        folder = output_folder(out, item)  # two inputs that would share a folder: the second by its number
        folder = out / f"case-{item.number:04d}" if folder in used else folder
        used.add(folder)
        result = predict_one(model, item, out, folder)
        results.append(result)
        if result.error:
            log(f"FAILED  {item.name}: {result.error}")
        else:
            shown = ", ".join(f"{k} {v}" for k, v in result.values.items())
            log(f"ok      {item.name}: {shown} -> {', '.join(f.name for f in result.files) or 'tables'}")
    if results:
        write_tables(results, out, identify=identify)
    return results


def predict_folder(model: TrainedModel, root: str | Path, out: str | Path, *, log=say) -> dict[str, str]:
    """Every input under ``root`` (:func:`oncofl.predict.inputs.find_inputs`) -> ``out``; an unreadable one is logged
    with its reason and skipped. Returns {input name: "" (written) or the reason it failed}."""
    results = predict_inputs(model, find_inputs(model.spec, root), out, log=log)
    return {result.input.name: result.error for result in results}


def json_object(text: str, option: str) -> dict:
    """A command-line option's JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ModelFileError(
            "an option's value is not a JSON object", fix='give --network and --params as JSON objects, e.g. {"a": 1}',
            detail=option,
        )  # fmt: skip
    return value


def model_from_args(args: argparse.Namespace) -> TrainedModel:
    """The model the command line names: ``--job`` gives the task, network and preprocessing of the job (and, for a
    finished run's server folder, its global model); ``--task``/``--model``/``--network``/``--params`` give or
    override them."""
    job = read_job_settings(args.job) if args.job else None
    task = args.task or (job.task if job else None)
    model = args.model or (job.global_model if job else None)
    if job and args.task and args.task != job.task:
        raise ModelFileError(
            f"--task {args.task} differs from the job's task {job.task}", fix="drop --task, or pass that task's job"
        )
    if not task or not model:
        raise ModelFileError(
            "no task or no model file",
            fix="give --job (a job or a finished run's server folder), or --task and --model",
        )
    network = {**(job.network if job else {}), **json_object(args.network, "--network")}
    params = {**(job.params if job else {}), **json_object(args.params, "--params")}
    if task not in TASK_NAMES:
        raise ModelFileError("the task is not one of oncofl's tasks", fix="give --task or --job of an oncofl task")
    return load_model(model, task, network=network, params=params, he_context=args.he_context)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every input was predicted, 1 when any failed (or none was found), 2 for an unusable model or
    input."""
    tasks = [name for name in TASK_NAMES if get_task(name).prepare_input is not None]
    parser = argparse.ArgumentParser(prog="oncofl predict", description=__doc__.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--task", choices=tasks, help="the task (default: the job's)")
    parser.add_argument("--model", help="FL_global_model.pt, a best model, or a site's local_model.pt (default: the "
                        "global model of the run given with --job)")  # fmt: skip
    parser.add_argument("--job", help="the job folder (jobs/<job>) or a finished run's server folder: its task, "
                        "network and preprocessing settings (and a run's global model)")  # fmt: skip
    parser.add_argument("--input", required=True, help="a DICOM series folder or file, a NIfTI or CSV file, a folder "
                        "of studies, or a datalist (.json; lung nodules: entries with center_mm)")  # fmt: skip
    parser.add_argument("--data-root", help="where a datalist's relative paths start (default: its folder), e.g. the "
                        "download root for the holdout datalist of `oncofl datasets`")  # fmt: skip
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--identify", action="store_true", help="name each input's path and UID in predictions.csv/"
                        ".json (default: its number only; paths often carry patient identifiers)")  # fmt: skip
    parser.add_argument("--he-context", help="an HE job's model is encrypted: decrypt it with this hospital's kit's "
                        "startup/client_context.tenseal (the consortium's secret key; it stays here)")  # fmt: skip
    parser.add_argument("--network", default="{}", help="network settings as JSON (default: the job's, or the task's)")
    parser.add_argument("--params", default="{}", help="preprocessing parameters as JSON (default: the job's/task's)")
    args = parser.parse_args(argv)
    try:
        model = model_from_args(args)
        inputs = find_inputs(model.spec, args.input, args.data_root)
    except OncoFLError as e:
        print(e.local_message())
        return 2
    if not inputs:
        print(f"no input for task {model.spec.name} found under {args.input}")
        return 1
    results = predict_inputs(model, inputs, args.out, identify=args.identify)
    failed = sum(1 for result in results if result.error)
    print(f"{len(results) - failed} of {len(results)} inputs predicted; outputs in {args.out}")
    return 1 if failed else 0
