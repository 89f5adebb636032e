"""Shared fixtures: real synthetic DICOM data written once per session, small sites for unit tests."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import pytest

from oncofl import synthetic  # the installed package (scripts/setup_env.sh: pip install -e .)
from oncofl.dicom.series import read_series

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The default 3-site data set plus held-out cases and site configs, exactly as the quickstart makes it."""
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), seed=0)


def make_site(root: Path, site: str = "site-1", n_cases: int = 4, **config_fields) -> Path:
    """A small site (n_cases, 1 for validation) and its site config; returns the config file path."""
    profile = replace(synthetic.SITE_PROFILES[site], n_cases=n_cases)
    synthetic.write_site(root, site, profile, seed=1)
    config = {
        "site_name": site,
        "data_root": str(root / site),
        "cache_dir": str(root / "cache" / site),
        "num_workers": 2,
        **config_fields,
    }
    path = root / f"{site}.json"
    path.write_text(json.dumps(config))
    return path


def save_as_nifti(series: Path, out: Path) -> nib.Nifti1Image:
    """The DICOM reader's volume written as NIfTI: SeriesVolume's [x, y, z] array and voxel -> RAS affine are
    NIfTI's own convention, so they are saved as they are."""
    volume = read_series(series)
    img = nib.Nifti1Image(volume.array, volume.affine)
    nib.save(img, out)
    return img


def nifti_site(tmp_path: Path, n_cases: int = 4) -> Path:
    """A small prostate site whose datalist names NIfTI images (its DICOM series converted, then deleted)."""
    config_path = make_site(tmp_path, n_cases=n_cases)
    root = tmp_path / "site-1"
    datalist = json.loads((root / "datalist.json").read_text())
    for entries in datalist.values():
        for entry in entries:
            image = Path(entry["image"]).parent / "image.nii.gz"
            save_as_nifti(root / entry["image"], root / image)
            shutil.rmtree(root / entry["image"])
            entry["image"] = str(image)
    (root / "datalist.json").write_text(json.dumps(datalist))
    return config_path


@pytest.fixture
def small_site(tmp_path) -> Path:
    return make_site(tmp_path)
