"""Volume preprocessing on the GPU with CuPy, or on the CPU with NumPy/SciPy — the same code, one array module.

Every function takes and returns arrays of the module ``xp`` it is given (``numpy`` or ``cupy``); ``Preprocessor``
picks CuPy when a CUDA device is usable and falls back to NumPy/SciPy otherwise. Geometry is exact: resampling maps
output voxel ``o`` to input voxel ``o * target / spacing`` (same origin), and the returned affine says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import scipy.ndimage

try:  # CuPy is optional at run time: the wheel imports without a GPU, and may be absent entirely
    import cupy
    import cupyx.scipy.ndimage

    CUPY_IMPORTED = True
except Exception:  # pragma: no cover - depends on the host
    cupy = None
    CUPY_IMPORTED = False


def gpu_available() -> bool:
    """True when CuPy is installed and sees at least one CUDA device."""
    if not CUPY_IMPORTED:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def release_gpu_memory() -> int:
    """Give the device memory that CuPy's pools keep after preprocessing back to the driver, so that training (torch)
    can use it; returns the bytes released (0 without CuPy or a GPU)."""
    if not gpu_available():
        return 0
    pool = cupy.get_default_memory_pool()
    held = pool.total_bytes() - pool.used_bytes()
    pool.free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()
    return int(held)


def modules(use_gpu: bool) -> tuple[ModuleType, ModuleType]:
    """(array module, ndimage module): CuPy on the GPU, else NumPy/SciPy."""
    if use_gpu and gpu_available():
        return cupy, cupyx.scipy.ndimage
    return np, scipy.ndimage


def to_ras(array: Any, affine: np.ndarray, xp: ModuleType) -> tuple[Any, np.ndarray]:
    """Flip/transpose voxel axes so they run along R, A, S (the nibabel 'closest canonical' orientation)."""
    ornt = nib.orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return array, affine
    out = xp.transpose(array, [int(a) for a in ornt[:, 0].argsort()])
    for axis, flip in enumerate(ornt[ornt[:, 0].argsort(), 1]):
        if flip < 0:
            out = xp.flip(out, axis=axis)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return xp.ascontiguousarray(out), new_affine


def from_ras(array: Any, affine: np.ndarray, xp: ModuleType) -> Any:
    """Inverse of :func:`to_ras`: an array on the RAS-ordered grid put back on the voxel grid of ``affine``."""
    ornt = nib.orientations.io_orientation(affine)
    order = ornt[:, 0].argsort()
    out = array
    for axis, flip in enumerate(ornt[order, 1]):
        if flip < 0:
            out = xp.flip(out, axis=axis)
    return xp.ascontiguousarray(xp.transpose(out, [int(a) for a in np.argsort(order)]))


def resample(
    array: Any,
    affine: np.ndarray,
    target_spacing: tuple[float, ...],
    xp: ModuleType,
    ndimage: ModuleType,
    *,
    order: int = 1,
) -> tuple[Any, np.ndarray]:
    """Resample to ``target_spacing`` (mm per axis) keeping the first voxel's position; linear or nearest."""
    scale = resample_scale(affine, target_spacing)
    out = ndimage.affine_transform(
        array.astype(xp.float32, copy=False),
        xp.asarray(scale),
        output_shape=resampled_shape(array.shape, scale),
        order=order,
        mode="nearest",
    )
    return out, affine @ np.diag([*scale, 1.0])


def resample_scale(affine: np.ndarray, target_spacing: tuple[float, ...]) -> np.ndarray:
    """Input voxels per output voxel along each axis: output voxel ``o`` samples input voxel ``o * scale``."""
    return np.asarray(target_spacing, dtype=np.float64) / np.linalg.norm(affine[:3, :3], axis=0)


def resampled_shape(shape: tuple[int, ...], scale: np.ndarray) -> tuple[int, ...]:
    """The shape :func:`resample` gives: every output voxel lies inside the input's first-to-last voxel span."""
    return tuple(max(1, int(np.floor((n - 1) / s)) + 1) for n, s in zip(shape, scale))


