"""Local training and evaluation on the site's device: whole batches on the GPU, AMP, no per-sample Python work."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .algorithms import PrivacyLedger
from .errors import JobError, SiteConfigError, known
from .tasks import TASK_NAMES, TaskSpec


def resolve_device(gpu_ids: tuple[int, ...] = (), site: str = "") -> torch.device:
    """The site's training device: the first configured GPU, else the first visible GPU, else the CPU."""
    if gpu_ids:
        if not torch.cuda.is_available():
            raise SiteConfigError(
                "gpu_ids configured but CUDA is not available to PyTorch",
                fix='install the CUDA build of torch for this driver, or set "gpu_ids": [] to train on the CPU',
                site=site,
                detail=f"gpu_ids {list(gpu_ids)}",
            )
        if max(gpu_ids) >= torch.cuda.device_count():
            raise SiteConfigError(
                "gpu_ids name a GPU that is not visible",
                fix="use indices below the visible GPU count (check CUDA_VISIBLE_DEVICES)",
                site=site,
                detail=f"gpu_ids {list(gpu_ids)}, {torch.cuda.device_count()} GPU(s) visible",
            )
        return torch.device("cuda", gpu_ids[0])
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def device_memory_note(device: torch.device) -> str:
    """This process's peak GPU memory so far, as a site's log reports it each round ('' on the CPU): what torch's
    allocator handed out and what it held from the driver (the CUDA context, ~0.5 GiB, comes on top)."""
    if device.type != "cuda":
        return ""
    allocated, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    return f"peak GPU memory {allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved"


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, fp16 on older GPUs, no autocast on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _distributed() -> bool:
    """True when this process belongs to a site's process group (a DDP site, also one of a single rank)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _world() -> tuple[int, int]:
    """(world size, rank) of this site's process group; (1, 0) for a single-device site."""
    if _distributed():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _as_shape(value: Any, shape: tuple[int, ...]) -> Any:
    """A flat vector of the right size takes the tensor's shape (FLARE's HE decryptor returns flat vectors)."""
    array = np.asarray(value)
    if array.ndim == 1 and array.shape != shape and array.size == int(np.prod(shape)):
        return array.reshape(shape)
    return value


