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
from .mosaic import is_mosaic, mosaic_geometry, unpack_mosaic
from .pixels import check_declared_size, decode, fail, image_types, read_header, require_image

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


# Annotation files an archive stores next to the slices (TCIA's LIDC-IDRI: the readers' XML in the CT series
# folder); any other non-DICOM file is still refused.
SIDECAR_SUFFIXES = frozenset({".xml"})


def list_series_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise fail(
            "image series folder does not exist",
            "check the 'image' entry of the datalist (paths are relative to data_root)",
            folder,
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in SIDECAR_SUFFIXES
    )
    if not files:
        raise fail("image series folder is empty", "re-export the series into this folder", folder)
    return files


# ImageType values of images that are not acquisition slices: a projection through the volume (MIP / MinIP),
# a localizer (scout). Read as a slice they give a silently wrong volume.
NON_ACQUISITION_TYPES = frozenset({"PROJECTION IMAGE", "LOCALIZER", "MIP", "MINIP", "MIN IP", "MAX IP", "MNIP"})
ORIENTATION_TOLERANCE = 1e-2  # unit length and perpendicularity of the two direction cosines
GEOMETRY_FIX = "the file's geometry is damaged or crafted: re-export the series from PACS"


def check_acquisition(ds: pydicom.Dataset, path: Path | str) -> None:
    """Refuse a derived projection (MIP), a localizer or another image that is not an acquired slice."""
    if image_types(ds) & NON_ACQUISITION_TYPES:
        raise fail(
            "image is a projection or localizer (ImageType), not an acquired slice",
            "point the datalist at the acquired series, not at MIP, projection or localizer images",
            path,
            detail=f"ImageType {list(ds.get('ImageType') or [])}",
        )


def checked_numbers(ds: pydicom.Dataset, tag: str, count: int, path: Path | str) -> np.ndarray:
    """``count`` finite floats from ``ds.<tag>``, or a refusal naming the attribute (the value stays local)."""
    try:
        values = np.asarray([float(v) for v in ds.get(tag)], dtype=np.float64)
    except (TypeError, ValueError):  # absent, not a list, or not numbers
        values = np.zeros(0)
    if values.shape != (count,) or not np.isfinite(values).all():
        raise fail(f"{tag} must hold {count} finite numbers", GEOMETRY_FIX, path, detail=f"{tag} {ds.get(tag)!r}"[:300])
    return values


def checked_orientation(ds: pydicom.Dataset, path: Path | str) -> np.ndarray:
    """ImageOrientationPatient: two finite, perpendicular unit vectors."""
    iop = checked_numbers(ds, "ImageOrientationPatient", 6, path)
    row, col = iop[:3], iop[3:]
    norms = np.abs(np.linalg.norm([row, col], axis=1) - 1.0)
    if norms.max() > ORIENTATION_TOLERANCE or abs(float(row @ col)) > ORIENTATION_TOLERANCE:
        raise fail("ImageOrientationPatient is not two perpendicular unit vectors", GEOMETRY_FIX, path, detail=f"{iop}")
    return iop


def checked_spacing(ds: pydicom.Dataset, path: Path | str) -> np.ndarray:
    """PixelSpacing (row, col) in mm: two finite positive numbers."""
    spacing = checked_numbers(ds, "PixelSpacing", 2, path)
    if (spacing <= 0).any():
        raise fail("PixelSpacing must be positive", GEOMETRY_FIX, path, detail=f"{spacing}")
    return spacing


def _geometry(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ImageOrientationPatient as 6 floats, PixelSpacing as (row, col) mm) of a single-frame slice, validated."""
    for tag in REQUIRED_TAGS:
        if tag not in ds:
            raise fail(
                f"slice lacks {tag}: the file is truncated, or not an image slice with 3D geometry",
                "re-export the complete series from PACS (not secondary captures or screenshots)",
                path,
            )
    checked_numbers(ds, "ImagePositionPatient", 3, path)
    return checked_orientation(ds, path), checked_spacing(ds, path)


def fallback_spacing(ds: pydicom.Dataset) -> float:
    """SpacingBetweenSlices, else SliceThickness, else 1 mm (only used for a one-slice volume); NaN if unreadable."""
    try:
        return float(ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0)
    except (TypeError, ValueError):
        return float("nan")


@dataclass(frozen=True)
class StackGeometry:
    """Where a stack of slices lies, from headers only: enough to report spacing and shape without decoding."""

    orientation: np.ndarray  # 6 direction cosines (row, column)
    pixel_spacing: np.ndarray  # (between rows, between columns) mm
    positions: np.ndarray  # [n, 3] ImagePositionPatient, LPS mm
    rows: int
    cols: int
    fallback: float = 1.0

    def spacing_and_shape(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Voxel spacing (x, y, z) with z measured along the slice normal, and the shape (x, y, z)."""
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        offsets = np.sort(self.positions @ normal)
        z = float(np.median(np.diff(offsets))) if len(offsets) > 1 else self.fallback
        spacing = (float(self.pixel_spacing[1]), float(self.pixel_spacing[0]), z)
        return spacing, (self.cols, self.rows, len(offsets))


