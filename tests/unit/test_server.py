"""Server components: best-model selection over the aggregated sites only, through FLARE's event API."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from oncofl.aggregation import AGGREGATED_PROP
from oncofl.server import AggregatedModelSelector


def _arrive(selector: AggregatedModelSelector, ctx: FLContext, site: str, score: float, accepted: bool = True):
    """A site's result arriving: FLARE fires these two events around the aggregator's accept()."""
    result = DXO(DataKind.WEIGHTS, {"w": np.zeros(2)}, meta={MetaKey.INITIAL_METRICS: {"auc": score}}).to_shareable()
    result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 1)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False)
    peer.set_prop(FLContextKey.SHAREABLE, result, private=True, sticky=False)
    ctx.set_peer_context(peer)
    selector.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, ctx)
    ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, accepted, private=True, sticky=False)
    selector.handle_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, ctx)


def _round(aggregated: list[str] | None, refused_at_accept: str = "") -> AggregatedModelSelector:
    selector = AggregatedModelSelector(key_metric="auc")
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, 1, private=True, sticky=False)
    selector.handle_event(AppEventType.ROUND_STARTED, ctx)
    for site, score in (("site-1", 0.6), ("site-2", 0.8), ("site-3", 1.0)):
        _arrive(selector, ctx, site, score, accepted=site != refused_at_accept)
    selector.handle_event(AppEventType.BEFORE_AGGREGATION, ctx)
    assert selector.best_val_metric == -np.inf  # nothing decided before the aggregator has judged the updates
    if aggregated is not None:
        decided = {"round": 1, "aggregated": aggregated, "excluded": {}}
        ctx.set_prop(AGGREGATED_PROP, decided, private=True, sticky=False)
    selector.handle_event(AppEventType.AFTER_AGGREGATION, ctx)
    return selector


def test_best_model_selection_leaves_out_the_score_of_a_rejected_site():
    # site-3 scored the global model 1.0, but its update was rejected: its score does not count
    assert _round(["site-1", "site-2"]).best_val_metric == pytest.approx(0.7)
    assert _round(["site-1", "site-2", "site-3"]).best_val_metric == pytest.approx(0.8)


def test_with_another_aggregator_the_sites_it_refused_are_left_out():
    assert _round(None, refused_at_accept="site-3").best_val_metric == pytest.approx(0.7)
    assert _round(None).best_val_metric == pytest.approx(0.8)


def test_the_ledger_says_why_a_site_is_missing():
    """failed (an error reply to train), dropped (FLARE declared it disconnected), else timed out. The end-to-end
    tests see 'failed' (unreadable DICOM) and 'timed out' (a round deadline); FLARE's 600 s heartbeat timeout makes
    'dropped' too slow to reach there, so its event is fired here as FLARE fires it."""
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.shareable import ReservedHeaderKey, make_reply

    from oncofl.server import ParticipationMonitor

    monitor = ParticipationMonitor()
    monitor._current = {"round": 0, "expected": ["site-1", "site-2", "site-3"], "contributed": []}
    ctx = FLContext()
    ctx.set_prop(FLContextKey.DISCONNECTED_CLIENT_NAME, "site-3", private=True, sticky=False)
    monitor.handle_event(EventType.CLIENT_DISCONNECTED, ctx)
    error = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    error.set_header(ReservedHeaderKey.TASK_NAME, AppConstants.TASK_TRAIN)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, "site-2", private=False)
    ctx.set_peer_context(peer)
    ctx.set_prop(FLContextKey.TASK_RESULT, error, private=True, sticky=False)
    monitor.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, ctx)
    assert [monitor._why_missing(s) for s in ("site-1", "site-2", "site-3")] == ["timed out", "failed", "dropped"]
