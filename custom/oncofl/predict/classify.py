"""Classification tasks: a case's probability of malignancy, and for DICOM inputs a Structured Report holding it."""

from __future__ import annotations

from pathlib import Path

import pydicom

from ..dicom.pixels import read_header
from ..dicom.series import list_series_files
from .inputs import PredictInput
from .model import TrainedModel
from .outputs import write_sr
from .tables import CaseResult

SR_FOLDER = "sr"


def probability(model: TrainedModel, item: PredictInput) -> float:
    """The malignant class's softmax probability, from the task's own preprocessing (``prepare_input``) of the
    input (with the datalist entry's other keys, e.g. ``center_mm``)."""
    _, image, _ = model.spec.prepare_input(item.path, {**model.params, **item.extra})
    return model.probability(image)


def _sources(item: PredictInput) -> list[pydicom.Dataset]:
    """The DICOM headers the SR references: the image itself, or every image of the nodule's series."""
    files = list_series_files(item.path) if item.path.is_dir() else [item.path]
    return [read_header(path) for path in files]


def classify(model: TrainedModel, item: PredictInput, out: Path) -> CaseResult:
    """The input's probability of malignancy; for a DICOM input also ``out/sr/case-<number>.dcm`` (the SR)."""
    p = probability(model, item)
    values: dict = {"probability_malignant": round(p, 6), "predicted_malignant": int(p >= 0.5)}
    point = item.extra.get("center_mm")
    if point is not None:
        values["center_mm"] = [float(v) for v in point]
    if not item.is_dicom:
        return CaseResult(item, values)
    sources = _sources(item)
    (out / SR_FOLDER).mkdir(parents=True, exist_ok=True)
    sr = write_sr(model.spec, model.sha256, p, sources, out / SR_FOLDER / f"case-{item.number:04d}.dcm", point_mm=point)
    uid = str(sources[0].SeriesInstanceUID if item.path.is_dir() else sources[0].SOPInstanceUID)
    return CaseResult(item, values, files=(sr,), uid=uid)
