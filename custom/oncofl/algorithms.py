"""The site side of the federated algorithms a job can choose, and differential privacy settings.

A job picks one ``algorithm`` (see :mod:`oncofl.jobs.builder`); the site part is:

* ``fedavg`` / ``fedopt``: plain local training (FedOpt differs on the server only: Adam on the aggregated update);
* ``fedprox``: local loss + mu/2 ||w - w_global||^2 (FLARE's ``PTFedProxLoss``), which keeps heterogeneous sites
  from drifting apart;
* ``scaffold``: control variates correcting each local step for the site's drift (FLARE's ``PTScaffoldHelper`` and
  ``ScatterAndGatherScaffold``);
* ``fedbn``: normalization state (BatchNorm/InstanceNorm/GroupNorm/LayerNorm layers and the task's own
  ``local_state`` such as feature standardization) stays at the site: never sent, never overwritten by the global
  model. Each site ends with a personalized model.

Differential privacy (:class:`DPSettings`) is sample-level DP-SGD with Opacus: per-sample gradients clipped to
``max_grad_norm``, Gaussian noise, Poisson sampling, and an RDP accountant whose epsilon (at ``delta``) is reported to
the server each round; the site refuses to train a round that would take it past ``epsilon_budget``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold", "fedbn")
CLIENT_ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fedbn")  # what the executor does differently
LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(base: float, schedule: str, round_index: int, num_rounds: int) -> float:
    """The local learning rate of round ``round_index`` (0-based) of ``num_rounds``: ``constant``, or ``cosine``
    (base * (1 + cos(pi * round / rounds)) / 2: the base in round 0, falling towards 0 by the last round).
    Centralized training that is to match a job steps the same values every ``local_epochs`` epochs."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; available: {', '.join(LR_SCHEDULES)}")
    if schedule == "constant" or num_rounds <= 1:
        return float(base)
    progress = min(max(round_index, 0), num_rounds - 1) / num_rounds
    return float(base) * 0.5 * (1.0 + math.cos(math.pi * progress))


_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
)


def local_state_keys(model: torch.nn.Module, patterns: tuple[str, ...] = ()) -> set[str]:
    """State-dict keys FedBN keeps at the site: every normalization layer's state and keys matching ``patterns``."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in module.state_dict())
    compiled = [re.compile(p) for p in patterns]
    keys.update(k for k in model.state_dict() if any(p.search(k) for p in compiled))
    return keys


def fedbn_refusal(model: torch.nn.Module, patterns: tuple[str, ...] = ()) -> str | None:
    """Why FedBN would not differ from FedAvg for ``model`` (no state to keep at the sites), or None."""
    if local_state_keys(model, patterns):
        return None
    return (
        "fedbn keeps normalization state at each site, but this task's network has none (e.g. InstanceNorm without "
        "affine parameters or running statistics), so FedBN would be FedAvg under another name: use fedavg"
    )


@dataclass(frozen=True)
class DPSettings:
    """Sample-level DP-SGD. Give ``noise_multiplier``, or 0 to calibrate it so that ``planned_rounds`` rounds spend
    exactly ``epsilon_budget``."""

    epsilon_budget: float = 2.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    planned_rounds: int = 0

    @classmethod
    def from_job(cls, settings: dict[str, Any] | None) -> DPSettings | None:
        if not settings:
            return None
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"unknown differential privacy setting(s) {unknown}; known: {known}")
        dp = cls(**settings)
        if not (dp.epsilon_budget > 0 and 0 < dp.delta < 1 and dp.max_grad_norm > 0 and dp.noise_multiplier >= 0):
            raise ValueError(f"invalid differential privacy settings {asdict(dp)}")
        if dp.noise_multiplier == 0 and dp.planned_rounds < 1:
            raise ValueError("differential privacy: set noise_multiplier, or planned_rounds to calibrate it")
        return dp


class PrivacyLedger:
    """One site's DP-SGD state across rounds: the noise it uses and the epsilon it has spent (Opacus RDP).

    Args:
        settings: the job's DP settings: the epsilon budget and delta, and the noise multiplier (0: calibrated so
            that ``planned_rounds`` rounds spend exactly the budget).
        n_samples: this site's training cases (at least 1); the sampling rate is ``batch_size / n_samples``
            (at most 1).
        batch_size: the expected batch size; an epoch is ``ceil(n_samples / batch_size)`` noisy steps.
        epochs_per_round: local epochs per round: the steps one round adds to the ledger (and the calibration).
    """

    def __init__(self, settings: DPSettings, n_samples: int, batch_size: int, epochs_per_round: int) -> None:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier

        if n_samples < 1:
            raise ValueError("differential privacy needs training data")
        self.settings = settings
        self.sample_rate = min(1.0, batch_size / n_samples)
        self.steps_per_epoch = max(1, math.ceil(n_samples / batch_size))
        self.steps_per_round = epochs_per_round * self.steps_per_epoch
        self.noise_multiplier = settings.noise_multiplier or get_noise_multiplier(
            target_epsilon=settings.epsilon_budget,
            target_delta=settings.delta,
            sample_rate=self.sample_rate,
            steps=self.steps_per_round * settings.planned_rounds,
            epsilon_tolerance=0.005,
        )
        self.accountant = RDPAccountant()

    def epsilon(self, extra_steps: int = 0) -> float:
        """Epsilon spent so far, or after ``extra_steps`` more noisy steps."""
        from opacus.accountants import RDPAccountant

        if extra_steps == 0:
            return float(self.accountant.get_epsilon(self.settings.delta)) if self.accountant.history else 0.0
        projected = RDPAccountant()
        projected.history = [*self.accountant.history, (self.noise_multiplier, self.sample_rate, extra_steps)]
        return float(projected.get_epsilon(self.settings.delta))

    def next_round_fits(self) -> bool:
        return self.epsilon(self.steps_per_round) <= self.settings.epsilon_budget * (1 + 1e-6)

    def step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
