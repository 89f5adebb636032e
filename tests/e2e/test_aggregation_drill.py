"""One FLARE simulator run on real WDBC data in which site-3 lies about its step count and sends a 100x update.

Round 0: site-3 claims a non-numeric step count (refused); round 1: it claims 1e30 steps (aggregated, its weight
capped); round 2: its update is scaled 100x (rejected as an outlier). The rounds go on, the global model stays
finite, ``aggregation.json`` names each decision, and neither the participation ledger nor the best-model selection
counts site-3 in the rounds its update was not used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oncofl import wdbc
from oncofl.evaluation import load_checkpoint
from oncofl.report import run_federated

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]
DRILL = {"sites": ["site-3"], "steps_rounds": [0, 1], "steps": ["many", 1e30], "scale_rounds": [2], "factor": 100.0}


def test_a_site_lying_about_its_steps_or_scaling_its_update_cannot_stall_or_break_the_federation(tmp_path):
    data = wdbc.generate(tmp_path / "data", seed=0)
    result = run_federated(
        "breast_wdbc", "drill", {"fault": DRILL}, data, tmp_path / "run", {"num_rounds": 3, "min_clients": 3}
    )
    rounds = result["aggregation.json"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert "the number of local steps is a str" in rounds[0]["refused"]["site-3"]
    assert rounds[1]["aggregated"] == SITES and "site-3" in rounds[1]["weights"]
    assert "steps claimed -> weight" in rounds[1]["weights"]["site-3"]
    assert "median" in rounds[2]["rejected"]["site-3"]
    assert rounds[0]["aggregated"] == rounds[2]["aggregated"] == ["site-1", "site-2"]

    job_dir = Path(result["server_log"]).parent / "simulate_job"
    ledger = json.loads((job_dir / "participation.json").read_text())
    assert [r["contributed"] for r in ledger["rounds"]] == [SITES[:2], SITES, SITES[:2]]
    assert [sorted(r["excluded"]) for r in ledger["rounds"]] == [["site-3"], [], ["site-3"]]
    assert ledger["dropped"] == [] and ledger["excluded"] == ["site-3"]

    weights = load_checkpoint(job_dir / "app_server" / "FL_global_model.pt")
    assert all(np.all(np.isfinite(np.asarray(v))) for v in weights.values())
    server_log = Path(result["server_log"]).read_text()
    assert "update from site-3 refused: the number of local steps is a str" in server_log
    assert "weight capped: site-3" in server_log
    assert "best-model selection leaves out the scores of site-3" in server_log  # the selector acted in round 2
    assert "1 of 3 sites" not in server_log and "update from site-3 not used by the aggregator" in server_log
    for site in SITES:  # the job's 0.5 s task interval reached every site (FLARE's default is 2 s)
        log = (Path(result["server_log"]).parent.parent / site / "log.txt").read_text()
        assert "the server asks for the next task after 0.5 s" in log, site
    assert result["held_out"] >= 0.9  # WDBC after 3 rounds: measured about 0.97
