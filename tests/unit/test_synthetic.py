import json

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import MRImageStorage

from oncofl import synthetic


def test_writes_standard_mr_dicom_with_vendor_geometry(synthetic_data):
    for site, profile in synthetic.SITE_PROFILES.items():
        files = sorted((synthetic_data / site / "cases" / "case_0000" / "dicom").iterdir())
        assert len(files) == profile.n_slices
        ds = pydicom.dcmread(files[1])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == MRImageStorage and ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.Modality == "MR" and ds.Manufacturer == profile.manufacturer
        assert (ds.Rows, ds.Columns) == (profile.matrix, profile.matrix)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [profile.pixel_spacing] * 2)
        assert abs(float(ds.SliceThickness) - profile.slice_thickness) < 1e-6
        assert list(map(float, ds.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]
        z0 = float(pydicom.dcmread(files[0]).ImagePositionPatient[2])
        assert abs(float(ds.ImagePositionPatient[2]) - z0 - profile.slice_thickness) < 1e-4
        assert float(ds.RescaleSlope) == profile.rescale_slope
        assert float(ds.RescaleIntercept) == profile.rescale_intercept
        assert ds.PatientID.startswith("SYN-") and str(ds.PatientName).startswith("SYNTHETIC^")
        assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3
        assert ds.pixel_array.shape == (profile.matrix, profile.matrix)


def test_sites_are_non_iid_in_count_and_intensity(synthetic_data):
    counts, medians = {}, {}
    for site in synthetic.SITE_PROFILES:
        datalist = json.loads((synthetic_data / site / "datalist.json").read_text())
        counts[site] = len(datalist["training"]) + len(datalist["validation"])
        ds = pydicom.dcmread(sorted((synthetic_data / site / "cases" / "case_0000" / "dicom").iterdir())[8])
        medians[site] = float(np.median(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
    assert counts == {s: p.n_cases for s, p in synthetic.SITE_PROFILES.items()} and len(set(counts.values())) == 3
    assert max(medians.values()) > 2.5 * min(medians.values())  # vendor gain differs a lot


def test_generation_is_deterministic(tmp_path):
    profile = synthetic.scale_profile(synthetic.SITE_PROFILES["site-2"], case_factor=0.2)
    for name in ("a", "b"):
        synthetic.write_site(tmp_path / name, "site-2", profile, seed=7)
    for rel in ("cases/case_0001/dicom/IM_0004.dcm", "cases/case_0001/label.nii.gz"):
        a, b = (tmp_path / n / "site-2" / rel for n in ("a", "b"))
        if rel.endswith(".dcm"):
            assert a.read_bytes() == b.read_bytes()
        else:
            np.testing.assert_array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())


def test_realistic_profiles_are_clinical_sized():
    profile = synthetic.scale_profile(synthetic.SITE_PROFILES["site-1"], matrix=384, n_slices=24, case_factor=20)
    assert (profile.matrix, profile.n_slices, profile.n_cases) == (384, 24, 320)
    assert abs(profile.pixel_spacing - 160 / 384) < 1e-9 and abs(profile.slice_thickness - 64 / 24) < 1e-9


def test_holdout_and_site_configs(synthetic_data):
    holdout = json.loads((synthetic_data / "holdout" / "datalist.json").read_text())["testing"]
    assert len(holdout) == 3 * len(synthetic.SITE_PROFILES)
    assert all((synthetic_data / "holdout" / e["image"]).is_dir() for e in holdout)
    config = json.loads((synthetic_data / "site_configs" / "site-2.json").read_text())
    assert config["site_name"] == "site-2" and (synthetic_data / "site_configs" / config["data_root"]).is_dir()


def test_every_written_value_conforms_to_its_vr_and_the_mr_image_module(tmp_path):
    """Strict reading (pydicom raises on a DS longer than 16 characters, a bad UI, ...) of every synthetic slice."""
    import pydicom
    from pydicom import config

    from oncofl import synthetic

    root = synthetic.generate(tmp_path / "data", seed=3, sites=("site-2",))
    files = sorted((root / "site-2").rglob("*.dcm"))
    assert files
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        for file in files[:40]:
            ds = pydicom.dcmread(file)
            for element in ds.iterall():
                _ = element.value  # conversion with validation
            assert ds.ImageType[0] == "ORIGINAL" and ds.PatientPosition and "EchoTime" in ds
            assert all(len(str(v)) <= 16 for v in (*ds.ImagePositionPatient, *ds.PixelSpacing, ds.SliceThickness))
    finally:
        config.settings.reading_validation_mode = previous
