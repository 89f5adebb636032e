"""DICOM-SEG written by highdicom (a standard writer) is read back onto the image grid by geometry."""

from dataclasses import replace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from oncofl import synthetic
from oncofl.dicom.seg import read_seg
from oncofl.dicom.series import read_series
from oncofl.errors import DicomReadError
from oncofl.tasks import get_task


def write_seg(source_dir, mask_xyz, out, *, shift_mm=0.0):
    sources = [pydicom.dcmread(f) for f in sorted(source_dir.iterdir())]
    if shift_mm:
        for s in sources:
            s.ImagePositionPatient = [float(v) + shift_mm for v in s.ImagePositionPatient]
    mask = np.transpose(mask_xyz, (2, 1, 0)).astype(bool)  # [x, y, z] -> frames [z, row, col]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="prostate",
                segmented_property_category=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
                segmented_property_type=hd.sr.CodedConcept("41216001", "SCT", "Prostate"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="oncofl tests",
        manufacturer_model_name="synthetic",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(out)
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    synthetic.write_site(root, "site-2", replace(synthetic.SITE_PROFILES["site-2"], n_cases=2), seed=9)
    return root / "site-2" / "cases" / "case_0000"


def test_seg_matches_the_nifti_mask(case, tmp_path):
    mask = np.asarray(nib.load(case / "label.nii.gz").dataobj)
    path = write_seg(case / "dicom", mask, tmp_path / "seg.dcm")
    label = read_seg(path, read_series(case / "dicom"))
    np.testing.assert_array_equal(label, mask)


def test_seg_can_replace_the_nifti_label_in_the_task(case, tmp_path):
    mask = np.asarray(nib.load(case / "label.nii.gz").dataobj)
    seg = write_seg(case / "dicom", mask, tmp_path / "seg.dcm")
    task = get_task("prostate_seg")
    _, from_seg = task.load_case(case / "dicom", seg, task.params(None))
    _, from_nifti = task.load_case(case / "dicom", case / "label.nii.gz", task.params(None))
    np.testing.assert_array_equal(from_seg, from_nifti)


def test_seg_on_another_grid_is_refused(case, tmp_path):
    mask = np.asarray(nib.load(case / "label.nii.gz").dataobj)
    path = write_seg(case / "dicom", mask, tmp_path / "shifted.dcm", shift_mm=1.3)
    with pytest.raises(DicomReadError, match="does not lie on a slice of its image"):
        read_seg(path, read_series(case / "dicom"))
