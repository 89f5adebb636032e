"""Hostile and broken DICOM (issue 17 section 3): geometry, declared size, decoder errors, MOSAIC, projections.

Real files only: pydicom's test files (``download=False``), nibabel's Siemens MOSAIC test files and the standard DICOM
our synthetic generator writes, edited with pydicom the way a broken exporter or an attacker would.
"""

import gzip
import json
import shutil
import tracemalloc
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from oncofl import synthetic
from oncofl.datacheck import check_site
from oncofl.dicom.pixels import decode, read_header
from oncofl.dicom.reader import read_dicom
from oncofl.dicom.series import LPS_TO_RAS, read_series
from oncofl.errors import DicomReadError
from oncofl.site_config import load_site_config
from tests.conftest import make_site

NIBABEL_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    synthetic.write_site(root, "site-1", replace(synthetic.SITE_PROFILES["site-1"], n_cases=1), seed=3)
    return root / "site-1" / "cases" / "case_0000" / "dicom"


def edited_copy(folder: Path, out: Path, edit) -> Path:
    """A copy of the series with ``edit(ds, index)`` applied to every slice (sorted by file name)."""
    shutil.copytree(folder, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it writes an invalid DS such as NaN
        for i, f in enumerate(sorted(out.iterdir())):
            ds = pydicom.dcmread(f)
            edit(ds, i)
            ds.save_as(f)
    return out


def set_nan_position(ds, i):
    if i == 3:
        ds.ImagePositionPatient = ["NaN", *ds.ImagePositionPatient[1:]]


def set_nan_orientation(ds, i):
    ds.ImageOrientationPatient = ["NaN", 0, 0, 0, 1, 0]


def set_zero_spacing(ds, i):
    ds.PixelSpacing = [0, 0]


def set_projection(ds, i):
    ds.ImageType = ["DERIVED", "SECONDARY", "PROJECTION IMAGE"]


@pytest.mark.parametrize(
    "edit, problem",
    [
        (set_nan_position, "ImagePositionPatient must hold 3 finite numbers"),
        (set_nan_orientation, "ImageOrientationPatient must hold 6 finite numbers"),
        (set_zero_spacing, "PixelSpacing must be positive"),
        (set_projection, "image is a projection or localizer"),
    ],
)
def test_broken_geometry_and_projections_are_refused_by_the_reader(series, tmp_path, edit, problem):
    folder = edited_copy(series, tmp_path / "dicom", edit)
    with pytest.raises(DicomReadError, match=problem) as info:
        read_series(folder)
    assert info.value.fix and str(tmp_path) not in info.value.server_message()


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize(
    "edit, problem",
    [
        (set_nan_position, "ImagePositionPatient must hold 3 finite numbers"),
        (set_zero_spacing, "PixelSpacing must be positive"),
        (set_projection, "image is a projection or localizer (ImageType), not an acquired slice"),
    ],
)
def test_site_data_check_flags_broken_geometry_and_projections(tmp_path, edit, problem, decode):
    """The headers-only check (what the executor runs before training) flags them too, no longer counting them as
    readable."""
    config = load_site_config(make_site(tmp_path, n_cases=3), site_name="site-1")
    image = config.data_root / json.loads(config.datalist.read_text())["training"][0]["image"]
    edited = edited_copy(image, tmp_path / "edited", edit)
    shutil.rmtree(image)
    shutil.move(edited, image)
    report = check_site(config, decode=decode)
    assert report.summary()["unreadable"] == {f"{problem} (DicomReadError)": 1}  # fixed text and type only
    assert report.problems[0].item == "training case #0, image"
    assert report.summary()["modalities"] == {"MR": 2}  # the broken case is not counted as readable


def rotate(normal_angle_deg: float):
    """An edit that turns the axial stack into a sagittal (0 degrees) or oblique stack, slices 4 mm apart."""
    a = np.deg2rad(normal_angle_deg)
    row, col = np.array([np.sin(a), np.cos(a), 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)

    def edit(ds, i):
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (np.array([10.0, -20.0, 30.0]) + 4.0 * i * normal)]

    return edit


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_site_data_check_reports_slice_spacing_along_the_normal(tmp_path, angle):
    """A sagittal series reported 0.0 mm and an oblique one a wrong value (z differences of positions)."""
    config = load_site_config(make_site(tmp_path, n_cases=2), site_name="site-1")
    for split in ("training", "validation"):
        for entry in json.loads(config.datalist.read_text())[split]:
            image = config.data_root / entry["image"]
            edited = edited_copy(image, tmp_path / f"edited_{split}", rotate(angle))
            shutil.rmtree(image)
            shutil.move(edited, image)
    headers_only = check_site(config, decode=False).summary()
    decoded = check_site(config, decode=True).summary()
    assert headers_only["spacing_mm"]["median"][2] == pytest.approx(4.0, abs=1e-3)
    assert decoded["spacing_mm"]["median"][2] == pytest.approx(4.0, abs=1e-3)
    assert not headers_only["unreadable"]


def crafted_huge(tmp_path: Path, rows: int = 40000) -> Path:
    """A ~6 KB RLE file (pydicom's MR_small_RLE) whose header declares a rows x rows image."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm", download=False))
    ds.Rows = ds.Columns = rows
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    assert path.stat().st_size < 16_000
    return path


def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    path = crafted_huge(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError, match="more pixel data than this site's limit") as info:
            read_dicom(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak  # a 40000^2 16-bit image would be 3.2 GB
    assert "max_decoded_image_mb" in info.value.fix and "MiB" in info.value.detail


def test_the_decode_limit_is_the_sites_setting(tmp_path):
    """``max_decoded_image_mb`` from the site config reaches the readers: a series of 64 MiB declared (the slices
    declare 2048 x 2048 but hold 64 x 64) is refused for size at 16 MiB and for its pixel data at the default."""
    config_path = make_site(tmp_path, n_cases=2)
    config = load_site_config(config_path, site_name="site-1")
    image = config.data_root / json.loads(config.datalist.read_text())["training"][0]["image"]

    def declare_big(ds, i):
        ds.Rows = ds.Columns = 2048

    edited = edited_copy(image, tmp_path / "edited", declare_big)
    shutil.rmtree(image)
    shutil.move(edited, image)
    at_default = check_site(config, decode=True).summary()["unreadable"]
    assert "image declares more pixel data than this site's limit (max_decoded_image_mb)" not in at_default
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "max_decoded_image_mb": 16}))
    small = load_site_config(config_path, site_name="site-1")
    assert small.max_decoded_image_mb == 16
    for decode_pixels in (False, True):
        summary = check_site(small, decode=decode_pixels).summary()
        assert summary["unreadable"] == {
            "image declares more pixel data than this site's limit (max_decoded_image_mb) (DicomReadError)": 1
        }


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_damaged_compressed_data_is_not_reported_as_a_missing_decoder(tmp_path, name):
    """Every installed plugin fails on garbled data ("... raised by all available plugins"): that is damage, not a
    missing decoder (the decoder for this syntax is installed here)."""
    ds = pydicom.dcmread(get_testdata_file(name, download=False))
    data = bytearray(ds.PixelData)
    data[40:104] = b"\x07" * 64  # garble the codestream / RLE header of the first fragment
    ds.PixelData = bytes(data)
    path = tmp_path / "damaged.dcm"
    ds.save_as(path)
    with pytest.raises(DicomReadError) as info:
        decode(read_header(path, pixels=True), path)
    assert "no installed decoder" not in info.value.problem
    assert "cannot be decoded" in info.value.problem and "damaged" in info.value.fix


def mosaic_file(tmp_path: Path, name: str = "siemens_dwi_1000.dcm.gz") -> Path:
    source = NIBABEL_DATA / name
    out = tmp_path / name.removesuffix(".gz")
    out.write_bytes(gzip.decompress(source.read_bytes()) if name.endswith(".gz") else source.read_bytes())
    return out


def test_siemens_mosaic_is_unpacked_into_its_slices_with_their_geometry(tmp_path):
    from nibabel.nicom import dicomwrappers

    path = mosaic_file(tmp_path)
    volume = read_dicom(path)
    assert volume.array.shape == (128, 128, 48)  # not one 896 x 896 slice of tiles
    wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
    expected = LPS_TO_RAS @ wrapper.affine[:, [1, 0, 2, 3]]  # nibabel indexes (row, col, slice); we (x, y, z)
    np.testing.assert_allclose(volume.affine, expected, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (1.796875, 1.796875, 3.0), atol=1e-4)
    np.testing.assert_array_equal(volume.array, wrapper.get_data().transpose(1, 0, 2))


def test_mosaic_that_does_not_hold_its_declared_slices_is_refused(tmp_path):
    """nibabel's 0.dcm: a 256 x 256 MOSAIC whose Siemens header declares 48 slices of 36 x 36 (was read as a slice)."""
    with pytest.raises(DicomReadError, match="MOSAIC pixel data does not hold the slices"):
        read_dicom(mosaic_file(tmp_path, "0.dcm"))


def test_several_mosaic_volumes_in_one_series_folder_are_refused(tmp_path):
    folder = tmp_path / "dwi"
    folder.mkdir()
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        mosaic_file(folder, name)
    with pytest.raises(DicomReadError, match="several Siemens MOSAIC volumes"):
        read_series(folder)


def test_site_data_check_reports_the_unpacked_mosaic_from_headers(tmp_path):
    from oncofl.dicom.reader import inspect_dicom

    modality, _, spacing, shape = inspect_dicom(mosaic_file(tmp_path))
    assert modality == "MR" and shape == (128, 128, 48)
    np.testing.assert_allclose(spacing, (1.796875, 1.796875, 3.0), atol=1e-4)


def test_a_file_larger_than_the_limit_is_not_read_into_memory(tmp_path, monkeypatch):
    from oncofl.dicom import pixels

    path = get_testdata_file("MR_small.dcm", download=False)  # 64 x 64 x 16 bit = 8 KiB of pixels, ~10 KB file
    monkeypatch.setattr(pixels, "FILE_SIZE_MARGIN", 0)
    with pixels.decode_limit(4096):
        with pytest.raises(DicomReadError, match="file is larger than this site's image size limit"):
            read_dicom(path)
    assert read_dicom(path).array.shape == (64, 64, 1)  # the default limit reads it


def test_non_finite_detector_spacing_is_uncalibrated_not_nan(tmp_path):
    from oncofl.dicom.reader import inspect_dicom

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.Modality = "DX"
        ds.ImagerPixelSpacing = ["NaN", "0.2"]
        ds.save_as(tmp_path / "dx.dcm")
    image = read_dicom(tmp_path / "dx.dcm")
    assert image.spacing == (1.0, 1.0)
    assert inspect_dicom(tmp_path / "dx.dcm")[2] == (1.0, 1.0)
