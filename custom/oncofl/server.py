"""Server-side components we add to FLARE's workflows."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from .aggregation import AGGREGATED_PROP
from .constants import ERROR_HEADER


def aggregated_sites(fl_ctx: FLContext) -> dict | None:
    """What :class:`oncofl.aggregation.RobustAggregator` combined this round (None: another aggregator)."""
    decided = fl_ctx.get_prop(AGGREGATED_PROP)
    if not isinstance(decided, dict) or decided.get("round") != fl_ctx.get_prop(AppConstants.CURRENT_ROUND):
        return None
    return decided


class SiteErrorReporter(FLComponent):
    """Logs, in the server log, why a site's task failed (the site's own redacted message, with its fix).

    FLARE's workflows only log a failing site's return code; the site's explanation travels in the reply header
    ``oncofl_error`` and is surfaced here, once per failure, e.g.::

        site-3 failed task 'train': [site-3] invalid site configuration: 'data_root' folder does not exist. Fix: ...
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[str, str, str]] = []

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.BEFORE_PROCESS_SUBMISSION:
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if not isinstance(result, Shareable):
            return
        rc = result.get_return_code(ReturnCode.OK)
        if rc == ReturnCode.OK:
            return
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "?"
        task = result.get_header(ReservedHeaderKey.TASK_NAME, "?")
        reason = result.get_header(ERROR_HEADER) or f"no explanation sent (return code {rc}); see the site's log"
        self.failures.append((site, task, reason))
        self.log_error(fl_ctx, f"{site} failed task '{task}' ({rc}): {reason}")


class ParticipationMonitor(FLComponent):
    """Which sites contributed to each round, which dropped, and why that matters to the consortium.

    At the end of every round the server log says, e.g.::

        round 1: 2 of 3 sites contributed; no update from hospital-c (timed out)

    and ``participation.json`` in the job's server workspace (downloaded with the job's results) lists every round's
    contributors and the sites that dropped, so a shortened round is never silently mistaken for a full one. A site
    counts as having contributed only when its update went into the global model: one the aggregator refused or
    rejected as an outlier is listed under ``excluded`` with the reason (``aggregation.json`` has the details).
    ``left_out`` names every site of the round that did not contribute, with why: ``failed`` (it answered with an
    error), ``dropped`` (FLARE declared it disconnected), ``timed out`` (alive, but no answer before the round closed:
    only a job with ``round_deadline`` closes a round without it) or ``not aggregated`` (see ``excluded``).
    FLARE 2.9 does not hand a running job to a client that restarts: a dropped site stays out until the next job
    (``oncofl poc resume`` continues training from the last global model with every site).
    """

    FILE_NAME = "participation.json"

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[dict] = []
        self._current: dict | None = None
        self._failed: set[str] = set()  # sites that answered this round's train task with an error
        self._disconnected: set[str] = set()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.CLIENT_DISCONNECTED:
            self._disconnected.add(str(fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME, "")))
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION and self._current is not None:
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            peer = fl_ctx.get_peer_context()
            if isinstance(result, Shareable) and peer and result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                if result.get_header(ReservedHeaderKey.TASK_NAME) == AppConstants.TASK_TRAIN:
                    self._failed.add(peer.get_identity_name())
        if event_type == AppEventType.ROUND_STARTED:
            self._failed = set()
            expected = sorted(c.name for c in fl_ctx.get_engine().get_clients())
            self._current = {"round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND), "expected": expected}
            self._current["contributed"] = []
        elif event_type == AppEventType.AFTER_AGGREGATION and self._current is not None:
            decided = aggregated_sites(fl_ctx)
            if decided is not None:  # RobustAggregator: only what went into the model counts
                self._current["contributed"] = list(decided["aggregated"])
                self._current["excluded"] = dict(decided["excluded"])
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT and self._current is not None:
            peer = fl_ctx.get_peer_context()
            if peer and fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED):
                self._current["contributed"].append(peer.get_identity_name())
        elif event_type == AppEventType.ROUND_DONE and self._current is not None:
            record = self._current
            record["contributed"] = sorted(set(record["contributed"]))
            excluded = record.setdefault("excluded", {})
            record["missing"] = [s for s in record["expected"] if s not in record["contributed"] and s not in excluded]
            record["left_out"] = {s: self._why_missing(s) for s in record["missing"]}
            record["left_out"].update({s: "not aggregated" for s in excluded})
            self.rounds.append(record)
            self._current = None
            n_done, n_all = len(record["contributed"]), len(record["expected"])
            message = f"round {record['round']}: {n_done} of {n_all} sites contributed"
            if excluded:
                message += f"; update from {', '.join(sorted(excluded))} not used by the aggregator"
            if record["missing"] or excluded:
                if record["missing"]:
                    why = ", ".join(f"{s} ({record['left_out'][s]})" for s in record["missing"])
                    message += f"; no update from {why}"
                self.log_warning(fl_ctx, message)
            else:
                self.log_info(fl_ctx, message)
            self._write(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._write(fl_ctx)
            dropped = self.summary()["dropped"]
            if dropped:
                names = ", ".join(dropped)
                self.log_warning(fl_ctx, f"job finished; some rounds lack updates from: {names} (see {self.FILE_NAME})")

    def _why_missing(self, site: str) -> str:
        if site in self._failed:
            return "failed"
        return "dropped" if site in self._disconnected else "timed out"

    def summary(self) -> dict:
        dropped = sorted({s for r in self.rounds for s in r["missing"]})
        excluded = sorted({s for r in self.rounds for s in r.get("excluded", {})})
        return {
            "rounds": self.rounds,
            "dropped": dropped,
            "excluded": excluded,
            "last_round_contributors": self.rounds[-1]["contributed"] if self.rounds else [],
        }

    def _write(self, fl_ctx: FLContext) -> None:
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, self.FILE_NAME)
        with open(path + ".tmp", "w") as f:
            json.dump(self.summary(), f, indent=1)
        os.replace(path + ".tmp", path)


