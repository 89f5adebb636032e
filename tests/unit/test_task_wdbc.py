import json

import numpy as np
import pytest
import torch

from oncofl import wdbc
from oncofl.errors import SiteDataError
from oncofl.tasks import get_task
from oncofl.tasks.breast_wdbc import WDBCNet, prepare

TASK = get_task("breast_wdbc")


def test_sites_are_non_iid_and_holdout_is_disjoint(tmp_path):
    root = wdbc.generate(tmp_path, seed=3)
    holdout, sites = wdbc.split(3)
    all_site = np.concatenate(list(sites.values()))
    assert len(set(all_site)) == len(all_site) and not set(all_site) & set(holdout)
    assert len(all_site) + len(holdout) == 569
    ratios = []
    for site in wdbc.SITES:
        datalist = json.loads((root / site / "datalist.json").read_text())
        labels = [e["label"] for e in datalist["training"] + datalist["validation"]]
        ratios.append(sum(labels) / len(labels))
    assert ratios[0] > 0.5 > ratios[1] > ratios[2]  # malignant share differs by site


def test_load_case_reads_features_and_refuses_bad_rows(tmp_path):
    root = wdbc.generate(tmp_path, seed=0)
    entry = json.loads((root / "site-1" / "datalist.json").read_text())["training"][0]
    x, y = TASK.load_case(root / "site-1" / entry["image"], float(entry["label"]), {})
    assert x.shape == (30,) and x.dtype == np.float32 and y.tolist() == [entry["label"]]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1.0,2.0\n")
    with pytest.raises(SiteDataError, match=r"expected 30 finite non-negative features \[found 2 values\]"):
        TASK.load_case(bad, 1.0, {})
    with pytest.raises(SiteDataError, match="label must be 0"):
        TASK.load_case(root / "site-1" / entry["image"], 2.0, {})


def test_step_weighted_fedavg_of_site_moments_is_the_pooled_standardization():
    rng = np.random.default_rng(0)
    sites = [torch.tensor(rng.lognormal(size=(n, 30)), dtype=torch.float32) for n in (40, 64, 96)]
    models = []
    for x in sites:
        model = WDBCNet()
        prepare(model, x)
        models.append(model)
    weights = torch.tensor([len(x) for x in sites], dtype=torch.float32)  # NUM_STEPS is proportional to cases
    weights /= weights.sum()
    pooled = torch.cat(sites)
    for key, expected in (("input_mean", pooled.mean(0)), ("input_sq_mean", (pooled**2).mean(0))):
        averaged = sum(w * m.state_dict()[key] for w, m in zip(weights, models))
        torch.testing.assert_close(averaged, expected, rtol=1e-4, atol=1e-4)
    model = WDBCNet()
    model.load_state_dict(models[0].state_dict())
    prepare(model, sites[2])  # once the global model carries statistics, a site never overwrites them
    torch.testing.assert_close(model.input_mean, models[0].input_mean)


def test_the_initial_standardization_maps_the_published_feature_ranges_onto_three_sds():
    x, _, _ = wdbc.load()
    model = WDBCNet()
    mean, std = model.standardization()
    z = (torch.tensor(np.log1p(x), dtype=torch.float32) - mean) / std
    assert float(model.stats_ready) == 0.0  # sites that may compute statistics still replace it in round 0
    # constants, not state: what travels starts at 0 / 1 whatever the filters share of it
    assert set(model.state_dict()) == {
        "input_mean",
        "input_sq_mean",
        "stats_ready",
        *(f"net.{k}" for k in model.net.state_dict()),
    }
    assert float(model.input_mean.abs().max()) == 0.0
    # the range rule: each documented range maps onto [-3, 3] (rounded there to 3 decimals)
    assert z.abs().max() <= 3 * 1.03
    assert z.min(0).values.max() < -1.5 and z.max(0).values.min() > 1.5  # and the domain is not far too wide
    # the spread this gives is the sd it stands in for, within a factor of 2.5 for every feature (measured 0.49-1.37)
    spread = z.std(0)
    assert float(spread.min()) > 0.4 and float(spread.max()) < 2.5
