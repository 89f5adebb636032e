"""One entry point for any DICOM input, and a MONAI ``ImageReader`` so ``LoadImage`` yields MetaTensors.

``read_dicom(path)`` dispatches on what the input is: a folder = a single-frame series; a projection radiograph
(MG/DX/CR) = :func:`read_projection`; an enhanced multi-frame file = :func:`read_multiframe`; one slice with 3D
geometry = a one-slice volume. Anything else is refused with a :class:`DicomReadError` that says why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from ..errors import DicomReadError
from .mammo import PROJECTION_MODALITIES, ProjectionImage, read_projection
from .pixels import fail, read_header
from .series import SeriesVolume, read_multiframe, read_series, read_slices


def read_dicom(
    path: str | os.PathLike, *, series_uid: str | None = None, spacing_policy: str = "refuse", crop: bool = True
) -> SeriesVolume | ProjectionImage:
    path = Path(path)
    try:
        if path.is_dir():
            return read_series(path, series_uid=series_uid, spacing_policy=spacing_policy)
        ds = read_header(path)
        if str(ds.get("Modality", "")) in PROJECTION_MODALITIES:
            return read_projection(path, crop=crop)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            return read_multiframe(path, spacing_policy=spacing_policy)
        return read_slices([path], spacing_policy=spacing_policy)
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
