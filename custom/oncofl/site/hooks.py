"""Each algorithm's site side as one small object with the same interface (:class:`SiteHook`).

The trainer (:class:`oncofl.engine.Trainer`) calls the training hooks around its one loop; the site runtime
(:mod:`.runtime`) calls the round hooks around a round. :func:`site_hooks` picks a job's hooks from its settings, so
adding a site-side option means: a field of :class:`~oncofl.site.settings.TrainSettings`, an option of the job
builder, and one hook here. The server side of each algorithm is chosen in :mod:`oncofl.jobs.builder`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..algorithms import DPSettings, PrivacyLedger, local_state_keys, scheduled_lr
from ..engine import RoundInfo
from ..errors import JobError, OncoFLError

if TYPE_CHECKING:
    from ..engine import DeviceData, Trainer
    from .settings import TrainSettings


@dataclass
class RoundResult:
    """What one round of local training hands to the executor to send (hooks may change it before it is sent).

    Args:
        weights: the model state to share (FedBN removes what stays at the site).
        start: the global weights the round started from (for weight differences).
        steps: optimizer steps, for the server's weighting.
        initial: the global model's metrics on this site's validation data (the server's best-model selection).
        meta: numbers sent along with the update (DP's epsilon ...).
        metrics: scalars for TensorBoard; all but ``local_only`` are also streamed to the server.
        send_diff: send ``weights - start`` instead of ``weights``.
        parts: further named updates sent with the model (SCAFFOLD's control update), as weight differences.
    """

    weights: dict[str, np.ndarray]
    start: dict[str, np.ndarray]
    steps: int
    initial: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    local_only: tuple[str, ...] = ()
    send_diff: bool = False
    parts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def diff(self) -> dict[str, np.ndarray]:
        return {k: (v - np.asarray(self.start[k])).astype(np.float32) for k, v in self.weights.items()}


class SiteHook:
    """The interface. Training hooks (called by the trainer, also on a multi-GPU site's helper ranks): ``attach``,
    ``start_round``, ``batches``, ``extra_loss``, ``after_step``, ``end_round``. Round hooks (called by the runtime in
    the executor's process): ``receive``, ``local_state``, ``check_round``, ``note``, ``outgoing``. Every method
    defaults to doing nothing."""

    #: the task's ``prepare`` (statistics computed from the training split) may run outside the hook's control
    allows_task_prepare = True
    #: the hook trains on one device per site (no DistributedDataParallel)
    single_device = False
    #: the algorithm's name in the site's messages
    label = ""

    def attach(self, trainer: Trainer) -> str:
        """Once, when the trainer is built; returns a line for the site's log ('' for none)."""
        return ""

    def start_round(self, trainer: Trainer, info: RoundInfo) -> None:
        """Before the round's first step (the model holds the round's global weights)."""

    def batches(self, trainer: Trainer, data: DeviceData, batch_size: int) -> Iterator | None:
        """One epoch's batches, or None for the trainer's own shuffled batches."""
        return None

    def extra_loss(self, trainer: Trainer) -> torch.Tensor | None:
        """A term added to the step's loss (after the loss is recorded)."""
        return None

    def after_step(self, trainer: Trainer) -> None:
        """After each optimizer step."""

    def end_round(self, trainer: Trainer, steps: int) -> None:
        """After the round's last step."""

    def receive(self, extras: dict[str, Any]) -> None:
        """What the server sent besides the global weights (SCAFFOLD's control variates)."""

    def local_state(self) -> dict[str, np.ndarray] | None:
        """State of this site that overrides the global weights when they are loaded (FedBN)."""
        return None

    def check_round(self, trainer: Trainer) -> None:
        """Raise if this site must not train another round (DP budget)."""

    def note(self, trainer: Trainer, result: RoundResult) -> str:
        """The round's line in the site's log ('' for none)."""
        return ""

    def outgoing(self, trainer: Trainer, result: RoundResult) -> None:
        """Change what is sent."""


class LRSchedule(SiteHook):
    """The round's learning rate from the job's schedule (:func:`oncofl.algorithms.scheduled_lr`).

    Args:
        base: the job's learning rate (round 0's).
        schedule: ``constant`` or ``cosine``.
    """

    def __init__(self, base: float, schedule: str) -> None:
        self.base, self.schedule = base, schedule

    def start_round(self, trainer: Trainer, info: RoundInfo) -> None:
        trainer.set_learning_rate(scheduled_lr(self.base, self.schedule, info.index, info.num_rounds))


class ResetOptimizerState(SiteHook):
    """``optimizer_state="reset"``: each round starts with fresh optimizer state (Adam's moments and step count), not
    the state this site's previous round left behind, which points the way its local model went."""

    def start_round(self, trainer: Trainer, info: RoundInfo) -> None:
        trainer.optimizer.state.clear()


class WeightDecay(SiteHook):
    """Decoupled weight decay (AdamW's): each step also shrinks every weight by ``lr * decay``.

    Args:
        decay: the decay factor (the job's ``weight_decay``).
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def attach(self, trainer: Trainer) -> str:
        for group in trainer.optimizer.param_groups:
            group.update(weight_decay=self.decay, decoupled_weight_decay=True)
        return f"local optimizer with decoupled weight decay {self.decay:g}"


class FedProx(SiteHook):
    """FedProx: mu/2 ||w - w_global||^2 added to the local loss (FLARE's ``PTFedProxLoss``).

    Args:
        mu: the proximal weight (the job's ``fedprox_mu``).
    """

    def __init__(self, mu: float) -> None:
        from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

        self.mu = mu
        self._loss = PTFedProxLoss(mu=mu)
        self._reference: torch.nn.Module | None = None

    def start_round(self, trainer: Trainer, info: RoundInfo) -> None:
        self._reference = copy.deepcopy(trainer.model).eval().requires_grad_(False)

    def extra_loss(self, trainer: Trainer) -> torch.Tensor:
        return self._loss(trainer.model, self._reference)

    def note(self, trainer: Trainer, result: RoundResult) -> str:
        drift = sum(
            float(np.sum((v.astype(np.float64) - np.asarray(result.start[k], np.float64)) ** 2))
            for k, v in result.weights.items()
            if v.dtype.kind == "f"
        )
        return f"FedProx mu={self.mu:g}, proximal term {self.mu / 2 * drift:.4g}"


class Scaffold(SiteHook):
    """SCAFFOLD: the server's control variates correct every local step (FLARE's ``PTScaffoldHelper``); the round
    sends its weight difference and its control update."""

    single_device = True
    label = "SCAFFOLD"

    def __init__(self) -> None:
        self._helper = None
        self._controls: dict[str, np.ndarray] | None = None
        self._params: tuple | None = None
        self._reference: torch.nn.Module | None = None
        self.delta: dict[str, np.ndarray] | None = None

    def receive(self, extras: dict[str, Any]) -> None:
        from nvflare.app_common.app_constant import AlgorithmConstants

        self._controls = extras.get(AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL)
        if self._controls is None:
            raise JobError(
                "this job's executor runs SCAFFOLD but the server sent no control variates",
                fix="run SCAFFOLD jobs with the SCAFFOLD server workflow",
            )

    def start_round(self, trainer: Trainer, info: RoundInfo) -> None:
        from nvflare.app_opt.pt.scaffold import PTScaffoldHelper

        self._reference = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        if self._helper is None:
            self._helper = PTScaffoldHelper()
            self._helper.init(trainer.model)
        self._helper.load_global_controls(self._controls)
        self._params = self._helper.get_params()

    def after_step(self, trainer: Trainer) -> None:
        self._helper.model_update(trainer.model, trainer.learning_rate(), *self._params)

    def end_round(self, trainer: Trainer, steps: int) -> None:
        if steps:
            self._helper.terms_update(trainer.model, trainer.learning_rate(), *self._params, self._reference)
            self.delta = {k: np.asarray(v) for k, v in self._helper.get_delta_controls().items()}

    def note(self, trainer: Trainer, result: RoundResult) -> str:
        if not self.delta:
            return ""
        norm = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in self.delta.values())))
        return f"SCAFFOLD control update norm {norm:.4g}"

    def outgoing(self, trainer: Trainer, result: RoundResult) -> None:
        from nvflare.app_common.app_constant import AlgorithmConstants

        result.send_diff = True
        result.parts[AlgorithmConstants.SCAFFOLD_CTRL_DIFF] = self.delta or {}


class FedBN(SiteHook):
    """FedBN: normalization state (and the task's own ``local_state``) stays at the site: never sent, never
    overwritten by the global model; cross-site validation also scores the model with this site's own state.

    Args:
        patterns: regular expressions of the task's own per-site state keys (its ``local_state``), besides every
            normalization layer's.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self.keys: set[str] = set()
        self._own: dict[str, np.ndarray] | None = None

    def attach(self, trainer: Trainer) -> str:
        self.keys = local_state_keys(trainer.model, self.patterns)
        return f"FedBN: {len(self.keys)} normalization tensors stay at this site"

    def local_state(self) -> dict[str, np.ndarray] | None:
        return self._own

    def outgoing(self, trainer: Trainer, result: RoundResult) -> None:
        self._own = {k: result.weights[k] for k in self.keys}
        result.weights = {k: v for k, v in result.weights.items() if k not in self.keys}


class DPSGD(SiteHook):
    """Sample-level DP-SGD (Opacus): per-sample clipping, Gaussian noise, Poisson sampling, full precision, and a
    ledger of the epsilon spent; the site refuses a round that would exceed the budget. Under DP the training split
    enters only through DP-SGD: no statistic is computed outside it, and the training loss stays at the site.

    Args:
        settings: the job's DP settings (budget, delta, clip, noise).
        n_samples: this site's training cases (the sampling rate is ``batch_size / n_samples``).
        batch_size: the expected batch size.
        epochs_per_round: local epochs per round (the ledger's steps per round).
    """

    allows_task_prepare = False
    single_device = True
    label = "DP-SGD"

    def __init__(self, settings: DPSettings, n_samples: int, batch_size: int, epochs_per_round: int) -> None:
        self.settings = settings
        self.ledger = PrivacyLedger(settings, n_samples, batch_size, epochs_per_round)
        self.batch_size = batch_size

    def attach(self, trainer: Trainer) -> str:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        if trainer.has_batchnorm:
            raise ValueError(
                f"the '{trainer.task.name}' network has BatchNorm, which mixes samples and breaks per-sample DP: "
                "use a network with GroupNorm/InstanceNorm for DP-SGD"
            )
        trainer.privacy = self.ledger
        trainer.train_model = GradSampleModule(trainer.model)  # hooks on the layers; state-dict names unchanged
        trainer.optimizer = DPOptimizer(
            trainer.optimizer,
            noise_multiplier=self.ledger.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            expected_batch_size=self.batch_size,
        )
        trainer.full_precision()  # per-sample clipping on fp32 gradients
        return (
            f"DP-SGD: noise multiplier {self.ledger.noise_multiplier:.3f}, per-sample clip "
            f"{self.settings.max_grad_norm}, sample rate {self.ledger.sample_rate:.3f}, "
            f"budget epsilon {self.settings.epsilon_budget} at delta {self.settings.delta}"
        )

    def batches(self, trainer: Trainer, data: DeviceData, batch_size: int) -> Iterator:
        """Poisson sampling: each case in each step with probability q; every step is accounted, an empty one too."""
        for _ in range(self.ledger.steps_per_epoch):
            mask = torch.rand(len(data), generator=trainer.generator, device=trainer.device) < self.ledger.sample_rate
            idx = mask.nonzero().view(-1)
            self.ledger.step()
            if len(idx):
                yield data.images[idx], data.labels[idx]

    def check_round(self, trainer: Trainer) -> None:
        ledger = self.ledger
        if not ledger.next_round_fits():
            raise OncoFLError(
                "privacy budget spent: another round would exceed the job's epsilon budget; this site trains no more "
                "rounds of this job",
                fix="start a new job with a new budget only if the consortium's privacy policy allows it",
                detail=f"epsilon {ledger.epsilon():.3f} so far, another round would reach "
                f"{ledger.epsilon(ledger.steps_per_round):.3f} > budget {ledger.settings.epsilon_budget}",
            )

    def note(self, trainer: Trainer, result: RoundResult) -> str:
        return f"DP epsilon spent {self.ledger.epsilon():.3f}"

    def outgoing(self, trainer: Trainer, result: RoundResult) -> None:
        ledger = self.ledger  # the privacy spent, as numbers the server and TensorBoard can show
        result.meta.update(
            dp_epsilon=ledger.epsilon(),
            dp_epsilon_next_round=ledger.epsilon(ledger.steps_per_round),
            dp_epsilon_budget=ledger.settings.epsilon_budget,
            dp_delta=ledger.settings.delta,
            dp_noise_multiplier=ledger.noise_multiplier,
        )
        result.metrics["dp_epsilon"] = ledger.epsilon()
        # the training loss (a mean over the same sampled batches) stays in this site's log and TensorBoard
        result.local_only += ("train_loss",)


# the labels of the hooks that train on one device per site
ONE_DEVICE = (Scaffold.label, DPSGD.label)


def site_hooks(settings: TrainSettings, local_state: tuple[str, ...] = (), n_train: int = 0) -> list[SiteHook]:
    """A job's site-side hooks, in the order they run. ``local_state``: the task's own FedBN patterns; ``n_train``:
    the training cases (DP-SGD's sampling rate)."""
    hooks: list[SiteHook] = [LRSchedule(settings.learning_rate, settings.lr_schedule)]
    if settings.optimizer_state == "reset":
        hooks.append(ResetOptimizerState())
    if settings.weight_decay > 0:
        hooks.append(WeightDecay(settings.weight_decay))
    if settings.algorithm == "fedprox" and settings.fedprox_mu > 0:
        hooks.append(FedProx(settings.fedprox_mu))
    if settings.algorithm == "scaffold":
        hooks.append(Scaffold())
    if settings.algorithm == "fedbn":
        hooks.append(FedBN(local_state))
    if settings.dp is not None:
        hooks.append(DPSGD(settings.dp, n_train, settings.batch_size, settings.local_epochs))
    return hooks