class AggregatedModelSelector(IntimeModelSelector):
    """FLARE's IntimeModelSelector, averaging only the validation scores of sites whose updates were aggregated.

    FLARE's selector adds every arriving result's score of the global model (before the aggregator has judged it)
    and decides before aggregation. This one keeps the scores per site and decides after aggregation, over the sites
    :class:`oncofl.aggregation.RobustAggregator` combined (with another aggregator: over the sites it accepted), so a
    refused or rejected site cannot steer which global model is kept as the best.

    Args:
        key_metric: the name of the metric, in the sites' validation results of the global model, the best model is
            chosen by (default ``val_accuracy``; higher is better).
        negate_key_metric: True where lower is better (e.g. a loss): the metric is negated before it is compared.
    """

    def __init__(self, key_metric: str = "val_accuracy", negate_key_metric: bool = False) -> None:
        self.scores: dict[str, tuple[float, float, float]] = {}  # site -> (metric x weight, raw x weight, weight)
        super().__init__(key_metric=key_metric, negate_key_metric=negate_key_metric)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.BEFORE_AGGREGATION:
            return  # decided after the aggregation, below
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT and not fl_ctx.get_prop(
            AppConstants.AGGREGATION_ACCEPTED
        ):
            peer = fl_ctx.get_peer_context()
            self.scores.pop(peer.get_identity_name() if peer else "?", None)
        elif event_type == AppEventType.AFTER_AGGREGATION:
            decided = aggregated_sites(fl_ctx)
            used = {s: v for s, v in self.scores.items() if decided is None or s in decided["aggregated"]}
            if len(used) < len(self.scores):
                names = ", ".join(sorted(set(self.scores) - set(used)))
                self.log_info(fl_ctx, f"best-model selection leaves out the scores of {names} (update not aggregated)")
            self.validation_metric_weighted_sum = sum(v[0] for v in used.values())
            self.raw_validation_metric_weighted_sum = sum(v[1] for v in used.values())
            self.validation_metric_sum_of_weights = sum(v[2] for v in used.values())
            self._before_aggregate(fl_ctx)

    def _reset_stats(self) -> None:
        super()._reset_stats()
        self.scores = {}

    def _before_accept(self, fl_ctx: FLContext) -> bool:
        sums = (
            self.validation_metric_weighted_sum,
            self.raw_validation_metric_weighted_sum,
            self.validation_metric_sum_of_weights,
        )
        counted = super()._before_accept(fl_ctx)
        if counted:
            peer = fl_ctx.get_peer_context()
            self.scores[peer.get_identity_name(default="?")] = (
                self.validation_metric_weighted_sum - sums[0],
                self.raw_validation_metric_weighted_sum - sums[1],
                self.validation_metric_sum_of_weights - sums[2],
            )
        return counted


