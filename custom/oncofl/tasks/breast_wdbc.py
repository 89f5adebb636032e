"""Breast cancer diagnosis from the 30 WDBC nucleus features (real data): a small MLP, accuracy as key metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SiteDataError
from . import DEFAULT_INIT_SEED, TaskSpec, seeded_init
from ._classification import make_loss

N_FEATURES = 30

# The published range (min, max) of each of the 30 features, in the dataset's order (mean, standard error, worst of
# radius, texture, perimeter, area, smoothness, compactness, concavity, concave points, symmetry, fractal dimension):
# the data set's own documentation (UCI; scikit-learn's ``load_breast_cancer().DESCR``). It is schema knowledge, like
# a DICOM's bit depth, and the only standardization a DP-SGD site uses: data-derived moments would be a release
# outside the DP accountant. (Strictly, these ranges were computed on all 569 cases; a consortium takes them from its
# own protocol's data dictionary.)
FEATURE_DOMAIN = (
    (6.981, 28.11), (9.71, 39.28), (43.79, 188.5), (143.5, 2501.0), (0.053, 0.163),
    (0.019, 0.345), (0.0, 0.427), (0.0, 0.201), (0.106, 0.304), (0.05, 0.097),
    (0.112, 2.873), (0.36, 4.885), (0.757, 21.98), (6.802, 542.2), (0.002, 0.031),
    (0.002, 0.135), (0.0, 0.396), (0.0, 0.053), (0.008, 0.079), (0.001, 0.03),
    (7.93, 36.04), (12.02, 49.54), (50.41, 251.2), (185.2, 4254.0), (0.071, 0.223),
    (0.027, 1.058), (0.0, 1.252), (0.0, 0.291), (0.156, 0.664), (0.055, 0.208),
)  # fmt: skip


# The range rule: the range of a few hundred values spans about six standard deviations (the expected range of 569
# normal draws is 6.1 sd), so range / 6 is the data-free estimate of a feature's spread. Held-out accuracy under
# DP-SGD at eps = 2 (an Opacus simulation of the job, 3 splits x 5 noise draws each): sd = range / 2 -> 0.961,
# range / 4 -> 0.966, range / 6 -> 0.969, range / 8 -> 0.972; the sites' own moments (not private) -> 0.968.
RANGE_IN_SDS = 6.0


def domain_standardization() -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) from each published log1p feature range: its center, and its width / :data:`RANGE_IN_SDS`
    (the range maps onto [-3, 3])."""
    lo, hi = torch.tensor(FEATURE_DOMAIN, dtype=torch.float64).log1p().T
    return ((lo + hi) / 2).float(), ((hi - lo) / RANGE_IN_SDS).float()


class WDBCNet(nn.Module):
    """Standardize -> MLP 30 -> hidden -> 2 classes (benign, malignant).

    Federated standardization: the buffers ``input_mean`` / ``input_sq_mean`` travel with the weights. In the first
    round each site fills them from its own training data (``stats_ready`` is 0 in the server's initial model);
    FedAvg, weighted by local steps (proportional to local case counts), then turns them into the pooled first and
    second moments of all sites' data -- no site ever shares a raw feature value. While ``stats_ready`` is 0 (the
    initial model, and for good under DP-SGD, where no statistic is computed outside the accountant) the network
    maps the published feature ranges (:data:`FEATURE_DOMAIN`) onto [-3, 3] instead: constants of the code, not
    state, so the moments that travel start at 0 / 1 and an update filter that shares only part of an update (FLARE's
    percentile filter) cannot mix the two.

    Args:
        in_features: the number of input features (default 30, the WDBC features); with another number there is no
            published range, so inputs pass unscaled until the pooled moments are in.
        hidden: the width of the hidden layer (default 32).
        init_seed: the seed the initial weights are drawn from, without touching the caller's random state (default
            0); None: drawn from the caller's random state.
    """

    def __init__(
        self, in_features: int = N_FEATURES, hidden: int = 32, init_seed: int | None = DEFAULT_INIT_SEED
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden = hidden
        self.init_seed = init_seed
        self.register_buffer("input_mean", torch.zeros(in_features))
        self.register_buffer("input_sq_mean", torch.ones(in_features))
        self.register_buffer("stats_ready", torch.zeros(()))
        mean, std = domain_standardization() if in_features == N_FEATURES else (self.input_mean, self.input_sq_mean)
        self.register_buffer("domain_mean", mean.clone(), persistent=False)
        self.register_buffer("domain_std", std.clone(), persistent=False)
        with seeded_init(init_seed):
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def standardization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, std) the network subtracts and divides by: the sites' pooled moments once they are in."""
        std = (self.input_sq_mean - self.input_mean**2).clamp_min(1e-6).sqrt()
        ready = self.stats_ready > 0.5
        return torch.where(ready, self.input_mean, self.domain_mean), torch.where(ready, std, self.domain_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.standardization()
        return self.net((x - mean) / std)


def prepare(model: nn.Module, inputs: torch.Tensor) -> None:
    """Round 0 only: set the standardization moments from this site's training inputs."""
    if float(model.stats_ready) < 0.5:
        with torch.no_grad():
            model.input_mean.copy_(inputs.mean(dim=0))
            model.input_sq_mean.copy_((inputs**2).mean(dim=0))
            model.stats_ready.fill_(1.0)


def features(image_path: Path) -> np.ndarray:
    """One-row CSV of 30 non-negative features (after a header line) -> the log1p features, float32."""
    try:
        values = np.loadtxt(image_path, delimiter=",", skiprows=1, ndmin=1, dtype=np.float64)
    except Exception as e:
        raise SiteDataError(
            f"feature file cannot be read as CSV ({type(e).__name__})",
            fix="write a header line and one line of 30 comma-separated numbers",
            path=str(image_path),
            detail=str(e),
        ) from e
    if values.shape != (N_FEATURES,) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise SiteDataError(
            f"expected {N_FEATURES} finite non-negative features",
            fix="export the 30 WDBC features (radius ... fractal dimension; mean, SE and worst) for this case",
            path=str(image_path),
            detail=f"found {values.size} values",
        )
    return np.log1p(values).astype(np.float32)


def load_case(image_path: Path, label: Path | float, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A case for training: :func:`features` and the label, 0 (benign) or 1 (malignant)."""
    x = features(image_path)
    if isinstance(label, Path) or label not in (0, 1):
        raise SiteDataError(
            "label must be 0 (benign) or 1 (malignant)",
            fix="correct the case's 'label' in the datalist",
            path=str(image_path),
        )
    return x, np.array([int(label)], dtype=np.int64)


def prepare_input(image_path: Path, params: dict[str, Any]) -> tuple[None, np.ndarray, None]:
    """A case for prediction, by :func:`load_case`'s own code path (no label)."""
    return None, features(image_path), None


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels.view(-1)).float().mean())


TASK = TaskSpec(
    name="breast_wdbc",
    key_metric="val_accuracy",
    build_network=WDBCNet,
    load_case=load_case,
    augment=augment,
    make_loss=make_loss,
    metric=accuracy,
    prepare=prepare,
    local_state=(r"^input_mean$", r"^input_sq_mean$", r"^stats_ready$"),  # FedBN: each site's own standardization
    prepare_input=prepare_input,
)
