"""What a prediction writes: a DICOM-SEG that references its source series, and a NIfTI mask on the source grid."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .. import __version__
from ..dicom.pixels import read_header
from ..dicom.series import LPS_TO_RAS, SeriesVolume, list_series_files
from ..errors import SiteDataError
from ..tasks import TaskSpec

SERIES_NUMBER = 900  # the SEG's series number (source series are numbered by the scanner; 900+ marks derived ones)
ON_SLICE_TOLERANCE_MM = 0.5


def write_mask(label: np.ndarray, volume: SeriesVolume, path: Path) -> Path:
    """The label map as NIfTI (uint8) with the source series' own affine: it overlays the series voxel for voxel."""
    nib.save(nib.Nifti1Image(np.asarray(label, dtype=np.uint8), volume.affine), path)
    return path


def source_frames(folder: Path, volume: SeriesVolume, label: np.ndarray) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The series' source images and, for each, its slice of ``label`` as a frame ``[row, col]`` (placed by
    ImagePositionPatient on ``volume``'s grid, as :func:`oncofl.dicom.seg.read_seg` reads it back)."""
    sources = [read_header(path, pixels=True) for path in list_series_files(folder)]
    to_voxel = np.linalg.inv(LPS_TO_RAS @ volume.affine)
    frames = []
    for ds in sources:
        ijk = to_voxel @ np.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64), 1.0)
        k = int(round(ijk[2]))
        offset_mm = np.abs(ijk[:3] - [0, 0, k]) * np.asarray(volume.spacing)
        if offset_mm.max() > ON_SLICE_TOLERANCE_MM or not 0 <= k < label.shape[2]:
            raise SiteDataError(
                "a source image does not lie on a slice of the volume (the series was resampled on reading)",
                fix="predict on a series with uniform slice spacing (spacing_policy 'refuse')",
                path=str(folder),
            )
        frames.append(label[:, :, k].T)
    return sources, np.stack(frames).astype(np.uint8)


def segment_descriptions(spec: TaskSpec, sha256: str) -> list[hd.seg.SegmentDescription]:
    """One segment per foreground class, each naming the algorithm: ``oncofl <task>``, oncofl's version, the model
    file's sha256."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"oncofl {spec.name}",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters={"model_sha256": sha256},
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.label,
            segmented_property_category=hd.sr.CodedConcept(*segment.category),
            segmented_property_type=hd.sr.CodedConcept(*segment.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, segment in enumerate(spec.segments, start=1)
    ]


def write_seg(label: np.ndarray, volume: SeriesVolume, folder: Path, spec: TaskSpec, sha256: str, path: Path) -> Path:
    """The label map as a BINARY DICOM-SEG referencing the series in ``folder`` (its images, its frame of
    reference), one segment per foreground class; every source image gets a frame, empty ones too."""
    sources, frames = source_frames(folder, volume, label)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(spec, sha256),
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="oncofl",
            manufacturer_model_name=f"oncofl {spec.name}",
            software_versions=__version__,
            device_serial_number=sha256[:16],
            series_description=f"oncofl {spec.name} model sha256:{sha256[:12]}",
            content_label="ONCOFL",
            omit_empty_frames=False,
        )
    except Exception as e:  # highdicom refuses source images it cannot reference (several types)
        raise SiteDataError(
            f"the DICOM Segmentation cannot be built on this series ({type(e).__name__})",
            fix="check the series' headers (one series, one frame of reference, single-frame images)",
            path=str(folder),
            detail=str(e),
        ) from e
    seg.save_as(path)
    return path
