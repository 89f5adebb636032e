"""RobustAggregator: refusals, outlier rejection, norm bounds and the three combination rules, through FLARE's API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants

from oncofl.aggregation import RobustAggregator, combine

GLOBAL = {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}


def _ctx(current_round: int = 0) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, current_round, private=True, sticky=False)
    ctx.set_prop(AppConstants.GLOBAL_MODEL, {"weights": GLOBAL}, private=True, sticky=False)
    return ctx


def _result(site: str, data: dict, steps: int = 10, kind: str = DataKind.WEIGHTS, current_round: int = 0):
    shareable = DXO(data_kind=kind, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps}).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, current_round)
    return shareable


def _weights(delta: float) -> dict:
    return {k: v + delta for k, v in GLOBAL.items()}


def _aggregate(agg: RobustAggregator, results, current_round: int = 0):
    ctx = _ctx(current_round)
    accepted = {r.get_peer_prop(ReservedKey.IDENTITY_NAME, "?"): agg.accept(r, ctx) for r in results}
    dxo = from_shareable(agg.aggregate(ctx))
    agg.reset(ctx)
    return accepted, dxo


def test_mean_is_fedavg_weighted_by_steps():
    accepted, dxo = _aggregate(RobustAggregator(), [_result("a", _weights(1.0), 30), _result("b", _weights(-1.0), 10)])
    assert accepted == {"a": True, "b": True}
    assert dxo.data_kind == DataKind.WEIGHT_DIFF and dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 40
    np.testing.assert_allclose(dxo.data["w"], 0.5)  # (30 * 1 - 10 * 1) / 40


def test_nan_update_is_refused_with_the_reason_and_the_others_aggregate():
    poisoned = _weights(0.1)
    poisoned["b"][0] = np.nan
    agg = RobustAggregator()
    accepted, dxo = _aggregate(
        agg, [_result("a", _weights(0.1)), _result("bad", poisoned), _result("c", _weights(0.3))]
    )
    assert accepted == {"a": True, "bad": False, "c": True}
    assert "non-finite" in agg.history[0].refused["bad"] and agg.history[0].aggregated == ["a", "c"]
    np.testing.assert_allclose(dxo.data["b"], 0.2, rtol=1e-6)


def test_a_100x_scaled_update_is_rejected_as_an_outlier():
    honest = [_result(s, _weights(d)) for s, d in (("a", 0.1), ("b", 0.12), ("c", 0.08))]
    agg = RobustAggregator()
    _, dxo = _aggregate(agg, [*honest, _result("attacker", _weights(10.0))])
    assert "attacker" in agg.history[0].rejected and "median" in agg.history[0].rejected["attacker"]
    np.testing.assert_allclose(dxo.data["w"], 0.1, rtol=1e-5)
    # the same round under plain averaging without the outlier check: the attacker drags the model away
    _, plain = _aggregate(RobustAggregator(reject_norm_factor=0), [*honest, _result("attacker", _weights(10.0))])
    assert float(plain.data["w"].mean()) > 2.0


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_median_and_trimmed_mean_ignore_one_extreme_site(method):
    results = [_result(s, _weights(d)) for s, d in (("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.2), ("x", 50.0))]
    _, dxo = _aggregate(RobustAggregator(method=method, reject_norm_factor=0), results)
    assert 0.1 <= float(dxo.data["w"].mean()) <= 0.3


def test_norm_bound_scales_each_update_down_keeping_its_direction():
    agg = RobustAggregator(max_update_norm=1.0)
    _, dxo = _aggregate(agg, [_result("a", _weights(2.0))])  # 9 values of 2: norm 6
    np.testing.assert_allclose(dxo.data["w"], 2.0 / 6.0, rtol=1e-5)
    assert agg.history[0].clipped["a"].endswith("-> 1")


def test_unknown_tensor_wrong_shape_late_and_duplicate_updates_are_refused():
    agg = RobustAggregator()
    ctx = _ctx(2)
    assert not agg.accept(_result("a", {**_weights(0.1), "extra": np.zeros(1)}, current_round=2), ctx)
    assert not agg.accept(_result("b", {"w": np.zeros((3, 2)), "b": np.ones(3)}, current_round=2), ctx)
    assert not agg.accept(_result("c", _weights(0.1), current_round=1), ctx)
    assert agg.accept(_result("d", _weights(0.1), current_round=2), ctx)
    assert not agg.accept(_result("d", _weights(0.1), current_round=2), ctx)
    refused = agg._round_record(2).refused
    assert "not in the global model" in refused["a"] and "shape" in refused["b"] and "late" in refused["c"]
    assert "second update" in refused["d"]


def test_tensors_no_site_sent_stay_unchanged_and_partial_ones_average_over_senders():
    only_w = {"w": GLOBAL["w"] + 1.0}  # FedBN-style: the site keeps "b" to itself
    _, dxo = _aggregate(RobustAggregator(), [_result("a", only_w), _result("b", _weights(3.0))])
    np.testing.assert_allclose(dxo.data["w"], 2.0)
    np.testing.assert_allclose(dxo.data["b"], 3.0)  # only site b sent it
    _, dxo = _aggregate(RobustAggregator(), [_result("a", only_w)])
    assert set(dxo.data) == {"w"}


def test_no_usable_update_keeps_the_global_model():
    bad = _weights(0.0)
    bad["w"][0, 0] = np.inf
    agg = RobustAggregator()
    _, dxo = _aggregate(agg, [_result("a", bad)])
    assert dxo.data == {} and agg.history[0].aggregated == []


def test_weight_diff_results_are_taken_as_updates():
    diff = {k: np.full_like(v, 0.5) for k, v in GLOBAL.items()}
    _, dxo = _aggregate(RobustAggregator(), [_result("a", diff, kind=DataKind.WEIGHT_DIFF)])
    np.testing.assert_allclose(dxo.data["b"], 0.5)


def test_combine_trimmed_mean_falls_back_to_median_when_too_few():
    values = [np.array([1.0]), np.array([100.0])]
    assert combine(values, [1, 1], "trimmed_mean", 0.49)[0] == pytest.approx(50.5)
    assert combine([np.array([v]) for v in (1.0, 2.0, 3.0, 4.0, 100.0)], [1] * 5, "trimmed_mean", 0.2)[0] == 3.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="method"):
        RobustAggregator(method="mode")
    with pytest.raises(ValueError, match="trim_fraction"):
        RobustAggregator(trim_fraction=0.5)
    with pytest.raises(ValueError, match="above 1"):
        RobustAggregator(reject_norm_factor=0.5)


def test_history_is_json_serializable():
    agg = RobustAggregator()
    _aggregate(agg, [_result("a", _weights(0.1))])
    json.dumps([vars(r) for r in agg.history])
