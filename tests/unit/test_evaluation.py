"""Checkpoints are read as weights only: a crafted file cannot run code on the machine that scores it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from oncofl.evaluation import load_checkpoint
from oncofl.tasks.breast_wdbc import WDBCNet


class _RunsCode:
    """Unpickling this calls ``open(<marker>, "w")``: what a malicious checkpoint would do with ``os.system``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_flare_checkpoint_and_a_bare_state_dict_load(tmp_path):
    state = WDBCNet().state_dict()
    torch.save({"model": state, "meta_props": {"round": 3}, "train_conf": {"train": {"model": "x"}}}, tmp_path / "g.pt")
    torch.save(state, tmp_path / "bare.pt")
    for name in ("g.pt", "bare.pt"):
        weights = load_checkpoint(tmp_path / name)
        assert set(weights) == set(state) and all(np.array_equal(weights[k], state[k].numpy()) for k in state)


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "FL_global_model.pt"
    torch.save({"model": WDBCNet().state_dict(), "meta_props": _RunsCode(str(marker))}, crafted, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a plain weights checkpoint"):
        load_checkpoint(crafted)
    assert not marker.exists()


def test_the_held_out_scorer_refuses_a_crafted_global_model(tmp_path, synthetic_data):
    """The path `oncofl poc demo` takes with the global model it downloaded from the server."""
    from oncofl.evaluation import holdout_metric

    marker = tmp_path / "code_ran"
    crafted = tmp_path / "FL_global_model.pt"
    torch.save({"model": {}, "meta_props": _RunsCode(str(marker))}, crafted, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a plain weights checkpoint"):
        holdout_metric(crafted, synthetic_data / "holdout")
    assert not marker.exists()


def test_no_checkpoint_is_unpickled_unrestricted_anywhere():
    """The class, not the example: no code of ours (package, scripts) and no committed job's persistor loads a
    checkpoint with ``weights_only=False``; every ``torch.load`` names ``weights_only=True``."""
    import json
    import re

    from tests.conftest import REPO

    sources = [*(REPO / "custom").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert "weights_only=False" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
    for config in (REPO / "jobs").glob("*/app*/config/config_fed_*.json"):
        components = json.loads(config.read_text()).get("components", [])
        assert all(c.get("args", {}).get("load_weights_only", True) is True for c in components), config
