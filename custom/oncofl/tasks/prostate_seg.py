"""Prostate MRI whole-gland segmentation (T2 axial DICOM series or NIfTI volume + NIfTI or DICOM-SEG mask) with a
3D MONAI UNet."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.nets import UNet

from ..dicom.seg import read_seg
from ..dicom.series import SeriesVolume
from ..errors import SiteDataError
from ..preprocess import GridMap, Preprocessor
from ..volume import read_volume
from . import DEFAULT_INIT_SEED, SegmentClass, TaskSpec, seeded_init

# Target grid: 2.5 x 2.5 x 4 mm, 64 x 64 x 16 voxels = 160 x 160 x 64 mm around the image centre.
# spacing_policy: a series with a missing slice is refused ("refuse") or interpolated onto a uniform grid ("resample").
DEFAULT_PARAMS: dict[str, Any] = {
    "target_spacing": [2.5, 2.5, 4.0],
    "volume_size": [64, 64, 16],
    "spacing_policy": "refuse",
}
AFFINE_TOLERANCE_MM = 0.5


class ProstateSegNet(UNet):
    """3D residual UNet, InstanceNorm (no running statistics to disagree between sites), 2 classes.

    Args:
        in_channels: the image channels (default 1: the T2 series).
        out_channels: the output classes (default 2: background, gland).
        channels: the feature channels of each level of the UNet, top to bottom (default ``(16, 32, 64, 128)``).
        strides: the downsampling stride between consecutive levels, one fewer than ``channels`` (default
            ``(2, 2, 2)``).
        num_res_units: the residual units in each block (default 2).
        init_seed: the seed the initial weights are drawn from, without touching the caller's random state (default
            0); None: drawn from the caller's random state.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        strides: tuple[int, ...] = (2, 2, 2),
        num_res_units: int = 2,
        init_seed: int | None = DEFAULT_INIT_SEED,
    ) -> None:
        with seeded_init(init_seed):
            super().__init__(
                spatial_dims=3,
                in_channels=in_channels,
                out_channels=out_channels,
                channels=channels,
                strides=strides,
                num_res_units=num_res_units,
                norm="instance",
            )
        self.init_seed = init_seed


@lru_cache(maxsize=8)
def _preprocessor(target_spacing: tuple[float, ...], volume_size: tuple[int, ...]) -> Preprocessor:
    return Preprocessor(target_spacing=target_spacing, size=volume_size, intensity="percentile")


def read_label(label_path: Path, volume: SeriesVolume) -> np.ndarray:
    """Load a NIfTI or DICOM-SEG whole-gland mask on the image grid; any label > 0 counts as gland."""
    if not isinstance(label_path, (str, os.PathLike)):  # a class number in a segmentation datalist
        raise SiteDataError(
            "label is a number but this task needs a mask file",
            fix="give the path of the case's mask file (NIfTI or DICOM-SEG), relative to data_root",
        )
    image_shape, image_affine = volume.array.shape, volume.affine
    if Path(label_path).suffix.lower() in (".dcm", ".dicom"):
        return (read_seg(label_path, volume) > 0).astype(np.uint8)
    try:
        img = nib.load(label_path)
        label = np.asarray(img.dataobj)
    except FileNotFoundError:
        raise SiteDataError(
            "label file does not exist",
            fix="check the 'label' entry of the datalist (paths are relative to data_root)",
            path=str(label_path),
        ) from None
    except Exception as e:
        raise SiteDataError(
            f"label file cannot be read as NIfTI ({type(e).__name__})",
            fix="re-export the mask as .nii or .nii.gz",
            path=str(label_path),
            detail=str(e),
        ) from e
    if label.ndim == 4 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.shape != tuple(image_shape):
        raise SiteDataError(
            "label's shape differs from its image's",
            fix="the mask must be drawn on the image's own voxel grid; re-export it from the annotation tool "
            "using this series as reference",
            path=str(label_path),
            detail=f"label {'x'.join(map(str, label.shape))}, image {'x'.join(map(str, image_shape))}",
        )
    offset = float(np.abs(img.affine - image_affine).max())
    if offset > AFFINE_TOLERANCE_MM:
        raise SiteDataError(
            "label is not aligned with its image",
            fix="re-export the mask with the image series as reference geometry",
            path=str(label_path),
            detail=f"geometry differs by {offset:.1f} mm",
        )
    if not np.all(np.isfinite(label)) or np.any(label < 0) or np.any(label != np.round(label)):
        raise SiteDataError(
            "label must hold non-negative integers (0 = background, > 0 = gland)",
            fix="save the mask as an integer label map",
            path=str(label_path),
        )
    return (label > 0).astype(np.uint8)


