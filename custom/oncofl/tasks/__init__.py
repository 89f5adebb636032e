"""Task registry. A task is one module in this package exposing ``TASK`` (a :class:`TaskSpec`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# every task network takes ``init_seed`` (default below): the server's initial model, built by FLARE from the job's
# model component, is then the same in every run of a job, and ``holdout_metric(None)`` scores exactly that model
DEFAULT_INIT_SEED = 0


@contextmanager
def seeded_init(seed: int | None) -> Iterator[None]:
    """Draw the weights created inside from ``torch.manual_seed(seed)`` without touching the caller's RNG state
    (``None``: the caller's RNG, i.e. unseeded)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def norm_layer(norm: str, num_groups: int = 8) -> str | tuple:
    """MONAI's ``norm`` argument for a task network: ``"group"`` (GroupNorm, no running statistics: the default of
    every task network that would otherwise use BatchNorm) or ``"batch"``."""
    if norm == "group":
        return ("group", {"num_groups": int(num_groups)})
    if norm == "batch":
        return "batch"
    raise ValueError(f"unknown normalization {norm!r}; use 'group' or 'batch'")


TASK_NAMES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


@dataclass(frozen=True)
class SegmentClass:
    """One foreground class of a segmentation task, as a DICOM-SEG segment names it.

    Args:
        label: the segment's label (e.g. ``Prostate``).
        category: the segmented property category as (code value, coding scheme, meaning), e.g. SNOMED CT's
            ``("123037004", "SCT", "Anatomical Structure")``.
        property_type: the segmented property type, the same way, e.g. ``("41216001", "SCT", "Prostate")``.
    """

    label: str
    category: tuple[str, str, str]
    property_type: tuple[str, str, str]


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific: network, case loading, augmentation, loss, metric.

    ``load_case(image, label, params)`` returns ``(image [C, ...] float32, label [1, ...])`` as numpy arrays of a
    fixed shape (``label`` is a mask path or a class number; ``params`` also carries the datalist entry's other keys,
    e.g. a nodule's ``center_mm``); ``augment(images, labels, generator)`` works on whole
    batches on the training device; ``metric(logits, labels)`` scores a whole split (all its logits and labels at
    once, so AUC works too; higher is better) and is reported as ``key_metric``.
    """

    name: str
    key_metric: str
    build_network: Callable[..., torch.nn.Module]  # keyword arguments = the job's ``network`` settings
    load_case: Callable[[Path, Path | float, dict[str, Any]], tuple[np.ndarray, np.ndarray]]
    augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    make_loss: Callable[[], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    metric: Callable[[torch.Tensor, torch.Tensor], float]
    default_params: dict[str, Any] = field(default_factory=dict)
    # called before each local training round with the site's training inputs (e.g. to set normalization stats)
    prepare: Callable[[torch.nn.Module, torch.Tensor], None] | None = None
    channels_last: bool = False  # 2D CNNs run faster in channels-last memory format on GPUs
    # extra named metrics over a whole split, reported beside the key metric (e.g. sensitivity at 90 % specificity)
    extra_metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None
    # state-dict keys (regular expressions) that FedBN keeps at the site besides normalization layers
    local_state: tuple[str, ...] = ()
    # what a datalist 'label' must be: "class" (a number) or "mask" (a file); other labels are refused per case
    label_kind: str = "class"
    # what `oncofl predict` runs: ``prepare_input(image, params)`` reads a case's image and preprocesses it exactly as
    # ``load_case`` does, without a label (``params`` also carries the datalist entry's other keys, e.g. a nodule's
    # ``center_mm``) -> (the image as read, or None; network input [C, ...]; for segmentation the
    # ``preprocess.GridMap`` that maps a label map on the network's grid back onto the volume's, else None);
    # ``segments``: a segmentation task's foreground classes, in the order of the network's output channels 1, 2, ...
    # (empty: a classification task, whose output channel 1 is the malignant class)
    prepare_input: Callable[[Path, dict[str, Any]], tuple[Any, np.ndarray, Any]] | None = None
    segments: tuple[SegmentClass, ...] = ()

    def params(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """Job hyper-parameters for preprocessing, validated against the task's defaults."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.default_params))
        if unknown:
            raise ValueError(
                f"task '{self.name}' has no preprocessing parameter(s) {unknown}; known: {sorted(self.default_params)}"
            )
        return {**self.default_params, **overrides}


def get_task(name: str) -> TaskSpec:
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task '{name}'; available: {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").TASK
