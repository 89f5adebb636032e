"""``oncofl predict``: every series under an input folder through a trained model, each to a DICOM-SEG + NIfTI mask."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dicom.series import SeriesVolume
from ..errors import ModelFileError, OncoFLError, SiteDataError
from ..preprocess import GridMap
from ..tasks import TASK_NAMES, get_task
from .job import read_job_settings
from .model import TrainedModel, load_model
from .outputs import write_mask, write_seg

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


def write_prediction(model: TrainedModel, prediction: Prediction, out_dir: str | Path) -> tuple[Path, Path]:
    """``out_dir/seg.dcm`` (DICOM-SEG referencing the source series) and ``out_dir/mask.nii.gz``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg = write_seg(
        prediction.label, prediction.volume, prediction.folder, model.spec, model.sha256, out_dir / SEG_NAME
    )
    return seg, write_mask(prediction.label, prediction.volume, out_dir / MASK_NAME)


def _holds_dicom(folder: Path) -> bool:
    """True when a file directly in ``folder`` is DICOM by its name (.dcm) or its preamble (``DICM`` at 128)."""
    for path in folder.iterdir():
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in (".dcm", ".dicom"):
            return True
        with open(path, "rb") as f:
            if f.read(132)[128:] == b"DICM":
                return True
    return False


def find_series(root: str | Path) -> list[Path]:
    """``root`` when it is a series folder (holds DICOM files), else every folder below it that holds DICOM files."""
    root = Path(root)
    if not root.is_dir():
        raise SiteDataError(
            "input folder does not exist", fix="give a series folder or a folder of series folders", path=str(root)
        )
    if _holds_dicom(root):
        return [root]
    return sorted(d for d in root.rglob("*") if d.is_dir() and _holds_dicom(d))


def describe(model: TrainedModel, prediction: Prediction) -> str:
    """Per segment: its label and its volume in ml on the source grid."""
    voxel_ml = float(np.prod(prediction.volume.spacing)) / 1000.0
    parts = [
        f"{segment.label} {np.count_nonzero(prediction.label == number) * voxel_ml:.1f} ml"
        for number, segment in enumerate(model.spec.segments, start=1)
    ]
    return ", ".join(parts)


def predict_folder(model: TrainedModel, root: str | Path, out: str | Path, *, log=print) -> dict[str, str]:
    """Every series under ``root`` -> ``out/<its path under root>/``; an unreadable series is logged with its reason
    and skipped. Returns {series: "" (written) or the reason it failed}."""
    root, out = Path(root), Path(out)
    results: dict[str, str] = {}
    for folder in find_series(root):
        name = folder.name if folder == root else folder.relative_to(root).as_posix()
        try:
            prediction = predict_series(model, folder)
            seg, mask = write_prediction(model, prediction, out / name)
        except OncoFLError as e:
            results[name] = e.local_message()
        except Exception as e:  # noqa: BLE001 - one series' unexpected failure must not stop the others
            results[name] = f"{type(e).__name__}: {e}"
        else:
            results[name] = ""
            log(f"ok      {name}: {describe(model, prediction)} -> {seg}, {mask.name}")
            continue
        log(f"FAILED  {name}: {results[name]}")
    return results


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
    network = {**(job.network if job else {}), **json.loads(args.network)}
    params = {**(job.params if job else {}), **json.loads(args.params)}
    return load_model(model, task, network=network, params=params)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every series was predicted, 1 when any failed (or none was found), 2 for an unusable model."""
    tasks = [name for name in TASK_NAMES if get_task(name).prepare_input is not None]
    parser = argparse.ArgumentParser(prog="oncofl predict", description=__doc__.strip())
    parser.add_argument("--task", choices=tasks, help="the task (default: the job's)")
    parser.add_argument("--model", help="FL_global_model.pt, a best model, or a site's local_model.pt (default: the "
                        "global model of the run given with --job)")  # fmt: skip
    parser.add_argument("--job", help="the job folder (jobs/<job>) or a finished run's server folder: its task, "
                        "network and preprocessing settings (and a run's global model)")  # fmt: skip
    parser.add_argument("--input", required=True, help="a DICOM series folder, or a folder of series folders")
    parser.add_argument("--out", required=True, help="output folder: <series>/seg.dcm and <series>/mask.nii.gz")
    parser.add_argument("--network", default="{}", help="network settings as JSON (default: the job's, or the task's)")
    parser.add_argument("--params", default="{}", help="preprocessing parameters as JSON (default: the job's/task's)")
    args = parser.parse_args(argv)
    try:
        model = model_from_args(args)
        results = predict_folder(model, args.input, args.out)
    except OncoFLError as e:
        print(e.local_message())
        return 2
    if not results:
        print(f"no DICOM series found under {args.input}")
        return 1
    failed = sum(1 for reason in results.values() if reason)
    print(f"{len(results) - failed} of {len(results)} series predicted; outputs in {args.out}")
    return 1 if failed else 0