def load_case(image_path: Path, label_path: Path, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Image (DICOM series or file, or NIfTI) + mask -> RAS, target spacing, percentile-scaled, centred fixed size (GPU
    when there is one)."""
    volume = read_volume(image_path, spacing_policy=params["spacing_policy"])
    label = read_label(label_path, volume)
    image, label, _ = _preprocessor(tuple(params["target_spacing"]), tuple(params["volume_size"]))(
        volume.array, volume.affine, label
    )
    return image[None], label[None]


def prepare_input(image_path: Path, params: dict[str, Any]) -> tuple[SeriesVolume, np.ndarray, GridMap]:
    """A series for prediction: read and preprocessed by :func:`load_case`'s own code path (no label), with the grid
    map that puts a predicted label map back on the series' grid."""
    volume = read_volume(image_path, spacing_policy=params["spacing_policy"])
    preprocessor = _preprocessor(tuple(params["target_spacing"]), tuple(params["volume_size"]))
    image, _, _ = preprocessor(volume.array, volume.affine)
    return volume, image[None], preprocessor.grid(volume.array.shape, volume.affine)


def augment(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch augmentation on the training device: left-right flip, gain/offset, smooth bias field, noise."""
    b, dev = images.shape[0], images.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev) * 2 - 1

    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).view(b, 1, 1, 1, 1)
    images = torch.where(flip, images.flip(2), images)
    labels = torch.where(flip, labels.flip(2), labels)
    axes = [torch.linspace(-1, 1, n, device=dev) for n in images.shape[2:]]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    coef = uniform(b, 3) * 0.3
    bias = torch.exp(
        coef[:, 0, None, None, None] * gx + coef[:, 1, None, None, None] * gy + coef[:, 2, None, None, None] * gz
    ).unsqueeze(1)
    gain = (1 + 0.15 * uniform(b)).view(b, 1, 1, 1, 1)
    offset = (0.1 * uniform(b)).view(b, 1, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator, device=dev) * 0.02
    return images * bias * gain + offset + noise, labels


def make_loss() -> DiceCELoss:
    return DiceCELoss(to_onehot_y=True, softmax=True)


def mean_dice(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The key metric: foreground Dice averaged over cases."""
    return float(dice_per_case(logits, labels).mean())


def dice_per_case(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Foreground Dice per case; a case with no gland in both prediction and truth scores 1."""
    pred = logits.argmax(dim=1, keepdim=True)
    pred_1h = torch.cat([pred == 0, pred == 1], dim=1).float()
    true_1h = torch.cat([labels == 0, labels == 1], dim=1).float()
    return compute_dice(pred_1h, true_1h, include_background=False, ignore_empty=False)[:, 0]


TASK = TaskSpec(
    name="prostate_seg",
    key_metric="val_dice",
    build_network=ProstateSegNet,
    load_case=load_case,
    augment=augment,
    make_loss=make_loss,
    metric=mean_dice,
    default_params=DEFAULT_PARAMS,
    label_kind="mask",
    prepare_input=prepare_input,
    segments=(SegmentClass("Prostate", ("123037004", "SCT", "Anatomical Structure"), ("41216001", "SCT", "Prostate")),),
)
