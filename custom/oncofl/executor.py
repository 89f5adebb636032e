"""The FLARE Executor that runs at every hospital: a thin adapter over the site runtime (:mod:`oncofl.site`).

FL touchpoints: (1) at the first task the runtime finds the site config, checks the data and preprocesses (caches)
every case; (2) ``train``: the global weights go in, the runtime scores them on local validation data (best-model
selection), trains ``local_epochs`` and hands back what to send, with ``NUM_STEPS_CURRENT_ROUND`` for weighting;
(3) ``validate``: score a model sent by the server (cross-site evaluation); (4) ``submit_model``: this site's last
local model. A failure is logged in full locally and answered with an error reply whose ``oncofl_error`` header names
the site, the datalist item, the error's type and the fix -- fixed texts only, redacted once more on the way out.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsDataType
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo
from nvflare.app_common.app_constant import AppConstants
from nvflare.private.defs import TaskConstant  # WAIT_TIME: the header FLARE puts the task interval in

from .constants import ERROR_HEADER
from .engine import RoundInfo
from .errors import JobError, OncoFLError
from .site.hooks import RoundResult
from .site.runtime import SiteRuntime
from .site.settings import TrainSettings, job_parameters

__all__ = ["ERROR_HEADER", "OncoFLExecutor"]


class OncoFLExecutor(Executor):
    """Runs one task of :mod:`oncofl.tasks` at a site. Every argument travels with the job (no site paths).

    Args:
        train_task_name: FLARE's name of the training task.
        validate_task_name: of the cross-site validation task.
        submit_model_task_name: of the task that asks for the site's local model.
        settings: the fields of :class:`oncofl.site.settings.TrainSettings` (``dp`` as a dict), as the job config
            gives them.
    """

    # written into the exported job config even when equal to the defaults, so a job reads complete
    _always_serialize_args = ("task", "local_epochs", "batch_size", "learning_rate", "algorithm")

    def __init__(
        self,
        train_task_name: str = AppConstants.TASK_TRAIN,
        validate_task_name: str = AppConstants.TASK_VALIDATION,
        submit_model_task_name: str = AppConstants.TASK_SUBMIT_MODEL,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.settings = TrainSettings.from_job(**settings)  # validated here: a bad job fails when it is built
        self.__dict__.update(self.settings.job_args(dp=settings.get("dp")))  # what FedJob writes into the config
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.submit_model_task_name = submit_model_task_name
        self.runtime: SiteRuntime | None = None
        self.streamed: dict[int, list[str]] = {}  # per round: the names of the scalars streamed to the server

    # one keyword argument per field of TrainSettings (what FLARE's job export and component builder read)
    __init__.__signature__ = job_parameters(
        train_task_name=AppConstants.TASK_TRAIN,
        validate_task_name=AppConstants.TASK_VALIDATION,
        submit_model_task_name=AppConstants.TASK_SUBMIT_MODEL,
    )

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            workspace = fl_ctx.get_engine().get_workspace()
            self.bind_site(
                fl_ctx.get_identity_name(), workspace.get_root_dir(), workspace.get_app_dir(fl_ctx.get_job_id())
            )
        elif event_type == EventType.END_RUN:
            self.close()

    def bind_site(self, site: str, workspace_root: str | Path, app_dir: str | Path | None = None) -> None:
        """Who and where this executor runs (FLARE calls it at START_RUN; a local dry run may call it directly)."""
        self.runtime = SiteRuntime(self.settings, site, workspace_root, app_dir)

    def close(self) -> None:
        """End the job's local resources: TensorBoard writer, helper DDP ranks."""
        if self.runtime is not None:
            self.runtime.close()

    # the runtime's state, for a look from outside (tests, a debugger)
    _trainer = property(lambda self: self.runtime.trainer if self.runtime else None)
    _group = property(lambda self: self.runtime.group if self.runtime else None)
    _local_weights = property(lambda self: self.runtime.local_weights if self.runtime else None)

    # -- tasks -------------------------------------------------------------------------------------------------
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        runtime = self.runtime
        site = runtime.site if runtime else "?"
        try:
            runtime.log = lambda message: self.log_info(fl_ctx, message)
            runtime.prepare()
            if abort_signal.triggered:  # the first call can take minutes (preprocessing every case)
                self.log_info(fl_ctx, f"task '{task_name}' aborted before it started")
                return make_reply(ReturnCode.TASK_ABORTED)
            if task_name == self.train_task_name:
                self._log_task_interval(shareable, fl_ctx)
                return self._train(shareable, fl_ctx, abort_signal)
            if task_name == self.validate_task_name:
                metrics = runtime.validate(self._incoming(shareable)[0])
                self.log_info(
                    fl_ctx, f"validated model from {shareable.get_header(AppConstants.MODEL_OWNER, '?')}: {metrics}"
                )
                return DXO(data_kind=DataKind.METRICS, data=runtime.guard.metrics(metrics)).to_shareable()
            if task_name == self.submit_model_task_name:
                if runtime.local_weights is None:
                    self.log_info(fl_ctx, "no local model yet: this site has not completed a training round")
                    return make_reply(ReturnCode.EMPTY_RESULT)
                return DXO(data_kind=DataKind.WEIGHTS, data=runtime.local_weights).to_shareable()
            self.log_error(fl_ctx, f"unknown task '{task_name}'")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except OncoFLError as e:
            e.with_context(site=site)
            self.log_error(fl_ctx, f"task '{task_name}' failed: {e.local_message()}")
            return self._error_reply(e.server_message())
        except Exception as e:
            self.log_error(fl_ctx, f"task '{task_name}' failed: {traceback.format_exc()}")
            # the exception's message may quote a path or a header value: only its type leaves the site
            return self._error_reply(
                f"[{site}] task '{task_name}' failed with {type(e).__name__}. "
                "Fix: see this site's local log for the full traceback"
            )

    def _error_reply(self, message: str) -> Shareable:
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(ERROR_HEADER, self.runtime.guard.redact(message) if self.runtime else message)
        return reply

    def _incoming(self, shareable: Shareable) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The global weights and whatever else the server sent with them (SCAFFOLD's control variates)."""
        dxo = from_shareable(shareable)
        extras: dict[str, Any] = {}
        if dxo.data_kind == DataKind.COLLECTION:
            extras = {k: part.data for k, part in dxo.data.items() if k != AppConstants.MODEL_WEIGHTS}
            dxo = dxo.data.get(AppConstants.MODEL_WEIGHTS)
            if dxo is None:
                raise JobError("the server's task holds no model weights", fix="check the job's server workflow")
        if dxo.data_kind != DataKind.WEIGHTS:
            raise JobError(
                "expected model weights from the server",
                fix="check the job's server workflow and filters",
                detail=f"data kind {dxo.data_kind}",
            )
        return dxo.data, extras

    def _train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        info = RoundInfo(
            index=int(shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0),
            num_rounds=int(shareable.get_header(AppConstants.NUM_ROUNDS, 1) or 1),
        )
        weights, extras = self._incoming(shareable)
        result = self.runtime.train_round(weights, extras, info, lambda: abort_signal.triggered)
        if result is None:
            return make_reply(ReturnCode.TASK_ABORTED)
        self._report(fl_ctx, result.metrics, step=info.index, local_only=result.local_only)
        return self._to_shareable(result)

    def _to_shareable(self, result: RoundResult) -> Shareable:
        guard = self.runtime.guard
        meta = {
            MetaKey.NUM_STEPS_CURRENT_ROUND: result.steps,
            MetaKey.INITIAL_METRICS: guard.metrics(result.initial),
            **result.meta,
        }
        if not result.parts:
            if result.send_diff:
                return DXO(data_kind=DataKind.WEIGHT_DIFF, data=result.diff(), meta=meta).to_shareable()
            return DXO(data_kind=DataKind.WEIGHTS, data=result.weights, meta=meta).to_shareable()
        parts = {AppConstants.MODEL_WEIGHTS: DXO(DataKind.WEIGHT_DIFF, result.diff(), meta=meta)}
        parts.update({name: DXO(DataKind.WEIGHT_DIFF, data, meta=dict(meta)) for name, data in result.parts.items()})
        return DXO(data_kind=DataKind.COLLECTION, data=parts, meta=meta).to_shareable()

    def _log_task_interval(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        """Once per job: how long the server has this site wait before asking for its next task (the job's
        ``task_request_interval``, which FLARE sends with every task)."""
        wait = shareable.get_header(TaskConstant.WAIT_TIME)
        if wait is not None and not getattr(self, "_interval_logged", False):
            self._interval_logged = True
            self.log_info(fl_ctx, f"the server asks for the next task after {wait} s (task_request_interval)")

    def _report(self, fl_ctx: FLContext, values: dict[str, float], step: int, local_only: tuple = ()) -> None:
        """Scalars to the site's local TensorBoard (the runtime's); all but ``local_only`` also to the server's."""
        streamed = self.runtime.record(values, step, local_only)
        self.streamed[step] = sorted(streamed)
        for tag, value in streamed.items():
            if fl_ctx.get_engine() is not None:  # no engine: a local dry run outside FLARE, nothing to stream to
                dxo = create_analytic_dxo(tag=tag, value=value, data_type=AnalyticsDataType.SCALAR, global_step=step)
                send_analytic_dxo(self, dxo=dxo, fl_ctx=fl_ctx, event_type=ANALYTIC_EVENT_TYPE)
