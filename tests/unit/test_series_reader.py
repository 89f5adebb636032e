import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from oncofl import synthetic
from oncofl.dicom.series import read_series
from oncofl.errors import DicomReadError


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    profile = replace(synthetic.SITE_PROFILES["site-3"], n_cases=1)
    synthetic.write_site(root, "site-3", profile, seed=3)
    return root / "site-3" / "cases" / "case_0000"


def copy_series(case_dir, tmp_path):
    dst = tmp_path / "dicom"
    shutil.copytree(case_dir / "dicom", dst)
    return dst


def test_series_matches_label_grid_and_geometry(case_dir):
    profile = synthetic.SITE_PROFILES["site-3"]
    volume = read_series(case_dir / "dicom")
    label = nib.load(case_dir / "label.nii.gz")
    assert volume.array.shape == label.shape == (profile.matrix, profile.matrix, profile.n_slices)
    np.testing.assert_allclose(volume.affine, label.affine, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, (profile.pixel_spacing, profile.pixel_spacing, profile.slice_thickness))
    assert volume.modality == "MR" and volume.manufacturer == profile.manufacturer
    # the gland (label) is brighter on average than the volume: the image really holds the anatomy
    mask = np.asarray(label.dataobj) > 0
    assert volume.array[mask].mean() > volume.array.mean()


def test_slice_order_does_not_depend_on_file_names(case_dir, tmp_path):
    folder = copy_series(case_dir, tmp_path)
    for i, f in enumerate(sorted(folder.iterdir(), reverse=True)):  # reverse the lexical order
        f.rename(folder / f"z{i:03d}.dcm")
    np.testing.assert_array_equal(read_series(folder).array, read_series(case_dir / "dicom").array)


def test_rescale_matches_pydicom_on_real_ct(tmp_path):
    src = get_testdata_file("CT_small.dcm", download=False)
    (tmp_path / "ct").mkdir()
    shutil.copy(src, tmp_path / "ct" / "slice.dcm")
    volume = read_series(tmp_path / "ct")
    ds = pydicom.dcmread(src)
    np.testing.assert_allclose(volume.array[:, :, 0], apply_modality_lut(ds.pixel_array, ds).T)
    assert volume.modality == "CT"


def test_missing_slice_is_refused_naming_the_file(case_dir, tmp_path):
    folder = copy_series(case_dir, tmp_path)
    (folder / "IM_0005.dcm").unlink()
    with pytest.raises(DicomReadError, match="a slice is missing") as info:
        read_series(folder)
    assert info.value.path.endswith("IM_0006.dcm") and "re-export" in info.value.fix


def test_duplicate_slice_is_refused(case_dir, tmp_path):
    folder = copy_series(case_dir, tmp_path)
    shutil.copy(folder / "IM_0003.dcm", folder / "IM_0003_copy.dcm")
    with pytest.raises(DicomReadError, match="duplicate slice"):
        read_series(folder)


def test_non_dicom_file_is_refused(case_dir, tmp_path):
    folder = copy_series(case_dir, tmp_path)
    (folder / "notes.txt").write_text("exported by PACS")
    with pytest.raises(DicomReadError, match="not DICOM") as info:
        read_series(folder)
    assert info.value.path.endswith("notes.txt")


def test_truncated_pixel_data_is_refused(case_dir, tmp_path):
    folder = copy_series(case_dir, tmp_path)
    victim = folder / "IM_0002.dcm"
    victim.write_bytes(victim.read_bytes()[:-3000])
    with pytest.raises(DicomReadError, match="pixel data cannot be decoded") as info:
        read_series(folder)
    assert info.value.path.endswith("IM_0002.dcm")


def test_two_series_in_one_folder_are_refused(case_dir, tmp_path):
    folder = copy_series(case_dir, tmp_path)
    other = tmp_path / "other"
    synthetic.write_dicom_series(
        np.ones((8, 8, 2), np.float32),
        np.zeros(3),
        synthetic.SITE_PROFILES["site-1"],
        other,
        uid_seed="x",
        patient_id="P",
        patient_name="N",
    )
    shutil.copy(other / "IM_0000.dcm", folder / "other.dcm")
    with pytest.raises(DicomReadError, match=r"more than one series \[2 series\]"):
        read_series(folder)
