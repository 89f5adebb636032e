"""One site's runtime for one job: site config -> data check -> datalist -> cached, preprocessed splits -> device ->
trainer (with the job's algorithm hooks), and a round of training or validation on them.

The executor (:mod:`oncofl.executor`) turns FLARE's tasks into calls of :class:`SiteRuntime` and its results into
replies. Scripts and reports that train or score outside FLARE use the same assembly: :func:`load_splits`,
:meth:`DeviceData.from_numpy` and :func:`build_trainer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import SplitData, load_split, read_datalist
from ..datacheck import check_site
from ..distributed import SiteGroup, site_devices
from ..engine import DeviceData, RoundInfo, Trainer, device_memory_note, resolve_device
from ..errors import SiteConfigError, known
from ..preprocess import release_gpu_memory
from ..privacy import OutgoingGuard
from ..site_config import SiteConfig, find_site_config, load_site_config
from ..site_gpus import job_gpu_ids
from ..tasks import TaskSpec, get_task
from .hooks import ONE_DEVICE, RoundResult, SiteHook, site_hooks
from .settings import TrainSettings

Log = Callable[[str], None]


def load_splits(
    config: SiteConfig, spec: TaskSpec, params: dict[str, Any], splits: Iterable[str] = ("training", "validation")
) -> dict[str, SplitData]:
    """The site's datalist splits, every case read, preprocessed (and cached) as the task defines."""
    splits = tuple(splits)
    cases = read_datalist(config, splits=splits)
    return {name: load_split(cases[name], spec, params, config) for name in splits}


def build_trainer(
    spec: TaskSpec,
    device: torch.device,
    settings: TrainSettings | None = None,
    hooks: Iterable[SiteHook] = (),
) -> Trainer:
    """The task's network and optimizer on ``device``, as ``settings`` (default: :class:`TrainSettings`) ask."""
    settings = settings or TrainSettings(task=spec.name)
    return Trainer(
        spec,
        device,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        network=settings.network,
        hooks=list(hooks),
    )


