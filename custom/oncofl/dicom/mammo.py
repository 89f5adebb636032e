"""Projection radiographs (MG, also DX/CR): presentation intensities, laterality/view, one canonical side, crop.

Returned images are ``[row, col]`` float32 in [0, 1] where brighter = denser (MONOCHROME1 is inverted), flipped so the
chest wall is at column 0 and the nipple points to increasing columns, and (optionally) cropped to the breast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from .pixels import decode, fail, read_header

PROJECTION_MODALITIES = ("MG", "DX", "CR", "IO", "PX")


@dataclass(frozen=True)
class ProjectionImage:
    """A decoded radiograph and the non-identifying facts needed to train on it."""

    array: np.ndarray  # [row, col] float32 in [0, 1], denser = brighter
    spacing: tuple[float, float]  # mm between rows, between columns (detector plane)
    modality: str
    manufacturer: str
    laterality: str  # "L", "R" or "" if unknown
    view: str  # e.g. "CC", "MLO", or ""
    flipped: bool  # mirrored left-right to reach the canonical side
    crop: tuple[int, int, int, int]  # (row0, row1, col0, col1) of the kept region, after any flip


def _laterality(ds: pydicom.Dataset) -> str:
    for value in (ds.get("ImageLaterality"), ds.get("Laterality")):
        if value in ("L", "R"):
            return str(value)
    for group in ds.get("SharedFunctionalGroupsSequence", []) or []:
        for anatomy in group.get("FrameAnatomySequence", []) or []:
            if anatomy.get("FrameLaterality") in ("L", "R"):
                return str(anatomy.FrameLaterality)
    return ""


def _needs_flip(ds: pydicom.Dataset, image: np.ndarray, laterality: str) -> bool:
    """Mirror so the nipple points to increasing columns (row direction 'A'): from PatientOrientation, else from
    laterality by the usual display convention, else from where the tissue is."""
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) == 2 and orientation[0]:
        first = str(orientation[0])[0]
        if first in ("A", "P"):
            return first == "P"
    if laterality:
        return laterality == "R"
    half = image.shape[1] // 2
    return float(image[:, half:].sum()) > float(image[:, :half].sum())


def breast_box(image: np.ndarray, margin: int = 8) -> tuple[int, int, int, int]:
    """Bounding box of the tissue: pixels above a threshold halfway between background and the tissue median."""
    background = float(np.percentile(image, 5))
    tissue = image[image > background + 0.05 * (float(image.max()) - background)]
    if tissue.size == 0:
        return 0, image.shape[0], 0, image.shape[1]
    mask = image > (background + float(np.median(tissue))) / 2
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        max(0, int(rows[0]) - margin),
        min(image.shape[0], int(rows[-1]) + margin + 1),
        max(0, int(cols[0]) - margin),
        min(image.shape[1], int(cols[-1]) + margin + 1),
    )


def projection_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """Detector pixel spacing (between rows, between columns) in mm; uncalibrated (absent, non-finite, zero or
    negative) = pixel units (1, 1)."""
    try:
        values = [float(v) for v in (ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing") or ())]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return 1.0, 1.0
    return values[0], values[1]


def read_projection(path: str | os.PathLike, *, crop: bool = True) -> ProjectionImage:
    path = Path(path)
    ds = read_header(path, pixels=True)
    pixels = decode(ds, path)
    if int(ds.get("SamplesPerPixel", 1)) != 1 or pixels.ndim != 2:
        raise fail(
            "radiograph is not a single grayscale frame",
            "export the 'for presentation' grayscale image (one frame)",
            path,
        )
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    image = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        image = 1.0 - image
    laterality = _laterality(ds)
    flipped = _needs_flip(ds, image, laterality)
    if flipped:
        image = image[:, ::-1]
    box = breast_box(image) if crop else (0, image.shape[0], 0, image.shape[1])
    image = image[box[0] : box[1], box[2] : box[3]]
    spacing = projection_spacing(ds)
    return ProjectionImage(
        array=np.ascontiguousarray(image, dtype=np.float32),
        spacing=(float(spacing[0]), float(spacing[1])),
        modality=str(ds.get("Modality", "")),
        manufacturer=str(ds.get("Manufacturer", "")),
        laterality=laterality,
        view=str(ds.get("ViewPosition", "") or ""),
        flipped=flipped,
        crop=box,
    )
