import json
from dataclasses import replace

import numpy as np
import pydicom
import pytest
import torch
from sklearn.metrics import roc_auc_score

from oncofl import synthetic_mammo as sm
from oncofl.errors import SiteDataError
from oncofl.tasks import get_task
from oncofl.tasks._classification import auc, sensitivity_at_specificity
from oncofl.tasks.breast_mammo_cls import MammoNet

TASK = get_task("breast_mammo_cls")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("mammo")
    for name in ("site-1", "site-2"):
        sm.write_site(root, name, replace(sm.SITE_VENDORS[name], n_cases=8), seed=4)
    return root


def test_generator_writes_vendor_mg_dicom(site):
    for name in ("site-1", "site-2"):
        vendor = sm.SITE_VENDORS[name]
        entries = json.loads((site / name / "datalist.json").read_text())
        entries = entries["training"] + entries["validation"]
        for entry in entries:
            ds = pydicom.dcmread(site / name / entry["image"])
            assert (
                ds.Modality == "MG"
                and ds.SOPClassUID == sm.MG_SOP
                and ds.PhotometricInterpretation == vendor.photometric
            )
            assert ds.ImageLaterality in ("L", "R") and ds.ViewPosition in ("CC", "MLO")
            assert (ds.Rows, ds.Columns) == vendor.size and ds.BitsStored == vendor.bits
            assert ds.PatientOrientation[0] == ("P" if ds.ImageLaterality == "R" else "A")
        assert {e["label"] for e in entries} <= {0, 1}


def test_full_detector_size_is_reachable():
    assert sm.SITE_VENDORS["site-1"].scaled(16).size == sm.FULL_SIZE


def test_load_case_gives_canonical_square_images(site):
    entries = json.loads((site / "site-2" / "datalist.json").read_text())["training"]
    for entry in entries:
        image, label = TASK.load_case(site / "site-2" / entry["image"], float(entry["label"]), {"image_size": 64})
        assert image.shape == (1, 64, 64) and label.tolist() == [entry["label"]]
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image[0, :, :8].mean() > image[0, :, -8:].mean()  # chest wall (tissue) at column 0, R or L
    with pytest.raises(SiteDataError, match="label must be 0"):
        TASK.load_case(site / "site-2" / entries[0]["image"], 3.0, {"image_size": 64})


def test_auc_and_sensitivity_match_their_definitions():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 2, 200))
    logits = torch.tensor(rng.normal(size=(200, 2)) + labels.numpy()[:, None] * [0, 1.0])
    probs = torch.softmax(logits, 1)[:, 1].numpy()
    assert auc(logits, labels[:, None]) == pytest.approx(roc_auc_score(labels.numpy(), probs), abs=1e-6)
    threshold = np.quantile(probs[labels.numpy() == 0], 0.9)
    expected = (probs[labels.numpy() == 1] > threshold).mean()
    assert sensitivity_at_specificity(logits, labels[:, None], 0.9) == pytest.approx(expected, abs=1e-6)


def test_network_default_is_densenet121_and_small_variant_runs():
    assert sum(p.numel() for p in MammoNet().parameters()) > 6_000_000
    small = MammoNet(init_features=16, growth_rate=8, block_config=(2, 2, 2))
    assert small(torch.rand(2, 1, 64, 64)).shape == (2, 2)