def slice_geometry(headers: list[tuple[Path, pydicom.Dataset]]) -> StackGeometry:
    """Validated geometry of a single-frame series: one orientation, finite positions, positive spacing."""
    orientation, pixel_spacing = _geometry(headers[0][1], headers[0][0])
    for path, ds in headers:
        other, _ = _geometry(ds, path)
        check_acquisition(ds, path)
        if np.abs(other - orientation).max() > 1e-3:
            raise fail(
                "slice orientation differs from the rest of the series (mixed stacks or a localizer)",
                "re-export the single axial, sagittal or coronal stack",
                path,
            )
    first = headers[0][1]
    positions = np.array([checked_numbers(ds, "ImagePositionPatient", 3, p) for p, ds in headers])
    return StackGeometry(
        orientation, pixel_spacing, positions, int(first.Rows), int(first.Columns), fallback_spacing(first)
    )


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
    if len(offsets) == 1 and not (np.isfinite(spacing_z) and spacing_z > 0):
        raise fail("slice thickness must be a positive number", GEOMETRY_FIX, ordered_names[0])
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
    if not np.isfinite(affine_lps).all() or abs(np.linalg.det(affine_lps[:3, :3])) < 1e-6:
        raise fail("image geometry is degenerate (no volume can be placed)", GEOMETRY_FIX, ordered_names[0])
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


def _select_series(
    headers: list[tuple[Path, pydicom.Dataset]], series_uid: str | None, folder: Path
) -> list[tuple[Path, pydicom.Dataset]]:
    """The files of the requested series, or of the only series in the folder."""
    for path, ds in headers:
        if "SeriesInstanceUID" not in ds:
            raise fail(
                "slice lacks SeriesInstanceUID: the file is truncated, or not an image slice with 3D geometry",
                "re-export the complete series from PACS (not secondary captures or screenshots)",
                path,
            )
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
    return headers


def read_slices(
    files: list[Path], *, series_uid: str | None = None, spacing_policy: str = "refuse", where: Path | None = None
) -> SeriesVolume:
    """Decode single-frame slice files into one volume (see :func:`read_series`); a Siemens MOSAIC file is
    unpacked into its slices."""
    if spacing_policy not in SPACING_POLICIES:
        raise ValueError(f"spacing_policy must be one of {SPACING_POLICIES}")
    folder = where or files[0]
    headers = [(path, read_header(path, pixels=True)) for path in files]  # pixel bytes are decoded only below
    for path, ds in headers:
        require_image(ds, path)
    headers = _select_series(headers, series_uid, folder)
    if any(is_mosaic(ds) for _, ds in headers):
        return read_mosaic(headers, folder)
    geometry = slice_geometry(headers)
    check_declared_size(headers, folder)  # the whole series, before any decoding
    slices = []
    for path, header in headers:
        pixels = decode(header, path)
        if pixels.shape != (geometry.rows, geometry.cols):
            raise fail(
                "slice matrix size differs from the rest of the series",
                "re-export the series; all slices must share one matrix size",
                path,
                detail=f"{'x'.join(map(str, pixels.shape))} vs {geometry.rows}x{geometry.cols}",
            )
        slices.append(np.asarray(apply_modality_lut(pixels, header), dtype=np.float32))
    first = headers[0][1]
    array, affine = assemble(
        slices,
        geometry.positions,
        geometry.orientation,
        geometry.pixel_spacing,
        spacing_policy=spacing_policy,
        names=[str(p) for p, _ in headers],
        fallback_spacing=geometry.fallback,
    )
    return SeriesVolume(array, affine, str(getattr(first, "Modality", "")), str(getattr(first, "Manufacturer", "")))


