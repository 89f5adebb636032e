"""The federated statistics' site side on each imaging task's synthetic data (no FLARE runtime): counts per split,
label and vendor; the vendor and kernel vocabulary; a PHI-looking manufacturer and a corrupt DICOM; the partition
rule (no below-minimum group, class or remainder derivable by subtraction), in the site's own code with its floor and
in the filter; one image counted once however many cases share it; names outside the vocabulary refused; the kit's
privacy scope; the committed job folders. Raw values are checked with the site floor at 1 (``stats_min_count``)."""

from __future__ import annotations

import filecmp
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.statistics_spec import DataType, Feature, StatisticConfig, Statistics
from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.executors.statistics.statistics_task_handler import StatisticsTaskHandler
from nvflare.app_common.statistics.histogram_bins_cleanser import HistogramBinsCleanser
from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser
from nvflare.app_common.statistics.min_max_cleanser import AddNoiseToMinMax
from nvflare.fuel.utils import fobs
from pydicom.multival import MultiValue

from oncofl import synthetic, synthetic_lung, synthetic_mammo
from oncofl.deploy.builders import TEMPLATES
from oncofl.deploy.site import STATS_FILTER
from oncofl.errors import OncoFLError
from oncofl.fedstats.job import STATS_JOBS, export
from oncofl.fedstats.job import main as job_main
from oncofl.fedstats.privacy import REFUSED, GroupMinCountCleanser, SiteStatisticsPrivacyFilter
from oncofl.fedstats.site import ImagingStatistics
from oncofl.fedstats.vocabulary import kernel_name, partition_of, vendor_slug
from oncofl.site_config import DEFAULT_STATS_MIN_COUNT, load_site_config, parse_site_config
from tests.conftest import REPO, make_site
from tests.phi_markers import MARKER, plant_headers


def _stats(task: str, config_file: Path) -> ImagingStatistics:
    stats = ImagingStatistics(task)
    stats.load(parse_site_config(json.loads(config_file.read_text()), site_name="site-1", source=config_file))
    return stats


def _config(root: Path, site: str, floor: int = 1) -> Path:
    path = root / f"{site}.json"
    path.write_text(json.dumps({"site_name": "site-1", "data_root": str(root / site), "stats_min_count": floor}))
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
    stats = _stats("prostate_seg", make_site(tmp_path, n_cases=4, stats_min_count=1))
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
    config = make_site(tmp_path, n_cases=4, stats_min_count=1)
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


# --- the partition rule: nothing below the minimum derivable by subtraction ------------------------------------------


def _as_site_sends(stats: ImagingStatistics, names=("count", "sum", "mean", "stddev")) -> dict:
    """What FLARE's statistics executor gets from ``stats`` in the first round (its own calls), unfiltered."""
    handler = StatisticsTaskHandler(generator_id="stats_generator")
    handler.stats_generator = stats
    task = Shareable()
    task[StC.STATISTICS_TASK_KEY] = StC.STATS_1st_STATISTICS
    task[StC.STATS_TARGET_STATISTICS] = fobs.dumps([StatisticConfig(n, {}) for n in names])
    result = handler.execute_task(StC.FED_STATS_TASK, task, FLContext(), Signal())
    return dict(result)


def _through_the_jobs_filter(result: dict, min_count: int) -> dict:
    """``result`` through the statistics job's filter and cleansers (as exported), returned as plain statistics."""
    cleansers = [
        MinCountCleanser(min_count=min_count),
        AddNoiseToMinMax(0.1, 0.3),
        HistogramBinsCleanser(max_bins_percent=50.0),
        GroupMinCountCleanser(min_count=min_count),
    ]
    dxo = DXO(data_kind=DataKind.STATISTICS, data=dict(result))
    out = SiteStatisticsPrivacyFilter(result_cleanser_ids=[]).filter_stats_statistics(dxo, "site-1", cleansers)
    return out.data


def _residual_problems(result: dict, min_count: int) -> list[str]:
    """Every (partition, feature, statistic) whose residual -- ``all`` minus the partition's groups that sent that
    statistic -- is neither 0 nor at least the minimum, in counts and in the label's class counts."""
    statistics = fobs.loads(result[result[StC.STATISTICS_TASK_KEY]])
    counts, sums, problems = statistics[StC.STATS_COUNT], statistics.get(StC.STATS_SUM, {}), []
    for statistic, per_ds in statistics.items():
        for feature in per_ds.get("all", {}):
            for partition in ("split", "label", "vendor", "kernel"):
                sent = [g for g in per_ds if partition_of(g) == partition and feature in per_ds[g]]
                cells = [lambda g, f=feature: counts[g][f]]
                if feature == "label" and statistic == StC.STATS_SUM:
                    cells += [lambda g: sums[g]["label"], lambda g: counts[g]["label"] - sums[g]["label"]]
                for cell in cells:
                    residual = cell("all") - sum(cell(g) for g in sent)
                    if residual != 0 and abs(residual) < min_count:
                        problems.append(f"{statistic} {partition} {feature}: {residual}")
    return problems


