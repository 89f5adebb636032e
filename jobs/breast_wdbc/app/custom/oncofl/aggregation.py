"""Robust server-side aggregation: a poisoned or broken site cannot wreck the global model.

:class:`RobustAggregator` is a FLARE ``Aggregator`` for ``ScatterAndGather``. It turns every site's result into an
update (result minus the global model of the round), and then:

1. **refuses** an update with NaN/inf values, unknown tensors or wrong shapes, or one sent for another round
   (the reason is logged with the site's name);
2. **rejects** an update whose L2 norm exceeds ``reject_norm_factor`` x the median norm of the round's updates
   (needs three or more updates; a 100x-scaled or exploded update) or ``reject_update_norm`` (absolute);
3. **bounds** the remaining updates' L2 norm to ``max_update_norm`` (scaled down, direction kept);
4. **combines** them per tensor: ``mean`` (weighted by local steps: FedAvg), ``median`` (coordinate-wise) or
   ``trimmed_mean`` (coordinate-wise, ``trim_fraction`` of the values cut at each end).

It returns the combined update as a ``WEIGHT_DIFF``, which FLARE's ``FullModelShareableGenerator`` (FedAvg) or
``PTFedOptModelShareableGenerator`` (FedOpt) applies to the global model. A tensor that no site sent (e.g. FedBN's
normalization layers, kept at the sites) stays as it is. Every round's decisions go to the server log and to
``aggregation.json`` in the job's server workspace (downloaded with the job's results), so nothing is dropped
silently.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.app_constant import AppConstants

METHODS = ("mean", "median", "trimmed_mean")


@dataclass
class Contribution:
    site: str
    update: dict[str, np.ndarray]  # float64, only the tensors the site sent
    steps: float
    norm: float
    scale: float = 1.0


@dataclass
class RoundRecord:
    round: int
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # site -> reason (at accept)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> reason (outlier at aggregation)
    clipped: dict[str, str] = field(default_factory=dict)  # site -> "norm -> bound"
    aggregated: list[str] = field(default_factory=list)


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(u))) for u in update.values()))


def combine(updates: list[np.ndarray], weights: list[float], method: str, trim_fraction: float) -> np.ndarray:
    """One tensor's combined update from the sites that sent it."""
    stacked = np.stack(updates)
    if method == "mean" or len(updates) == 1:
        w = np.asarray(weights, dtype=np.float64).reshape((-1,) + (1,) * (stacked.ndim - 1))
        return (stacked * w).sum(axis=0) / w.sum()
    if method == "median":
        return np.median(stacked, axis=0)
    k = int(math.floor(trim_fraction * len(updates)))
    if len(updates) - 2 * k < 1:
        return np.median(stacked, axis=0)
    ordered = np.sort(stacked, axis=0)
    return ordered[k : len(updates) - k].mean(axis=0)


