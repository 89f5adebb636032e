"""NIfTI images (.nii, .nii.gz) through the one volume entry point: the same volume as its DICOM series, the same
geometry checks and fixed-text errors, the site data check, and the lung task."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from oncofl import synthetic_lung as sl
from oncofl.datacheck import check_site
from oncofl.dicom.pixels import decode_limit
from oncofl.dicom.series import read_series
from oncofl.errors import NiftiReadError, SiteDataError
from oncofl.site.runtime import load_splits
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task
from oncofl.volume import inspect_image, read_volume
from tests.conftest import make_site, nifti_site, save_as_nifti

PROSTATE = get_task("prostate_seg")
LUNG = get_task("lung_nodule_cls")


def make_oblique(series: Path, angle_deg: float) -> None:
    """Edit a synthetic axial series in place into an oblique stack (slice normal tilted in the axial plane)."""
    a = np.deg2rad(angle_deg)
    row, col = np.array([np.cos(a), np.sin(a), 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (np.array([-60.0, -20.0, 30.0]) + 4.0 * k * normal)]
        ds.save_as(f)


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_a_series_and_its_nifti_copy_give_the_same_volume_and_preprocessed_case(tmp_path, oblique):
    config = load_site_config(make_site(tmp_path, n_cases=2), site_name="site-1")
    entry = json.loads(config.datalist.read_text())["training"][0]
    series, label = config.data_root / entry["image"], config.data_root / entry["label"]
    if oblique:
        make_oblique(series, 30.0)
        dicom = read_series(series)
        x_axis = dicom.affine[:3, 0] / np.linalg.norm(dicom.affine[:3, 0])
        assert min(abs(x_axis[0]), abs(x_axis[1])) > 0.4  # really oblique: the x voxel axis mixes R and A
        mask = np.asarray(nib.load(label).dataobj)  # the same mask, on the oblique grid
        nib.save(nib.Nifti1Image(mask, dicom.affine), label)
    nifti = tmp_path / "image.nii.gz"
    save_as_nifti(series, nifti)

    from_dicom, from_nifti = read_volume(series), read_volume(nifti)
    np.testing.assert_array_equal(from_nifti.array, from_dicom.array)
    np.testing.assert_allclose(from_nifti.affine, from_dicom.affine, atol=1e-4)
    assert from_nifti.spacing == pytest.approx(from_dicom.spacing, abs=1e-4)
    assert inspect_image(nifti)[2:] == (pytest.approx(from_dicom.spacing, abs=1e-4), from_dicom.array.shape)

    params = PROSTATE.params(None)
    image_d, label_d = PROSTATE.load_case(series, label, params)
    image_n, label_n = PROSTATE.load_case(nifti, label, params)
    assert image_n.shape == (1, 64, 64, 16) and label_n.sum() > 0
    assert np.allclose(image_n, image_d, atol=1e-5) and np.array_equal(label_n, label_d)


def test_lung_nodule_patches_are_the_same_from_a_nifti_ct(tmp_path):
    sl.write_site(tmp_path, "site-2", replace(sl.SITE_SCANNERS["site-2"], n_cases=2), seed=2)
    site = tmp_path / "site-2"
    entry = json.loads((site / "datalist.json").read_text())["training"][0]
    nifti = tmp_path / "ct.nii.gz"
    save_as_nifti(site / entry["image"], nifti)
    params = {**LUNG.params(None), **entry}
    patch_d, label_d = LUNG.load_case(site / entry["image"], float(entry["label"]), params)
    patch_n, label_n = LUNG.load_case(nifti, float(entry["label"]), params)
    assert np.allclose(patch_n, patch_d, atol=1e-4) and np.array_equal(label_n, label_d)


def test_site_data_check_reports_a_nifti_site(tmp_path):
    config = load_site_config(nifti_site(tmp_path, n_cases=3), site_name="site-1")
    for decode in (False, True):
        report = check_site(config, decode=decode)
        summary = report.summary()
        assert report.ok, report.local_text()
        assert summary["cases"] == {"training": 2, "validation": 1} and summary["formats"] == {"NIfTI": 3}
        assert summary["modalities"] == {"unknown": 3}  # NIfTI has no Modality: counted, never guessed
        assert summary["spacing_mm"]["median"] == [2.5, 2.5, 4.0] and summary["shape"]["median"] == [64, 64, 16]
    assert len(summary["intensity_p1_p50_p99"]) == 3
    assert "formats {'NIfTI': 3}" in report.local_text()


def test_one_datalist_may_mix_dicom_and_nifti_cases(tmp_path):
    config = load_site_config(make_site(tmp_path, n_cases=3), site_name="site-1")
    datalist = json.loads(config.datalist.read_text())
    entry = datalist["training"][0]
    save_as_nifti(config.data_root / entry["image"], config.data_root / "case0.nii")
    entry["image"] = "case0.nii"
    config.datalist.write_text(json.dumps(datalist))
    summary = check_site(config).summary()
    assert summary["formats"] == {"DICOM": 2, "NIfTI": 1} and not summary["unreadable"]
    assert summary["modalities"] == {"MR": 2, "unknown": 1}
    splits = load_splits(config, PROSTATE, PROSTATE.params(None))
    assert splits["training"].images.shape == (2, 1, 64, 64, 16) and not splits["training"].skipped


def test_cli_check_site_reports_a_nifti_site(tmp_path):
    import subprocess
    import sys

    config = nifti_site(tmp_path, n_cases=3)
    cmd = [sys.executable, "-m", "oncofl.cli", "check-site", "--config", str(config), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["formats"] == {"NIfTI": 3}


GRID = np.diag([-2.5, -2.5, 4.0, 1.0])


def write(path: Path, array: np.ndarray, affine: np.ndarray = GRID) -> Path:
    """``array`` saved with ``affine`` as its sform (any affine, also one no qform can hold)."""
    img = nib.Nifti1Image(array, GRID)
    img.set_sform(affine, code=2)
    nib.save(img, path)
    return path


def hostile(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """One hostile NIfTI file per refusal, with the fixed problem text it must raise."""
    good = np.ones((8, 8, 4), np.float32)
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(good, None), tmp_path / "no_geometry.nii")  # qform and sform codes 0
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a nifti file at all")
    return {
        "4d": (write(tmp_path / "4d.nii.gz", np.ones((8, 8, 4, 3), np.float32)), "is not 3D"),
        "2d": (write(tmp_path / "2d.nii", np.ones((8, 8), np.float32)), "is not 3D"),
        "nan": (write(tmp_path / "nan.nii.gz", nan), "NaN or infinite voxel values"),
        "zero_size": (write(tmp_path / "empty.nii", np.ones((8, 0, 4), np.float32)), "no voxels along an axis"),
        "degenerate": (write(tmp_path / "flat.nii", good, np.diag([2.5, 0.0, 4.0, 1.0])), "geometry is degenerate"),
        "no_geometry": (tmp_path / "no_geometry.nii", "no world geometry"),
        "garbage": (tmp_path / "garbage.nii.gz", "cannot be read as NIfTI"),
        "missing": (tmp_path / "nowhere.nii.gz", "does not exist"),
    }


def test_hostile_nifti_is_refused_with_fixed_texts(tmp_path):
    for name, (path, problem) in hostile(tmp_path).items():
        for read in (read_volume, inspect_image) if name != "nan" else (read_volume,):
            with pytest.raises(NiftiReadError, match=problem) as info:
                read(path)
            message = info.value.server_message()
            assert str(tmp_path) not in message and "Fix:" in message, (name, message)
            assert info.value.path == str(path)  # the file is named in the local log


def test_an_image_over_the_site_limit_is_refused_before_reading(tmp_path):
    path = write(tmp_path / "big.nii.gz", np.zeros((128, 128, 64), np.float32))  # 4 MiB as float32, tiny gzipped
    with decode_limit(2 * 2**20), pytest.raises(NiftiReadError, match="more pixel data than this site's limit"):
        read_volume(path)
    assert read_volume(path).array.shape == (128, 128, 64)


def test_a_label_off_the_nifti_image_grid_is_refused(tmp_path):
    image = write(tmp_path / "image.nii.gz", np.random.default_rng(0).random((16, 16, 8), np.float32))
    params = PROSTATE.params(None)
    mask = np.zeros((16, 16, 8), np.uint8)
    mask[4:12, 4:12, 2:6] = 1
    shifted = write(tmp_path / "shifted.nii.gz", mask, GRID + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]]))
    other_shape = write(tmp_path / "shape.nii.gz", np.zeros((16, 16, 9), np.uint8))
    for label, problem in ((shifted, "not aligned with its image"), (other_shape, "shape differs from its image")):
        with pytest.raises(SiteDataError, match=problem) as info:
            PROSTATE.load_case(image, label, params)
        assert str(tmp_path) not in info.value.server_message()
    aligned = write(tmp_path / "aligned.nii.gz", mask)
    assert PROSTATE.load_case(image, aligned, params)[1].sum() > 0


def test_site_data_check_counts_hostile_nifti_cases_by_fixed_text(tmp_path):
    config = load_site_config(nifti_site(tmp_path, n_cases=3), site_name="site-1")
    datalist = json.loads(config.datalist.read_text())
    image = config.data_root / datalist["training"][0]["image"]
    write(image, np.ones((8, 8, 4, 2), np.float32))  # a 4D file where a case's volume was
    summary = check_site(config, decode=False).summary()
    assert summary["unreadable"] == {
        "NIfTI image is not 3D (a 4D series, several channels, or a 2D image) (NiftiReadError)": 1
    }
    assert summary["formats"] == {"NIfTI": 2}