def _mammo_site(root: Path, hologic: int = 1, validation: int = 2, malignant: int = 1, n: int = 9) -> Path:
    """A GE mammography site of ``n`` cases: ``hologic`` of them relabelled HOLOGIC, ``validation`` in the
    validation split, ``malignant`` with label 1."""
    vendor = replace(synthetic_mammo.SITE_VENDORS["site-2"], n_cases=n)
    synthetic_mammo.write_site(root, "site-1", vendor, seed=0)
    entries = [e for split in _datalist(root / "site-1").values() for e in split]
    for i, entry in enumerate(entries):
        entry["label"] = int(i < malignant)
        if i >= n - hologic:
            ds = pydicom.dcmread(root / "site-1" / entry["image"])
            ds.Manufacturer = "HOLOGIC"
            ds.save_as(root / "site-1" / entry["image"])
    datalist = {"training": entries[: n - validation], "validation": entries[n - validation :]}
    (root / "site-1" / "datalist.json").write_text(json.dumps(datalist))
    return _config(root, "site-1")


@pytest.mark.parametrize("hologic", [1, 0])
def test_no_below_minimum_group_or_class_is_derivable_by_subtraction(tmp_path, hologic):
    """A 1-case vendor, a 2-case validation split and a 1-case malignant class: the site's raw statistics leak
    them by subtraction (``all`` minus the other groups); through the job's filter, and in what the site's own code
    offers with the job's minimum, every residual is 0 or at least the minimum."""
    config = _mammo_site(tmp_path, hologic=hologic)
    raw = _as_site_sends(_stats("breast_mammo_cls", config))
    assert _residual_problems(raw, 3)  # the attack works on what the raw statistics hold
    filtered = _through_the_jobs_filter(raw, 3)
    assert _residual_problems(filtered, 3) == []
    stats = ImagingStatistics("breast_mammo_cls", min_count=3)
    stats.load(load_site_config(config, "site-1"))
    offered = _as_site_sends(stats)
    assert _residual_problems(offered, 3) == []
    for result in (filtered, offered):
        statistics = fobs.loads(result[StC.STATS_1st_STATISTICS])
        groups = set(statistics[StC.STATS_COUNT])
        assert not groups & {"training", "validation", "label=0", "label=1"}  # split and label partitions
        assert ("vendor=ge" in groups) == (not hologic)  # all GE: the vendor partition has no remainder
        assert "label" not in statistics[StC.STATS_COUNT]["all"]  # one malignant case: no label statistics at all


def test_a_job_without_the_filter_and_min_count_0_still_gets_nothing_below_the_sites_floor(tmp_path):
    """The site's own code (the Statistics subclass FLARE's executor calls) applies max(job's min_count, the site's
    ``stats_min_count``): a job with no filter and min_count 0 does not get a 3-case vendor group."""
    config = make_site(tmp_path, n_cases=8)  # no stats_min_count: the default floor, 5
    cases = sorted((tmp_path / "site-1" / "cases").glob("case_*"))
    for case in cases[:3]:
        for f in (case / "dicom").glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            ds.save_as(f)
    assert load_site_config(config, "site-1").stats_min_count == DEFAULT_STATS_MIN_COUNT == 5
    stats = ImagingStatistics("prostate_seg", min_count=0)
    stats.load(load_site_config(config, "site-1"))
    sent = fobs.loads(_as_site_sends(stats)[StC.STATS_1st_STATISTICS])
    assert set(sent[StC.STATS_COUNT]) == {"all"}  # vendor (3 + 5) and split (7 + 1) partitions dropped
    assert sent[StC.STATS_COUNT]["all"]["matrix_rows"] == 8
    with pytest.raises(ValueError, match="min_count"):
        export(tmp_path / "jobs", task="prostate_seg", min_count=0)
    with pytest.raises(ValueError, match="min_count"):
        GroupMinCountCleanser(min_count=0)
    with pytest.raises(SystemExit):
        job_main(["stats_prostate", "--out", str(tmp_path / "jobs"), "--min-count", "0"])
    bad = {"data_root": str(tmp_path / "site-1"), "stats_min_count": 0}
    with pytest.raises(OncoFLError, match="stats_min_count"):
        parse_site_config(bad, site_name="site-1")


