"""The federated statistics' site side on each imaging task's synthetic data (no FLARE runtime): counts per split,
label and vendor; the vendor vocabulary; a PHI-looking manufacturer and a corrupt DICOM; the group cleanser; the
committed job folders."""

from __future__ import annotations

import filecmp
import json
from dataclasses import replace
from pathlib import Path

import pytest
from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser

from oncofl import synthetic, synthetic_lung, synthetic_mammo
from oncofl.fedstats.job import STATS_JOBS, export
from oncofl.fedstats.privacy import GroupMinCountCleanser
from oncofl.fedstats.site import ImagingStatistics
from oncofl.fedstats.vocabulary import kernel_name, vendor_slug
from oncofl.site_config import parse_site_config
from tests.conftest import REPO, make_site
from tests.phi_markers import MARKER, plant_headers


def _stats(task: str, config_file: Path) -> ImagingStatistics:
    stats = ImagingStatistics(task)
    stats.load(parse_site_config(json.loads(config_file.read_text()), site_name="site-1", source=config_file))
    return stats


def _config(root: Path, site: str) -> Path:
    path = root / f"{site}.json"
    path.write_text(json.dumps({"site_name": "site-1", "data_root": str(root / site)}))
    return path


def _datalist(root: Path) -> dict:
    return json.loads((root / "datalist.json").read_text())


@pytest.mark.parametrize(
    ("manufacturer", "slug"),
    [
        ("SIEMENS", "siemens"),
        ("GE MEDICAL SYSTEMS", "ge"),
        ("Philips Medical Systems", "philips"),
        ("TOSHIBA", "canon"),
        ("HOLOGIC, Inc.", "hologic"),
        ("ACME Imaging Corp", "other"),
        (f"{MARKER} Scanners, Inc.", "other"),
        ("", "unknown"),
    ],
)
def test_vendor_names_come_from_the_fixed_vocabulary(manufacturer, slug):
    assert vendor_slug(manufacturer) == slug
    assert kernel_name("br40") == "Br40" and kernel_name(f"{MARKER}9") == "other" and kernel_name("") == "unknown"


def test_prostate_counts_per_split_and_vendor_and_the_vendors_geometry(tmp_path):
    stats = _stats("prostate_seg", make_site(tmp_path, n_cases=4))
    datalist, profile = _datalist(tmp_path / "site-1"), synthetic.SITE_PROFILES["site-1"]
    assert set(stats.data) == {"all", "training", "validation", "vendor=siemens"}  # masks: no label groups
    assert stats.count("all", "unreadable") == 4 and stats.sum("all", "unreadable") == 0
    for split in ("training", "validation"):
        assert stats.count(split, "unreadable") == len(datalist[split])
    assert stats.mean("vendor=siemens", "matrix_rows") == profile.matrix
    assert stats.mean("vendor=siemens", "num_slices") == profile.n_slices
    assert stats.mean("vendor=siemens", "slice_thickness_mm") == pytest.approx(profile.slice_thickness, abs=1e-3)
    assert stats.mean("all", "field_strength_t") == 3.0
    low, high = stats.min_value("all", "intensity"), stats.max_value("all", "intensity")
    assert low < 0.05 and 1.0 <= high < 2.0  # scaled to each image's p1..p99
    hist = stats.histogram("all", "intensity", 10, -0.25, 1.25)
    assert sum(b.sample_count for b in hist.bins) == stats.count("all", "intensity")


def test_a_phi_manufacturer_is_other_and_a_corrupt_dicom_is_skipped_and_counted(tmp_path):
    config = make_site(tmp_path, n_cases=4)
    cases = sorted((tmp_path / "site-1" / "cases").glob("case_*"))
    for f in (cases[0] / "dicom").glob("*.dcm"):
        plant_headers(f, modality=False)
    (cases[1] / "dicom" / "IM_0003.dcm").write_bytes(b"not a DICOM file " * 10)
    stats = _stats("prostate_seg", config)
    assert stats.skipped == 1
    assert stats.count("all", "unreadable") == 4 and stats.sum("all", "unreadable") == 1
    assert stats.count("all", "matrix_rows") == 3
    assert stats.count("vendor=other", "matrix_rows") == 1 and stats.count("vendor=siemens", "matrix_rows") == 2
    text = json.dumps({ds: [f.feature_name for f in fs] for ds, fs in stats.features().items()})
    assert MARKER not in text and "tmp" not in text


