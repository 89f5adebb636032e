"""Robust server-side aggregation: a poisoned or broken site cannot wreck the global model.

:class:`RobustAggregator` is a FLARE ``Aggregator`` for ``ScatterAndGather``. It turns every site's result into an
update (result minus the global model of the round), and then:

1. **refuses** a malformed update: not a mapping of tensor name -> numeric array (a string or dict where a tensor
   belongs), unknown tensors or wrong shapes, NaN/inf values or values beyond float32's range, a step count that is not
   a positive finite number, or one sent for another round (the reason is logged with the site's name, nothing is
   raised);
2. **rejects** an outlier: an update whose L2 norm exceeds ``reject_norm_factor`` x the reference norm of the *other*
   updates of the round (needs three or more updates; a 100x-scaled or exploded update), or ``reject_update_norm``
   (absolute). The reference is the (upper) median of the other updates' norms, counting only non-zero updates (norm
   above ``ZERO_UPDATE`` x the global model's norm: below it an update is float32 rounding noise, i.e. no training),
   and never below that zero threshold itself. So zero updates neither switch the rule off (an update next to only
   zero updates is judged against the threshold) nor make an honest minority of real updates look like outliers;
3. **bounds** the remaining updates' L2 norm to ``max_update_norm`` (scaled down, direction kept);
4. **weighs** them (``mean`` only) by their step counts, each capped (:func:`capped_weights`) at the step count the
   site declared with its first accepted update (its dataset's size in steps) and at ``max_weight_factor`` x the
   round's lower median step count: a site claiming a huge count gets at most that share, never the whole round;
5. **combines** them per tensor: ``mean`` (FedAvg), ``median`` (coordinate-wise) or ``trimmed_mean`` (coordinate-wise,
   ``trim_fraction`` of the values cut at each end), and checks the result finite as float32, and the global model
   plus it finite as float32; a combination that is not is discarded (the global model is kept this round).

It returns the combined update as a ``WEIGHT_DIFF``, which FLARE's ``FullModelShareableGenerator`` (FedAvg) or
``PTFedOptModelShareableGenerator`` (FedOpt) applies to the global model. A tensor that no site sent (e.g. FedBN's
normalization layers, kept at the sites) stays as it is. Every round's decisions go to the server log and to
``aggregation.json`` in the job's server workspace (downloaded with the job's results), so nothing is dropped
silently; the sites whose updates were combined are also handed to the round's other server components in the
``oncofl_aggregated`` property (:data:`AGGREGATED_PROP`: the participation ledger and best-model selection count only
those).
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
FLOAT32_MAX = float(np.finfo(np.float32).max)
# an update whose norm is at most this fraction of the global model's norm is "zero": float32 rounding noise
ZERO_UPDATE = 1e-6
AGGREGATED_PROP = "oncofl_aggregated"  # fl_ctx property: {"round": r, "aggregated": [...], "excluded": {site: why}}


@dataclass
class Contribution:
    site: str
    update: dict[str, np.ndarray]  # float64, only the tensors the site sent
    steps: float  # as claimed by the site
    norm: float
    scale: float = 1.0
    weight: float = 0.0  # the weight it gets in the mean (steps, capped)


@dataclass
class RoundRecord:
    round: int
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # site -> reason (at accept)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> reason (outlier at aggregation)
    clipped: dict[str, str] = field(default_factory=dict)  # site -> "norm -> bound"
    weights: dict[str, str] = field(default_factory=dict)  # site -> "claimed steps -> weight used" (capped only)
    notes: list[str] = field(default_factory=list)  # checks that could not apply, a discarded combination
    aggregated: list[str] = field(default_factory=list)


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(u))) for u in update.values()))


def lower_median(values: list[float]) -> float:
    """The median, the lower of the two middle values for an even count (robust to < half the values being huge)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def upper_median(values: list[float]) -> float:
    """The median, the upper of the two middle values for an even count (robust to < half the values being tiny)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def step_count(value: Any) -> float | str:
    """A site's claimed number of local steps as a float, or why it is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"the number of local steps is a {type(value).__name__}, not a number"
    steps = float(value)
    if not (math.isfinite(steps) and steps > 0):
        return f"the number of local steps is {steps}; it must be a positive finite number"
    return steps


