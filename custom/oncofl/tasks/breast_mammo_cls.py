"""Mammogram classification (malignant vs benign/normal) from MG DICOM with a MONAI 2D DenseNet; AUC as key metric."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DenseNet

from ..dicom.mammo import read_projection
from ..errors import SiteDataError
from ..preprocess import modules, resize_2d
from . import DEFAULT_INIT_SEED, TaskSpec, norm_layer, seeded_init
from ._classification import auc, make_loss, sensitivity_at_specificity

# The network sees the canonical-side, breast-cropped image padded to a square and resized to image_size^2.
DEFAULT_PARAMS: dict[str, Any] = {"image_size": 512}


class MammoNet(DenseNet):
    """MONAI 2D DenseNet, 1 channel in, 2 classes out. Defaults = DenseNet121; jobs may choose a lighter variant.

    Args:
        init_features: the channels of the stem convolution (default 64).
        growth_rate: the channels each dense layer adds (default 32).
        block_config: the number of dense layers in each dense block (default ``(6, 12, 24, 16)``, DenseNet121).
        init_seed: the seed the initial weights are drawn from, without touching the caller's random state (default
            0); None: drawn from the caller's random state.
        norm: ``"group"`` (default: GroupNorm with ``num_groups``, no running statistics) or ``"batch"`` (BatchNorm,
            whose running statistics a hospital's privacy guard keeps at the site); see
            :class:`oncofl.tasks.lung_nodule_cls.LungNoduleNet`.
        num_groups: the GroupNorm groups with ``norm="group"`` (default 8); unused with ``"batch"``.
    """

    def __init__(
        self,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        init_seed: int | None = DEFAULT_INIT_SEED,
        norm: str = "group",
        num_groups: int = 8,
    ) -> None:
        with seeded_init(init_seed):
            super().__init__(
                spatial_dims=2,
                in_channels=1,
                out_channels=2,
                init_features=init_features,
                growth_rate=growth_rate,
                block_config=tuple(block_config),
                norm=norm_layer(norm, num_groups),
            )
        self.norm, self.num_groups = norm, num_groups
        self.init_features, self.growth_rate, self.block_config = init_features, growth_rate, tuple(block_config)
        self.init_seed = init_seed


@lru_cache(maxsize=1)
def _array_modules() -> tuple:
    return modules(True)  # CuPy when a GPU is visible, else NumPy/SciPy


def network_input(image_path: Path, params: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """MG DICOM -> (the projection as read, presentation values on the canonical side, breast-cropped, square-padded
    and resized to image_size^2, as ``[1, H, W]``)."""
    image = read_projection(image_path, crop=True)
    if image.modality not in ("MG", "DX", "CR"):
        raise SiteDataError(
            "expected a mammogram (Modality MG, DX or CR)",
            fix="list only MG 'for presentation' images in the datalist",
            path=str(image_path),
            detail=f"Modality {image.modality or 'none'}",
        )
    side = max(image.array.shape)
    square = np.zeros((side, side), dtype=np.float32)
    square[: image.array.shape[0], : image.array.shape[1]] = image.array  # chest wall stays at column 0
    xp, ndimage = _array_modules()
    size = int(params["image_size"])
    resized = resize_2d(xp.asarray(square), (size, size), xp, ndimage)
    out = resized.get() if hasattr(resized, "get") else np.asarray(resized)
    return image, np.clip(out, 0, 1)[None].astype(np.float32)


def load_case(image_path: Path, label: Path | float, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A case for training: :func:`network_input` and the label (0 benign or normal, 1 malignant)."""
    if isinstance(label, Path) or label not in (0, 1):
        raise SiteDataError(
            "label must be 0 (benign or normal) or 1 (malignant)",
            fix="correct the case's 'label' in the datalist",
            path=str(image_path),
        )
    return network_input(image_path, params)[1], np.array([int(label)], dtype=np.int64)


def prepare_input(image_path: Path, params: dict[str, Any]) -> tuple[Any, np.ndarray, None]:
    """An image for prediction, by :func:`load_case`'s own code path (no label)."""
    return (*network_input(image_path, params), None)


def augment(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-batch, on the device: up-down flip (views differ in that axis), gamma, gain, noise. The chest-wall
    side is canonical, so no left-right flip."""
    b, dev = images.shape[0], images.device
    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).view(b, 1, 1, 1)
    images = torch.where(flip, images.flip(2), images)
    gamma = torch.exp(0.2 * (torch.rand(b, generator=generator, device=dev) * 2 - 1)).view(b, 1, 1, 1)
    gain = (1 + 0.1 * (torch.rand(b, generator=generator, device=dev) * 2 - 1)).view(b, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator, device=dev) * 0.01
    return images.clamp(0, 1) ** gamma * gain + noise, labels


TASK = TaskSpec(
    name="breast_mammo_cls",
    key_metric="val_auc",
    build_network=MammoNet,
    load_case=load_case,
    augment=augment,
    make_loss=make_loss,
    metric=auc,
    default_params=DEFAULT_PARAMS,
    channels_last=True,
    extra_metrics=lambda logits, labels: {"sens_at_spec90": sensitivity_at_specificity(logits, labels, 0.9)},
    prepare_input=prepare_input,
)
