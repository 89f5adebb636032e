"""One reader entry point for 3D images: a DICOM series folder, a DICOM file (enhanced multi-frame, MOSAIC, one
slice), or a NIfTI file (``.nii``, ``.nii.gz``), each as a :class:`~oncofl.dicom.series.SeriesVolume`.

The volume convention is the DICOM readers' (see :mod:`oncofl.dicom.series`): voxels ``[x, y, z]`` (x = column,
y = row, z = slice) and an affine mapping voxel indices to RAS millimetres, as nibabel / ITK give them. A NIfTI
file's affine (its sform, else its qform) already maps voxel ``(i, j, k)`` to RAS+ millimetres, so a NIfTI volume
keeps its array and affine as stored: a DICOM series and the same volume saved with nibabel give the same
``SeriesVolume``. A NIfTI file with no world geometry (qform and sform codes 0), more than three dimensions, no voxels,
non-finite values or a degenerate affine is refused with a :class:`NiftiReadError` that says why.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .dicom.mammo import ProjectionImage
from .dicom.pixels import FILE_SIZE_MARGIN, decode_limit_bytes
from .dicom.reader import inspect_dicom, read_dicom
from .dicom.series import SeriesVolume
from .errors import DicomReadError, NiftiReadError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NIFTI_GEOMETRY_FIX = "the file's geometry is damaged or missing: re-export the image with its scanner geometry"
NIFTI_REEXPORT_FIX = "the file is truncated or damaged: re-export it as .nii or .nii.gz"


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_volume(
    path: str | os.PathLike, *, series_uid: str | None = None, spacing_policy: str = "refuse"
) -> SeriesVolume:
    """The entry point of every volume task: a DICOM series folder or file, or a NIfTI file, as a ``SeriesVolume``
    (voxels ``[x, y, z]``, affine to RAS mm). ``series_uid`` and ``spacing_policy`` apply to DICOM series only; a 2D
    radiograph (MG/DX/CR) is refused."""
    if is_nifti(path):
        return read_nifti(path)
    image = read_dicom(path, series_uid=series_uid, spacing_policy=spacing_policy)
    if not isinstance(image, SeriesVolume):
        raise DicomReadError(
            "image is a 2D radiograph but this task needs a 3D volume",
            fix="point the datalist at a CT or MR series folder, an enhanced multi-frame file or a NIfTI volume",
            path=str(path),
        )
    return image


def read_image(path: str | os.PathLike) -> SeriesVolume | ProjectionImage:
    """Any supported image (NIfTI, or any DICOM input :func:`~oncofl.dicom.reader.read_dicom` reads), decoded."""
    return read_nifti(path) if is_nifti(path) else read_dicom(path)


def inspect_image(path: str | os.PathLike) -> tuple[str, str, tuple[float, ...], tuple[int, ...]]:
    """Headers only, every check that needs no pixel data: (modality, manufacturer, spacing, shape), as
    :func:`~oncofl.dicom.reader.inspect_dicom`; a NIfTI file has no modality or manufacturer (empty texts)."""
    if not is_nifti(path):
        return inspect_dicom(path)
    img = _load(Path(path))
    shape, affine = _geometry(img, Path(path))
    return "", "", tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)), shape


def read_nifti(path: str | os.PathLike) -> SeriesVolume:
    """A 3D NIfTI image: float32 voxels (the header's scl_slope / scl_inter applied) and its RAS affine."""
    path = Path(path)
    img = _load(path)
    shape, affine = _geometry(img, path)
    if img.get_data_dtype().kind not in "biuf":
        raise NiftiReadError(
            "NIfTI image is not single-channel numbers (RGB or complex voxels)",
            fix="save the image as one grayscale channel (integer or float voxels)",
            path=str(path),
            detail=f"data type {img.get_data_dtype()}",
        )
    try:
        array = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as e:  # truncated or garbled data raise many types inside nibabel / gzip
        raise NiftiReadError(
            f"NIfTI image data cannot be read ({type(e).__name__})",
            fix=NIFTI_REEXPORT_FIX,
            path=str(path),
            detail=str(e),
        ) from e
    if not np.isfinite(array).all():
        raise NiftiReadError(
            "NIfTI image holds NaN or infinite voxel values",
            fix="re-export the image; intensities must be finite numbers (check the scaling slope and intercept)",
            path=str(path),
        )
    return SeriesVolume(np.ascontiguousarray(array), affine, "", "")


def _load(path: Path) -> nib.Nifti1Image:
    """The NIfTI header (pixel data not read), or a refusal: missing, too large, not NIfTI."""
    try:
        if path.stat().st_size > decode_limit_bytes() + FILE_SIZE_MARGIN:
            raise NiftiReadError(
                "file is larger than this site's image size limit (max_decoded_image_mb)",
                fix="if the image is genuine, raise 'max_decoded_image_mb' in the site config; otherwise re-export it",
                path=str(path),
            )
        img = nib.load(path)
    except FileNotFoundError:
        raise NiftiReadError(
            "image file does not exist",
            fix="check the 'image' entry of the datalist (paths are relative to data_root)",
            path=str(path),
        ) from None
    except NiftiReadError:
        raise
    except Exception as e:  # not NIfTI, a damaged header: nibabel raises many types
        raise NiftiReadError(
            f"image file cannot be read as NIfTI ({type(e).__name__})",
            fix=NIFTI_REEXPORT_FIX,
            path=str(path),
            detail=str(e),
        ) from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiReadError("image file is not a NIfTI image", fix=NIFTI_REEXPORT_FIX, path=str(path))
    return img


def _geometry(img: nib.Nifti1Image, path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """The 3D shape (a trailing axis of 1 dropped) and RAS affine, checked: 3D, not empty, within the site's size
    limit, with finite, non-degenerate world geometry."""
    shape = tuple(int(n) for n in img.header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise NiftiReadError(
            "NIfTI image is not 3D (a 4D series, several channels, or a 2D image)",
            fix="give one 3D volume per case: split a 4D file into 3D volumes and list the one the task needs",
            path=str(path),
            detail=f"shape {img.header.get_data_shape()}",
        )
    if min(shape) < 1:
        raise NiftiReadError("NIfTI image has no voxels along an axis", fix=NIFTI_REEXPORT_FIX, path=str(path))
    declared, limit = math.prod(shape) * 4, decode_limit_bytes()  # decoded as float32
    if declared > limit:
        raise NiftiReadError(
            "image declares more pixel data than this site's limit (max_decoded_image_mb)",
            fix="if the image is genuine, raise 'max_decoded_image_mb' in the site config; otherwise the file is "
            "damaged or crafted: re-export it",
            path=str(path),
            detail=f"declared {declared / 2**20:.1f} MiB, limit {limit / 2**20:.1f} MiB",
        )
    if int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
        raise NiftiReadError(
            "NIfTI image has no world geometry (qform and sform codes are 0)",
            fix=NIFTI_GEOMETRY_FIX,
            path=str(path),
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise NiftiReadError(
            "image geometry is degenerate (no volume can be placed)",
            fix=NIFTI_GEOMETRY_FIX,
            path=str(path),
            detail=f"affine {affine.tolist()}",
        )
    return shape, affine


__all__ = ["NIFTI_SUFFIXES", "inspect_image", "is_nifti", "read_image", "read_nifti", "read_volume"]
