"""RobustAggregator: refusals, outlier rejection, norm bounds and the three combination rules, through FLARE's API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
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


# -- issue 17: weights, float32, the outlier rule's reference, malformed updates ---------------------------------------
def _ctx_with(global_weights: dict, current_round: int = 0) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, current_round, private=True, sticky=False)
    ctx.set_prop(AppConstants.GLOBAL_MODEL, {"weights": global_weights}, private=True, sticky=False)
    return ctx


@pytest.mark.parametrize("claimed", [1e300, 1e30])
def test_a_huge_step_count_is_capped_at_ten_times_the_rounds_median(claimed):
    honest = [_result(s, _weights(0.1), steps=10) for s in ("a", "b")]
    agg = RobustAggregator()
    accepted, dxo = _aggregate(agg, [*honest, _result("liar", _weights(0.5), steps=claimed)])
    assert all(accepted.values())
    # the liar weighs 10 x the median (10 steps) = 100, the honest sites 10 each: (100 * 0.5 + 20 * 0.1) / 120
    np.testing.assert_allclose(dxo.data["w"], (100 * 0.5 + 20 * 0.1) / 120, rtol=1e-5)
    assert "-> weight 100" in agg.history[0].weights["liar"] and set(agg.history[0].weights) == {"liar"}
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 120


def test_two_sites_a_huge_count_cannot_make_one_site_the_whole_round():
    agg = RobustAggregator()
    _, dxo = _aggregate(agg, [_result("a", _weights(0.0), steps=10), _result("liar", _weights(1.0), steps=1e308)])
    share = float(dxo.data["w"].mean())  # the liar's share of the mean: 100 / 110, never 1.0
    assert np.isfinite(share) and share == pytest.approx(100 / 110, rel=1e-5)


def test_a_site_cannot_raise_its_weight_above_the_count_it_declared_first():
    agg = RobustAggregator()
    _aggregate(agg, [_result(s, _weights(0.1), steps=10, current_round=0) for s in ("a", "b", "c")], 0)
    later = [_result(s, _weights(0.1), steps=10, current_round=1) for s in ("a", "b")]
    _, dxo = _aggregate(agg, [*later, _result("c", _weights(1.0), steps=60, current_round=1)], 1)
    np.testing.assert_allclose(dxo.data["w"], (10 * 1.0 + 20 * 0.1) / 30, rtol=1e-5)  # c weighs 10, not 60
    assert agg.declared_steps == {"a": 10.0, "b": 10.0, "c": 10.0}
    assert agg.history[1].weights == {"c": "60 steps claimed -> weight 10"}


@pytest.mark.parametrize("steps", ["many", None, True, float("nan"), float("inf"), -3, 0, [10]])
def test_a_non_numeric_or_non_positive_step_count_is_refused_not_raised(steps):
    agg = RobustAggregator()
    accepted, dxo = _aggregate(agg, [_result("a", _weights(0.1)), _result("bad", _weights(5.0), steps=steps)])
    assert accepted == {"a": True, "bad": False}
    assert "number of local steps" in agg.history[0].refused["bad"]
    np.testing.assert_allclose(dxo.data["w"], 0.1, rtol=1e-5)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("0.5", "tensor w is a str, not a numeric array"),
        ({"x": 1.0}, "tensor w is a dict, not a numeric array"),
        (np.array([["a"] * 3] * 2), "tensor w is an array of <U1, not a numeric array"),
        (np.zeros((2, 3), dtype=object), "tensor w is an array of object, not a numeric array"),
    ],
)
def test_a_string_or_dict_where_a_tensor_belongs_is_refused_with_the_reason(value, reason):
    agg = RobustAggregator()
    accepted, _ = _aggregate(agg, [_result("a", _weights(0.1)), _result("bad", {**_weights(0.1), "w": value})])
    assert accepted == {"a": True, "bad": False}
    assert agg.history[0].refused["bad"] == reason and agg.history[0].aggregated == ["a"]


def test_an_update_that_is_not_a_mapping_or_has_odd_names_is_refused():
    agg = RobustAggregator()
    assert "not a mapping" in agg.contribution("s", ["w"], DataKind.WEIGHTS, 1, GLOBAL)
    assert "not strings" in agg.contribution("s", {1: np.zeros(3)}, DataKind.WEIGHTS, 1, GLOBAL)
    odd = Shareable()  # a result that is no DXO at all
    odd.set_peer_props({ReservedKey.IDENTITY_NAME: "bad"})
    accepted, _ = _aggregate(agg, [odd])
    assert accepted == {"bad": False} and "not a model update" in agg.history[0].refused["bad"]


def test_values_finite_in_float64_but_beyond_float32_are_refused():
    agg = RobustAggregator()
    huge = {"w": np.full((2, 3), 1e39, np.float64), "b": np.ones(3)}
    accepted, dxo = _aggregate(agg, [_result("big", huge), _result("a", _weights(0.1))])
    assert accepted == {"big": False, "a": True} and "float32 range" in agg.history[0].refused["big"]
    assert all(np.all(np.isfinite(v)) for v in dxo.data.values())


def test_a_combination_that_overflows_float32_on_the_global_model_is_discarded():
    near_max = {"w": np.full((2, 3), 3e38, np.float32)}
    agg = RobustAggregator()
    ctx = _ctx_with(near_max)
    assert agg.accept(_result("a", {"w": np.full((2, 3), 3.2e38, np.float32)}, kind=DataKind.WEIGHT_DIFF), ctx)
    dxo = from_shareable(agg.aggregate(ctx))
    assert dxo.data == {}  # the global model is kept: nothing non-finite reaches the persistor
    record = agg.history[0]
    assert record.aggregated == [] and "not finite as float32" in record.notes[0]
    assert ctx.get_prop("oncofl_aggregated")["excluded"] == {"a": "the round's combination was discarded"}


def test_a_combined_update_that_is_not_finite_after_the_cast_is_discarded():
    from oncofl.aggregation import Contribution, RoundRecord

    # finite in float64 (past the accept checks, e.g. an update bounded by no rule): inf once cast to float32
    c = Contribution("a", {"w": np.full((2, 3), 1e39)}, steps=1.0, norm=6e39)
    record = RoundRecord(round=0)
    diff, kept = RobustAggregator(reject_norm_factor=0).decide([c], record, GLOBAL)
    assert diff == {} and kept == [] and "combined update of w is not finite as float32" in record.notes[0]


def test_zero_updates_do_not_switch_the_outlier_rule_off():
    zeros = [_result(s, _weights(0.0)) for s in ("a", "b", "c")]
    agg = RobustAggregator()
    _, dxo = _aggregate(agg, [*zeros, _result("attacker", _weights(10.0))])
    assert "zero-update threshold" in agg.history[0].rejected["attacker"]
    np.testing.assert_allclose(dxo.data["w"], 0.0)


def test_an_honest_minority_is_kept_when_most_updates_are_tiny():
    tiny = [_result(s, _weights(1e-9)) for s in ("a", "b", "c")]
    honest = [_result(s, _weights(0.1)) for s in ("d", "e")]
    agg = RobustAggregator()
    _, dxo = _aggregate(agg, [*tiny, *honest])
    assert agg.history[0].rejected == {} and agg.history[0].aggregated == ["a", "b", "c", "d", "e"]
    np.testing.assert_allclose(dxo.data["w"], 0.04, rtol=1e-4)
    # a lone 100x update among those is still rejected: judged against the two real ones, not the tiny ones
    agg = RobustAggregator()
    _aggregate(agg, [*tiny, *honest, _result("x", _weights(10.0))])
    assert set(agg.history[0].rejected) == {"x"}


def test_the_outlier_rule_says_when_it_cannot_apply():
    agg = RobustAggregator()
    _aggregate(agg, [_result("a", _weights(0.1)), _result("b", _weights(10.0))])
    assert "needs 3 or more updates" in agg.history[0].notes[0]


def test_a_numpy_scalar_for_a_0d_tensor_is_an_update_like_a_0d_array():
    global_weights = {"w": np.zeros((2, 3), np.float32), "flag": np.array(0.0, np.float32)}
    agg = RobustAggregator()
    ctx = _ctx_with(global_weights)
    assert agg.accept(_result("a", {"w": np.ones((2, 3), np.float32), "flag": np.float32(1.0)}), ctx)
    assert agg.accept(_result("b", {"w": np.ones((2, 3), np.float32), "flag": np.array(3.0, np.float32)}), ctx)
    dxo = from_shareable(agg.aggregate(ctx))
    assert float(dxo.data["flag"]) == 2.0
    assert "not a numeric array" in agg.contribution("c", {"flag": 1.0}, DataKind.WEIGHTS, 1, global_weights)
