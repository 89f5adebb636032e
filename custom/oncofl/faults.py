"""Fault injection for drills and tests: make a chosen site send a broken or poisoned model update.

A consortium rehearses what its server does when a site's update goes wrong -- a NaN from a diverged run, an
update scaled 100x by a bug or an attacker -- before it happens for real. :class:`UpdateFaultFilter` is a client
task-result filter (add it to both chains, like :class:`oncofl.privacy.SiteUpdateGuard`, so it knows the global
weights each result started from); it changes results of ``train`` only, and only at the sites and rounds named.
It is never part of a production job: jobs/*.py add it only when asked (``--fault-*`` options of the job CLI).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FilterKey, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

# The task-data and task-result chains get separate instances of the filter: what came in is kept per task id here.
_RECEIVED: dict[str, tuple[int, dict[str, np.ndarray]]] = {}


class UpdateFaultFilter(Filter):
    """At ``sites``: rounds in ``nan_rounds`` send NaN in the first tensor; rounds in ``scale_rounds`` send the
    update (result - global) multiplied by ``factor``; rounds in ``steps_rounds`` claim ``steps`` local steps (a huge
    number, or a string; a list: one claim per round of ``steps_rounds``) instead of the true count; every train
    result is held back ``delay_s`` seconds (a straggler: a site whose GPU is that much slower).

    Args:
        sites: the names of the sites whose train results are changed; other sites' pass untouched.
        nan_rounds: rounds in which the result's first tensor (by name) is all NaN; default none.
        scale_rounds: rounds in which the update (result - global model received) is multiplied by ``factor``;
            default none.
        factor: the multiplier of the update in ``scale_rounds`` (default 100).
        steps_rounds: rounds in which the result claims ``steps`` local steps; default none.
        steps: the claimed local step count: any value (default 1e30; a string tests the server's type check), or
            a list with one claim per round of ``steps_rounds``, in order.
        delay_s: seconds every train result is held back before it is sent (default 0: none).
    """

    def __init__(
        self,
        sites: list[str],
        nan_rounds: list[int] | None = None,
        scale_rounds: list[int] | None = None,
        factor: float = 100.0,
        steps_rounds: list[int] | None = None,
        steps: Any = 1e30,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.sites = list(sites)  # attributes named as the arguments: FLARE's job export reads them back
        self.nan_rounds = list(nan_rounds or [])
        self.scale_rounds = list(scale_rounds or [])
        self.factor = float(factor)
        self.steps_rounds = list(steps_rounds or [])
        self.steps = steps
        self.delay_s = float(delay_s)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if fl_ctx.get_identity_name() not in self.sites:
            return shareable
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) != AppConstants.TASK_TRAIN:
            return shareable
        task_id = str(fl_ctx.get_prop(FLContextKey.TASK_ID, ""))
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable
        if dxo.data_kind != DataKind.WEIGHTS:
            return shareable
        if fl_ctx.get_prop(FLContextKey.FILTER_DIRECTION) == FilterKey.IN:
            current_round = int(shareable.get_header(AppConstants.CURRENT_ROUND, -1))
            _RECEIVED[task_id] = (current_round, {k: np.array(v, copy=True) for k, v in dxo.data.items()})
            return shareable
        current_round, received = _RECEIVED.pop(task_id, (-1, {}))
        if self.delay_s > 0:
            self.log_warning(fl_ctx, f"FAULT DRILL: round {current_round}: holding the result back {self.delay_s:g} s")
            time.sleep(self.delay_s)
        data: dict[str, Any] = dict(dxo.data)
        if current_round in self.nan_rounds:
            first = sorted(data)[0]
            data[first] = np.full_like(np.asarray(data[first], dtype=np.float32), np.nan)
            self.log_warning(fl_ctx, f"FAULT DRILL: round {current_round}: sending NaN in {first}")
        elif current_round in self.scale_rounds and received:
            for k, v in data.items():
                v = np.asarray(v)
                if v.dtype.kind == "f":
                    data[k] = (received[k] + self.factor * (v - received[k])).astype(v.dtype)
            self.log_warning(fl_ctx, f"FAULT DRILL: round {current_round}: sending the update x{self.factor:g}")
        elif current_round in self.steps_rounds:
            claim = self.steps
            if isinstance(claim, list):
                claim = claim[self.steps_rounds.index(current_round)]
            dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, claim)
            self.log_warning(fl_ctx, f"FAULT DRILL: round {current_round}: claiming {claim!r} local steps")
        else:
            return shareable
        dxo.data = data
        dxo.update_shareable(shareable)
        return shareable
