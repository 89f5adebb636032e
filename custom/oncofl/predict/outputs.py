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


SR_SERIES_NUMBER = 901  # the SR's series number (after the SEG's)
IMAGING = hd.sr.CodedConcept("363679005", "SCT", "Imaging")  # a task without its own entry below
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
# the procedure each classification task reports on (SNOMED CT)
PROCEDURES = {
    "breast_mammo_cls": hd.sr.CodedConcept("71651007", "SCT", "Mammography"),
    "lung_nodule_cls": hd.sr.CodedConcept("169069000", "SCT", "CT of chest"),
}


def _observer(spec: TaskSpec, sha256: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="oncofl", manufacturer_name="oncofl", model_name=f"oncofl {spec.name}",
        serial_number=sha256[:16],
    )  # fmt: skip
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def measurement_group(
    spec: TaskSpec, sha256: str, probability: float, sources: list[pydicom.Dataset], point_mm: list[float] | None
) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The probability of cancer (DCM 111047) with the algorithm's identity: for a whole image, a group that
    references the image; for a nodule, a group whose region is the nodule's centre (a 3D point in the series' frame
    of reference, DICOM patient coordinates)."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"oncofl {spec.name}", version=__version__, parameters=[f"model_sha256={sha256}"]
    )
    measurement = hd.sr.Measurement(
        name=codes.DCM.ProbabilityOfCancer, value=float(probability), unit=UNITLESS, algorithm_id=algorithm
    )
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"oncofl {spec.name}")
    if point_mm is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=algorithm,
            measurements=[measurement],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
        )
    region = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([point_mm], dtype=np.float64),
        frame_of_reference_uid=sources[0].FrameOfReferenceUID,
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, finding_type=codes.SCT.Nodule,
        algorithm_id=algorithm, measurements=[measurement],
    )  # fmt: skip


def write_sr(
    spec: TaskSpec,
    sha256: str,
    probability: float,
    sources: list[pydicom.Dataset],
    path: Path,
    *,
    point_mm: list[float] | None = None,
) -> Path:
    """A Comprehensive 3D SR (TID 1500 measurement report) holding the model's probability of cancer for the image
    (``sources``: the one image) or for the nodule at ``point_mm`` (``sources``: its series), referencing them as
    evidence; the patient and study modules are the sources' own, as DICOM requires."""
    report = hd.sr.MeasurementReport(
        observation_context=_observer(spec, sha256),
        procedure_reported=PROCEDURES.get(spec.name, IMAGING),
        imaging_measurements=[measurement_group(spec, sha256, probability, sources, point_mm)],
        referenced_images=sources,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=sources, content=report, series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="oncofl",
        )  # fmt: skip
    except Exception as e:  # highdicom refuses sources it cannot reference (several types)
        raise SiteDataError(
            f"the DICOM Structured Report cannot be built on this image ({type(e).__name__})",
            fix="check the image's headers (study, series and SOP instance UIDs)",
            path=str(path.parent),
            detail=str(e),
        ) from e
    sr.save_as(path)
    return path