def resize_2d(image: Any, shape: tuple[int, int], xp: ModuleType, ndimage: ModuleType) -> Any:
    """Bilinear resize of a 2D image to ``shape`` (e.g. a 3328 x 2560 mammogram to the network's input)."""
    factors = [n / s for n, s in zip(shape, image.shape)]
    return ndimage.zoom(image.astype(xp.float32, copy=False), factors, order=1, mode="nearest", grid_mode=True)


def window(array: Any, center: float, width: float, xp: ModuleType) -> Any:
    """CT windowing to [0, 1] (e.g. lung: center -600, width 1500 HU)."""
    return xp.clip((array - (center - width / 2)) / width, 0.0, 1.0)


def scale_percentiles(array: Any, xp: ModuleType, lower: float = 1.0, upper: float = 99.0) -> Any:
    """Map the [lower, upper] percentile range to [0, 1] and clip (MR, whose units vary by vendor)."""
    lo, hi = (float(v) for v in xp.percentile(array, xp.asarray([lower, upper])))
    return xp.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def crop_start(shape: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """Input voxel index that becomes output voxel 0 under :func:`crop_or_pad` (negative where padded)."""
    return np.array([(n - want) // 2 if n >= want else -((want - n) // 2) for n, want in zip(shape, size)])


def crop_or_pad(array: Any, size: tuple[int, ...], xp: ModuleType, value: float = 0.0) -> Any:
    """Centre crop / symmetric pad to ``size`` (same rule as MONAI's ResizeWithPadOrCrop)."""
    slices, pads = [], []
    for start, n, want in zip(crop_start(array.shape, size), array.shape, size):
        if n >= want:
            slices.append(slice(int(start), int(start) + want))
            pads.append((0, 0))
        else:
            slices.append(slice(0, n))
            pads.append((int(-start), int(want - n + start)))
    return xp.pad(array[tuple(slices)], pads, mode="constant", constant_values=value)


def uncrop(array: Any, shape: tuple[int, ...], xp: ModuleType, value: float = 0) -> Any:
    """Inverse of :func:`crop_or_pad`: ``array`` (the cropped / padded one) put back on a grid of ``shape``; what the
    crop cut away is ``value``."""
    out = xp.full(tuple(shape), value, dtype=array.dtype)
    source, target = [], []
    for start, n, want in zip(crop_start(tuple(shape), array.shape), shape, array.shape):
        lo, hi = max(int(start), 0), min(int(start) + want, n)
        target.append(slice(lo, hi))
        source.append(slice(lo - int(start), hi - int(start)))
    out[tuple(target)] = array[tuple(source)]
    return out


def extract_patches(array: Any, centers: np.ndarray, size: tuple[int, ...], xp: ModuleType, value: float = 0.0) -> Any:
    """Patches of ``size`` centred on voxel ``centers`` [N, ndim]; out-of-volume parts filled with ``value``."""
    half = np.asarray(size) // 2
    pad = [(int(h), int(s - h)) for h, s in zip(half, size)]
    padded = xp.pad(array, pad, mode="constant", constant_values=value)
    starts = np.rint(np.asarray(centers)).astype(int)  # index in padded = center - half + half
    return xp.stack([padded[tuple(slice(s, s + n) for s, n in zip(start, size))] for start in starts])


@dataclass(frozen=True)
class GridMap:
    """Where :class:`Preprocessor` puts a volume's voxels on the network's grid, and how a label map comes back: the
    reorientation to RAS, the resampling to the target spacing and the centre crop / pad, in one place. Training
    labels go through :meth:`forward`; a label map predicted on the network's grid returns through :meth:`inverse`.

    Args:
        source_shape: the volume's shape as read (``[x, y, z]``).
        source_affine: the volume's voxel -> RAS mm affine.
        target_spacing: the network grid's spacing, mm per axis.
        size: the network grid's shape.
    """

    source_shape: tuple[int, ...]
    source_affine: np.ndarray
    target_spacing: tuple[float, ...]
    size: tuple[int, ...]

    @property
    def ras_affine(self) -> np.ndarray:
        """The affine of the volume reoriented to RAS (what :func:`to_ras` returns)."""
        ornt = nib.orientations.io_orientation(self.source_affine)
        return self.source_affine @ nib.orientations.inv_ornt_aff(ornt, self.source_shape)

    @property
    def ras_shape(self) -> tuple[int, ...]:
        order = nib.orientations.io_orientation(self.source_affine)[:, 0].argsort()
        return tuple(int(self.source_shape[int(a)]) for a in order)

    @property
    def scale(self) -> np.ndarray:
        return resample_scale(self.ras_affine, self.target_spacing)

    @property
    def resampled_shape(self) -> tuple[int, ...]:
        return resampled_shape(self.ras_shape, self.scale)

    @property
    def network_affine(self) -> np.ndarray:
        """Voxel of the network's grid -> RAS mm."""
        shift = np.eye(4)
        shift[:3, 3] = crop_start(self.resampled_shape, self.size)
        return self.ras_affine @ np.diag([*self.scale, 1.0]) @ shift

    def to_target(self, array: Any, xp: ModuleType, ndimage: ModuleType, *, order: int) -> Any:
        """``array`` on the source grid -> RAS -> target spacing (linear: ``order=1``, labels: ``order=0``)."""
        ras, _ = to_ras(xp.asarray(array, dtype=xp.float32), self.source_affine, xp)
        out, _ = resample(ras, self.ras_affine, self.target_spacing, xp, ndimage, order=order)
        return out

    def forward(self, label: Any, xp: ModuleType = np, ndimage: ModuleType = scipy.ndimage) -> Any:
        """A label map on the source grid -> the network's grid (nearest neighbour), as training sees it."""
        return crop_or_pad(self.to_target(label, xp, ndimage, order=0), self.size, xp).astype(xp.uint8)

    def inverse(self, label: Any, xp: ModuleType = np, ndimage: ModuleType = scipy.ndimage) -> Any:
        """A label map on the network's grid -> the source grid (nearest neighbour): the crop undone (what it cut
        away is 0), the resampling inverted, the RAS reorientation undone."""
        if tuple(label.shape) != tuple(self.size):
            raise ValueError(f"label map of shape {tuple(label.shape)} is not on the network grid {self.size}")
        full = uncrop(xp.asarray(label, dtype=xp.uint8), self.resampled_shape, xp)
        ras = ndimage.affine_transform(
            full, xp.asarray(1.0 / self.scale), output_shape=self.ras_shape, order=0, mode="nearest"
        )
        return from_ras(ras, self.source_affine, xp)


@dataclass
class Preprocessor:
    """Orientation -> spacing -> intensity -> fixed size, for an image and (optionally) its label map."""

    target_spacing: tuple[float, ...]
    size: tuple[int, ...]
    intensity: str = "percentile"  # or "window"
    window_center: float = 40.0
    window_width: float = 400.0
    use_gpu: bool = True

    def __post_init__(self) -> None:
        self.xp, self.ndimage = modules(self.use_gpu)

    @property
    def on_gpu(self) -> bool:
        return self.xp is not np

    def grid(self, shape: tuple[int, ...], affine: np.ndarray) -> GridMap:
        """The geometry this preprocessor gives a volume of ``shape`` and ``affine`` (and its inverse)."""
        return GridMap(
            tuple(int(n) for n in shape), np.asarray(affine, dtype=np.float64), self.target_spacing, self.size
        )

    def __call__(
        self, image: np.ndarray, affine: np.ndarray, label: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        xp, grid = self.xp, self.grid(image.shape, affine)
        img = grid.to_target(image, xp, self.ndimage, order=1)
        if self.intensity == "window":
            img = window(img, self.window_center, self.window_width, xp)
        else:
            img = scale_percentiles(img, xp)
        img = crop_or_pad(img, self.size, xp)
        lab = grid.forward(label, xp, self.ndimage) if label is not None else None
        to_host = cupy.asnumpy if self.on_gpu else np.asarray
        return to_host(img).astype(np.float32), (to_host(lab) if lab is not None else None), grid.network_affine
