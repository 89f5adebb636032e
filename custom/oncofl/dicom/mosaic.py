"""Siemens MOSAIC files: one DICOM image that tiles a whole volume (EPI / diffusion series of prostate mpMRI).

Read as a plain slice, a mosaic is a silently wrong volume (one 2D image of tiles). nibabel's DICOM wrappers know the
Siemens private (CSA) header that says how many slices the tiles hold and where the first one lies; we unpack with
them, behind our own error messages.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from .pixels import check_declared_size, decode, fail, image_types

with warnings.catch_warnings():  # nibabel warns on import that its DICOM readers are experimental
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomwrappers

MOSAIC_FIX = "export the series without MOSAIC packing (or as enhanced MR), or re-export it from the scanner"


def is_mosaic(ds: pydicom.Dataset) -> bool:
    """Whether ImageType marks the image as a Siemens MOSAIC."""
    return "MOSAIC" in image_types(ds)


def _wrapper(ds: pydicom.Dataset, path: Path | str) -> Any:
    """nibabel's MosaicWrapper for ``ds``, or a refusal when the CSA header that unpacks it is absent or broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper = dicomwrappers.wrapper_from_data(ds)
    except Exception as e:  # a crafted CSA header can fail in many ways inside nibabel
        raise fail(
            f"Siemens MOSAIC header cannot be parsed ({type(e).__name__})", MOSAIC_FIX, path, detail=str(e)
        ) from e
    if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
        raise fail("MOSAIC image lacks the Siemens header (CSA) that says how to unpack its slices", MOSAIC_FIX, path)
    return wrapper


def mosaic_geometry(ds: pydicom.Dataset, path: Path | str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(LPS affine of the unpacked ``[x, y, z]`` volume, its shape) from headers only; degenerate geometry refused."""
    wrapper = _wrapper(ds, path)
    try:
        affine = np.asarray(wrapper.affine, dtype=np.float64)[:, [1, 0, 2, 3]]  # nibabel: (row, col) -> ours (x, y)
        rows, cols, slices = (int(v) for v in wrapper.image_shape)
    except Exception as e:
        raise fail(f"MOSAIC geometry cannot be computed ({type(e).__name__})", MOSAIC_FIX, path, detail=str(e)) from e
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6 or min(rows, cols, slices) < 1:
        raise fail(
            "MOSAIC geometry is degenerate (no volume can be placed)",
            "the file's geometry is damaged or crafted: re-export the series from PACS",
            path,
        )
    return affine, (cols, rows, slices)


def unpack_mosaic(ds: pydicom.Dataset, path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic's slices as a float32 ``[x, y, z]`` volume in modality units, and its LPS affine."""
    affine, _ = mosaic_geometry(ds, path)
    check_declared_size([(Path(path), ds)], path)
    decode(ds, path)  # our own errors for a missing decoder / damaged data; pydicom keeps the decoded array
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(_wrapper(ds, path).get_data(), dtype=np.float32)  # [row, col, slice], rescaled
    except Exception as e:
        raise fail(
            "MOSAIC pixel data does not hold the slices its Siemens header declares", MOSAIC_FIX, path, detail=str(e)
        ) from e
    return np.ascontiguousarray(data.transpose(1, 0, 2)), affine
