"""One entry point for any DICOM input, and a MONAI ``ImageReader`` so ``LoadImage`` yields MetaTensors.

``read_dicom(path)`` dispatches on what the input is: a folder = a single-frame series; a projection radiograph
(MG/DX/CR) = :func:`read_projection`; an enhanced multi-frame file = :func:`read_multiframe`; a Siemens MOSAIC = its
unpacked slices; one slice with 3D geometry = a one-slice volume. Anything else (non-finite or degenerate geometry, a
MIP/projection or localizer, an image declaring more pixels than the site's limit) is refused with a
:class:`DicomReadError` that says why. ``inspect_dicom(path)`` applies the same checks from headers only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from ..errors import DicomReadError
from .mammo import PROJECTION_MODALITIES, ProjectionImage, projection_spacing, read_projection
from .pixels import check_declared_size, fail, read_header
from .series import SeriesVolume, list_series_files, read_multiframe, read_series, read_slices, stack_facts

T = TypeVar("T")


def read_dicom(
    path: str | os.PathLike, *, series_uid: str | None = None, spacing_policy: str = "refuse", crop: bool = True
) -> SeriesVolume | ProjectionImage:
    """Decode any supported DICOM input (see the module docstring); refuse anything else with the reason."""
    path = Path(path)

    def read() -> SeriesVolume | ProjectionImage:
        if path.is_dir():
            return read_series(path, series_uid=series_uid, spacing_policy=spacing_policy)
        ds = read_header(path)
        if str(ds.get("Modality", "")) in PROJECTION_MODALITIES:
            return read_projection(path, crop=crop)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            return read_multiframe(path, spacing_policy=spacing_policy)
        return read_slices([path], spacing_policy=spacing_policy)

    return _guarded(read, path)


def inspect_dicom(path: str | os.PathLike) -> tuple[str, str, tuple[float, ...], tuple[int, ...]]:
    """Headers only: (modality, manufacturer, spacing, shape) after every check that needs no decoding (geometry,
    MOSAIC, projections, declared size). Volumes: spacing (x, y, z) with z along the slice normal, shape (x, y, z);
    radiographs: (column, row) spacing and shape."""
    path = Path(path)

    def inspect() -> tuple[str, str, tuple[float, ...], tuple[int, ...]]:
        files = list_series_files(path) if path.is_dir() else [path]
        first = read_header(files[0])
        if len(files) == 1 and str(first.get("Modality", "")) in PROJECTION_MODALITIES:
            check_declared_size([(path, first)], path)
            rows_mm, cols_mm = projection_spacing(first)
            spacing: tuple[float, ...] = (cols_mm, rows_mm)
            shape: tuple[int, ...] = (int(first.get("Columns", 0)), int(first.get("Rows", 0)))
        else:
            first, spacing, shape = stack_facts(files)
        return str(first.get("Modality", "")), str(first.get("Manufacturer", "")), spacing, shape

    return _guarded(inspect, path)


def _guarded(action: Callable[[], T], path: Path) -> T:
    """Run a read; non-conformant attribute values (pydicom's own exceptions) become a :class:`DicomReadError`."""
    try:
        return action()
    except DicomReadError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:  # non-conformant attribute values
        raise fail(
            f"DICOM attributes hold invalid values ({type(e).__name__})",
            "the file does not follow the DICOM standard: re-export it, or ask the vendor",
            path,
            detail=str(e),
        ) from e


def projection_affine(image: ProjectionImage) -> np.ndarray:
    """2D images get a diagonal affine from the detector pixel spacing (no patient frame in projection imaging)."""
    return np.diag([image.spacing[0], image.spacing[1], 1.0, 1.0])


class OncoDicomReader(ImageReader):
    """MONAI reader over :func:`read_dicom`: ``LoadImage(reader=OncoDicomReader())("series_folder/")``.

    Volumes come out ``[x, y, z]`` with their RAS affine (space RAS), radiographs ``[row, col]``.

    Args:
        spacing_policy: volumes whose slice spacing is not uniform (a missing slice): ``"refuse"`` (default: a
            :class:`DicomReadError`) or ``"resample"`` (interpolated onto a uniform grid).
        crop: projection radiographs only: crop to the tissue's bounding box (default) or keep the whole image.
    """

    def __init__(self, *, spacing_policy: str = "refuse", crop: bool = True) -> None:
        super().__init__()
        self.spacing_policy = spacing_policy
        self.crop = crop

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike | str) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or str(n).lower().endswith((".dcm", ".dicom")) for n in names)

    def read(self, data: Sequence[os.PathLike] | os.PathLike | str, **kwargs: Any) -> list:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [read_dicom(n, spacing_policy=self.spacing_policy, crop=self.crop) for n in names]

    def get_data(self, img: list) -> tuple[np.ndarray, dict]:
        first = img[0]
        affine = first.affine if isinstance(first, SeriesVolume) else projection_affine(first)
        arrays = [i.array for i in img]
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(arrays) == 1 else 0,
            "modality": first.modality,
        }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta
