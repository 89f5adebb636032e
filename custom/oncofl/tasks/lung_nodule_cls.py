"""Lung nodule malignancy from chest CT: HU, isotropic resampling, a patch around each annotated nodule, 3D ResNet.

A case is one nodule: the datalist entry names the CT (``image``: a DICOM series, or a NIfTI volume in HU), the class
(``label``, 1 = malignant) and the nodule centre in DICOM patient coordinates (``center_mm``, LPS mm, as in
LUNA16-style annotation CSVs).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import ResNet

from ..errors import SiteDataError
from ..preprocess import extract_patches, modules, resample, to_ras, window
from ..volume import read_volume
from . import DEFAULT_INIT_SEED, TaskSpec, norm_layer, seeded_init
from ._classification import auc, make_loss, sensitivity_at_specificity

# 2 mm isotropic, 24^3 voxels = 48 mm around the nodule centre; lung window -1000..+400 HU.
DEFAULT_PARAMS: dict[str, Any] = {"spacing_mm": 2.0, "patch_size": 24, "window": [-300.0, 1400.0]}


class LungNoduleNet(ResNet):
    """MONAI 3D ResNet (basic blocks) with a strided 7^3 stem; 2 classes.

    Args:
        layers: the basic blocks in each of the 4 stages (default ``(1, 1, 1, 1)``).
        widths: the channels of each of the 4 stages (default ``(16, 32, 64, 128)``).
        init_seed: the seed the initial weights are drawn from, without touching the caller's random state (default
            0); None: drawn from the caller's random state.
        norm: ``"group"`` (default: GroupNorm with ``num_groups``, no running statistics, so the whole model can be
            shared, and DP-SGD works) or ``"batch"`` (BatchNorm: its running statistics describe a site's images,
            and a hospital's privacy guard keeps them at the site, so the global model would keep its initial ones;
            see docs/security.md).
        num_groups: the GroupNorm groups with ``norm="group"`` (default 8); unused with ``"batch"``.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (1, 1, 1, 1),
        widths: tuple[int, ...] = (16, 32, 64, 128),
        init_seed: int | None = DEFAULT_INIT_SEED,
        norm: str = "group",
        num_groups: int = 8,
    ) -> None:
        self._layer_norm = norm_layer(norm, num_groups)  # MONAI's ResNet gives its blocks BatchNorm whatever `norm` is
        with seeded_init(init_seed):
            super().__init__(
                block="basic",
                layers=list(layers),
                block_inplanes=list(widths),
                spatial_dims=3,
                n_input_channels=1,
                conv1_t_stride=2,
                num_classes=2,
                norm=self._layer_norm,
            )
        self.layers, self.widths = tuple(layers), tuple(widths)
        self.norm, self.num_groups = norm, num_groups
        self.init_seed = init_seed

    def _make_layer(self, *args: Any, **kwargs: Any) -> torch.nn.Sequential:
        return super()._make_layer(*args, **{**kwargs, "norm": self._layer_norm})


@lru_cache(maxsize=1)
def _array_modules() -> tuple:
    return modules(True)


@lru_cache(maxsize=4)
def _volume(image_path: Path, spacing_mm: float) -> tuple[Any, np.ndarray]:
    """RAS, isotropic HU volume of a CT (DICOM or NIfTI; kept for the other nodules of the same CT)."""
    xp, ndimage = _array_modules()
    volume = read_volume(image_path)
    ras, affine = to_ras(xp.asarray(volume.array), volume.affine, xp)
    return resample(ras, affine, (spacing_mm,) * 3, xp, ndimage, order=1)


def nodule_center(image_path: Path, params: dict[str, Any]) -> list[float]:
    """The datalist entry's nodule centre ``[x, y, z]`` (DICOM patient coordinates, LPS mm)."""
    center = params.get("center_mm")
    if not isinstance(center, (list, tuple)) or len(center) != 3:
        raise SiteDataError(
            "nodule has no 'center_mm' [x, y, z] (DICOM patient coordinates, mm)",
            fix="give each datalist entry the nodule centre from the annotation CSV",
            path=str(image_path),
        )
    return list(center)


def nodule_patch(image_path: Path, params: dict[str, Any]) -> np.ndarray:
    """The ``[1, p, p, p]`` patch (lung window, isotropic) around the nodule centre ``params["center_mm"]``."""
    center = nodule_center(image_path, params)
    xp, _ = _array_modules()
    volume, affine = _volume(Path(image_path), float(params["spacing_mm"]))
    ras_mm = np.array([-center[0], -center[1], center[2], 1.0])  # LPS -> RAS
    voxel = (np.linalg.inv(affine) @ ras_mm)[:3]
    if np.any(voxel < 0) or np.any(voxel > np.array(volume.shape) - 1):
        raise SiteDataError(
            "nodule centre lies outside the CT volume",
            fix="check the annotation's coordinates (world mm, DICOM patient LPS) against this series",
            path=str(image_path),
        )
    size = int(params["patch_size"])
    level, width = params["window"]
    patch = extract_patches(window(volume, level, width, xp), voxel[None], (size,) * 3, xp, value=0.0)[0]
    patch = patch.get() if hasattr(patch, "get") else np.asarray(patch)
    return patch[None].astype(np.float32)


def load_case(image_path: Path, label: Path | float, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A nodule for training: :func:`nodule_patch` and the label (0 benign, 1 malignant)."""
    nodule_center(image_path, params)
    if isinstance(label, Path) or label not in (0, 1):
        raise SiteDataError(
            "label must be 0 (benign) or 1 (malignant)", fix="correct the datalist entry", path=str(image_path)
        )
    return nodule_patch(image_path, params), np.array([int(label)], dtype=np.int64)


def prepare_input(image_path: Path, params: dict[str, Any]) -> tuple[None, np.ndarray, None]:
    """A nodule for prediction (``params["center_mm"]`` from the datalist entry), by :func:`load_case`'s own code
    path (no label)."""
    return None, nodule_patch(image_path, params), None


def augment(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-batch, on the device: flips along every axis (a nodule has no orientation), intensity jitter."""
    b, dev = images.shape[0], images.device
    for axis in (2, 3, 4):
        flip = (torch.rand(b, generator=generator, device=dev) < 0.5).view(b, 1, 1, 1, 1)
        images = torch.where(flip, images.flip(axis), images)
    gain = (1 + 0.1 * (torch.rand(b, generator=generator, device=dev) * 2 - 1)).view(b, 1, 1, 1, 1)
    return images * gain + torch.randn(images.shape, generator=generator, device=dev) * 0.01, labels


TASK = TaskSpec(
    name="lung_nodule_cls",
    key_metric="val_auc",
    build_network=LungNoduleNet,
    load_case=load_case,
    augment=augment,
    make_loss=make_loss,
    metric=auc,
    default_params=DEFAULT_PARAMS,
    extra_metrics=lambda logits, labels: {"sens_at_spec90": sensitivity_at_specificity(logits, labels, 0.9)},
    prepare_input=prepare_input,
)
