"""Every DICOM file pydicom ships offline (bundled test files + pydicom-data): loads with geometry, or is refused."""

import os
import warnings

import numpy as np
import pytest
from pydicom.data import get_testdata_files

from oncofl.dicom.mammo import ProjectionImage
from oncofl.dicom.pixels import decode, read_header
from oncofl.dicom.reader import read_dicom
from oncofl.dicom.series import SeriesVolume
from oncofl.errors import DicomReadError

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def test_corpus_is_the_full_offline_set():
    assert len(FILES) >= 150  # pydicom's own test files; more (>= 230) with pydicom-data installed


def test_every_file_loads_with_geometry_or_is_refused_with_a_specific_error():
    loaded, refused, unhandled = 0, {}, []
    for path in FILES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = read_dicom(path)
        except DicomReadError as e:
            assert e.path and e.fix and e.problem, path
            refused[e.problem.split(":")[0].split("(")[0].strip()] = path
            continue
        except Exception as e:  # the property under test: never an unexplained crash
            unhandled.append(f"{os.path.basename(path)}: {type(e).__name__}: {e}")
            continue
        assert np.isfinite(image.array).all(), path
        if isinstance(image, SeriesVolume):
            assert image.array.ndim == 3 and abs(np.linalg.det(image.affine[:3, :3])) > 1e-6, path
            assert all(s > 0 for s in image.spacing), path
        else:
            assert isinstance(image, ProjectionImage) and image.array.ndim == 2 and min(image.spacing) > 0
            assert 0.0 <= image.array.min() and image.array.max() <= 1.0
        loaded += 1
    assert not unhandled, unhandled
    assert loaded >= 40, loaded
    # the refusals are specific: several distinct reasons, e.g. no DICM preamble, no 3D geometry, no image
    assert {"file is not DICOM", "file holds no image"} <= set(refused), sorted(refused)
    assert len(refused) >= 5, sorted(refused)


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),  # JPEG 2000 lossless, pydicom-data
    ],
)
def test_lossless_compressed_files_decode_to_the_uncompressed_values(compressed, reference):
    from pydicom.data import get_testdata_file

    try:
        a, b = (get_testdata_file(n, download=False) for n in (compressed, reference))
    except Exception:
        a = b = None
    if not a or not b:
        pytest.skip("pydicom-data not installed")
    np.testing.assert_array_equal(read_dicom(a).array, read_dicom(b).array)


@pytest.mark.parametrize(
    "name", ["JPEG-LL.dcm", "SC_jpeg_no_color_transform.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG2000.dcm"]
)
def test_jpeg_family_decodes(name):
    """Baseline/extended/lossless JPEG and JPEG 2000 decode (these files are secondary captures: no 3D geometry)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    pixels = decode(read_header(path, pixels=True), path)
    assert np.isfinite(pixels).all() and pixels.std() > 0
