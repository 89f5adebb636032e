"""DICOM-SEG masks placed on their source image's voxel grid (by geometry, not by frame order)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .pixels import decode, fail, read_header
from .series import LPS_TO_RAS, SeriesVolume

POSITION_TOLERANCE_MM = 0.5


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
    frames = decode(ds, path)
    frames = frames[None] if frames.ndim == 2 else frames
    shape = reference.array.shape
    if frames.shape[1:] != (shape[1], shape[0]):
        raise fail(
            "segmentation frames are not the size of the image's slices",
            "export the segmentation on the image series' own grid",
            path,
            detail=f"frames {frames.shape[1]}x{frames.shape[2]}, image {shape[1]}x{shape[0]}",
        )
    lps = LPS_TO_RAS @ reference.affine  # voxel -> LPS
    to_voxel = np.linalg.inv(lps)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    label = np.zeros(shape, dtype=np.uint8)
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        plane = group.get("PlanePositionSequence") or (shared.get("PlanePositionSequence") if shared else None)
        ident = group.get("SegmentIdentificationSequence") or (
            shared.get("SegmentIdentificationSequence") if shared else None
        )
        if not plane or not ident:
            raise fail(f"segmentation frame {i + 1} lacks its position or segment number", "re-export the SEG", path)
        orient = group.get("PlaneOrientationSequence") or (shared.get("PlaneOrientationSequence") if shared else None)
        if orient:
            iop = np.asarray(orient[0].ImageOrientationPatient, dtype=np.float64)
            expected = np.concatenate([lps[:3, 0], lps[:3, 1]]) / np.repeat(np.linalg.norm(lps[:3, :2], axis=0), 3)
            if np.abs(iop - expected).max() > 1e-3:
                raise fail(
                    "segmentation is drawn in another orientation than its image",
                    "export the segmentation on the image series' own grid",
                    path,
                )
        ijk = to_voxel @ np.append(np.asarray(plane[0].ImagePositionPatient, dtype=np.float64), 1.0)
        k = int(round(ijk[2]))
        offset_mm = np.abs(ijk[:3] - [0, 0, k]) * np.linalg.norm(lps[:3, :3], axis=0)
        if offset_mm.max() > POSITION_TOLERANCE_MM or not 0 <= k < shape[2]:
            raise fail(
                f"segmentation frame {i + 1} does not lie on a slice of its image",
                "export the segmentation on the image series' own grid (same slices, same in-plane origin)",
                path,
            )
        segment = int(ident[0].ReferencedSegmentNumber)
        label[:, :, k][frames[i].T > 0] = segment
    return label