def test_the_kits_privacy_scopes_carry_the_statistics_filter_which_passes_model_updates_unchanged():
    """Every scope of the kit's privacy.json runs the statistics filter with the site's floor; the filter drops a
    below-minimum group from a statistics result and leaves a model update (a weights DXO) untouched."""
    policy = json.loads((TEMPLATES / "privacy.json").read_text())
    for scope in policy["scopes"]:
        stats_filters = [f for f in scope["task_result_filters"] if f["path"] == STATS_FILTER]
        assert [f["args"]["min_count"] for f in stats_filters] == [DEFAULT_STATS_MIN_COUNT]
    site_filter = SiteStatisticsPrivacyFilter(**stats_filters[0]["args"])
    weights = DXO(data_kind=DataKind.WEIGHTS, data={"w": np.ones(3)}).to_shareable()
    assert site_filter.process(weights, FLContext()) is weights
    assert from_shareable(weights).data["w"].tolist() == [1.0, 1.0, 1.0]
    counts = {"all": {"unreadable": 8, "matrix_rows": 8}, "vendor=ge": {"unreadable": 3, "matrix_rows": 3}}
    counts["vendor=siemens"] = {"unreadable": 5, "matrix_rows": 5}
    statistics = {StC.STATS_COUNT: counts, StC.STATS_FAILURE_COUNT: {g: dict.fromkeys(c, 0) for g, c in counts.items()}}
    result = DXO(data_kind=DataKind.STATISTICS, data=_result(statistics)).to_shareable()
    out = fobs.loads(from_shareable(site_filter.process(result, FLContext())).data[StC.STATS_1st_STATISTICS])
    assert set(out[StC.STATS_COUNT]) == {"all"}


def _result(statistics: dict, features: dict | None = None) -> dict:
    """A first-round statistics result as FLARE's executor builds it."""
    features = features or {g: [Feature(f, DataType.FLOAT) for f in per] for g, per in statistics["count"].items()}
    return {
        StC.STATISTICS_TASK_KEY: StC.STATS_1st_STATISTICS,
        StC.STATS_1st_STATISTICS: fobs.dumps(statistics),
        StC.STATS_FEATURES: fobs.dumps(features),
    }


# --- images, not datalist entries ------------------------------------------------------------------------------------


def test_three_nodules_of_one_ct_are_one_image_and_their_group_is_not_sent(tmp_path):
    """Lung: three nodule cases of one CT (the only malignant ones) are one image: its numbers count once per group,
    and the ``label=1`` group (3 cases, 1 image) is not sent at a minimum of 3."""
    scanner = replace(synthetic_lung.SITE_SCANNERS["site-1"], n_cases=6, matrix=48, coverage_mm=60.0)
    synthetic_lung.write_site(tmp_path, "site-1", scanner, seed=0)
    entries = [e for split in _datalist(tmp_path / "site-1").values() for e in split]
    entries = [{**e, "label": 0} for e in entries] + [{**entries[0], "label": 1} for _ in range(3)]
    entries[0]["label"] = 1
    datalist = {"training": entries[:-1], "validation": entries[-1:]}
    (tmp_path / "site-1" / "datalist.json").write_text(json.dumps(datalist))
    raw = _stats("lung_nodule_cls", _config(tmp_path, "site-1"))
    n_images = len({e["image"] for e in entries})  # the generator itself puts several nodules on some CTs
    assert raw.count("all", "unreadable") == len(entries) > n_images == raw.count("all", "matrix_rows")
    assert raw.count("label=1", "unreadable") == 4 and raw.count("label=1", "matrix_rows") == 1
    stats = ImagingStatistics("lung_nodule_cls", min_count=3)
    stats.load(load_site_config(_config(tmp_path, "site-1", floor=3), "site-1"))
    assert "label=1" not in stats.features() and "label=0" not in stats.features()


def test_a_group_of_two_unreadable_cases_and_one_readable_sends_no_intensity(tmp_path):
    """Three cases in validation, two of them unreadable: one image -- no statistics of that group, none of its
    intensities; the site's skipped cases are counted."""
    config = make_site(tmp_path, n_cases=8, stats_min_count=3)
    datalist = _datalist(tmp_path / "site-1")
    entries = datalist["training"] + datalist["validation"]
    datalist = {"training": entries[:5], "validation": entries[5:]}
    (tmp_path / "site-1" / "datalist.json").write_text(json.dumps(datalist))
    for entry in entries[5:7]:
        (tmp_path / "site-1" / entry["image"] / "IM_0003.dcm").write_bytes(b"not a DICOM file " * 10)
    stats = ImagingStatistics("prostate_seg", min_count=3)
    stats.load(load_site_config(config, "site-1"))
    assert stats.skipped == 2 and "validation" not in stats.features()
    assert stats.count("all", "unreadable") == 8 and stats.sum("all", "unreadable") == 2
    assert stats.count("all", "matrix_rows") == 6


