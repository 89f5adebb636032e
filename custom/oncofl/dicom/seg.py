"""DICOM-SEG masks placed on their source image's voxel grid (by geometry, not by frame order).

The file is read through highdicom, which knows each segmentation type's semantics, behind our own error messages:

* BINARY: a voxel belongs to a segment when its bit is set;
* FRACTIONAL (probability or occupancy): a voxel belongs to a segment when its fraction is at least
  :data:`FRACTION_THRESHOLD` (0.5: more likely than not / at least half occupied), not whenever it is above 0;
* LABELMAP: each stored value is a segment number (0 = none).

Frame positions are checked against the image before any volume is built, so a SEG whose frames lie far apart cannot
make the reader allocate a huge volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from .pixels import check_declared_size, decode_limit_bytes, fail, read_header, require_image
from .series import LPS_TO_RAS, SeriesVolume, checked_numbers

POSITION_TOLERANCE_MM = 0.5
FRACTION_THRESHOLD = 0.5
GRID_FIX = "export the segmentation on the image series' own grid (same slices, same in-plane origin)"


def read_seg(path: str | os.PathLike, reference: SeriesVolume) -> np.ndarray:
    """Label map ``[x, y, z]`` (uint8, value = segment number, 0 = none) aligned with ``reference``.

    Each frame is placed by its ImagePositionPatient; a SEG drawn on another grid (other orientation, in-plane
    origin or spacing) is refused rather than silently misplaced.
    """
    path = Path(path)
    ds = read_header(path, pixels=True)
    if str(ds.get("Modality", "")) != "SEG" or "PerFrameFunctionalGroupsSequence" not in ds:
        raise fail(
            "label file is not a DICOM Segmentation (Modality SEG)", "export the mask as DICOM-SEG or NIfTI", path
        )
    require_image(ds, path)
    check_declared_size([(path, ds)], path)
    shape = reference.array.shape
    if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (shape[1], shape[0]):
        raise fail(
            "segmentation frames do not have the image's matrix size",
            "export the segmentation on the image series' own grid",
            path,
            detail=f"SEG {ds.get('Rows')}x{ds.get('Columns')}, image {shape[1]}x{shape[0]}",
        )
    _check_frames_on_grid(ds, reference, path)
    seg = _segmentation(ds, path)
    volume = _segment_volume(seg, reference, path)
    return _place(volume, reference, path)


def _check_frames_on_grid(ds: pydicom.Dataset, reference: SeriesVolume, path: Path) -> None:
    """Every frame has a finite position on a slice of ``reference`` and the image's orientation (headers only)."""
    lps = LPS_TO_RAS @ reference.affine  # voxel -> LPS
    to_voxel = np.linalg.inv(lps)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    expected = np.concatenate([lps[:3, 0], lps[:3, 1]]) / np.repeat(np.linalg.norm(lps[:3, :2], axis=0), 3)
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        plane = group.get("PlanePositionSequence") or (shared.get("PlanePositionSequence") if shared else None)
        if not plane:
            raise fail(f"segmentation frame {i + 1} lacks its position", "re-export the SEG", path)
        orient = group.get("PlaneOrientationSequence") or (shared.get("PlaneOrientationSequence") if shared else None)
        if orient and np.abs(checked_numbers(orient[0], "ImageOrientationPatient", 6, path) - expected).max() > 1e-3:
            raise fail(
                "segmentation is drawn in another orientation than its image",
                "export the segmentation on the image series' own grid",
                path,
            )
        ijk = to_voxel @ np.append(checked_numbers(plane[0], "ImagePositionPatient", 3, path), 1.0)
        k = int(round(ijk[2]))
        offset_mm = np.abs(ijk[:3] - [0, 0, k]) * np.linalg.norm(lps[:3, :3], axis=0)
        if offset_mm.max() > POSITION_TOLERANCE_MM or not 0 <= k < reference.array.shape[2]:
            raise fail(f"segmentation frame {i + 1} does not lie on a slice of its image", GRID_FIX, path)


def _segmentation(ds: pydicom.Dataset, path: Path) -> hd.seg.Segmentation:
    """highdicom's view of the SEG, or our refusal (its messages stay in the local detail)."""
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as e:  # highdicom raises several types for non-conformant SEGs
        raise fail(
            f"DICOM Segmentation cannot be parsed ({type(e).__name__})",
            "re-export the segmentation from the annotation tool (DICOM-SEG, or NIfTI)",
            path,
            detail=str(e),
        ) from e


def _segment_volume(seg: hd.seg.Segmentation, reference: SeriesVolume, path: Path) -> hd.Volume:
    """A highdicom Volume of segment numbers ``[slice, row, col]`` with the type's own semantics."""
    kind = seg.segmentation_type
    numbers = list(seg.segment_numbers)
    if np.prod(reference.array.shape, dtype=np.int64) * max(1, len(numbers)) * 4 > decode_limit_bytes():
        raise fail(
            "segmentation declares more segments than this site's image size limit allows",
            "export only the segments needed, or raise 'max_decoded_image_mb' in the site config",
            path,
            detail=f"{len(numbers)} segments",
        )
    try:
        if kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
            fractions = seg.get_volume(segment_numbers=numbers, rescale_fractional=True, dtype=np.float32)
            labels = np.zeros(fractions.array.shape[:3], dtype=np.uint8)
            for j, number in enumerate(numbers):  # later segments win where they overlap, as for BINARY
                labels[fractions.array[..., j] >= FRACTION_THRESHOLD] = number
            return fractions.with_array(labels)
        return seg.get_volume(combine_segments=True, skip_overlap_checks=True, dtype=np.uint8)
    except Exception as e:
        raise fail(
            f"DICOM Segmentation frames cannot be read as a volume ({type(e).__name__})",
            "re-export the segmentation from the annotation tool (DICOM-SEG, or NIfTI)",
            path,
            detail=str(e),
        ) from e


def _place(volume: hd.Volume, reference: SeriesVolume, path: Path) -> np.ndarray:
    """Copy each slice of ``volume`` (LPS affine over ``[slice, row, col]``) onto its slice of ``reference``."""
    lps = LPS_TO_RAS @ reference.affine
    to_ref = np.linalg.inv(lps) @ np.asarray(volume.affine, dtype=np.float64)  # seg (s, r, c) -> ref (x, y, z)
    if np.abs(to_ref[:3, 1] - [0, 1, 0]).max() > 1e-3 or np.abs(to_ref[:3, 2] - [1, 0, 0]).max() > 1e-3:
        raise fail("segmentation is drawn on another in-plane grid than its image", GRID_FIX, path)
    shape = reference.array.shape
    label = np.zeros(shape, dtype=np.uint8)
    array = np.asarray(volume.array)
    for s in range(array.shape[0]):
        ijk = (to_ref @ [s, 0, 0, 1])[:3]
        k = int(round(ijk[2]))
        offset_mm = np.abs(ijk - [0, 0, k]) * np.linalg.norm(lps[:3, :3], axis=0)
        if offset_mm.max() > POSITION_TOLERANCE_MM or not 0 <= k < shape[2]:
            raise fail("a segmentation slice does not lie on a slice of its image", GRID_FIX, path)
        values = array[s].T
        label[:, :, k] = np.where(values > 0, values, label[:, :, k])
    return label
