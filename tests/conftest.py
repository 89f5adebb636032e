"""Shared fixtures: real synthetic DICOM data written once per session, small sites for unit tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from oncofl import synthetic  # the installed package (scripts/setup_env.sh: pip install -e .)

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


@pytest.fixture
def small_site(tmp_path) -> Path:
    return make_site(tmp_path)