def read_mosaic(headers: list[tuple[Path, pydicom.Dataset]], folder: Path) -> SeriesVolume:
    """One Siemens MOSAIC file unpacked into its slices (see :mod:`oncofl.dicom.mosaic`)."""
    if len(headers) != 1:
        raise fail(
            "series holds several Siemens MOSAIC volumes (e.g. one per diffusion direction) or mixes MOSAIC files "
            "with slices",
            "list one MOSAIC file (one volume) per case in the datalist",
            folder,
        )
    path, ds = headers[0]
    check_acquisition(ds, path)
    array, affine_lps = unpack_mosaic(ds, path)
    return SeriesVolume(array, LPS_TO_RAS @ affine_lps, str(ds.get("Modality", "")), str(ds.get("Manufacturer", "")))


def _functional(ds: pydicom.Dataset, index: int, sequence: str) -> pydicom.Dataset | None:
    """Item of a functional group macro for frame ``index``: per-frame first, then shared."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if not groups:
            continue
        group = groups[index] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
        if sequence in group and len(group[sequence].value):
            return group[sequence][0]
    return None


def multiframe_geometry(ds: pydicom.Dataset, path: Path) -> StackGeometry:
    """Validated geometry of an enhanced multi-frame object from its functional groups (headers only)."""
    check_acquisition(ds, path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    orient = _functional(ds, 0, "PlaneOrientationSequence")
    measures = _functional(ds, 0, "PixelMeasuresSequence")
    if orient is None or measures is None or "PixelSpacing" not in measures:
        raise fail(
            "multi-frame file lacks plane orientation / pixel spacing functional groups: no 3D geometry",
            "export an enhanced CT or MR object, or the series as single-frame slices",
            path,
        )
    positions = []
    for i in range(n):
        plane = _functional(ds, i, "PlanePositionSequence")
        if plane is None or "ImagePositionPatient" not in plane:
            raise fail("a frame has no ImagePositionPatient", "re-export the enhanced object", path, f"frame {i + 1}")
        positions.append(checked_numbers(plane, "ImagePositionPatient", 3, path))
    return StackGeometry(
        checked_orientation(orient, path),
        checked_spacing(measures, path),
        np.array(positions),
        int(ds.Rows),
        int(ds.Columns),
        fallback_spacing(measures),
    )


def read_multiframe(path: str | os.PathLike, *, spacing_policy: str = "refuse") -> SeriesVolume:
    """Enhanced CT/MR (one file, many frames) with per-frame positions and rescale from the functional groups."""
    path = Path(path)
    ds = read_header(path, pixels=True)
    geometry = multiframe_geometry(ds, path)
    frames = decode(ds, path)
    n = len(geometry.positions)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] != n:
        raise fail("frames are not single-channel images", "export grayscale CT or MR only", path)
    slices = []
    for i in range(n):
        transform = _functional(ds, i, "PixelValueTransformationSequence")
        source = transform if transform else ds
        slope, intercept = float(source.get("RescaleSlope", 1.0)), float(source.get("RescaleIntercept", 0.0))
        slices.append(frames[i].astype(np.float32) * slope + intercept)
    array, affine = assemble(
        slices,
        geometry.positions,
        geometry.orientation,
        geometry.pixel_spacing,
        spacing_policy=spacing_policy,
        names=[f"{path} (frame {i + 1})" for i in range(n)],
        fallback_spacing=geometry.fallback,
    )
    return SeriesVolume(array, affine, str(ds.get("Modality", "")), str(ds.get("Manufacturer", "")))


def stack_facts(files: list[Path]) -> tuple[pydicom.Dataset, tuple[float, ...], tuple[int, ...]]:
    """Headers only, for the site data check: (first header, voxel spacing x/y/z along the slice normal, shape),
    after the same validation the readers apply before decoding (geometry, MOSAIC, projections, declared size)."""
    where = files[0].parent if len(files) > 1 else files[0]
    headers = _select_series([(f, read_header(f)) for f in files], None, where)
    first = headers[0][1]
    if any(is_mosaic(ds) for _, ds in headers):
        if len(headers) != 1:
            read_mosaic(headers, files[0].parent)  # raises: several mosaic volumes
        check_acquisition(first, headers[0][0])
        affine, shape = mosaic_geometry(first, headers[0][0])
        return first, tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)), shape
    multiframe = int(first.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in first
    if len(headers) == 1 and multiframe:
        geometry = multiframe_geometry(first, headers[0][0])
    else:
        geometry = slice_geometry(headers)
    check_declared_size(headers, headers[0][0])
    spacing, shape = geometry.spacing_and_shape()
    return first, spacing, shape


__all__ = [
    "DicomReadError",
    "SeriesVolume",
    "StackGeometry",
    "assemble",
    "list_series_files",
    "read_multiframe",
    "read_series",
    "read_slices",
    "stack_facts",
]
