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


def write_seg(source_dir, mask_xyz, out, *, shift_mm=0.0, kind="BINARY"):
    """A DICOM-SEG from highdicom: BINARY (mask > 0), FRACTIONAL (mask = probabilities) or LABELMAP."""
    sources = [pydicom.dcmread(f) for f in sorted(source_dir.iterdir())]
    if shift_mm:
        for s in sources:
            s.ImagePositionPatient = [float(v) + shift_mm for v in s.ImagePositionPatient]
    pixels = np.transpose(mask_xyz, (2, 1, 0))  # [x, y, z] -> frames [z, row, col]
    pixels = pixels.astype(bool) if kind == "BINARY" else pixels
    options = {"fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY} if kind == "FRACTIONAL" else {}
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues[kind],
        **options,
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


def test_fractional_seg_is_read_with_its_own_semantics(case, tmp_path):
    """FRACTIONAL (probability): a voxel is in the segment at p >= 0.5; a halo at p = 0.1 is not gland (it was)."""
    from scipy import ndimage

    mask = np.asarray(nib.load(case / "label.nii.gz").dataobj) > 0
    halo = ndimage.binary_dilation(mask, iterations=2) & ~mask
    probability = np.where(mask, 0.9, np.where(halo, 0.1, 0.0)).astype(np.float32)
    x0 = np.argwhere(mask)[0][0]
    probability[x0][mask[x0]] = 0.5  # on one sagittal plane: the threshold itself counts as gland
    path = write_seg(case / "dicom", probability, tmp_path / "fractional.dcm", kind="FRACTIONAL")
    assert pydicom.dcmread(path).SegmentationType == "FRACTIONAL"
    label = read_seg(path, read_series(case / "dicom"))
    np.testing.assert_array_equal(label > 0, mask)
    assert halo.any() and not (label[halo] > 0).any()


def test_labelmap_seg_is_read(case, tmp_path):
    """LABELMAP (stored values are segment numbers): read, no longer refused with a misleading message."""
    mask = np.asarray(nib.load(case / "label.nii.gz").dataobj).astype(np.uint8)
    path = write_seg(case / "dicom", mask, tmp_path / "labelmap.dcm", kind="LABELMAP")
    assert pydicom.dcmread(path).SegmentationType == "LABELMAP"
    label = read_seg(path, read_series(case / "dicom"))
    np.testing.assert_array_equal(label, mask)
    task = get_task("prostate_seg")
    _, from_seg = task.load_case(case / "dicom", path, task.params(None))
    _, from_nifti = task.load_case(case / "dicom", case / "label.nii.gz", task.params(None))
    np.testing.assert_array_equal(from_seg, from_nifti)


def test_seg_frame_far_off_the_image_is_refused_before_a_volume_is_built(case, tmp_path):
    """A crafted SEG whose frames lie 10 km apart would make a gap-filling reader allocate a huge volume."""
    mask = np.asarray(nib.load(case / "label.nii.gz").dataobj)
    path = write_seg(case / "dicom", mask, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(path)
    last = ds.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0]
    last.ImagePositionPatient = [*last.ImagePositionPatient[:2], float(last.ImagePositionPatient[2]) + 1e7]
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="does not lie on a slice of its image"):
        read_seg(path, read_series(case / "dicom"))
