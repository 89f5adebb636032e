"""The settings of a job's local training: one frozen object, built once from the job's executor arguments and passed
by value (to the trainer, the hooks and a multi-GPU site's helper ranks). Site-local settings (data, GPUs, cache)
are not here: they stay in each site's own config (:mod:`oncofl.site_config`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

from ..algorithms import ALGORITHMS, LR_SCHEDULES, DPSettings

OPTIMIZER_STATES = ("keep", "reset")  # a site's optimizer state across rounds: carried over, or fresh each round


@dataclass(frozen=True)
class TrainSettings:
    """What every site of a job does in a round.

    Args:
        task: the :mod:`oncofl.tasks` name (network, loss, metric, preprocessing).
        local_epochs: epochs of local training per round.
        batch_size: cases per step (per rank on a multi-GPU site).
        learning_rate: the optimizer's base learning rate.
        lr_schedule: ``constant`` or ``cosine`` over the job's rounds (:func:`oncofl.algorithms.scheduled_lr`).
        optimizer_state: ``keep`` Adam's state across rounds, or ``reset`` it at the start of each round.
        preprocess: overrides of the task's preprocessing parameters.
        network: arguments of the task's network builder.
        seed: the site's shuffling and augmentation seed.
        algorithm: one of :data:`oncofl.algorithms.ALGORITHMS` (the site side is a hook, :mod:`.hooks`).
        fedprox_mu: FedProx's proximal weight (``fedprox`` only).
        dp: sample-level DP-SGD settings, or None.
        send_weight_diff: send weight differences instead of weights (FLARE's percentile / SVT filters).
        weight_decay: decoupled weight decay of the local optimizer (AdamW's), 0 for none.
    """

    task: str = "prostate_seg"
    local_epochs: int = 2
    batch_size: int = 4
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    optimizer_state: str = "keep"
    preprocess: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    seed: int = 0
    algorithm: str = "fedavg"
    fedprox_mu: float = 0.01
    dp: DPSettings | None = None
    send_weight_diff: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("local_epochs and batch_size must be >= 1 and learning_rate > 0")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm '{self.algorithm}'; available: {', '.join(ALGORITHMS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown learning-rate schedule {self.lr_schedule!r}; available: {', '.join(LR_SCHEDULES)}"
            )
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(
                f"optimizer_state must be one of {', '.join(OPTIMIZER_STATES)}, got '{self.optimizer_state}'"
            )
        if self.fedprox_mu < 0 or self.weight_decay < 0:
            raise ValueError(f"fedprox_mu and weight_decay must be >= 0, got {self.fedprox_mu}, {self.weight_decay}")
        if self.dp is not None and self.algorithm in ("fedprox", "scaffold"):
            raise ValueError(f"DP-SGD runs with fedavg, fedopt or fedbn, not with {self.algorithm}")

    @classmethod
    def from_job(cls, **args: Any) -> TrainSettings:
        """From a job config's executor arguments (``dp`` as a dict, as it travels in JSON)."""
        unknown = sorted(set(args) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}")
        return cls(**{**args, "dp": DPSettings.from_job(args.get("dp"))})

    def job_args(self, dp: dict[str, Any] | None = None) -> dict[str, Any]:
        """The settings as a job config carries them (JSON values; ``dp`` as the job gave it)."""
        args = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**args, "dp": dp}


def job_parameters(**extra: Any) -> inspect.Signature:
    """A constructor signature with one keyword per setting (and per ``extra`` name, with its default): FLARE's job
    export and component builder read a component's arguments from its signature, so a new field of
    :class:`TrainSettings` is a job argument without further code."""
    kind = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(f.name, kind, default=f.default) for f in fields(TrainSettings)]
    return inspect.Signature([*params, *(inspect.Parameter(k, kind, default=v) for k, v in extra.items())])