@dataclass
class DeviceData:
    """A split moved to the training device once and kept there between rounds."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, device: torch.device) -> DeviceData:
        pin = device.type == "cuda"
        imgs = torch.from_numpy(images)
        labs = torch.from_numpy(labels.astype(np.int64))
        if pin:
            imgs, labs = imgs.pin_memory(), labs.pin_memory()
        return cls(imgs.to(device, non_blocking=True), labs.to(device, non_blocking=True))

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.arange(len(self), device=self.images.device) if order is None else order
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx], self.labels[idx]


@dataclass(frozen=True)
class RoundInfo:
    """Where a round stands in its job: ``index`` (0-based) of ``num_rounds``."""

    index: int = 0
    num_rounds: int = 1


@dataclass
class RoundStats:
    steps: int
    mean_loss: float
    aborted: bool = False


class Trainer:
    """Holds the model, optimizer and AMP state of one site across rounds; the job's algorithms act through
    ``hooks`` (:class:`oncofl.site.hooks.SiteHook`).

    Args:
        task: the task (network, loss, augmentation, metric).
        device: where the model and the batches live.
        learning_rate: Adam's initial learning rate (a schedule hook may set each round's).
        seed: the shuffling and augmentation seed.
        network: arguments of the task's network builder.
        hooks: the job's site-side algorithm hooks, in the order they run.
    """

    def __init__(
        self,
        task: TaskSpec,
        device: torch.device,
        *,
        learning_rate: float,
        seed: int,
        network: dict[str, Any] | None = None,
        hooks: Sequence[Any] = (),
    ) -> None:
        self.task = task
        self.device = device
        self.channels_last = task.channels_last and device.type == "cuda"
        self.model = task.build_network(**(network or {})).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.loss_fn = task.make_loss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.dtype = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._ddp: torch.nn.Module | None = None  # multi-device sites: built at the first distributed round
        self._aug_generator: torch.Generator | None = None
        self.train_model: torch.nn.Module | None = None  # a hook's wrapper of the model for training (DP-SGD)
        self.privacy: PrivacyLedger | None = None  # DP-SGD's ledger, set by its hook
        self.hooks: list[Any] = []
        self.attach_notes = [note for hook in hooks if (note := self.add_hook(hook))]
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def add_hook(self, hook: Any) -> str:
        """Add an algorithm hook; returns its line for the site's log."""
        self.hooks.append(hook)
        return hook.attach(self)

    def full_precision(self) -> None:
        """No autocast from now on (DP-SGD clips per-sample fp32 gradients)."""
        self.dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)

    def set_learning_rate(self, learning_rate: float) -> None:
        """The rate the optimizer uses until it is set again."""
        for group in self.optimizer.param_groups:
            group["lr"] = float(learning_rate)

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def load_state(self, weights: dict[str, np.ndarray], local: dict[str, np.ndarray] | None = None) -> None:
        """Load global weights; names and shapes must match this task's network exactly. ``local`` (FedBN: this
        site's own normalization state) overrides those tensors, which the global weights may lack."""
        own = self.model.state_dict()
        if local:
            weights = {**weights, **local}
        weights = self.shaped(weights)
        missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        bad_shape = [k for k in own if k in weights and tuple(np.shape(weights[k])) != tuple(own[k].shape)]
        if missing or unexpected or bad_shape:
            raise JobError(
                f"global model does not match the '{known(self.task.name, TASK_NAMES)}' network: the job's server "
                "model and client task disagree",
                fix="build the job's server model and client task from the same task (oncofl job export)",
                detail=f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}",
            )
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})

    def shaped(self, weights: dict[str, Any]) -> dict[str, Any]:
        """``weights`` with flat vectors of the right size reshaped to the network's tensors (FLARE's HE decryptor
        hands out flat vectors)."""
        own = self.model.state_dict()
        return {k: _as_shape(v, tuple(own[k].shape)) if k in own else v for k, v in weights.items()}

    def state(self) -> dict[str, np.ndarray]:
        """A copy of the model's weights (on the CPU, ``.numpy()`` would share memory with the live model, and the
        next ``load_state`` -- e.g. a cross-site ``validate`` -- would silently change what was kept)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def train(
        self,
        data: DeviceData,
        *,
        epochs: int,
        batch_size: int,
        should_abort: Callable[[], bool] = lambda: False,
        info: RoundInfo | None = None,
        learning_rate: float | None = None,
    ) -> RoundStats:
        """``epochs`` local epochs of round ``info`` (the hooks act on it).
        ``learning_rate``: this call's rate, for training without a schedule hook (the optimizer keeps it)."""
        if learning_rate is not None:
            self.set_learning_rate(learning_rate)
        world, rank = _world()
        distributed = _distributed()  # a process group of any size, one rank included: DDP and its collectives
        if distributed:
            if single := [h.label for h in self.hooks if h.single_device]:
                raise ValueError(f"{', '.join(single)}: one device per site, and this site is configured with several")
            self._sync_from_rank0()  # rank 0 loaded this round's global weights
        if self.task.prepare is not None and all(h.allows_task_prepare for h in self.hooks):
            self.task.prepare(self.model, data.images)
        info = info or RoundInfo()
        for hook in self.hooks:
            hook.start_round(self, info)
        model = self._ddp_model() if distributed else (self.train_model or self.model)
        model.train()
        steps, total, aborted = self._epochs(model, data, epochs, batch_size, should_abort, world, rank, distributed)
        if aborted:
            return RoundStats(steps * world, float(total) / max(steps, 1), aborted=True)
        for hook in self.hooks:
            hook.end_round(self, steps)
        mean = float(total) / max(steps, 1)
        if distributed:  # the mean loss over every rank, so all ranks agree (and raise) together
            summed = torch.tensor([mean], dtype=torch.float64, device=self._comm_device())
            torch.distributed.all_reduce(summed)
            mean = float(summed) / world
        if not math.isfinite(mean):
            raise JobError(
                "training loss is not finite", fix="lower the learning rate or check the data", detail=f"loss {mean}"
            )
        return RoundStats(steps * world, mean)  # steps as one process would count them (batch world x B)

    def _epochs(self, model, data, epochs, batch_size, should_abort, world, rank, distributed):
        """The training loop: (steps, summed loss, aborted)."""
        augment_generator = self.generator if world == 1 else self._rank_generator(rank)
        steps = 0
        # the loss is summed on the device and read once per round: a read per step would make the host wait for
        # the device at every step, and the next step's launches could not queue behind the running one
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for _ in range(epochs):
            for images, labels in self._epoch_batches(data, batch_size, world, rank):
                if self.has_batchnorm and len(images) < 2 <= len(data):
                    continue  # a lone last sample (reshuffled next epoch): BatchNorm cannot train on one
                if self._abort_requested(should_abort, distributed):
                    return steps, total, True
                images, labels = self.task.augment(images, labels, augment_generator)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                self.optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, self.dtype):
                    loss = self.loss_fn(model(images), labels)
                total += loss.detach().to(torch.float64)
                for hook in self.hooks:
                    if (term := hook.extra_loss(self)) is not None:
                        loss = loss + term
                self.scaler.scale(loss).backward()  # DDP averages the gradients of all ranks here
                self.scaler.step(self.optimizer)
                self.scaler.update()
                for hook in self.hooks:
                    hook.after_step(self)
                steps += 1
        return steps, total, False

    def _epoch_batches(
        self, data: DeviceData, batch_size: int, world: int, rank: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for hook in self.hooks:  # a hook's own sampling (DP-SGD's Poisson sampling)
            if (batches := hook.batches(self, data, batch_size)) is not None:
                yield from batches
                return
        order = torch.randperm(len(data), generator=self.generator, device=self.device)  # the same on every rank
        if world > 1:  # rank r takes positions r, r + world, ...: one shared order, equal shards (padded)
            padded = -(-len(order) // world) * world
            order = torch.cat([order, order[: padded - len(order)]])[rank::world]
        yield from data.batches(batch_size, order)

    # -- multi-device sites (oncofl.distributed) ----------------------------------------------------------------
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _sync_from_rank0(self) -> None:
        with torch.no_grad():
            for tensor in self.model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def _ddp_model(self) -> torch.nn.Module:
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)
        return self._ddp

    def _rank_generator(self, rank: int) -> torch.Generator:
        if self._aug_generator is None:
            self._aug_generator = torch.Generator(device=self.device)
            self._aug_generator.manual_seed(int(self.generator.initial_seed()) + 1000 + rank)
        return self._aug_generator

    def _abort_requested(self, should_abort: Callable[[], bool], distributed: bool) -> bool:
        if not distributed:
            return should_abort()
        flag = torch.tensor([1 if should_abort() else 0], device=self._comm_device())
        torch.distributed.broadcast(flag, src=0)  # rank 0 hears FLARE's abort; every rank stops at the same step
        return bool(flag.item())

    @torch.no_grad()
    def predict(self, data: DeviceData, *, batch_size: int) -> torch.Tensor:
        """Logits (float32) for every case of ``data``."""
        self.model.eval()
        outputs = []
        for images, _ in data.batches(batch_size):
            with autocast(self.device, self.dtype):
                outputs.append(self.model(images).float())
        return torch.cat(outputs)

    def evaluate(self, data: DeviceData, *, batch_size: int) -> float:
        """The task's key metric over the whole of ``data``."""
        return self.evaluate_all(data, batch_size=batch_size)[self.task.key_metric]

    def evaluate_all(self, data: DeviceData, *, batch_size: int) -> dict[str, float]:
        """The key metric and the task's extra metrics, named as reported."""
        logits = self.predict(data, batch_size=batch_size)
        metrics = {self.task.key_metric: float(self.task.metric(logits, data.labels))}
        if self.task.extra_metrics is not None:
            metrics.update({f"val_{k}": float(v) for k, v in self.task.extra_metrics(logits, data.labels).items()})
        return metrics
