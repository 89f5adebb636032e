"""Every federated algorithm, DP-SGD with its budget, and a poisoned site, in the FLARE simulator on real WDBC data.

The six jobs run side by side (each its own simulator process, workspace and copy of the data), so the whole file
costs about as much as two sequential simulator runs.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oncofl import wdbc
from oncofl.report import Scorer, job_settings, run_federated

pytestmark = pytest.mark.slow

ROUNDS = 4
# measured held-out accuracy of every algorithm at 4 rounds: 0.97-0.99 (docs/evidence/breast_wdbc); initial 0.47 on
# seed 0 (random weights; the majority class is 0.63)
MIN_ACCURACY = 0.93
# epsilon after rounds 0, 1, 2, 3 at the three sites: <= 1.07, 1.55, 1.92, 2.25: the budget of 2 stops it after round 2
DP = {"dp_epsilon": 2.0, "dp_noise_multiplier": 5.0, "dp_max_grad_norm": 5.0}
DRILL = {"sites": ["site-3"], "nan_rounds": [0, 2], "scale_rounds": [1, 3], "factor": 100.0}
JOB = {"num_rounds": ROUNDS, "min_clients": 3}  # every site in every round, however loaded the machine
CONFIGS = {
    "fedprox": {"algorithm": "fedprox"},
    "fedopt": {"algorithm": "fedopt", "server_lr": 0.02},
    "scaffold": {"algorithm": "scaffold"},
    "fedbn": {"algorithm": "fedbn"},
    "dp": DP,
    "poisoned": {"fault": DRILL},
    "percentile": {"privacy_filter": "percentile"},
    "svt": {"privacy_filter": "svt"},
}
# the percentile filter moves each weight by at most gamma = 0.01 a round, so it learns slower: with the seeded initial
# model (held-out 0.469) it scored 0.743 after 4 rounds and 0.823 after 6 (the same in 4 runs side by side)
PERCENTILE_ROUNDS = 6
JOB_OVERRIDES = {"percentile": {"num_rounds": PERCENTILE_ROUNDS}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("algorithms")
    data = wdbc.generate(root / "data", seed=0)
    with ThreadPoolExecutor(max_workers=len(CONFIGS)) as pool:
        futures = {
            name: pool.submit(
                run_federated, "breast_wdbc", name, opts, data, root / name, {**JOB, **JOB_OVERRIDES.get(name, {})}
            )
            for name, opts in CONFIGS.items()
        }
        # leave one site out (the evidence report's unseen-hospital rows): FedAvg on site-1 and site-2 only
        futures["without site-3"] = pool.submit(
            run_federated, "breast_wdbc", "without site-3", {}, data, root / "loso", {**JOB, "min_clients": 2},
            ["site-1", "site-2"], "site-3",
        )  # fmt: skip
        results = {name: f.result() for name, f in futures.items()}
    settings = job_settings(next((root / "fedprox" / "jobs").iterdir()))
    results["initial"] = Scorer("breast_wdbc", data, settings).holdout(None)
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name}: held-out {r['held_out']:.3f}, per site {r['per_site']}, {r['seconds']:.0f} s")
    return results


def site_logs(result: dict) -> dict[str, str]:
    """Each site's log of a run (the server's log is ``<workspace>/server/log.txt``)."""
    workspace = Path(result["server_log"]).parent.parent
    return {s: (workspace / s / "log.txt").read_text() for s in ("site-1", "site-2", "site-3")}


def logged_values(text: str, prefix: str) -> list[float]:
    return [float(v) for v in re.findall(re.escape(prefix) + r" ([-+0-9.e]+)", text)]


@pytest.mark.parametrize("name", ["fedprox", "fedopt", "scaffold"])
def test_each_algorithm_learns_a_global_model(runs, name):
    result = runs[name]
    assert result["held_out"] >= MIN_ACCURACY and result["held_out"] - runs["initial"] >= 0.3
    assert min(result["per_site"].values()) >= 0.85
    assert len(result["curve"]) == ROUNDS  # every round reached every site
    # the mechanism itself acted, not only an outcome FedAvg would reach too
    if name == "fedopt":  # FLARE's FedOpt generator stepped the server's Adam every round
        lines = open(result["server_log"]).read().splitlines()
        assert sum("FedOpt (torch.optim.Adam" in line and "server model update" in line for line in lines) == ROUNDS
    else:  # every site, every round: a non-zero proximal term / control variate update
        prefix = "FedProx mu=0.01, proximal term" if name == "fedprox" else "SCAFFOLD control update norm"
        for site, log in site_logs(result).items():
            values = logged_values(log, prefix)
            assert len(values) == ROUNDS and all(v > 0 for v in values), (site, values)


def test_flare_percentile_filter_shares_a_tenth_of_each_update_and_still_learns(runs):
    # sharing only the largest 10 % of each update, each clipped to 0.01, slows learning: measured 0.823 held-out
    # after 6 rounds (0.94 after 10 rounds, docs/evidence/breast_wdbc); the sites' validation accuracy of the global
    # model went 0.364 (the initial model) -> 0.820
    result = runs["percentile"]
    assert result["held_out"] >= 0.75 and result["held_out"] - runs["initial"] >= 0.3
    assert len(result["curve"]) == PERCENTILE_ROUNDS
    assert result["curve"][-1] > result["curve"][0] + 0.3
    for site, log in site_logs(result).items():  # FLARE's filter cut every update this site sent
        assert log.count("Max abs delta_w") == PERCENTILE_ROUNDS, site


def test_flare_svt_filter_runs_on_every_update_and_the_job_completes(runs):
    result = runs["svt"]
    assert len(result["curve"]) == ROUNDS and all(0 <= v <= 1 for v in result["curve"])
    for site, log in site_logs(result).items():  # the sparse vector technique chose what each update shares
        assert log.count("SVT acceptance completed") == ROUNDS, site


def test_fedbn_personalized_models_learn_and_cross_site_reports_both_views(runs):
    result = runs["fedbn"]
    assert result["held_out"] >= MIN_ACCURACY  # mean over the three sites' personalized models
    for data_site, row in result["cross_site"].items():
        for model, metrics in row.items():
            assert "val_accuracy" in metrics and "val_accuracy_personalized" in metrics, (data_site, model)


def test_dp_run_reports_epsilon_and_stops_at_the_budget(runs):
    privacy = runs["dp"]["privacy.json"]
    assert privacy["epsilon_budget"] == DP["dp_epsilon"]
    assert privacy["stopped_after_round"] == 2
    last = {site: entries[-1] for site, entries in privacy["sites"].items()}
    assert sorted(last) == ["site-1", "site-2", "site-3"]
    assert all(0 < e["epsilon"] <= DP["dp_epsilon"] for e in last.values())  # nobody went past the budget
    assert any(e["epsilon_next_round"] > DP["dp_epsilon"] for e in last.values())  # and another round would have
    for entries in privacy["sites"].values():  # epsilon only grows
        assert [e["epsilon"] for e in entries] == sorted(e["epsilon"] for e in entries)
    assert len(runs["dp"]["curve"]) == privacy["stopped_after_round"] + 1
    server_log = open(runs["dp"]["server_log"]).read()
    assert "privacy budget:" in server_log and "training stops after round" in server_log
    assert runs["dp"]["cross_site"]  # cross-site evaluation still ran on the model trained within the budget


def test_a_site_sending_nan_and_100x_updates_cannot_wreck_the_global_model(runs):
    result = runs["poisoned"]
    rounds = result["aggregation.json"]["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS))
    for r in rounds:
        assert r["aggregated"] == ["site-1", "site-2"], r
        if r["round"] in DRILL["nan_rounds"]:
            assert "non-finite" in r["refused"]["site-3"]
        else:
            assert "median" in r["rejected"]["site-3"]
    server_log = open(result["server_log"]).read()
    assert "update from site-3 refused: non-finite values" in server_log
    assert "update from site-3 rejected: update norm" in server_log
    # the participation ledger counts site-3 in no round: its update never went into the model
    ledger = runs["poisoned"]["participation.json"]
    assert [r["contributed"] for r in ledger["rounds"]] == [["site-1", "site-2"]] * ROUNDS
    assert ledger["excluded"] == ["site-3"] and ledger["dropped"] == []
    assert result["held_out"] >= MIN_ACCURACY


def test_leave_one_site_out_trains_without_the_site_and_scores_it_as_unseen(runs):
    result = runs["without site-3"]
    # site-3 took no part: no round had it, its workspace was never made, its validation split is the unseen score
    assert all(r["contributed"] == ["site-1", "site-2"] for r in result["participation.json"]["rounds"])
    assert not (Path(result["server_log"]).parent.parent / "site-3").exists()
    assert set(result["per_site"]) == {"site-1", "site-2"} and set(result["unseen"]) == {"site-3"}
    assert result["held_out"] >= MIN_ACCURACY and result["unseen"]["site-3"] >= 0.85
    # the model the job selected by the sites' validation accuracy is scored too, with the round it came from
    assert 0 <= result["best"]["round"] < ROUNDS and result["best"]["held_out"] >= MIN_ACCURACY
    assert result["subgroups"] == {}  # tabular data: no scanner vendors to group by
