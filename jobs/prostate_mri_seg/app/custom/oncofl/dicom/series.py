"""Read a CT/MR DICOM series (one file per slice) into a volume with its RAS affine.

Layout of the returned volume: ``[column (x), row (y), slice (z)]`` like nibabel / ITK read DICOM, and an affine that
maps those voxel indices to RAS millimetres (DICOM is LPS: x and y are negated), so the volume and a NIfTI label
drawn on the same grid line up voxel for voxel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from ..errors import DicomReadError

# Relative tolerance on slice spacing: beyond it the series has a gap or a non-uniform spacing.
SPACING_TOLERANCE = 0.05
REQUIRED_TAGS = (
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)


@dataclass(frozen=True)
class SeriesVolume:
    """A decoded series: float32 voxels in modality units (HU for CT), RAS affine, and non-identifying facts."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    manufacturer: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def _fail(problem: str, fix: str, path: Path | str, detail: str = "") -> DicomReadError:
    return DicomReadError(problem, fix=fix, path=str(path), detail=detail)


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise _fail(
            "file is not DICOM (no DICM preamble)",
            "remove non-DICOM files from the series folder, or re-export the series from PACS",
            path,
        ) from None
    except Exception as e:  # truncated or garbled headers raise many types inside pydicom
        raise _fail(
            f"DICOM header cannot be parsed ({type(e).__name__})",
            "the file is damaged: re-export the series from PACS",
            path,
            detail=str(e),
        ) from e


def list_series_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(
            "image series folder does not exist",
            "check the 'image' entry of the datalist (paths are relative to data_root)",
            folder,
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise _fail("image series folder is empty", "re-export the series into this folder", folder)
    return files


def read_series(folder: str | os.PathLike) -> SeriesVolume:
    """Decode every slice of the one series in ``folder``; refuse gaps, duplicates and mixed series clearly."""
    files = list_series_files(folder)
    headers = [(path, _read_header(path)) for path in files]

    for path, ds in headers:
        for tag in REQUIRED_TAGS:
            if tag not in ds:
                raise _fail(
                    f"slice lacks {tag}: the file is truncated, or not an image slice with 3D geometry",
                    "re-export the complete series from PACS (not secondary captures or screenshots)",
                    path,
                )
    series_uids = {str(ds.SeriesInstanceUID) for _, ds in headers}
    if len(series_uids) > 1:
        raise _fail(
            f"folder holds {len(series_uids)} different series",
            "put each series (SeriesInstanceUID) in its own folder and point the datalist at one",
            folder,
        )

    orientation = np.asarray(headers[0][1].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = {path: np.asarray(ds.ImagePositionPatient, dtype=np.float64) for path, ds in headers}
    headers.sort(key=lambda item: float(positions[item[0]] @ normal))
    offsets = np.array([positions[path] @ normal for path, _ in headers])

    if len(headers) > 1:
        steps = np.diff(offsets)
        if np.any(steps < 1e-3):
            dup = headers[int(np.argmin(steps)) + 1][0]
            raise _fail(
                "two slices share one position (duplicate slice)",
                "remove the duplicate file or re-export the series",
                dup,
            )
        spacing_z = float(np.median(steps))
        worst = int(np.argmax(np.abs(steps - spacing_z)))
        if abs(steps[worst] - spacing_z) > SPACING_TOLERANCE * spacing_z:
            raise _fail(
                f"slice spacing is not uniform ({steps[worst]:.2f} mm where the series has {spacing_z:.2f} mm):"
                " a slice is missing or the series mixes stacks",
                "re-export the complete series from PACS",
                headers[worst + 1][0],
            )
    else:
        spacing_z = float(getattr(headers[0][1], "SpacingBetweenSlices", getattr(headers[0][1], "SliceThickness", 1)))

    first = headers[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    slices = []
    for path, _ in headers:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as e:
            raise _fail(
                f"pixel data cannot be decoded ({type(e).__name__})",
                "the file is truncated or uses a compression without an installed decoder: re-export it "
                "uncompressed, or install pylibjpeg",
                path,
                detail=str(e),
            ) from e
        if pixels.shape != (rows, cols):
            raise _fail(
                f"slice is {pixels.shape[0]}x{pixels.shape[1]} but the series is {rows}x{cols}",
                "re-export the series; all slices must share one matrix size",
                path,
            )
        slices.append(np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32).T)  # [row, col] -> [x, y]

    array = np.stack(slices, axis=-1)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # DICOM: (between rows, between columns)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing  # moving along a row = next column
    affine_lps[:3, 1] = col_dir * row_spacing
    affine_lps[:3, 2] = normal * spacing_z
    affine_lps[:3, 3] = positions[headers[0][0]]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return SeriesVolume(
        array=array,
        affine=lps_to_ras @ affine_lps,
        modality=str(getattr(first, "Modality", "")),
        manufacturer=str(getattr(first, "Manufacturer", "")),
    )
