import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from oncofl import synthetic_lung as sl
from oncofl.dicom.series import read_series
from oncofl.errors import SiteDataError
from oncofl.tasks import get_task
from oncofl.tasks.lung_nodule_cls import LungNoduleNet

TASK = get_task("lung_nodule_cls")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung")
    sl.write_site(root, "site-2", replace(sl.SITE_SCANNERS["site-2"], n_cases=3), seed=2)
    return root / "site-2"


def test_ct_is_hu_correct_and_annotations_match_the_datalist(site):
    datalist = json.loads((site / "datalist.json").read_text())
    entries = datalist["validation"] + datalist["training"]  # the datalist's validation cases come first
    with open(site / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(entries)
    for row, entry in zip(rows, entries):
        assert [float(row[k]) for k in ("coordX", "coordY", "coordZ")] == entry["center_mm"]
        assert int(row["malignant"]) == entry["label"]
    volume = read_series(site / entries[0]["image"])
    assert volume.modality == "CT" and volume.spacing[2] == pytest.approx(sl.SITE_SCANNERS["site-2"].slice_mm)
    assert volume.array.min() < -900 and np.median(volume.array) < -500  # air and lung in HU


def test_patch_is_centred_on_the_nodule(site):
    entries = json.loads((site / "datalist.json").read_text())["training"]
    params = TASK.params(None)
    for entry in entries:
        patch, label = TASK.load_case(site / entry["image"], float(entry["label"]), {**params, **entry})
        assert patch.shape == (1, 24, 24, 24) and label.tolist() == [entry["label"]]
        center = patch[0, 10:14, 10:14, 10:14].mean()
        assert center > patch[0].mean()  # the nodule is denser than its surroundings (lung window)


def test_bad_annotations_are_refused(site):
    entry = json.loads((site / "datalist.json").read_text())["training"][0]
    params = TASK.params(None)
    with pytest.raises(SiteDataError, match="no 'center_mm'"):
        TASK.load_case(site / entry["image"], 1.0, params)
    with pytest.raises(SiteDataError, match="outside the CT volume"):
        TASK.load_case(site / entry["image"], 1.0, {**params, "center_mm": [900.0, 0.0, 0.0]})


def test_network_has_a_strided_stem():
    net = LungNoduleNet()
    assert net.conv1.stride == (2, 2, 2)
    assert net(torch.rand(2, 1, 24, 24, 24)).shape == (2, 2)
