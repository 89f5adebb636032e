"""The federated statistics job in the real FLARE simulator on 3 synthetic multi-vendor prostate sites (slow: ~30 s):
the vendors' known differences show in the JSON, a below-minimum group never leaves its site -- nor can it be derived
by subtraction (its whole partition stays home) --, plots are written, and nothing identifying reaches the server."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from oncofl import synthetic
from oncofl.fedstats.run import main as stats_main
from oncofl.fedstats.site import collect_cases, group_values
from oncofl.fedstats.vocabulary import vendor_group, vendor_slug
from oncofl.site_config import load_site_config

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2", "site-3"]
MIN_COUNT = 3
PNG = b"\x89PNG\r\n\x1a\n"


def _add_foreign_cases(data, n: int = 2) -> None:
    """Two of site-2's (GE) cases also listed by site-1 (Siemens): fewer than the minimum count there."""
    datalist = json.loads((data / "site-1" / "datalist.json").read_text())
    for i in range(n):
        shutil.copytree(data / "site-2" / "cases" / f"case_{i:04d}", data / "site-1" / "cases" / f"ge_{i:04d}")
        datalist["training"].append({"image": f"cases/ge_{i:04d}/dicom", "label": f"cases/ge_{i:04d}/label.nii.gz"})
    (data / "site-1" / "datalist.json").write_text(json.dumps(datalist))


def _set_floor(data, floor: int) -> None:
    """Each site's own floor of the minimum count (``stats_min_count`` in its site config; default 5)."""
    for path in (data / "site_configs").glob("*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "stats_min_count": floor}))


def _identifiers(data) -> set[str]:
    """Patient names / IDs, study and series UIDs of every case, and the data paths."""
    found = {str(data)}
    for f in data.glob("site-*/cases/*/dicom/IM_0000.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        found |= {str(ds.PatientName), str(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID}
    return found


def test_statistics_job_shows_vendor_differences_and_keeps_small_groups_home(tmp_path, capsys):
    data = synthetic.generate(tmp_path / "data", case_factor=0.5, holdout_per_vendor=1)
    _add_foreign_cases(data)
    _set_floor(data, MIN_COUNT)  # the demo sites hold 4-8 cases (default floor: 5)
    out = tmp_path / "stats"
    assert stats_main(["--task", "prostate_seg", "--data", str(data), "--out", str(out), "--min-count", "3"]) == 0
    printed = capsys.readouterr().out
    folder = out / "workspace" / "server" / "simulate_job" / "statistics"
    assert f"statistics (JSON) : {folder / 'fed_stats.json'}" in printed and "vendor=ge" in printed
    stats = json.loads((folder / "fed_stats.json").read_text())
    mean = lambda feature, site, group: stats[feature]["mean"][site][group]  # noqa: E731

    # the vendors' known differences (synthetic.SITE_PROFILES), per site and vendor group; site-1's vendor groups
    # stay home (its 2 GE cases are below the minimum, so Siemens = all - GE is not sent either)
    groups = {site: vendor_group(vendor_slug(p.manufacturer)) for site, p in synthetic.SITE_PROFILES.items()}
    for site, profile in list(synthetic.SITE_PROFILES.items())[1:]:
        assert mean("matrix_rows", site, groups[site]) == profile.matrix
        assert mean("num_slices", site, groups[site]) == profile.n_slices
        assert mean("slice_thickness_mm", site, groups[site]) == pytest.approx(profile.slice_thickness, abs=1e-3)
        assert mean("matrix_rows", "Global", groups[site]) == profile.matrix  # site-1's 2 GE cases not in it
    by_gain = sorted(list(synthetic.SITE_PROFILES)[1:], key=lambda s: synthetic.SITE_PROFILES[s].gain)
    levels = [mean("intensity_p99", "Global", groups[s]) for s in by_gain]
    assert levels == sorted(levels) and levels[-1] > 2 * levels[0], levels

    # site-1's 2 GE cases: present in its raw local statistics, absent from everything it sent, and not derivable:
    # all - vendor=siemens is not 2 (site-1's vendor partition stays home); site-2's GE sent
    config = load_site_config(data / "site_configs" / "site-1.json", "site-1")
    raw = group_values(collect_cases(config, "prostate_seg"), "prostate_seg")
    assert raw["vendor=ge"]["unreadable"].size == 2 and raw["vendor=ge"]["intensity"].size > 0
    for feature in stats.values():
        for per_site in feature.values():
            assert "vendor=ge" not in per_site["site-1"]
    counts = stats["matrix_rows"]["count"]["site-1"]
    assert counts["all"] - counts.get("vendor=siemens", 0) != 2
    assert not [g for g in counts if g.startswith("vendor=")]
    assert stats["intensity"]["histogram"]["site-2"]["vendor=ge"]
    assert stats["unreadable"]["count"]["site-2"]["vendor=ge"] == synthetic.SITE_PROFILES["site-2"].n_cases // 2
    site_log = (out / "workspace" / "site-1" / "log.txt").read_text()
    assert "statistics over" in site_log and "group(s) kept" in site_log  # the site's own suppression ran
    assert "group minimum count applied for client site-1" in site_log  # and the job's filter

    # the plots, and nothing identifying in anything the server wrote
    for name in ("stats_vendor_mix.png", "stats_intensity.png", "stats_geometry.png"):
        assert (folder / name).read_bytes()[:8] == PNG and (folder / name).stat().st_size > 5000
    server_files = [*folder.iterdir(), out / "workspace" / "server" / "log.txt"]
    secrets = _identifiers(data)
    for f in server_files:
        text = f.read_bytes().decode("latin-1")
        assert not [s for s in secrets if s in text], f.name