class SiteRuntime:
    """What one site does with one job.

    Args:
        settings: the job's training settings.
        site: this site's name (FLARE's client name).
        workspace_root: the client's workspace (the site config is looked up from it).
        app_dir: the job's app folder at this site (local model, local TensorBoard); None outside FLARE.
        log: where the runtime's lines go (the executor's FLARE log).
    """

    def __init__(
        self,
        settings: TrainSettings,
        site: str,
        workspace_root: str | Path,
        app_dir: str | Path | None = None,
        log: Log = print,
    ) -> None:
        self.settings = settings
        self.spec = get_task(settings.task)
        self.site = site
        self.workspace_root = Path(workspace_root)
        self.app_dir = Path(app_dir) if app_dir else None
        self.log = log
        self.guard = OutgoingGuard([str(self.workspace_root)])  # what must never appear in a reply
        self.config: SiteConfig | None = None
        self.trainer: Trainer | None = None
        self.group: SiteGroup | None = None
        self.train_data: DeviceData | None = None
        self.val_data: DeviceData | None = None
        self.local_weights: dict[str, np.ndarray] | None = None  # this site's last locally trained model
        self._tb = None  # the site's local TensorBoard writer

    # -- set-up: once per job, repeated until it works -----------------------------------------------------------
    def prepare(self) -> None:
        """Site config -> device -> datalist -> cached, preprocessed splits on the device -> trainer."""
        if self.trainer is not None:
            return
        config = load_site_config(find_site_config(self.site, self.workspace_root), site_name=self.site)
        self.guard.add(*config.sensitive_strings())
        gpu_ids = job_gpu_ids(config.gpu_ids, site=self.site)  # FLARE's allocation, when the job asked for GPUs
        if gpu_ids != config.gpu_ids:
            self.log(f"GPUs allocated to this job by the site's resource manager: {len(gpu_ids)}")
        device = resolve_device(gpu_ids, site=self.site)
        train, val = self._load_data(config, device)
        hooks = site_hooks(self.settings, self.spec.local_state, len(train))
        devices = self._devices(config, gpu_ids, hooks)
        if devices:  # a multi-device site: DDP over every device, this process is rank 0
            self.group = SiteGroup(
                devices,
                settings=self.settings,
                images=train.images,
                labels=train.labels,
                workdir=(self.app_dir or config.cache_dir) / "ddp",  # local only; removed at the end of the job
            )
            self.log(f"training with DistributedDataParallel on {len(devices)} x {devices[0].type}")
        trainer = build_trainer(self.spec, device, self.settings, hooks)
        for note in trainer.attach_notes:
            self.log(note)
        self.config, self.trainer = config, trainer

    def _load_data(self, config: SiteConfig, device: torch.device) -> tuple[SplitData, SplitData]:
        check = check_site(config, decode=False)  # headers only: counts, vendors, spacing, unreadable files
        self.log(f"site data check: {check.summary()}")
        started = time.perf_counter()
        splits = load_splits(config, self.spec, self.spec.params(self.settings.preprocess))
        train, val = splits["training"], splits["validation"]
        released = release_gpu_memory()  # CuPy's preprocessing pool, handed back before training takes the GPU
        self.log(
            f"data ready on {device}: {len(train)} training / {len(val)} validation cases "
            f"({len(train.skipped) + len(val.skipped)} skipped) in {time.perf_counter() - started:.1f} s"
            + (f"; {released / 2**20:.0f} MiB of preprocessing GPU memory released" if released else ""),
        )
        self.train_data = DeviceData.from_numpy(train.images, train.labels, device)
        self.val_data = DeviceData.from_numpy(val.images, val.labels, device)
        return train, val

    def _devices(self, config: SiteConfig, gpu_ids: tuple[int, ...], hooks: list[SiteHook]) -> list[torch.device]:
        devices = site_devices(gpu_ids, config.cpu_processes)
        single = [h.label for h in hooks if h.single_device]
        if devices and single:
            raise SiteConfigError(
                f"this job uses {known(single[0], ONE_DEVICE)}, which trains on one device per site, but the site "
                "config asks for several devices",
                fix='for this job set "gpu_ids" to one GPU (or "cpu_processes": 1) in the site config',
                site=self.site,
            )
        return devices

    # -- rounds --------------------------------------------------------------------------------------------------
    def train_round(
        self,
        weights: dict[str, np.ndarray],
        extras: dict[str, Any],
        info: RoundInfo,
        should_abort: Callable[[], bool],
    ) -> RoundResult | None:
        """Score the global model on local validation data, train ``local_epochs``, and return what to send (None
        when FLARE aborted the round)."""
        trainer, s = self.trainer, self.settings
        assert trainer is not None and self.train_data is not None
        weights = trainer.shaped(weights)
        for hook in trainer.hooks:
            hook.receive(extras)
        trainer.load_state(weights, local=self._local_state())
        key = self.spec.key_metric
        global_score = trainer.evaluate(self.val_data, batch_size=s.batch_size)  # for best-model selection
        for hook in trainer.hooks:
            hook.check_round(trainer)
        started = time.perf_counter()
        rounds = dict(epochs=s.local_epochs, batch_size=s.batch_size, should_abort=should_abort, info=info)
        if self.group is not None:  # every rank trains; this process (rank 0) ends with the averaged model
            stats = self.group.train(trainer, self.train_data, **rounds)
        else:
            stats = trainer.train(self.train_data, **rounds)
        if stats.aborted:
            self.log(f"round {info.index}: training aborted after {stats.steps} steps")
            return None
        local_metrics = trainer.evaluate_all(self.val_data, batch_size=s.batch_size)
        self.local_weights = trainer.state()
        self._save_local_model()
        extra = {f"{k}_local": v for k, v in local_metrics.items() if k != key}
        result = RoundResult(
            weights=dict(self.local_weights),
            start=weights,
            steps=stats.steps,
            initial={key: global_score},
            metrics={f"{key}_global": global_score, f"{key}_local": local_metrics[key], "train_loss": stats.mean_loss},
            send_diff=s.send_weight_diff,
        )
        result.metrics.update(extra)
        notes = [n for h in trainer.hooks if (n := h.note(trainer, result))]
        self.log(
            f"round {info.index}: global {key}={global_score:.4f} -> local {key}={local_metrics[key]:.4f}, "
            f"loss={stats.mean_loss:.4f}, {stats.steps} steps in {time.perf_counter() - started:.1f} s"
            + (f"; {note}" if (note := device_memory_note(trainer.device)) else "")
            + "".join(f"; {n}" for n in notes),
        )
        for hook in trainer.hooks:
            hook.outgoing(trainer, result)
        return result

    def validate(self, weights: dict[str, np.ndarray]) -> dict[str, float]:
        """A model sent by the server (cross-site evaluation) on this site's validation data; with FedBN also the
        same model personalized with this site's own normalization state (``*_personalized``)."""
        trainer, batch = self.trainer, self.settings.batch_size
        assert trainer is not None and self.val_data is not None
        trainer.load_state(weights)
        metrics = trainer.evaluate_all(self.val_data, batch_size=batch)
        own = self._local_state()
        if own is not None:
            trainer.load_state(weights, local=own)
            metrics.update(
                {f"{k}_personalized": v for k, v in trainer.evaluate_all(self.val_data, batch_size=batch).items()}
            )
        return metrics

    def _local_state(self) -> dict[str, np.ndarray] | None:
        assert self.trainer is not None
        for hook in self.trainer.hooks:
            if (own := hook.local_state()) is not None:
                return own
        return None

    def _save_local_model(self) -> None:
        if self.app_dir is not None and self.trainer is not None:
            model = {"model": self.trainer.model.state_dict(), "task": self.settings.task}
            torch.save(model, self.app_dir / "local_model.pt")

    def record(self, values: dict[str, float], step: int, local_only: tuple[str, ...] = ()) -> dict[str, float]:
        """Scalars to the site's local TensorBoard (under the app folder); returns those that may be streamed to the
        server (all but ``local_only``), as numbers only."""
        values = self.guard.metrics(values)
        if self._tb is None and self.app_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.app_dir / "tb_local"))
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)
            self._tb.flush()
        return {k: v for k, v in values.items() if k not in local_only}

    def close(self) -> None:
        """End the job's local resources: TensorBoard writer, helper DDP ranks."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.group is not None:
            self.group.close()
            self.group = None
