"""Readers on real files (pydicom's corpus) and on standard DICOM we build: geometry, HU, multi-frame, MONAI."""

import copy
import shutil
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from nibabel.nicom import dicomwrappers
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from oncofl import synthetic
from oncofl.dicom.pixels import decode
from oncofl.dicom.reader import OncoDicomReader, read_dicom
from oncofl.dicom.series import LPS_TO_RAS, read_series
from oncofl.errors import DicomReadError


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    synthetic.write_site(root, "site-1", replace(synthetic.SITE_PROFILES["site-1"], n_cases=1), seed=5)
    return root / "site-1" / "cases" / "case_0000"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm"])
def test_values_and_affine_match_pydicom_and_nibabel_on_real_files(name):
    try:
        path = get_testdata_file(name, download=False)
    except Exception:
        path = None
    if not path:
        pytest.skip("pydicom-data not installed")
    ds = pydicom.dcmread(path)
    image = read_dicom(path)
    np.testing.assert_allclose(image.array[:, :, 0], apply_modality_lut(ds.pixel_array, ds).T)  # HU for CT
    nib_affine = LPS_TO_RAS @ dicomwrappers.wrapper_from_data(ds).affine  # nibabel: voxel (row, col) -> LPS
    np.testing.assert_allclose(image.affine[:3, [0, 1, 3]], nib_affine[:3, [1, 0, 3]], atol=1e-4)


def test_monai_loadimage_returns_metatensor_with_ras_affine(case_dir):
    image = LoadImage(reader=OncoDicomReader(), image_only=True)(str(case_dir / "dicom"))
    volume = read_series(case_dir / "dicom")
    assert tuple(image.shape) == volume.array.shape
    np.testing.assert_allclose(image.affine.numpy(), volume.affine)
    assert image.meta["space"] == "RAS" and image.meta["modality"] == "MR"


def enhanced_from_slices(folder, out):
    """An Enhanced MR Image object built from a single-frame series (frames in reverse order)."""
    slices = [pydicom.dcmread(f) for f in sorted(folder.iterdir())][::-1]
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Manufacturer",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        setattr(ds, tag, getattr(first, tag))
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.NumberOfFrames = "MR", len(slices)
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orient]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in slices:
        group, plane, transform = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = s.ImagePositionPatient
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = s.RescaleSlope, 0, "US"
        group.PlanePositionSequence = Sequence([plane])
        group.PixelValueTransformationSequence = Sequence([transform])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_enhanced_multiframe_equals_the_single_frame_series(case_dir, tmp_path):
    path = enhanced_from_slices(case_dir / "dicom", tmp_path / "enhanced.dcm")
    multi, series = read_dicom(path), read_series(case_dir / "dicom")
    np.testing.assert_allclose(multi.array, series.array)
    np.testing.assert_allclose(multi.affine, series.affine, atol=1e-6)


def test_missing_slice_can_be_resampled_by_policy(case_dir, tmp_path):
    folder = tmp_path / "dicom"
    shutil.copytree(case_dir / "dicom", folder)
    full = read_series(folder)
    (folder / "IM_0007.dcm").unlink()
    with pytest.raises(DicomReadError, match="set the series policy to 'resample'"):
        read_series(folder)
    patched = read_series(folder, spacing_policy="resample")
    assert patched.array.shape == full.array.shape
    np.testing.assert_allclose(patched.affine, full.affine, atol=1e-6)
    np.testing.assert_allclose(patched.array[:, :, 7], (full.array[:, :, 6] + full.array[:, :, 8]) / 2, rtol=1e-5)
    # positions are 16-character decimal strings (DS): the resampled slices match to rounding, not bit for bit
    np.testing.assert_allclose(patched.array[:, :, 8:], full.array[:, :, 8:], atol=1e-9)


def test_series_is_chosen_by_uid_in_a_mixed_folder(case_dir, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(case_dir / "dicom", folder)
    other = copy.deepcopy(pydicom.dcmread(folder / "IM_0000.dcm"))
    other.SeriesInstanceUID = generate_uid()
    other.save_as(folder / "localizer.dcm")
    with pytest.raises(DicomReadError, match=r"more than one series \[2 series\]"):
        read_series(folder)
    uid = str(pydicom.dcmread(folder / "IM_0003.dcm").SeriesInstanceUID)
    np.testing.assert_array_equal(read_series(folder, series_uid=uid).array, read_series(case_dir / "dicom").array)


def test_missing_decoder_is_named(monkeypatch):
    """No plugin available for the syntax (pydicom's own availability API says so): the decoder to install is named."""
    from pydicom.pixels.decoders.base import get_decoder

    path = get_testdata_file("MR_small_RLE.dcm", download=False)
    ds = pydicom.dcmread(path)
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})  # as on a site without pylibjpeg-rle (and pydicom's RLE plugin)
    with pytest.raises(DicomReadError, match="no installed decoder for transfer syntax 'RLE Lossless'") as info:
        decode(ds, path)
    assert "pylibjpeg-rle" in info.value.fix