def capped_weights(claimed: dict[str, float], declared: Mapping[str, float], factor: float) -> dict[str, float]:
    """FedAvg weights from claimed step counts: each capped at the site's declared count (its first accepted claim)
    and at ``factor`` x the lower median of the round's claims (``factor`` 0: no median cap)."""
    cap = factor * lower_median(list(claimed.values())) if factor and claimed else math.inf
    return {s: min(steps, declared.get(s, steps), cap) for s, steps in claimed.items()}


def combine(updates: list[np.ndarray], weights: list[float], method: str, trim_fraction: float) -> np.ndarray:
    """One tensor's combined update from the sites that sent it."""
    stacked = np.stack(updates)
    if method == "mean" or len(updates) == 1:
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.max()  # normalized first: the sum of huge weights cannot overflow
        w = (w / w.sum()).reshape((-1,) + (1,) * (stacked.ndim - 1))
        return (stacked * w).sum(axis=0)
    if method == "median":
        return np.median(stacked, axis=0)
    k = int(math.floor(trim_fraction * len(updates)))
    if len(updates) - 2 * k < 1:
        return np.median(stacked, axis=0)
    ordered = np.sort(stacked, axis=0)
    return ordered[k : len(updates) - k].mean(axis=0)


def tensor_problem(name: str, value: Any, reference: Any) -> str | None:
    """Why one sent tensor cannot be part of an update (None: it can)."""
    if not isinstance(value, (np.ndarray, np.number)) or value.dtype.kind not in "fiu":  # numpy arrays or scalars
        kind = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
        return f"tensor {name} is {kind}, not a numeric array"
    shape = np.shape(reference)
    if np.shape(value) != shape:
        return f"tensor {name} has shape {np.shape(value)}, the global model {shape}"
    return None