def test_lung_counts_per_label_kernel_and_hounsfield_units(tmp_path):
    scanner = replace(synthetic_lung.SITE_SCANNERS["site-1"], n_cases=3, matrix=48, coverage_mm=60.0)
    synthetic_lung.write_site(tmp_path, "site-1", scanner, seed=0)
    stats = _stats("lung_nodule_cls", _config(tmp_path, "site-1"))
    entries = [e for split in _datalist(tmp_path / "site-1").values() for e in split]
    for label in (0, 1):
        n = sum(e["label"] == label for e in entries)
        assert (stats.count(f"label={label}", "unreadable") if n else 0) == n
    assert stats.count("all", "unreadable") == len(entries)
    assert stats.mean("all", "label") == pytest.approx(sum(e["label"] for e in entries) / len(entries))
    assert "vendor=siemens" in stats.data and "kernel=Br40" in stats.data
    assert stats.min_value("all", "intensity") <= -900 and stats.mean("all", "slice_thickness_mm") == 2.5


def test_mammography_counts_per_label_and_vendor(tmp_path):
    vendor = replace(synthetic_mammo.SITE_VENDORS["site-2"], n_cases=6)
    synthetic_mammo.write_site(tmp_path, "site-1", vendor, seed=0)
    stats = _stats("breast_mammo_cls", _config(tmp_path, "site-1"))
    entries = [e for split in _datalist(tmp_path / "site-1").values() for e in split]
    assert stats.count("vendor=ge", "unreadable") == 6
    for label in {e["label"] for e in entries}:
        assert stats.count(f"label={label}", "unreadable") == sum(e["label"] == label for e in entries)
    assert stats.mean("all", "matrix_rows") == vendor.size[0] and "num_slices" not in stats.data["all"]


def test_group_cleanser_drops_a_below_minimum_group_that_flares_cleanser_leaves_counted():
    def statistics():
        counts = {"all": {"unreadable": 5, "matrix_rows": 5}, "vendor=ge": {"unreadable": 2, "matrix_rows": 2}}
        zeros = {ds: dict.fromkeys(per, 0) for ds, per in counts.items()}
        sums = {
            "all": {"unreadable": 0.0, "matrix_rows": 300.0},
            "vendor=ge": {"unreadable": 0.0, "matrix_rows": 112.0},
        }
        return {StC.STATS_COUNT: counts, StC.STATS_FAILURE_COUNT: zeros, StC.STATS_SUM: sums}

    flare, _ = MinCountCleanser(min_count=3).apply(statistics(), "site-1")
    assert flare[StC.STATS_COUNT]["vendor=ge"] == {"unreadable": 2, "matrix_rows": 2}  # FLARE keeps the counts
    assert flare[StC.STATS_SUM]["vendor=ge"] == {}
    ours, modified = GroupMinCountCleanser(min_count=3).apply(flare, "site-1")
    assert modified and all("vendor=ge" not in per for per in ours.values())
    assert ours[StC.STATS_SUM]["all"] == {"unreadable": 0.0, "matrix_rows": 300.0}


@pytest.mark.parametrize("task", sorted(STATS_JOBS))
def test_committed_stats_job_folder_equals_a_fresh_export(tmp_path, task):
    job = export(tmp_path, task=task)
    committed = REPO / "jobs" / job.name
    files = sorted(str(p.relative_to(job)) for p in job.rglob("*") if p.is_file())
    assert files == ["app/config/config_fed_client.json", "app/config/config_fed_server.json", "meta.json"]
    _, mismatch, errors = filecmp.cmpfiles(committed, job, files, shallow=False)
    assert not mismatch + errors, f"regenerate with `oncofl job export all --out jobs`: {mismatch + errors}"