class RobustAggregator(Aggregator):
    """See the module docstring. ``max_update_norm`` / ``reject_update_norm`` / ``reject_norm_factor`` = 0: off."""

    FILE_NAME = "aggregation.json"

    def __init__(
        self,
        method: str = "mean",
        trim_fraction: float = 0.2,
        max_update_norm: float = 0.0,
        reject_update_norm: float = 0.0,
        reject_norm_factor: float = 10.0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"aggregation method must be one of {METHODS}, got {method!r}")
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        for name, value in (
            ("max_update_norm", max_update_norm),
            ("reject_update_norm", reject_update_norm),
            ("reject_norm_factor", reject_norm_factor),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (0 = off), got {value}")
        if 0 < reject_norm_factor <= 1:
            raise ValueError("reject_norm_factor must be above 1 (or 0 = off): it is a multiple of the median norm")
        self.method = method
        self.trim_fraction = trim_fraction
        self.max_update_norm = max_update_norm
        self.reject_update_norm = reject_update_norm
        self.reject_norm_factor = reject_norm_factor
        self._contributions: dict[str, Contribution] = {}
        self._record: RoundRecord | None = None
        self.history: list[RoundRecord] = []

    # -- FLARE Aggregator API ----------------------------------------------------------------------------------
    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = str(shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?"))
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        record = self._round_record(current_round)
        reason = self._check(shareable, fl_ctx, site, current_round)
        if isinstance(reason, str):
            record.refused[site] = reason
            self.log_warning(fl_ctx, f"round {current_round}: update from {site} refused: {reason}")
            return False
        self._contributions[site] = reason
        record.accepted.append(site)
        self.log_info(fl_ctx, f"round {current_round}: update from {site} accepted (norm {reason.norm:.4g})")
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        record = self._round_record(current_round)
        kept = self._reject_outliers(list(self._contributions.values()), record)
        for c in kept:
            if self.max_update_norm and c.norm > self.max_update_norm:
                c.scale = self.max_update_norm / c.norm
                record.clipped[c.site] = f"{c.norm:.4g} -> {self.max_update_norm:g}"
        record.aggregated = sorted(c.site for c in kept)
        diff = self.combine(kept)
        for site, reason in record.rejected.items():
            self.log_warning(fl_ctx, f"round {current_round}: update from {site} rejected: {reason}")
        summary = (
            f"round {current_round}: {self.method} of {len(kept)} update(s) from {', '.join(record.aggregated) or '-'}"
        )
        if record.clipped:
            summary += "; norm bounded: " + ", ".join(f"{s} {v}" for s, v in sorted(record.clipped.items()))
        if not kept:
            summary += "; no usable update: the global model is kept unchanged this round"
            self.log_warning(fl_ctx, summary)
        else:
            self.log_info(fl_ctx, summary)
        self.history.append(record)
        self._record = None
        self._write(fl_ctx)
        steps = sum(c.steps for c in kept)
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: steps}
        return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()

    def reset(self, fl_ctx: FLContext) -> None:
        self._contributions = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.END_RUN and self.history:
            self._write(fl_ctx)

    # -- the policy, usable without FLARE (unit tests, evidence scripts) ----------------------------------------
    def contribution(
        self, site: str, data: Mapping[str, Any], kind: str, steps: float, global_weights: Mapping[str, Any]
    ) -> Contribution | str:
        """``data`` as an update against ``global_weights``, or the reason it is refused."""
        if kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            return f"expected model weights or a weight difference, got data kind {kind}"
        if not data:
            return "the update is empty"
        unknown = sorted(k for k in data if k not in global_weights)
        if unknown:
            return (
                f"{len(unknown)} tensor(s) not in the global model (first: {unknown[0]}); the site runs another network"
            )
        update: dict[str, np.ndarray] = {}
        non_finite: list[str] = []
        for k, v in data.items():
            value = np.asarray(v, dtype=np.float64)
            reference = np.asarray(global_weights[k])
            if value.shape != reference.shape:
                return f"tensor {k} has shape {value.shape}, the global model {reference.shape}"
            if not np.all(np.isfinite(value)):
                non_finite.append(k)
                continue
            update[k] = value - reference if kind == DataKind.WEIGHTS else value
        if non_finite:
            return f"non-finite values (NaN/inf) in {len(non_finite)} tensor(s) (first: {non_finite[0]})"
        if not (math.isfinite(steps) and steps > 0):
            return f"the number of local steps is {steps}; it must be a positive number"
        norm = update_norm(update)
        if not math.isfinite(norm):
            return "the update's norm overflows"
        if self.reject_update_norm and norm > self.reject_update_norm:
            return f"update norm {norm:.4g} exceeds the absolute bound {self.reject_update_norm:g}"
        return Contribution(site, update, float(steps), norm)

    def combine(self, contributions: list[Contribution]) -> dict[str, np.ndarray]:
        """The combined update, per tensor over the sites that sent it."""
        keys = sorted({k for c in contributions for k in c.update})
        out = {}
        for k in keys:
            senders = [c for c in contributions if k in c.update]
            out[k] = combine(
                [c.update[k] * c.scale for c in senders], [c.steps for c in senders], self.method, self.trim_fraction
            ).astype(np.float32)
        return out

    def _reject_outliers(self, contributions: list[Contribution], record: RoundRecord) -> list[Contribution]:
        if not self.reject_norm_factor or len(contributions) < 3:
            return contributions
        median = float(np.median([c.norm for c in contributions]))
        kept = []
        for c in contributions:
            if median > 0 and c.norm > self.reject_norm_factor * median:
                record.rejected[c.site] = (
                    f"update norm {c.norm:.4g} is {c.norm / median:.0f}x the round's median {median:.4g} "
                    f"(limit {self.reject_norm_factor:g}x): a scaled, exploded or poisoned update"
                )
            else:
                kept.append(c)
        return kept

    # -- internals ---------------------------------------------------------------------------------------------
    def _check(self, shareable: Shareable, fl_ctx: FLContext, site: str, current_round: Any) -> Contribution | str:
        contribution_round = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        if contribution_round is not None and current_round is not None and contribution_round != current_round:
            return f"sent for round {contribution_round} during round {current_round} (late)"
        if site in self._contributions:
            return "a second update in the same round"
        try:
            dxo = from_shareable(shareable)
        except Exception as e:
            return f"not a model update ({type(e).__name__})"
        global_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        global_weights = global_model["weights"] if global_model is not None else None
        if global_weights is None:
            return "the server has no global model for this round"
        steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        return self.contribution(site, dxo.data or {}, dxo.data_kind, float(steps or 0), global_weights)

    def _round_record(self, current_round: Any) -> RoundRecord:
        if self._record is None or self._record.round != current_round:
            self._record = RoundRecord(round=int(current_round) if current_round is not None else -1)
        return self._record

    def _write(self, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        if engine is None:
            return
        run_dir = engine.get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, self.FILE_NAME)
        settings = {
            "method": self.method,
            "trim_fraction": self.trim_fraction,
            "max_update_norm": self.max_update_norm,
            "reject_update_norm": self.reject_update_norm,
            "reject_norm_factor": self.reject_norm_factor,
        }
        rounds = [vars(r) for r in self.history]
        with open(path + ".tmp", "w") as f:
            json.dump({"settings": settings, "rounds": rounds}, f, indent=1)
        os.replace(path + ".tmp", path)
