"""Datalist hardening (issue 17 section 3): labels that are not what the task needs, paths outside data_root."""

import json
import os
from pathlib import Path

import pytest

from oncofl.data import load_split, read_datalist
from oncofl.datacheck import check_site
from oncofl.errors import SiteDataErrors
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task
from tests.conftest import make_site


def edit_datalist(config, split: str, index: int, **fields) -> None:
    datalist = json.loads(config.datalist.read_text())
    datalist[split][index].update(fields)
    config.datalist.write_text(json.dumps(datalist))  # json writes NaN / Infinity literals, as Python's json reads


@pytest.mark.parametrize(
    "label, problem",
    [
        (float("nan"), "label is NaN or Infinity, not a class number or a mask file"),
        (float("inf"), "label is NaN or Infinity, not a class number or a mask file"),
        (1, "label is a number but this task needs a mask file"),
    ],
)
def test_a_segmentation_label_that_is_not_a_mask_file_is_refused_with_item_and_fix(small_site, label, problem):
    config = load_site_config(small_site, site_name="site-1")
    edit_datalist(config, "training", 1, label=label)
    with pytest.raises(SiteDataErrors) as info:
        read_datalist(config, label_kind="mask")
    (error,) = info.value.errors
    assert error.item == "training case #1" and error.problem == problem
    assert "mask file" in error.fix and "training case #1" in info.value.server_message()


def test_the_segmentation_task_refuses_a_class_number_when_it_loads_the_split(small_site):
    """The executor's path: the task says it needs masks, so load_split refuses the case (it crashed with a
    TypeError before), naming the case and the fix."""
    config = load_site_config(small_site, site_name="site-1")
    edit_datalist(config, "training", 1, label=1)
    task = get_task("prostate_seg")
    assert task.label_kind == "mask"
    cases = read_datalist(config)  # the task is not known here: a number is a valid class label
    with pytest.raises(SiteDataErrors) as info:
        load_split(cases["training"], task, task.params(None), config)
    (error,) = info.value.errors
    assert error.item == "training case #1" and error.problem == "label is a number but this task needs a mask file"
    assert "NIfTI or DICOM-SEG" in error.fix


def test_nan_label_is_flagged_by_the_site_data_check(small_site):
    config = load_site_config(small_site, site_name="site-1")
    edit_datalist(config, "validation", 0, label=float("nan"))
    report = check_site(config, decode=False)
    problem = "label is NaN or Infinity, not a class number or a mask file (SiteDataError)"
    assert report.summary()["unreadable"] == {problem: 1}
    assert report.problems[0].item == "validation case #0"


def outside_variants(root: Path, config) -> dict[str, str]:
    """Datalist 'image' values that all reach a series stored outside data_root."""
    datalist = json.loads(config.datalist.read_text())
    inside = config.data_root / datalist["training"][0]["image"]
    outside = root / "elsewhere" / "dicom"
    outside.parent.mkdir()
    os.rename(inside, outside)
    inside.mkdir()  # the original folder, now holding only links to files outside
    for f in outside.iterdir():
        (inside / f.name).symlink_to(f)
    (config.data_root / "linked").symlink_to(outside, target_is_directory=True)
    return {
        "absolute": str(outside),
        "dotdot": os.path.relpath(outside, config.data_root),
        "symlinked folder": "linked",
        "symlinked files": datalist["training"][0]["image"],
    }


def test_paths_outside_data_root_are_refused_unless_allowed(tmp_path):
    config_path = make_site(tmp_path, n_cases=3)
    config = load_site_config(config_path, site_name="site-1")
    variants = outside_variants(tmp_path, config)
    for how, image in variants.items():
        edit_datalist(config, "training", 0, image=image)
        with pytest.raises(SiteDataErrors) as info:
            read_datalist(config)
        (error,) = info.value.errors
        assert error.problem.startswith("image path resolves outside data_root"), how
        assert error.item == "training case #0" and "allow_paths_outside_data_root" in error.fix
        assert str(tmp_path) not in info.value.server_message()
        report = check_site(config, decode=False)
        assert sum(report.summary()["unreadable"].values()) == 1 and report.summary()["modalities"] == {"MR": 2}
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "allow_paths_outside_data_root": True}))
    allowed = load_site_config(config_path, site_name="site-1")
    for how, image in variants.items():
        edit_datalist(allowed, "training", 0, image=image)
        assert read_datalist(allowed)["training"][0].image == allowed.data_root / image, how
        assert check_site(allowed, decode=False).ok, how


def test_label_path_outside_data_root_is_refused(tmp_path):
    config = load_site_config(make_site(tmp_path, n_cases=3), site_name="site-1")
    datalist = json.loads(config.datalist.read_text())
    label = config.data_root / datalist["validation"][0]["label"]
    moved = tmp_path / "label.nii.gz"
    os.rename(label, moved)
    label.symlink_to(moved)
    with pytest.raises(SiteDataErrors) as info:
        read_datalist(config)
    assert info.value.errors[0].problem.startswith("label path resolves outside data_root")


def test_site_config_options_are_validated(tmp_path):
    config_path = make_site(tmp_path, n_cases=2)
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "allow_paths_outside_data_root": "yes", "max_decoded_image_mb": 0}))
    with pytest.raises(Exception) as info:
        load_site_config(config_path, site_name="site-1")
    message = str(info.value)
    assert "'allow_paths_outside_data_root' must be true or false" in message
    assert "'max_decoded_image_mb' must be an integer from 1 to 1048576" in message
