"""The FLARE Executor that runs at every hospital: train / validate / submit_model on the site's own data.

FL touchpoints, in order:
  (1) the site config is found and validated, the datalist checked and every case preprocessed (cached) -- once;
  (2) ``train``: load the global weights, score them on local validation data (for best-model selection), train
      ``local_epochs``, return weights with ``NUM_STEPS_CURRENT_ROUND`` for weighting;
  (3) ``validate``: score a model sent by the server (cross-site evaluation);
  (4) ``submit_model``: return this site's last locally trained model.
Anything that goes wrong is logged in full locally and answered with an error reply whose ``oncofl_error`` header
names the site, the datalist item, the error's type and the fix -- fixed texts only, never a path, a value read from
a file or an exception's message (and redacted once more on the way out) -- so the server can log it.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsDataType
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo
from nvflare.app_common.app_constant import AlgorithmConstants, AppConstants
from nvflare.private.defs import TaskConstant  # WAIT_TIME: the header FLARE puts the task interval in

from .algorithms import ALGORITHMS, DPSettings, local_state_keys, scheduled_lr
from .data import load_split, read_datalist
from .datacheck import check_site
from .distributed import SiteGroup, site_devices
from .engine import DeviceData, Trainer, device_memory_note, resolve_device
from .errors import JobError, OncoFLError, SiteConfigError
from .preprocess import release_gpu_memory
from .privacy import OutgoingGuard
from .site_config import SiteConfig, find_site_config, load_site_config
from .site_gpus import job_gpu_ids
from .tasks import get_task

ERROR_HEADER = "oncofl_error"
OPTIMIZER_STATES = ("keep", "reset")  # a site's optimizer state across rounds: carried over, or fresh each round


class OncoFLExecutor(Executor):
    """Runs one task of :mod:`oncofl.tasks` at a site. Every argument travels with the job (no site paths)."""

    # written into the exported job config even when equal to the defaults, so a job reads complete
    _always_serialize_args = ("task", "local_epochs", "batch_size", "learning_rate", "algorithm")

    def __init__(
        self,
        task: str = "prostate_seg",
        local_epochs: int = 2,
        batch_size: int = 4,
        learning_rate: float = 1e-3,
        lr_schedule: str = "constant",
        optimizer_state: str = "keep",
        preprocess: dict[str, Any] | None = None,
        network: dict[str, Any] | None = None,
        seed: int = 0,
        algorithm: str = "fedavg",
        fedprox_mu: float = 0.01,
        dp: dict[str, Any] | None = None,
        send_weight_diff: bool = False,
        train_task_name: str = AppConstants.TASK_TRAIN,
        validate_task_name: str = AppConstants.TASK_VALIDATION,
        submit_model_task_name: str = AppConstants.TASK_SUBMIT_MODEL,
    ) -> None:
        super().__init__()
        if local_epochs < 1 or batch_size < 1 or learning_rate <= 0:
            raise ValueError("local_epochs and batch_size must be >= 1 and learning_rate > 0")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm '{algorithm}'; available: {', '.join(ALGORITHMS)}")
        self._dp = DPSettings.from_job(dp)
        if self._dp is not None and algorithm in ("fedprox", "scaffold"):
            raise ValueError(f"DP-SGD runs with fedavg, fedopt or fedbn, not with {algorithm}")
        self.task = task
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        scheduled_lr(learning_rate, lr_schedule, 0, 1)  # refuses an unknown schedule when the job is built
        self.lr_schedule = lr_schedule
        if optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"optimizer_state must be one of {', '.join(OPTIMIZER_STATES)}, got '{optimizer_state}'")
        self.optimizer_state = optimizer_state  # "reset": each round's local training starts with fresh Adam moments
        self.preprocess = preprocess
        self.network = network
        self.seed = seed
        self.algorithm = algorithm
        self.fedprox_mu = fedprox_mu
        self.dp = dp
        self.send_weight_diff = send_weight_diff  # for FLARE's percentile / SVT filters, which work on differences
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.submit_model_task_name = submit_model_task_name

        self._spec = get_task(task)
        self._params = self._spec.params(preprocess)
        self._site = ""
        self._workspace_root: Path | None = None
        self._app_dir: Path | None = None
        self._config: SiteConfig | None = None
        self._trainer: Trainer | None = None
        self._train: DeviceData | None = None
        self._val: DeviceData | None = None
        self._local_weights: dict[str, np.ndarray] | None = None
        self._guard = OutgoingGuard()
        self._tb = None
        self.streamed: dict[int, list[str]] = {}  # per round: the names of the scalars streamed to the server
        self._group: SiteGroup | None = None
        self._local_keys: set[str] = set()  # FedBN: state kept at this site

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            workspace = fl_ctx.get_engine().get_workspace()
            self.bind_site(
                fl_ctx.get_identity_name(), workspace.get_root_dir(), workspace.get_app_dir(fl_ctx.get_job_id())
            )
        elif event_type == EventType.END_RUN:
            self.close()

    def close(self) -> None:
        """End the job's local resources: TensorBoard writer, helper DDP ranks."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._group is not None:
            self._group.close()
            self._group = None

    def bind_site(self, site: str, workspace_root: str | Path, app_dir: str | Path | None = None) -> None:
        """Who and where this executor runs (FLARE calls it at START_RUN; a local dry run may call it directly)."""
        self._site = site
        self._workspace_root = Path(workspace_root)
        self._app_dir = Path(app_dir) if app_dir else None
        self._guard.add(str(self._workspace_root))

    def _ensure_ready(self, fl_ctx: FLContext) -> None:
        """(1) site config -> device -> datalist -> cached, preprocessed splits on the device. Runs until it works."""
        if self._trainer is not None:
            return
        config = load_site_config(find_site_config(self._site, self._workspace_root), site_name=self._site)
        self._guard.add(*config.sensitive_strings())
        gpu_ids = job_gpu_ids(config.gpu_ids, site=self._site)  # FLARE's allocation, when the job asked for GPUs
        if gpu_ids != config.gpu_ids:
            self.log_info(fl_ctx, f"GPUs allocated to this job by the site's resource manager: {len(gpu_ids)}")
        device = resolve_device(gpu_ids, site=self._site)
        check = check_site(config, decode=False)  # headers only: counts, vendors, spacing, unreadable files
        self.log_info(fl_ctx, f"site data check: {check.summary()}")
        cases = read_datalist(config)
        started = time.perf_counter()
        train = load_split(cases["training"], self._spec, self._params, config)
        val = load_split(cases["validation"], self._spec, self._params, config)
        released = release_gpu_memory()  # CuPy's preprocessing pool, handed back before training takes the GPU
        self.log_info(
            fl_ctx,
            f"data ready on {device}: {len(train)} training / {len(val)} validation cases "
            f"({len(train.skipped) + len(val.skipped)} skipped) in {time.perf_counter() - started:.1f} s"
            + (f"; {released / 2**20:.0f} MiB of preprocessing GPU memory released" if released else ""),
        )
        self._train = DeviceData.from_numpy(train.images, train.labels, device)
        self._val = DeviceData.from_numpy(val.images, val.labels, device)
        self._config = config
        devices = site_devices(gpu_ids, config.cpu_processes)
        if devices and (self.algorithm == "scaffold" or self._dp is not None):
            raise SiteConfigError(
                f"this job uses {'DP-SGD' if self._dp else 'SCAFFOLD'}, which trains on one device per site, but the "
                "site config asks for several devices",
                fix='for this job set "gpu_ids" to one GPU (or "cpu_processes": 1) in the site config',
                site=self._site,
            )
        trainer_options = {"proximal_mu": self.fedprox_mu if self.algorithm == "fedprox" else 0.0}
        if devices:  # a multi-device site: DDP over every device, this process is rank 0
            self._group = SiteGroup(
                devices,
                task=self.task,
                learning_rate=self.learning_rate,
                seed=self.seed,
                network=self.network,
                trainer_options=trainer_options,
                images=train.images,
                labels=train.labels,
                workdir=(self._app_dir or config.cache_dir) / "ddp",  # local only; removed at the end of the job
            )
            self.log_info(fl_ctx, f"training with DistributedDataParallel on {len(devices)} x {devices[0].type}")
        trainer = Trainer(
            self._spec,
            device,
            learning_rate=self.learning_rate,
            seed=self.seed,
            network=self.network,
            **trainer_options,
        )
        if self._dp is not None:
            trainer.enable_dp(self._dp, len(train), self.batch_size, self.local_epochs)
            self.log_info(
                fl_ctx,
                f"DP-SGD: noise multiplier {trainer.privacy.noise_multiplier:.3f}, per-sample clip "
                f"{self._dp.max_grad_norm}, sample rate {trainer.privacy.sample_rate:.3f}, "
                f"budget epsilon {self._dp.epsilon_budget} at delta {self._dp.delta}",
            )
        if self.algorithm == "fedbn":
            self._local_keys = local_state_keys(trainer.model, self._spec.local_state)
            self.log_info(fl_ctx, f"FedBN: {len(self._local_keys)} normalization tensors stay at this site")
        self._trainer = trainer

    # -- tasks -------------------------------------------------------------------------------------------------
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        try:
            self._ensure_ready(fl_ctx)
            if abort_signal.triggered:  # the first call can take minutes (preprocessing every case)
                self.log_info(fl_ctx, f"task '{task_name}' aborted before it started")
                return make_reply(ReturnCode.TASK_ABORTED)
            if task_name == self.train_task_name:
                self._log_task_interval(shareable, fl_ctx)
                return self._do_train(shareable, fl_ctx, abort_signal)
            if task_name == self.validate_task_name:
                return self._do_validate(shareable, fl_ctx)
            if task_name == self.submit_model_task_name:
                return self._do_submit_model(fl_ctx)
            self.log_error(fl_ctx, f"unknown task '{task_name}'")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except OncoFLError as e:
            e.with_context(site=self._site)
            self.log_error(fl_ctx, f"task '{task_name}' failed: {e.local_message()}")
            return self._error_reply(e.server_message())
        except Exception as e:
            self.log_error(fl_ctx, f"task '{task_name}' failed: {traceback.format_exc()}")
            # the exception's message may quote a path or a header value: only its type leaves the site
            return self._error_reply(
                f"[{self._site}] task '{task_name}' failed with {type(e).__name__}. "
                "Fix: see this site's local log for the full traceback"
            )

    def _error_reply(self, message: str) -> Shareable:
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(ERROR_HEADER, self._guard.redact(message))
        return reply

    def _incoming_weights(self, shareable: Shareable) -> dict[str, np.ndarray]:
        return self._incoming(shareable)[0]

    def _incoming(self, shareable: Shareable) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """The global weights and, from a SCAFFOLD server, its control variates."""
        dxo = from_shareable(shareable)
        controls = None
        if dxo.data_kind == DataKind.COLLECTION:
            parts = dxo.data
            controls_dxo = parts.get(AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL)
            controls = controls_dxo.data if controls_dxo is not None else None
            dxo = parts.get(AppConstants.MODEL_WEIGHTS)
            if dxo is None:
                raise JobError("the server's task holds no model weights", fix="check the job's server workflow")
        if dxo.data_kind != DataKind.WEIGHTS:
            raise JobError(
                "expected model weights from the server",
                fix="check the job's server workflow and filters",
                detail=f"data kind {dxo.data_kind}",
            )
        return dxo.data, controls

    def _own_local_state(self) -> dict[str, np.ndarray] | None:
        """FedBN: this site's own normalization state from its last training round (None before it)."""
        if not self._local_keys or self._local_weights is None:
            return None
        return {k: self._local_weights[k] for k in self._local_keys}

    def _do_train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        trainer, train, val = self._trainer, self._train, self._val
        assert trainer is not None and train is not None and val is not None
        current_round = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0)
        weights, controls = self._incoming(shareable)
        weights = trainer.shaped(weights)
        if self.algorithm == "scaffold" and controls is None:
            raise JobError(
                "this job's executor runs SCAFFOLD but the server sent no control variates",
                fix="run SCAFFOLD jobs with the SCAFFOLD server workflow",
            )
        trainer.load_state(weights, local=self._own_local_state())
        key = self._spec.key_metric
        global_score = trainer.evaluate(val, batch_size=self.batch_size)  # (2) the global model on local data
        if trainer.privacy is not None and not trainer.privacy.next_round_fits():
            raise OncoFLError(
                "privacy budget spent: another round would exceed the job's epsilon budget; this site trains no more "
                "rounds of this job",
                fix="start a new job with a new budget only if the consortium's privacy policy allows it",
                detail=f"epsilon {trainer.privacy.epsilon():.3f} so far, another round would reach "
                f"{trainer.privacy.epsilon(trainer.privacy.steps_per_round):.3f} > budget "
                f"{trainer.privacy.settings.epsilon_budget}",
            )

        started = time.perf_counter()
        num_rounds = int(shareable.get_header(AppConstants.NUM_ROUNDS, 1) or 1)
        rounds = dict(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            should_abort=lambda: abort_signal.triggered,
            learning_rate=scheduled_lr(self.learning_rate, self.lr_schedule, current_round, num_rounds),
            reset_optimizer=self.optimizer_state == "reset",
        )
        if self._group is not None:  # every rank trains; this process (rank 0) ends with the averaged model
            stats = self._group.train(trainer, train, **rounds)
        else:
            stats = trainer.train(train, **rounds, scaffold_controls=controls)
        if stats.aborted:
            self.log_info(fl_ctx, f"round {current_round}: training aborted after {stats.steps} steps")
            return make_reply(ReturnCode.TASK_ABORTED)
        local_metrics = trainer.evaluate_all(val, batch_size=self.batch_size)
        local_score = local_metrics[key]
        self._local_weights = trainer.state()
        self._save_local_model()
        seconds = time.perf_counter() - started
        self.log_info(
            fl_ctx,
            f"round {current_round}: global {key}={global_score:.4f} -> local {key}={local_score:.4f}, "
            f"loss={stats.mean_loss:.4f}, {stats.steps} steps in {seconds:.1f} s"
            + (f"; {note}" if (note := device_memory_note(trainer.device)) else "")
            + self._algorithm_note(trainer, weights),
        )
        extra = {f"{k}_local": v for k, v in local_metrics.items() if k != key}
        meta = {
            MetaKey.NUM_STEPS_CURRENT_ROUND: stats.steps,
            MetaKey.INITIAL_METRICS: self._guard.metrics({key: global_score}),
        }
        if trainer.privacy is not None:  # the privacy spent, as numbers the server and TensorBoard can show
            ledger = trainer.privacy
            meta.update(
                dp_epsilon=ledger.epsilon(),
                dp_epsilon_next_round=ledger.epsilon(ledger.steps_per_round),
                dp_epsilon_budget=ledger.settings.epsilon_budget,
                dp_delta=ledger.settings.delta,
                dp_noise_multiplier=ledger.noise_multiplier,
            )
            extra["dp_epsilon"] = ledger.epsilon()
            self.log_info(fl_ctx, f"round {current_round}: DP epsilon spent {ledger.epsilon():.3f}")
        # under DP the training split enters only through DP-SGD: its loss (a mean over the same sampled batches) stays
        # in this site's local log and TensorBoard, outside what is streamed to the server
        self._report(
            fl_ctx,
            {f"{key}_global": global_score, f"{key}_local": local_score, "train_loss": stats.mean_loss, **extra},
            step=current_round,
            local_only=("train_loss",) if trainer.privacy is not None else (),
        )
        shared = {k: v for k, v in self._local_weights.items() if k not in self._local_keys}
        diff = {k: (v - np.asarray(weights[k])).astype(np.float32) for k, v in shared.items()}
        if self.algorithm != "scaffold":
            if self.send_weight_diff:
                return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
            return DXO(data_kind=DataKind.WEIGHTS, data=shared, meta=meta).to_shareable()
        parts = {
            AppConstants.MODEL_WEIGHTS: DXO(DataKind.WEIGHT_DIFF, diff, meta=meta),
            AlgorithmConstants.SCAFFOLD_CTRL_DIFF: DXO(DataKind.WEIGHT_DIFF, trainer.scaffold_delta, meta=dict(meta)),
        }
        return DXO(data_kind=DataKind.COLLECTION, data=parts, meta=meta).to_shareable()

    def _log_task_interval(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        """Once per job: how long the server has this site wait before asking for its next task (the job's
        ``task_request_interval``, which FLARE sends with every task)."""
        wait = shareable.get_header(TaskConstant.WAIT_TIME)
        if wait is not None and not getattr(self, "_interval_logged", False):
            self._interval_logged = True
            self.log_info(fl_ctx, f"the server asks for the next task after {wait} s (task_request_interval)")

    def _algorithm_note(self, trainer: Trainer, weights: dict[str, np.ndarray]) -> str:
        """What the site's algorithm did this round, for the local log: FedProx's proximal term at the round's end
        (mu/2 ||w - w_global||^2), SCAFFOLD's control update norm."""
        if self.algorithm == "fedprox" and self._local_weights is not None:
            drift = sum(
                float(np.sum((v.astype(np.float64) - np.asarray(weights[k], np.float64)) ** 2))
                for k, v in self._local_weights.items()
                if v.dtype.kind == "f"
            )
            return f"; FedProx mu={self.fedprox_mu:g}, proximal term {self.fedprox_mu / 2 * drift:.4g}"
        if self.algorithm == "scaffold" and trainer.scaffold_delta:
            norm = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in trainer.scaffold_delta.values())))
            return f"; SCAFFOLD control update norm {norm:.4g}"
        return ""

    def _do_validate(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        trainer, val = self._trainer, self._val
        assert trainer is not None and val is not None
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "?")
        weights = self._incoming_weights(shareable)
        trainer.load_state(weights)
        metrics = trainer.evaluate_all(val, batch_size=self.batch_size)
        own = self._own_local_state()
        if own is not None:  # FedBN: the same model personalized with this site's own normalization state
            trainer.load_state(weights, local=own)
            metrics.update(
                {f"{k}_personalized": v for k, v in trainer.evaluate_all(val, batch_size=self.batch_size).items()}
            )
        self.log_info(fl_ctx, f"validated model from {owner}: {metrics}")
        return DXO(data_kind=DataKind.METRICS, data=self._guard.metrics(metrics)).to_shareable()

    def _do_submit_model(self, fl_ctx: FLContext) -> Shareable:
        if self._local_weights is None:
            self.log_info(fl_ctx, "no local model yet: this site has not completed a training round")
            return make_reply(ReturnCode.EMPTY_RESULT)
        return DXO(data_kind=DataKind.WEIGHTS, data=self._local_weights).to_shareable()

    # -- outputs kept at the site, and analytics streamed to the server ----------------------------------------
    def _save_local_model(self) -> None:
        if self._app_dir is not None and self._trainer is not None:
            torch.save({"model": self._trainer.model.state_dict(), "task": self.task}, self._app_dir / "local_model.pt")

    def _report(self, fl_ctx: FLContext, values: dict[str, float], step: int, local_only: tuple = ()) -> None:
        """Scalars to the site's local TensorBoard; all but ``local_only`` also streamed to the server's."""
        values = self._guard.metrics(values)
        self.streamed[step] = sorted(k for k in values if k not in local_only)
        if self._tb is None and self._app_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self._app_dir / "tb_local"))
        for tag, value in values.items():
            if self._tb is not None:
                self._tb.add_scalar(tag, value, step)
            if tag in local_only:
                continue
            if fl_ctx.get_engine() is not None:  # no engine: a local dry run outside FLARE, nothing to stream to
                dxo = create_analytic_dxo(tag=tag, value=value, data_type=AnalyticsDataType.SCALAR, global_step=step)
                send_analytic_dxo(self, dxo=dxo, fl_ctx=fl_ctx, event_type=ANALYTIC_EVENT_TYPE)
        if self._tb is not None:
            self._tb.flush()
