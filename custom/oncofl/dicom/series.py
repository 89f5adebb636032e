"""CT/MR volumes from DICOM: a folder of single-frame slices, or one enhanced multi-frame file.

Layout of the returned volume: ``[column (x), row (y), slice (z)]`` like nibabel / ITK read DICOM, and an affine that
maps those voxel indices to RAS millimetres (DICOM is LPS: x and y are negated), so the volume and a NIfTI label
drawn on the same grid line up voxel for voxel. Slices are ordered along the slice normal by ImagePositionPatient and
the slice spacing comes from those positions, never from SliceThickness.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from ..errors import DicomReadError
from .pixels import decode, fail, read_header

# Relative tolerance on slice spacing: beyond it the series has a gap or a non-uniform spacing.
SPACING_TOLERANCE = 0.05
SPACING_POLICIES = ("refuse", "resample")
REQUIRED_TAGS = (
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SeriesVolume:
    """A decoded volume: float32 voxels in modality units (HU for CT), RAS affine, and non-identifying facts."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    manufacturer: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def list_series_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise fail(
            "image series folder does not exist",
            "check the 'image' entry of the datalist (paths are relative to data_root)",
            folder,
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise fail("image series folder is empty", "re-export the series into this folder", folder)
    return files


def _geometry(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ImageOrientationPatient as 6 floats, PixelSpacing as (row, col) mm) of a single-frame slice."""
    for tag in REQUIRED_TAGS:
        if tag not in ds:
            raise fail(
                f"slice lacks {tag}: the file is truncated, or not an image slice with 3D geometry",
                "re-export the complete series from PACS (not secondary captures or screenshots)",
                path,
            )
    return np.asarray(ds.ImageOrientationPatient, dtype=np.float64), np.asarray(ds.PixelSpacing, dtype=np.float64)


def assemble(
    slices: list[np.ndarray],
    positions: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: np.ndarray,
    *,
    spacing_policy: str = "refuse",
    names: list[str] | None = None,
    fallback_spacing: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack 2D slices ([row, col], any order) into ``[x, y, z]`` along the normal; return (array, RAS affine)."""
    names = names or [f"frame {i + 1}" for i in range(len(slices))]
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    offsets = positions @ normal
    order = np.argsort(offsets, kind="stable")
    offsets, positions = offsets[order], positions[order]
    stack = np.stack([slices[i] for i in order], axis=-1).transpose(1, 0, 2)  # [row, col, z] -> [x, y, z]
    ordered_names = [names[i] for i in order]

    spacing_z = fallback_spacing
    if len(offsets) > 1:
        steps = np.diff(offsets)
        if np.any(steps < 1e-3):
            raise fail(
                "two slices share one position (duplicate slice)",
                "remove the duplicate file or re-export the series",
                ordered_names[int(np.argmin(steps)) + 1],
            )
        spacing_z = float(np.median(steps))
        worst = int(np.argmax(np.abs(steps - spacing_z)))
        if abs(steps[worst] - spacing_z) > SPACING_TOLERANCE * spacing_z:
            if spacing_policy != "resample":
                raise fail(
                    "slice spacing is not uniform: a slice is missing or the series mixes stacks",
                    "re-export the complete series from PACS, or set the series policy to 'resample'",
                    ordered_names[worst + 1],
                    detail=f"{steps[worst]:.2f} mm where the series has {spacing_z:.2f} mm",
                )
            stack, offsets = _resample_uniform(stack, offsets, spacing_z)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * pixel_spacing[1]  # moving along a row = next column
    affine_lps[:3, 1] = col_dir * pixel_spacing[0]
    affine_lps[:3, 2] = normal * spacing_z
    affine_lps[:3, 3] = positions[0]
    return np.ascontiguousarray(stack, dtype=np.float32), LPS_TO_RAS @ affine_lps


