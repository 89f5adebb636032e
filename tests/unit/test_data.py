import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from oncofl.data import cache_key, load_split, read_datalist
from oncofl.errors import SiteDataError, SiteDataErrors
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task
from tests.conftest import make_site

TASK = get_task("prostate_seg")
PARAMS = TASK.params(None)


def test_datalist_builds_case_refs(small_site):
    config = load_site_config(small_site, site_name="site-1")
    cases = read_datalist(config)
    assert [len(cases["training"]), len(cases["validation"])] == [3, 1]
    first = cases["training"][0]
    assert first.image.is_dir() and first.label.is_file() and first.item == "training case #0"


def test_empty_training_split_is_refused(small_site):
    config = load_site_config(small_site, site_name="site-1")
    config.datalist.write_text(json.dumps({"training": [], "validation": [{"image": "a", "label": "b"}]}))
    with pytest.raises(SiteDataError, match="no 'training' cases") as info:
        read_datalist(config)
    assert "[site-1]" in info.value.server_message() and "Fix:" in info.value.server_message()
    assert str(config.datalist) in info.value.local_message()  # the site's IT sees which datalist
    assert str(config.datalist) not in info.value.server_message()


def test_all_missing_files_are_listed_together(small_site):
    config = load_site_config(small_site, site_name="site-1")
    datalist = json.loads(config.datalist.read_text())
    datalist["training"][0]["image"] = "cases/gone/dicom"
    datalist["training"][2]["label"] = "cases/gone/label.nii.gz"
    config.datalist.write_text(json.dumps(datalist))
    with pytest.raises(SiteDataErrors) as info:
        read_datalist(config)
    local = info.value.local_message()
    assert "2 case(s) could not be used" in local
    assert "training case #0: image does not exist" in local and "training case #2: label does not exist" in local
    assert "cases/gone" in local and "cases/gone" not in info.value.server_message()


def test_unreadable_dicom_fails_with_site_file_and_fix(tmp_path):
    config = load_site_config(make_site(tmp_path), site_name="site-1")
    case = read_datalist(config)["training"][1]
    victim = sorted(case.image.iterdir())[4]
    victim.write_bytes(b"\x00" * 64)
    with pytest.raises(SiteDataErrors) as info:
        load_split(read_datalist(config)["training"], TASK, PARAMS, config)
    err = info.value.errors[0]
    assert err.site == "site-1" and err.item == "training case #1, image"
    assert err.path == str(victim) and "re-export" in err.fix
    server = info.value.server_message()
    assert "[site-1]" in server and "training case #1, image" in server and str(tmp_path) not in server


def test_skip_policy_keeps_the_good_cases_and_reports_the_bad(tmp_path):
    config = load_site_config(make_site(tmp_path, on_unreadable_case="skip"), site_name="site-1")
    cases = read_datalist(config)["training"]
    (sorted(cases[0].image.iterdir())[0]).write_bytes(b"garbage")
    split = load_split(cases, TASK, PARAMS, config)
    assert len(split) == 2 and len(split.skipped) == 1 and split.skipped[0].item == "training case #0, image"


