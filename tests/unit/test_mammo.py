"""Constructed mammograms (real MG DICOM written with pydicom): inversion, VOI window, laterality flip, crop."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from oncofl.dicom.mammo import read_projection
from oncofl.dicom.reader import read_dicom


def breast_phantom(rows=120, cols=100):
    """Tissue (semicircle) against the chest wall at column 0, a dense mass, air elsewhere; 'density' in [0, 1]."""
    r, c = np.mgrid[:rows, :cols]
    density = np.where((r - rows / 2) ** 2 / (rows / 2.2) ** 2 + c**2 / (cols * 0.7) ** 2 < 1, 0.5, 0.0)
    density[(r - 60) ** 2 + (c - 30) ** 2 < 36] = 0.9
    return density


def write_mg(path, density, *, laterality="L", orientation=("A", "R"), photometric="MONOCHROME2", window=None):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Manufacturer, ds.ViewPosition = "MG", "HOLOGIC, Inc.", "CC"
    ds.ImageLaterality, ds.PatientOrientation = laterality, list(orientation)
    ds.ImagerPixelSpacing = [0.07, 0.07]
    stored = density * 4000 + 50  # 12-bit detector values, higher = denser in MONOCHROME2
    if photometric == "MONOCHROME1":
        stored = 4095 - stored  # the vendor stores dense tissue dark
    ds.Rows, ds.Columns = density.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = window[0], window[1], "LINEAR"
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path):
    density = breast_phantom()
    m1 = read_projection(write_mg(tmp_path / "m1.dcm", density, photometric="MONOCHROME1"), crop=False)
    m2 = read_projection(write_mg(tmp_path / "m2.dcm", density), crop=False)
    np.testing.assert_allclose(m1.array, m2.array, atol=1e-6)
    assert m2.array[60, 30] > m2.array[60, 10] > m2.array[5, 95]  # mass > tissue > air


def test_right_breast_is_flipped_to_the_canonical_side(tmp_path):
    density = breast_phantom()
    left = read_projection(write_mg(tmp_path / "l.dcm", density, laterality="L", orientation=("A", "R")), crop=False)
    right_stored = density[:, ::-1]  # a right breast as usually stored: chest wall on the right
    right = read_projection(
        write_mg(tmp_path / "r.dcm", right_stored, laterality="R", orientation=("P", "L")), crop=False
    )
    assert (left.laterality, left.flipped, right.laterality, right.flipped) == ("L", False, "R", True)
    np.testing.assert_allclose(right.array, left.array, atol=1e-6)
    assert right.view == "CC" and right.modality == "MG" and right.spacing == (0.07, 0.07)


def test_laterality_alone_decides_when_orientation_is_absent(tmp_path):
    density = breast_phantom()[:, ::-1]
    image = read_projection(write_mg(tmp_path / "r.dcm", density, laterality="R", orientation=("", "")), crop=False)
    assert image.flipped and image.array[:, :20].mean() > image.array[:, -20:].mean()


def test_voi_window_is_applied(tmp_path):
    density = breast_phantom()
    full = read_projection(write_mg(tmp_path / "a.dcm", density), crop=False).array
    mass_window = read_projection(write_mg(tmp_path / "b.dcm", density, window=(3650, 400)), crop=False).array
    assert full[60, 10] == pytest.approx(0.5 / 0.9, abs=0.01)  # tissue density 0.5, mass 0.9, air 0
    assert mass_window[60, 10] == 0.0 and mass_window[60, 30] == 1.0  # the window keeps only the mass


def test_crop_keeps_the_breast_and_drops_air(tmp_path):
    density = breast_phantom(rows=200, cols=180)
    image = read_dicom(write_mg(tmp_path / "c.dcm", density))
    r0, r1, c0, c1 = image.crop
    assert c0 == 0 and c1 < 180 and image.array.shape == (r1 - r0, c1 - c0)
    assert image.array.max() == pytest.approx(1.0) and image.array.mean() > 0.3


def test_truncated_mammogram_is_refused(tmp_path):
    path = write_mg(tmp_path / "t.dcm", breast_phantom())
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(Exception) as info:
        read_dicom(path)
    assert type(info.value).__name__ == "DicomReadError" and "re-export" in info.value.fix
    assert pydicom.dcmread(path, stop_before_pixels=True).Modality == "MG"