def _resample_uniform(stack: np.ndarray, offsets: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along z onto a uniform grid from the first to the last slice."""
    n = int(round((offsets[-1] - offsets[0]) / spacing)) + 1
    target = offsets[0] + spacing * np.arange(n)
    upper = np.clip(np.searchsorted(offsets, target, side="right"), 1, len(offsets) - 1)
    lower = upper - 1
    w = ((target - offsets[lower]) / (offsets[upper] - offsets[lower])).astype(np.float32)
    out = stack[:, :, lower] * (1 - w) + stack[:, :, upper] * w
    return out, target


def read_series(
    folder: str | os.PathLike, *, series_uid: str | None = None, spacing_policy: str = "refuse"
) -> SeriesVolume:
    """Decode the series in ``folder`` (the only one, or ``series_uid``); refuse gaps, duplicates, mixed series."""
    return read_slices(
        list_series_files(folder), series_uid=series_uid, spacing_policy=spacing_policy, where=Path(folder)
    )


def read_slices(
    files: list[Path], *, series_uid: str | None = None, spacing_policy: str = "refuse", where: Path | None = None
) -> SeriesVolume:
    """Decode single-frame slice files into one volume (see :func:`read_series`)."""
    if spacing_policy not in SPACING_POLICIES:
        raise ValueError(f"spacing_policy must be one of {SPACING_POLICIES}")
    folder = where or files[0]
    headers = [(path, read_header(path, pixels=True)) for path in files]  # pixel bytes are decoded only below
    for path, ds in headers:
        _geometry(ds, path)
    groups = Counter(str(ds.SeriesInstanceUID) for _, ds in headers)
    if series_uid is not None:
        headers = [(p, ds) for p, ds in headers if str(ds.SeriesInstanceUID) == series_uid]
        if not headers:
            raise fail("the requested series is not in this folder", "check the series UID in the datalist", folder)
    elif len(groups) > 1:
        raise fail(
            "folder holds more than one series",
            "put each series (SeriesInstanceUID) in its own folder, or name the series in the datalist",
            folder,
            detail=f"{len(groups)} series",
        )
    orientation, pixel_spacing = _geometry(headers[0][1], headers[0][0])
    first = headers[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    slices, positions = [], []
    for path, header in headers:
        other_orientation, _ = _geometry(header, path)
        if np.abs(other_orientation - orientation).max() > 1e-3:
            raise fail(
                "slice orientation differs from the rest of the series (mixed stacks or a localizer)",
                "re-export the single axial, sagittal or coronal stack",
                path,
            )
        pixels = decode(header, path)
        if pixels.shape != (rows, cols):
            raise fail(
                "slice's matrix size differs from the series'",
                "re-export the series; all slices must share one matrix size",
                path,
                detail=f"slice {'x'.join(map(str, pixels.shape))}, series {rows}x{cols}",
            )
        slices.append(np.asarray(apply_modality_lut(pixels, header), dtype=np.float32))
        positions.append(np.asarray(header.ImagePositionPatient, dtype=np.float64))
    fallback = float(getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None) or 1.0)
    array, affine = assemble(
        slices,
        np.array(positions),
        orientation,
        pixel_spacing,
        spacing_policy=spacing_policy,
        names=[str(p) for p, _ in headers],
        fallback_spacing=fallback,
    )
    return SeriesVolume(array, affine, str(getattr(first, "Modality", "")), str(getattr(first, "Manufacturer", "")))


def _functional(ds: pydicom.Dataset, index: int, sequence: str) -> pydicom.Dataset | None:
    """Item of a functional group macro for frame ``index``: per-frame first, then shared."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if not groups:
            continue
        group = groups[index] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
        if sequence in group and len(group[sequence].value):
            return group[sequence][0]
    return None


def read_multiframe(path: str | os.PathLike, *, spacing_policy: str = "refuse") -> SeriesVolume:
    """Enhanced CT/MR (one file, many frames) with per-frame positions and rescale from the functional groups."""
    path = Path(path)
    ds = read_header(path, pixels=True)
    frames = decode(ds, path)
    n = int(ds.get("NumberOfFrames", 1))
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] != n:
        raise fail("frames are not single-channel images", "export grayscale CT or MR only", path)
    orient = _functional(ds, 0, "PlaneOrientationSequence")
    measures = _functional(ds, 0, "PixelMeasuresSequence")
    if orient is None or measures is None or "PixelSpacing" not in measures:
        raise fail(
            "multi-frame file lacks plane orientation / pixel spacing functional groups: no 3D geometry",
            "export an enhanced CT or MR object, or the series as single-frame slices",
            path,
        )
    positions, slices = [], []
    for i in range(n):
        plane = _functional(ds, i, "PlanePositionSequence")
        if plane is None or "ImagePositionPatient" not in plane:
            raise fail(f"frame {i + 1} has no ImagePositionPatient", "re-export the enhanced object", path)
        positions.append(np.asarray(plane.ImagePositionPatient, dtype=np.float64))
        transform = _functional(ds, i, "PixelValueTransformationSequence")
        slope = float(getattr(transform, "RescaleSlope", 1.0)) if transform else float(ds.get("RescaleSlope", 1.0))
        intercept = (
            float(getattr(transform, "RescaleIntercept", 0.0)) if transform else float(ds.get("RescaleIntercept", 0.0))
        )
        slices.append(frames[i].astype(np.float32) * slope + intercept)
    array, affine = assemble(
        slices,
        np.array(positions),
        np.asarray(orient.ImageOrientationPatient, dtype=np.float64),
        np.asarray(measures.PixelSpacing, dtype=np.float64),
        spacing_policy=spacing_policy,
        fallback_spacing=float(measures.get("SpacingBetweenSlices", None) or measures.get("SliceThickness", 1.0)),
    )
    return SeriesVolume(array, affine, str(ds.get("Modality", "")), str(ds.get("Manufacturer", "")))


__all__ = [
    "DicomReadError",
    "SeriesVolume",
    "assemble",
    "list_series_files",
    "read_multiframe",
    "read_series",
    "read_slices",
]
