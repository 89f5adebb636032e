"""The site side of the federated statistics: FLARE's ``Statistics`` over this site's datalist.

:class:`ImagingStatistics` reads the site's own config (as training does: ``$ONCOFL_SITE_CONFIG`` or
``local/oncofl_site.json``), then every case of the datalist with the task's own readers, once, at the start of the
job. Each case belongs to several groups -- FLARE "datasets" -- named from our fixed vocabulary
(:mod:`oncofl.fedstats.vocabulary`): ``all``, ``training``, ``validation``, ``label=<k>`` (classification tasks),
``vendor=<slug>`` and, for CT, ``kernel=<name>``. The features per group are numbers only (:data:`FEATURES`).

A case that cannot be read is skipped: it counts in the ``unreadable`` feature (1 per skipped case, 0 per read one,
so its count is the group's number of cases), and its reason goes to this site's log only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import Bin, DataType, Feature, Histogram, HistogramType, Statistics

from ..data import SPLITS, CaseRef, parse_datalist
from ..dicom.mammo import read_projection
from ..dicom.pixels import decode_limit, read_header
from ..dicom.series import list_series_files
from ..errors import OncoFLError, case_error
from ..site_config import SiteConfig, find_site_config, load_site_config
from ..volume import is_nifti, read_volume
from .vocabulary import ALL, kernel_group, kernel_name, label_group, vendor_group, vendor_slug

logger = logging.getLogger(__name__)

# the imaging tasks and their modality: it decides the reader and the intensity scale
TASK_MODALITY = {"prostate_seg": "MR", "lung_nodule_cls": "CT", "breast_mammo_cls": "MG"}
# the intensity histogram's fixed range: HU for CT; MR / MG scaled per image to its 1st..99th percentile (0..1)
INTENSITY_RANGE = {"CT": (-1024.0, 600.0), "MR": (-0.25, 1.25), "MG": (-0.25, 1.25)}
IMAGE_FEATURES = {
    "MR": ("matrix_rows", "matrix_cols", "num_slices", "slice_thickness_mm", "pixel_spacing_mm", "field_strength_t"),
    "CT": ("matrix_rows", "matrix_cols", "num_slices", "slice_thickness_mm", "pixel_spacing_mm"),
    "MG": ("matrix_rows", "matrix_cols", "pixel_spacing_mm"),
}
CASES = "unreadable"  # 1 per skipped case, 0 per read case: its count is the group's number of cases
LEVEL = "intensity_p99"  # the raw intensity level of an image (rescaled values; HU for CT): where a gain shows
INTENSITY = "intensity"  # sampled voxels (HU for CT, scaled for MR / MG): the histogram the network sees
MAX_VOXELS = 20_000  # voxels sampled per image (evenly strided) for the intensity statistics


def features_of(task: str) -> tuple[str, ...]:
    """Every feature the statistics of ``task`` may report, in order.

    Args:
        task: an imaging task of :data:`TASK_MODALITY`.
    """
    label = ("label",) if task != "prostate_seg" else ()  # classification: the class value (its mean is a rate)
    return (CASES, *label, *IMAGE_FEATURES[TASK_MODALITY[task]], LEVEL, INTENSITY)


@dataclass
class ImageFacts:
    """What one readable image contributes: its vendor and kernel names, numbers, sampled intensities."""

    vendor: str
    kernel: str
    values: dict[str, float]
    voxels: np.ndarray


@dataclass
class CaseFacts:
    """One datalist case: the groups it belongs to, its numbers and sampled intensities (none when skipped)."""

    groups: list[str]
    values: dict[str, float]
    voxels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _header(path: Path):
    """The first DICOM header of an image (a series folder's first file), None for NIfTI."""
    if is_nifti(path):
        return None
    return read_header(list_series_files(path)[0] if path.is_dir() else path)


def _number(ds, keyword: str) -> float:
    """A numeric header value, NaN when absent or not a finite number."""
    try:
        value = float(ds.get(keyword)) if ds is not None and ds.get(keyword) not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _sample(pixels: np.ndarray, modality: str, max_voxels: int) -> tuple[float, np.ndarray]:
    """(raw 99th percentile, evenly strided voxel sample: HU for CT, scaled to the image's p1..p99 otherwise)."""
    flat = np.asarray(pixels, dtype=np.float32).ravel()
    p1, p99 = (float(v) for v in np.percentile(flat, [1, 99]))
    sample = flat[:: max(1, math.ceil(flat.size / max_voxels))]
    if modality != "CT":
        sample = (sample - p1) / (p99 - p1) if p99 > p1 else sample - p1
    return p99, sample.astype(np.float32)


def read_image_facts(path: Path, modality: str, max_voxels: int = MAX_VOXELS) -> ImageFacts:
    """Read one image with the task's reader and return its facts (numbers and vocabulary names only).

    Args:
        path: the image (a DICOM series folder or file, or NIfTI).
        modality: ``MR``, ``CT`` or ``MG`` (the task's).
        max_voxels: voxels sampled for the intensity statistics.
    """
    ds = _header(path)
    if modality == "MG":
        image = read_projection(path, crop=True)
        rows, cols = _number(ds, "Rows"), _number(ds, "Columns")  # the detector image, before the crop
        spacing, values = image.spacing, {}
    else:
        image = read_volume(path)
        cols, rows, slices = image.array.shape
        spacing = image.spacing
        thickness = _number(ds, "SliceThickness")
        values = {"num_slices": float(slices), "slice_thickness_mm": thickness if thickness > 0 else spacing[2]}
        if modality == "MR":
            values["field_strength_t"] = _number(ds, "MagneticFieldStrength")
    values |= {"matrix_rows": float(rows), "matrix_cols": float(cols)}
    values["pixel_spacing_mm"] = float(np.mean(spacing[:2]))
    level, voxels = _sample(image.array, modality, max_voxels)
    values[LEVEL] = level
    kernel = kernel_name(ds.get("ConvolutionKernel")) if modality == "CT" and ds is not None else "unknown"
    return ImageFacts(vendor_slug(image.manufacturer), kernel, values, voxels)


def _case_facts(case: CaseRef, modality: str, image: ImageFacts | None) -> CaseFacts:
    """The groups and numbers of one case, from its image's facts (None: the case was skipped)."""
    groups = [ALL, case.split]
    label = label_group(case.label)
    if label is not None:
        groups.append(label)
    values = {CASES: 0.0 if image else 1.0}
    if label is not None:
        values["label"] = float(case.label)
    if image is None:
        return CaseFacts(groups, values)
    groups.append(vendor_group(image.vendor))
    if modality == "CT":
        groups.append(kernel_group(image.kernel))
    return CaseFacts(groups, values | image.values, image.voxels)


def collect_cases(config: SiteConfig, task: str, max_voxels: int = MAX_VOXELS) -> list[CaseFacts]:
    """Every datalist case's facts; an unreadable case is skipped (counted, its reason in the local log).

    Args:
        config: this site's validated config.
        task: the imaging task (decides reader and intensity scale).
        max_voxels: voxels sampled per image.
    """
    modality = TASK_MODALITY[task]
    cases, missing = parse_datalist(config, SPLITS)
    bad = {e.item.split(",")[0] for e in missing}
    for e in missing:
        logger.warning("[%s] skipping a case in the statistics: %s", config.site_name, e.local_message())
    images: dict[Path, ImageFacts | None] = {}  # an image several cases share (lung nodules) is read once
    out = []
    with decode_limit(config.max_decoded_image_mb * 2**20):
        for case in (c for refs in cases.values() for c in refs):
            if case.item not in bad and case.image not in images:
                images[case.image] = _read_or_skip(case, modality, max_voxels, config.site_name)
            out.append(_case_facts(case, modality, None if case.item in bad else images[case.image]))
    return out


def _read_or_skip(case: CaseRef, modality: str, max_voxels: int, site: str) -> ImageFacts | None:
    """One image's facts, or None with the reason in the local log only."""
    try:
        return read_image_facts(case.image, modality, max_voxels)
    except Exception as e:  # every kind of unreadable case is skipped, none stops the statistics
        err = case_error(e, f"{case.item}, image", path=str(case.image)).with_context(site=site)
        logger.warning("[%s] skipping a case in the statistics: %s", site, err.local_message())
        return None


def group_values(cases: list[CaseFacts], task: str) -> dict[str, dict[str, np.ndarray]]:
    """{group: {feature: values}}, only features with at least one value in the group.

    Args:
        cases: every case's facts.
        task: the imaging task (its feature list).
    """
    lists: dict[str, dict[str, list]] = {}
    for case in cases:
        for group in case.groups:
            per = lists.setdefault(group, {})
            for name, value in case.values.items():
                if math.isfinite(value):
                    per.setdefault(name, []).append(np.float64(value))
            if case.voxels.size:
                per.setdefault(INTENSITY, []).append(case.voxels)
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, per in lists.items():
        out[group] = {}
        for name in features_of(task):
            if per.get(name):
                joined = np.concatenate(per[name]) if name == INTENSITY else np.asarray(per[name])
                out[group][name] = joined.astype(np.float64)
    return out


class ImagingStatistics(Statistics):
    """FLARE's ``Statistics`` over this site's imaging datalist (see the module docstring).

    Args:
        task: the imaging task (``prostate_seg``, ``lung_nodule_cls`` or ``breast_mammo_cls``).
        max_voxels_per_image: voxels sampled per image for the intensity statistics.
    """

    def __init__(self, task: str, max_voxels_per_image: int = MAX_VOXELS) -> None:
        super().__init__()
        if task not in TASK_MODALITY:
            raise ValueError(f"unknown imaging task '{task}'; available: {', '.join(TASK_MODALITY)}")
        self.task = task
        self.max_voxels_per_image = max_voxels_per_image
        self.data: dict[str, dict[str, np.ndarray]] = {}
        self.skipped = 0

    def initialize(self, fl_ctx: FLContext) -> None:
        """Read this site's config and every case, once; a bad config stops with our fixed text only."""
        site = fl_ctx.get_identity_name()
        root = fl_ctx.get_engine().get_workspace().get_root_dir()
        try:
            self.load(load_site_config(find_site_config(site, root), site_name=site))
        except OncoFLError as e:
            logger.error("%s", e.local_message())  # the paths and values: this site's log only
            raise RuntimeError(e.server_message()) from None

    def load(self, config: SiteConfig) -> None:
        """Read every case of ``config``'s datalist (also usable without FLARE).

        Args:
            config: this site's validated config.
        """
        cases = collect_cases(config, self.task, self.max_voxels_per_image)
        self.skipped = int(sum(c.values[CASES] for c in cases))
        self.data = group_values(cases, self.task)
        logger.info("[%s] statistics over %d case(s), %d skipped", config.site_name, len(cases), self.skipped)

    def features(self) -> dict[str, list[Feature]]:
        return {group: [Feature(name, DataType.FLOAT) for name in per] for group, per in self.data.items()}

    def count(self, dataset_name: str, feature_name: str) -> int:
        return int(self.data[dataset_name][feature_name].size)

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].sum())

    def mean(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].mean())

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].std())

    def variance_with_mean(
        self, dataset_name: str, feature_name: str, global_mean: float, global_count: float
    ) -> float:
        values = self.data[dataset_name][feature_name]
        return float(((values - global_mean) ** 2).sum() / max(global_count - 1, 1))

    def histogram(
        self, dataset_name: str, feature_name: str, num_of_bins: int, global_min_value: float, global_max_value: float
    ) -> Histogram:
        """Counts in ``num_of_bins`` equal bins; values outside the range fall into the end bins."""
        low, high = float(global_min_value), float(global_max_value)
        if high <= low:
            high = low + 1.0
        values = np.clip(self.data[dataset_name][feature_name], low, high)
        counts, edges = np.histogram(values, bins=num_of_bins, range=(low, high))
        bins = [Bin(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(num_of_bins)]
        return Histogram(HistogramType.STANDARD, bins)

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].max())

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].min())