def test_label_shape_mismatch_names_both_shapes(tmp_path):
    config = load_site_config(make_site(tmp_path), site_name="site-1")
    case = read_datalist(config)["validation"][0]
    label = nib.load(case.label)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :-2], label.affine), case.label)
    with pytest.raises(SiteDataErrors) as info:
        load_split([case], TASK, PARAMS, config)
    err = info.value.errors[0]
    assert err.item == "validation case #0, label" and err.problem == "label's shape differs from its image's"
    assert "label 64x64x14, image 64x64x16" in err.local_message()  # the shapes stay in the local log
    assert "voxel grid" in err.fix
    assert err.path == str(case.label)  # the local log names the file; the server message does not
    assert str(case.label) in err.local_message() and str(case.label) not in info.value.server_message()
    assert "64x64x14" not in info.value.server_message()


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path):
    config = load_site_config(make_site(tmp_path, n_cases=3), site_name="site-1")
    cases = read_datalist(config)["training"]
    decoded = []

    def counting_load(image, label, params):
        decoded.append(image)
        return TASK.load_case(image, label, params)

    task = replace(TASK, load_case=counting_load)
    first = load_split(cases, task, PARAMS, config)
    assert len(decoded) == 2 and len(list(config.cache_dir.glob("*.npz"))) == 2
    second = load_split(cases, task, PARAMS, config)
    assert len(decoded) == 2  # the second load (next round, next job) decodes nothing
    np.testing.assert_array_equal(first.images, second.images)
    old_key = cache_key(cases[0], TASK, PARAMS)
    cases[0].label.touch()  # keyed by content: a copy or touch keeps the entry
    assert cache_key(cases[0], TASK, PARAMS) == old_key
    label = nib.load(cases[0].label)  # a corrected mask must not reuse the old preprocessing
    edited = np.asarray(label.dataobj).copy()
    edited[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(edited, label.affine), cases[0].label)
    assert cache_key(cases[0], TASK, PARAMS) != old_key
    assert cache_key(cases[0], TASK, {**PARAMS, "volume_size": [32, 32, 16]}) != cache_key(cases[0], TASK, PARAMS)


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    config = load_site_config(make_site(tmp_path, n_cases=2), site_name="site-1")
    cases = read_datalist(config)["training"]
    good = load_split(cases, TASK, PARAMS, config)
    for entry in config.cache_dir.glob("*.npz"):
        entry.write_bytes(b"not a zip")
    np.testing.assert_array_equal(load_split(cases, TASK, PARAMS, config).images, good.images)


def _hostile(tmp_path, policy: str):
    from tests.phi_markers import SITE_FIELDS, hostile_site

    root = tmp_path / "ZQXPHI root, North"  # the site's own roots hold a marker, a space and a comma
    config = load_site_config(make_site(root, n_cases=7, on_unreadable_case=policy, **SITE_FIELDS), site_name="site-1")
    return config, hostile_site(config.data_root)


def test_every_kind_of_bad_case_is_skipped_and_reported_by_position_and_type_only(tmp_path, caplog):
    """on_unreadable_case=skip holds for every kind of failure (not only our own SiteDataError): a truncated file, a
    file the site may not read (PermissionError), a name in a numeric header (ValueError inside the reader) and a
    pixel encoding no installed decoder reads. What may leave the site names none of the planted markers."""
    from oncofl.errors import SiteDataErrors
    from tests.phi_markers import FAILURES, MARKER

    config, items = _hostile(tmp_path, "skip")
    cases = read_datalist(config)
    with caplog.at_level("WARNING"):
        split = load_split(cases["training"], TASK, PARAMS, config)
    assert len(split) == len(cases["training"]) - len(FAILURES) > 0 and len(split.skipped) == len(FAILURES)
    assert sorted(e.item for e in split.skipped) == sorted(f"{items[k]}, image" for k in FAILURES)
    report = SiteDataErrors(split.skipped, site="site-1").server_message()
    assert MARKER not in report and "root, North" not in report
    for e in split.skipped:
        assert MARKER not in e.server_message() and MARKER in e.local_message()  # the local log keeps the detail
    assert "PermissionError" in report  # other exceptions named by type (a name in a numeric header is now refused
    # by the reader's own geometry check, "ImageOrientationPatient must hold 6 finite numbers (DicomReadError)")
    assert MARKER in caplog.text  # ... and logged at the site with their traceback


def test_every_kind_of_bad_case_fails_the_split_together_without_markers(tmp_path):
    from tests.phi_markers import FAILURES, MARKER

    config, items = _hostile(tmp_path, "fail")
    with pytest.raises(SiteDataErrors) as info:
        load_split(read_datalist(config)["training"], TASK, PARAMS, config)
    text = info.value.server_message()
    assert MARKER not in text and all(f"{items[k]}, image:" in text for k in FAILURES)
    assert MARKER in info.value.local_message()