class PrivacyBudgetScatterAndGather(ScatterAndGather):
    """FLARE's ScatterAndGather that ends training when the job's differential-privacy budget would be exceeded.

    Every DP site reports, in its result's meta, the epsilon it has spent (``dp_epsilon``) and what one more round
    would bring it to (``dp_epsilon_next_round``). After a round in which any site's next round would exceed
    ``epsilon_budget``, the workflow ends: the round's global model is kept, cross-site evaluation follows, and the
    server log and ``privacy.json`` (downloaded with the results) say which site stopped it and at what epsilon.
    Each site also refuses, on its own, to train past its budget.

    Args:
        epsilon_budget: the job's epsilon budget (positive; default 2.0): training ends after the round in which a
            site reports that its next round would exceed it.

    Every other argument is :class:`ScatterAndGather`'s, passed on unchanged.
    """

    FILE_NAME = "privacy.json"

    def __init__(self, *args: Any, epsilon_budget: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not epsilon_budget > 0:
            raise ValueError(f"epsilon_budget must be positive, got {epsilon_budget}")
        self.epsilon_budget = epsilon_budget
        self.spent: dict[str, list[dict]] = {}  # site -> per round {round, epsilon, epsilon_next_round, delta}
        self.stopped_after: int | None = None
        self._over_budget: list[str] = []

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            self._record(fl_ctx)
        elif event_type == AppEventType.ROUND_DONE and self._over_budget:
            last = self._current_round
            remaining = self._start_round + self._num_rounds - 1 - last
            if remaining > 0:
                self._num_rounds = last + 1 - self._start_round  # the loop ends after this round
                self.stopped_after = last
                self.log_warning(
                    fl_ctx,
                    f"privacy budget: {'; '.join(self._over_budget)} > budget {self.epsilon_budget:g}: training "
                    f"stops after round {last} ({remaining} planned round(s) not run)",
                )
            self._write(fl_ctx)
        elif event_type in (AppEventType.ROUND_DONE, EventType.END_RUN) and self.spent:
            self._write(fl_ctx)

    def _record(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
        peer = fl_ctx.get_peer_context()
        if not isinstance(result, Shareable) or peer is None:
            return
        try:
            meta = from_shareable(result).meta or {}
        except Exception:
            return
        if "dp_epsilon" not in meta:
            return
        site = peer.get_identity_name()
        entry = {
            "round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND),
            "epsilon": float(meta["dp_epsilon"]),
            "epsilon_next_round": float(meta.get("dp_epsilon_next_round", math.inf)),
            "delta": float(meta.get("dp_delta", 0.0)),
        }
        self.spent.setdefault(site, []).append(entry)
        self.log_info(fl_ctx, f"privacy: {site} has spent epsilon {entry['epsilon']:.3f} (delta {entry['delta']:g})")
        if entry["epsilon_next_round"] > self.epsilon_budget:
            self._over_budget.append(f"{site} would reach epsilon {entry['epsilon_next_round']:.3f}")

    def _write(self, fl_ctx: FLContext) -> None:
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, self.FILE_NAME)
        summary = {
            "epsilon_budget": self.epsilon_budget,
            "stopped_after_round": self.stopped_after,
            "sites": self.spent,
        }
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)