class RobustAggregator(Aggregator):
    """Refuses, rejects, bounds, weighs and combines the sites' updates of a round: see the module docstring.

    Args:
        method: how the accepted updates are combined, per tensor: ``"mean"`` (default; FedAvg, weighted by the
            capped step counts), ``"median"`` (coordinate-wise) or ``"trimmed_mean"`` (coordinate-wise).
        trim_fraction: ``"trimmed_mean"`` only: the fraction of the sites' values cut at each end of every
            coordinate (``floor(trim_fraction x number of updates)`` values each end), in [0, 0.5); default 0.2.
        max_update_norm: an accepted update whose L2 norm is above it is scaled down to it (direction kept);
            0 (default): off.
        reject_update_norm: an update whose L2 norm is above it is rejected (absolute bound); 0 (default): off.
        reject_norm_factor: an update whose L2 norm is above this multiple of the upper median of the round's
            other non-zero update norms is rejected as an outlier (applied with 3 or more updates); above 1,
            default 10; 0: off.
        max_weight_factor: ``"mean"`` only: a site's weight is at most this multiple of the round's lower median
            step count (and never above the count it declared with its first accepted update); 1 or more,
            default 10; 0: no median cap.
    """

    FILE_NAME = "aggregation.json"

    def __init__(
        self,
        method: str = "mean",
        trim_fraction: float = 0.2,
        max_update_norm: float = 0.0,
        reject_update_norm: float = 0.0,
        reject_norm_factor: float = 10.0,
        max_weight_factor: float = 10.0,
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
            ("max_weight_factor", max_weight_factor),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (0 = off), got {value}")
        if 0 < reject_norm_factor <= 1:
            raise ValueError("reject_norm_factor must be above 1 (or 0 = off): it is a multiple of the median norm")
        if 0 < max_weight_factor < 1:
            raise ValueError("max_weight_factor must be 1 or more (or 0 = off): it is a multiple of the median")
        self.method = method
        self.trim_fraction = trim_fraction
        self.max_update_norm = max_update_norm
        self.reject_update_norm = reject_update_norm
        self.reject_norm_factor = reject_norm_factor
        self.max_weight_factor = max_weight_factor
        self.declared_steps: dict[str, float] = {}  # site -> steps claimed with its first accepted update
        self._contributions: dict[str, Contribution] = {}
        self._record: RoundRecord | None = None
        self.history: list[RoundRecord] = []

    # -- FLARE Aggregator API ----------------------------------------------------------------------------------
    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = str(shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?"))
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        record = self._round_record(current_round)
        try:
            reason = self._check(shareable, fl_ctx, site, current_round)
        except Exception as e:  # whatever a site sends, it is refused with a reason, never raised into the workflow
            reason = f"malformed update ({type(e).__name__})"
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
        global_weights = self._global_weights(fl_ctx) or {}
        diff, kept = self.decide(list(self._contributions.values()), record, global_weights)
        self._log_round(fl_ctx, record)
        self.history.append(record)
        self._record = None
        excluded = {**{s: "the round's combination was discarded" for s in record.accepted}, **record.refused}
        excluded = {s: why for s, why in {**excluded, **record.rejected}.items() if s not in record.aggregated}
        fl_ctx.set_prop(
            AGGREGATED_PROP,
            {"round": record.round, "aggregated": list(record.aggregated), "excluded": excluded},
            private=True,
            sticky=False,
        )
        self._write(fl_ctx)
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: sum(c.weight for c in kept)}
        return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()

    def reset(self, fl_ctx: FLContext) -> None:
        self._contributions = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.END_RUN and self.history:
            self._write(fl_ctx)

    # -- the policy, usable without FLARE (unit tests, evidence scripts) ----------------------------------------
    def decide(
        self, contributions: list[Contribution], record: RoundRecord, global_weights: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], list[Contribution]]:
        """The round's combined update and the contributions in it; every decision is written to ``record``."""
        model_norm = update_norm({k: np.asarray(v, dtype=np.float64) for k, v in global_weights.items()})
        kept = self._reject_outliers(contributions, record, model_norm)
        for c in kept:
            if self.max_update_norm and c.norm > self.max_update_norm:
                c.scale = self.max_update_norm / c.norm
                record.clipped[c.site] = f"{c.norm:.4g} -> {self.max_update_norm:g}"
        self._weigh(kept, record)
        diff = self.combine(kept)
        problem = self._combination_problem(diff, global_weights)
        if problem:
            record.notes.append(f"combination discarded, the global model is kept: {problem}")
            diff, kept = {}, []
        record.aggregated = sorted(c.site for c in kept)
        return diff, kept

    def contribution(
        self, site: str, data: Any, kind: str, steps: Any, global_weights: Mapping[str, Any]
    ) -> Contribution | str:
        """``data`` as an update against ``global_weights``, or the reason it is refused."""
        if kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            return f"expected model weights or a weight difference, got data kind {kind}"
        if not isinstance(data, Mapping):
            return f"the update is a {type(data).__name__}, not a mapping of tensor names to arrays"
        if not data:
            return "the update is empty"
        if not all(isinstance(k, str) for k in data):
            return "the update has tensor names that are not strings"
        unknown = sorted(k for k in data if k not in global_weights)
        if unknown:
            return (
                f"{len(unknown)} tensor(s) not in the global model (first: {unknown[0]}); the site runs another network"
            )
        claimed = step_count(steps)
        if isinstance(claimed, str):
            return claimed
        update: dict[str, np.ndarray] = {}
        for k in sorted(data):
            problem = tensor_problem(k, data[k], global_weights[k])
            if problem:
                return problem
            value = np.asarray(data[k], dtype=np.float64)
            if not np.all(np.isfinite(value)):
                return f"non-finite values (NaN/inf) in tensor {k}"
            if value.size and float(np.max(np.abs(value))) > FLOAT32_MAX:
                return f"values beyond the float32 range in tensor {k}"
            update[k] = value - np.asarray(global_weights[k], np.float64) if kind == DataKind.WEIGHTS else value
        norm = update_norm(update)
        if not math.isfinite(norm):
            return "the update's norm overflows"
        if self.reject_update_norm and norm > self.reject_update_norm:
            return f"update norm {norm:.4g} exceeds the absolute bound {self.reject_update_norm:g}"
        return Contribution(site, update, claimed, norm)

    def combine(self, contributions: list[Contribution]) -> dict[str, np.ndarray]:
        """The combined update (float32), per tensor over the sites that sent it."""
        keys = sorted({k for c in contributions for k in c.update})
        out = {}
        with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as inf, checked by the caller
            for k in keys:
                senders = [c for c in contributions if k in c.update]
                weights = [c.weight or c.steps for c in senders]
                out[k] = combine(
                    [c.update[k] * c.scale for c in senders], weights, self.method, self.trim_fraction
                ).astype(np.float32)
        return out

    def _reject_outliers(
        self, contributions: list[Contribution], record: RoundRecord, model_norm: float = 1.0
    ) -> list[Contribution]:
        """Leave-one-out: each update against the upper median of the other non-zero updates' norms (never below
        the zero threshold ``ZERO_UPDATE`` x the model's norm, at least ``ZERO_UPDATE``)."""
        if not self.reject_norm_factor:
            return contributions
        if len(contributions) < 3:
            if len(contributions) == 2:
                record.notes.append("outlier check not applied: it needs 3 or more updates, the round has 2")
            return contributions
        zero = ZERO_UPDATE * max(model_norm, 1.0)
        kept = []
        for c in contributions:
            others = [o.norm for o in contributions if o is not c and o.norm > zero]
            reference = max(upper_median(others), zero) if others else zero
            if c.norm > self.reject_norm_factor * reference:
                basis = "the other updates' median" if others else "the zero-update threshold (the others are zero)"
                record.rejected[c.site] = (
                    f"update norm {c.norm:.4g} is {c.norm / reference:.3g}x {basis} {reference:.4g} "
                    f"(limit {self.reject_norm_factor:g}x): a scaled, exploded or poisoned update"
                )
            else:
                kept.append(c)
        return kept

    def _weigh(self, kept: list[Contribution], record: RoundRecord) -> None:
        """Each contribution's weight in the mean: its steps, capped (see :func:`capped_weights`); a site's first
        combined update declares its count."""
        claimed = {c.site: c.steps for c in kept}
        for site, steps in claimed.items():  # a site's first combined update declares its size in steps
            self.declared_steps.setdefault(site, steps)
        weights = capped_weights(claimed, self.declared_steps, self.max_weight_factor)
        for c in kept:
            c.weight = weights[c.site]
            if c.weight < c.steps:
                record.weights[c.site] = f"{c.steps:.4g} steps claimed -> weight {c.weight:.4g}"

    @staticmethod
    def _combination_problem(diff: Mapping[str, np.ndarray], global_weights: Mapping[str, Any]) -> str | None:
        """Why the combined update (float32) cannot be applied: it, or the global model plus it, is not finite."""
        with np.errstate(over="ignore", invalid="ignore"):
            for k, v in diff.items():
                if not np.all(np.isfinite(v)):
                    return f"the combined update of {k} is not finite as float32"
                if k in global_weights:
                    new = np.asarray(global_weights[k]).astype(np.float32) + v
                    if not np.all(np.isfinite(new)):
                        return f"the global model's {k} plus the combined update is not finite as float32"
        return None

    # -- internals ---------------------------------------------------------------------------------------------
    def _log_round(self, fl_ctx: FLContext, record: RoundRecord) -> None:
        for site, reason in record.rejected.items():
            self.log_warning(fl_ctx, f"round {record.round}: update from {site} rejected: {reason}")
        summary = f"round {record.round}: {self.method} of {len(record.aggregated)} update(s) from "
        summary += ", ".join(record.aggregated) or "-"
        if record.clipped:
            summary += "; norm bounded: " + ", ".join(f"{s} {v}" for s, v in sorted(record.clipped.items()))
        if record.weights:
            summary += "; weight capped: " + ", ".join(f"{s} {v}" for s, v in sorted(record.weights.items()))
        if record.notes:
            summary += "; " + "; ".join(record.notes)
        if not record.aggregated:
            summary += "; no usable update: the global model is kept unchanged this round"
        if not record.aggregated or record.notes or record.weights:
            self.log_warning(fl_ctx, summary)
        else:
            self.log_info(fl_ctx, summary)

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
        global_weights = self._global_weights(fl_ctx)
        if global_weights is None:
            return "the server has no global model for this round"
        steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        return self.contribution(site, dxo.data, dxo.data_kind, steps, global_weights)

    @staticmethod
    def _global_weights(fl_ctx: FLContext) -> Mapping[str, Any] | None:
        global_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        return global_model["weights"] if global_model is not None else None

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
            "max_weight_factor": self.max_weight_factor,
        }
        rounds = [vars(r) for r in self.history]
        with open(path + ".tmp", "w") as f:
            json.dump({"settings": settings, "rounds": rounds, "declared_steps": self.declared_steps}, f, indent=1)
        os.replace(path + ".tmp", path)