# --- vocabulary, feature list, names, stddev, datalist ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "name"),
    [
        (MultiValue(str, ["B30f", "3"]), "B30f"),
        (["FC13", "AIDR"], "FC13"),
        ("Br40d", "Br40"),
        ("Br40f", "Br40"),
        ("Bl57d", "Bl57"),
        ("Qr40d", "Qr40"),
        ("Hr40f", "Hr40"),
        ("I30f", "I30f"),
        ("H30s", "H30s"),
        (MultiValue(str, [f"{MARKER}9", "3"]), "other"),
        (MultiValue(str, []), "unknown"),
    ],
)
def test_ct_kernels_from_pydicom_multivalues_and_modern_siemens_names(kernel, name):
    assert kernel_name(kernel) == name


def test_the_feature_list_names_no_feature_whose_counts_were_cleansed():
    """A kept group's feature list does not name a feature cleansed as below the minimum (one field strength)."""
    counts = {"all": {"unreadable": 6, "matrix_rows": 6, "field_strength_t": 1}}
    statistics = {StC.STATS_COUNT: counts, StC.STATS_FAILURE_COUNT: {"all": dict.fromkeys(counts["all"], 0)}}
    statistics[StC.STATS_SUM] = {"all": {"unreadable": 0.0, "matrix_rows": 384.0, "field_strength_t": 3.0}}
    out = _through_the_jobs_filter(_result(statistics), 3)
    features = fobs.loads(out[StC.STATS_FEATURES])
    assert [f.feature_name for f in features["all"]] == ["unreadable", "matrix_rows"]
    assert "field_strength_t" not in fobs.loads(out[StC.STATS_1st_STATISTICS])[StC.STATS_COUNT]["all"]


class _LeakyStatistics(Statistics):
    """A statistics generator that names a group and a feature from header text (what ours never does)."""

    def features(self):
        names = ["matrix_rows", f"{MARKER}_feature"]
        return {g: [Feature(n, DataType.FLOAT) for n in names] for g in ("all", f"vendor={MARKER}")}

    def count(self, dataset_name, feature_name):
        return 10

    def sum(self, dataset_name, feature_name):
        return 640.0


def test_a_group_or_feature_named_outside_the_vocabulary_never_leaves(caplog):
    """``vendor=<PHI>`` and a PHI feature name from a generator are dropped by the filter, with a fixed line in the
    site's log that does not quote them."""
    result = _as_site_sends(_LeakyStatistics(), names=("count", "sum"))
    assert MARKER in repr(fobs.loads(result[StC.STATS_1st_STATISTICS]))
    with caplog.at_level(logging.WARNING):
        out = _through_the_jobs_filter(result, 3)
    text = repr(fobs.loads(out[StC.STATS_1st_STATISTICS])) + repr(fobs.loads(out[StC.STATS_FEATURES]))
    assert MARKER not in text and "matrix_rows" in text
    assert REFUSED in caplog.text and MARKER not in caplog.text


def test_stddev_is_the_sample_standard_deviation_and_zero_for_one_value():
    stats = ImagingStatistics("prostate_seg")
    stats.data = {"all": {"matrix_rows": np.array([2.0, 4.0, 6.0])}, "training": {"matrix_rows": np.array([5.0])}}
    assert stats.stddev("all", "matrix_rows") == pytest.approx(2.0)  # ddof=1, as FLARE's global stddev
    assert stats.stddev("training", "matrix_rows") == 0.0


def test_a_malformed_entry_and_a_missing_validation_split_are_skipped_not_fatal(tmp_path):
    config = make_site(tmp_path, n_cases=4, stats_min_count=1)
    entries = [e for split in _datalist(tmp_path / "site-1").values() for e in split]
    datalist = {"training": [*entries, {"image": 5}, "not an object"]}
    (tmp_path / "site-1" / "datalist.json").write_text(json.dumps(datalist))
    stats = _stats("prostate_seg", config)
    assert stats.skipped == 2 and "validation" not in stats.data
    assert stats.count("all", "unreadable") == 6 and stats.count("all", "matrix_rows") == 4
