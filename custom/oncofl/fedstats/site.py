"""The site side of the federated statistics: FLARE's ``Statistics`` over this site's datalist.

:class:`ImagingStatistics` reads the site's own config (as training does: ``$ONCOFL_SITE_CONFIG`` or
``local/oncofl_site.json``), then every case of the datalist with the task's own readers, once, at the start of the
job. Each case belongs to several groups -- FLARE "datasets" -- named from our fixed vocabulary
(:mod:`oncofl.fedstats.vocabulary`): ``all``, ``training``, ``validation``, ``label=<k>`` (classification tasks),
``vendor=<slug>`` and, for CT, ``kernel=<name>``. The features per group are numbers only (:func:`features_of`).

An image several cases share (a CT with several lung nodules) is read once and adds its numbers and voxels once per
group; the per-case features (``unreadable``, ``label``) count each case. A case that cannot be read -- or a
malformed datalist entry -- is skipped: it counts in the ``unreadable`` feature (1 per skipped case, 0 per read one,
so its count is the group's number of cases), and its reason goes to this site's log only.

Before anything is offered to FLARE, :func:`oncofl.fedstats.privacy.suppress` removes every group, partition and
feature below ``max(the job's min_count, the site config's stats_min_count)`` in distinct readable images or cases:
a job without any privacy filter gets no more than that.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import Bin, DataType, Feature, Histogram, HistogramType, Statistics

from ..data import SPLITS, CaseRef, parse_datalist_lenient
from ..dicom.mammo import read_projection
from ..dicom.pixels import decode_limit, read_header
from ..dicom.series import list_series_files
from ..errors import OncoFLError, case_error
from ..site_config import SiteConfig, find_site_config, load_site_config
from ..volume import is_nifti, read_volume
from .privacy import SIZE, class_cell, suppress
from .vocabulary import (
    ALL,
    CASES,
    INTENSITY,
    LABEL,
    LEVEL,
    kernel_group,
    kernel_name,
    label_group,
    vendor_group,
    vendor_slug,
)

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
MAX_VOXELS = 20_000  # voxels sampled per image (evenly strided) for the intensity statistics


def features_of(task: str) -> tuple[str, ...]:
    """Every feature the statistics of ``task`` may report, in order.

    Args:
        task: an imaging task of :data:`TASK_MODALITY`.
    """
    label = (LABEL,) if task != "prostate_seg" else ()  # classification: the class value (its mean is a rate)
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
    """One datalist case: the groups it belongs to, its own numbers (``unreadable``, ``label``), and its image (a key
    shared by the cases of one image, its numbers and sampled intensities; none when skipped)."""

    groups: list[str]
    values: dict[str, float]
    image: str | None = None
    image_values: dict[str, float] = field(default_factory=dict)
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
        values[LABEL] = float(case.label)
    if image is None:
        return CaseFacts(groups, values)
    groups.append(vendor_group(image.vendor))
    if modality == "CT":
        groups.append(kernel_group(image.kernel))
    return CaseFacts(groups, values, str(case.image.resolve()), image.values, image.voxels)


def collect_cases(config: SiteConfig, task: str, max_voxels: int = MAX_VOXELS) -> list[CaseFacts]:
    """Every datalist case's facts; an unreadable case or malformed entry is skipped (counted, its reason in the
    local log); a split the datalist lacks is empty.

    Args:
        config: this site's validated config.
        task: the imaging task (decides reader and intensity scale).
        max_voxels: voxels sampled per image.
    """
    modality = TASK_MODALITY[task]
    cases, missing, malformed = parse_datalist_lenient(config, SPLITS)
    bad = {e.item.split(",")[0] for e in missing}
    for e in missing:
        logger.warning("[%s] skipping a case in the statistics: %s", config.site_name, e.local_message())
    images: dict[Path, ImageFacts | None] = {}  # an image several cases share (lung nodules) is read once
    out = [CaseFacts([ALL, split], {CASES: 1.0}) for split in malformed]
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
    """{group: {feature: values}}, only features with at least one value in the group; an image's numbers and
    voxels once per group however many of its cases are in it.

    Args:
        cases: every case's facts.
        task: the imaging task (its feature list).
    """
    lists: dict[str, dict[str, list]] = {}
    seen: dict[str, set[str]] = {}
    for case in cases:
        for group in case.groups:
            per = lists.setdefault(group, {})
            values = dict(case.values)
            if case.image is not None and case.image not in seen.setdefault(group, set()):
                seen[group].add(case.image)
                values |= case.image_values
                per.setdefault(INTENSITY, []).append(case.voxels)
            for name, value in values.items():
                if math.isfinite(value):
                    per.setdefault(name, []).append(np.float64(value))
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, per in lists.items():
        out[group] = {}
        for name in features_of(task):
            if per.get(name):
                joined = np.concatenate(per[name]) if name == INTENSITY else np.asarray(per[name])
                out[group][name] = joined.astype(np.float64)
    return out


def group_cells(cases: list[CaseFacts], data: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    """The cells :func:`oncofl.fedstats.privacy.suppress` judges: per group its distinct readable images, each
    feature's number of values (the intensity's: images), and the cases of each label class.

    Args:
        cases: every case's facts.
        data: their :func:`group_values`.
    """
    images: dict[str, set[str]] = {}
    cells: dict[str, dict[str, int]] = {}
    for case in cases:
        for group in case.groups:
            cell = cells.setdefault(group, {})
            if case.image is not None:
                images.setdefault(group, set()).add(case.image)
            if LABEL in case.values:
                key = class_cell(LABEL, case.values[LABEL])
                cell[key] = cell.get(key, 0) + 1
    for group, per in data.items():
        cells[group] |= {name: int(values.size) for name, values in per.items()}
        cells[group][SIZE] = len(images.get(group, ()))
        if INTENSITY in per:
            cells[group][INTENSITY] = cells[group][SIZE]
    return cells


class ImagingStatistics(Statistics):
    """FLARE's ``Statistics`` over this site's imaging datalist (see the module docstring).

    Args:
        task: the imaging task (``prostate_seg``, ``lung_nodule_cls`` or ``breast_mammo_cls``).
        max_voxels_per_image: voxels sampled per image for the intensity statistics.
        min_count: the job's minimum count; the site config's ``stats_min_count`` applies when it is higher.
    """

    def __init__(self, task: str, max_voxels_per_image: int = MAX_VOXELS, min_count: int = 1) -> None:
        super().__init__()
        if task not in TASK_MODALITY:
            raise ValueError(f"unknown imaging task '{task}'; available: {', '.join(TASK_MODALITY)}")
        self.task = task
        self.max_voxels_per_image = max_voxels_per_image
        self.min_count = min_count
        self.data: dict[str, dict[str, np.ndarray]] = {}
        self.skipped = 0

    def initialize(self, fl_ctx: FLContext) -> None:
        """Read this site's config and every case, once; a bad config stops with our fixed text only.

        Args:
            fl_ctx: FLARE's context (the site's name and workspace).
        """
        site = fl_ctx.get_identity_name()
        root = fl_ctx.get_engine().get_workspace().get_root_dir()
        try:
            self.load(load_site_config(find_site_config(site, root), site_name=site))
        except OncoFLError as e:
            logger.error("%s", e.local_message())  # the paths and values: this site's log only
            raise RuntimeError(e.server_message()) from None

    def load(self, config: SiteConfig) -> None:
        """Read every case of ``config``'s datalist and keep only what may leave the site (also usable without
        FLARE).

        Args:
            config: this site's validated config (its ``stats_min_count`` is the floor of the minimum count).
        """
        cases = collect_cases(config, self.task, self.max_voxels_per_image)
        self.skipped = int(sum(c.values[CASES] for c in cases))
        data = group_values(cases, self.task)
        min_count = max(int(self.min_count), config.stats_min_count, 1)
        kept = suppress(group_cells(cases, data), min_count)
        self.data = {g: {f: v for f, v in per.items() if f in kept[g]} for g, per in data.items() if g in kept}
        logger.info(
            "[%s] statistics over %d case(s), %d skipped; minimum count %d: %d of %d group(s) kept",
            config.site_name, len(cases), self.skipped, min_count, len(self.data), len(data),
        )  # fmt: skip

    def features(self) -> dict[str, list[Feature]]:
        """Every group that may leave the site and its features (all numbers)."""
        return {group: [Feature(name, DataType.FLOAT) for name in per] for group, per in self.data.items()}

    def _values(self, dataset_name: str, feature_name: str) -> np.ndarray:
        """The values of one (group, feature) that may leave the site (KeyError for any other)."""
        return self.data[dataset_name][feature_name]

    def count(self, dataset_name: str, feature_name: str) -> int:
        """The number of values (cases, images, or voxels for ``intensity``).

        Args:
            dataset_name: the group.
            feature_name: the feature.
        """
        return int(self._values(dataset_name, feature_name).size)

    def sum(self, dataset_name: str, feature_name: str) -> float:
        """The sum of the values.

        Args:
            dataset_name: the group.
            feature_name: the feature.
        """
        return float(self._values(dataset_name, feature_name).sum())

    def mean(self, dataset_name: str, feature_name: str) -> float:
        """The mean of the values.

        Args:
            dataset_name: the group.
            feature_name: the feature.
        """
        return float(self._values(dataset_name, feature_name).mean())

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        """The sample standard deviation (N - 1, as FLARE's global one); 0 for one value.

        Args:
            dataset_name: the group.
            feature_name: the feature.
        """
        values = self._values(dataset_name, feature_name)
        return float(values.std(ddof=1)) if values.size > 1 else 0.0

    def variance_with_mean(
        self, dataset_name: str, feature_name: str, global_mean: float, global_count: float
    ) -> float:
        """This site's share of the global variance: the squared deviations from the global mean over N - 1.

        Args:
            dataset_name: the group.
            feature_name: the feature.
            global_mean: the mean over every site.
            global_count: the count over every site.
        """
        values = self._values(dataset_name, feature_name)
        return float(((values - global_mean) ** 2).sum() / max(global_count - 1, 1))

    def histogram(
        self, dataset_name: str, feature_name: str, num_of_bins: int, global_min_value: float, global_max_value: float
    ) -> Histogram:
        """Counts in ``num_of_bins`` equal bins; values outside the range fall into the end bins.

        Args:
            dataset_name: the group.
            feature_name: the feature.
            num_of_bins: the number of bins.
            global_min_value: the lower end of the range.
            global_max_value: the upper end.
        """
        low, high = float(global_min_value), float(global_max_value)
        if high <= low:
            high = low + 1.0
        values = np.clip(self._values(dataset_name, feature_name), low, high)
        counts, edges = np.histogram(values, bins=num_of_bins, range=(low, high))
        bins = [Bin(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(num_of_bins)]
        return Histogram(HistogramType.STANDARD, bins)

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        """The largest value (noised by the job's filter before it leaves).

        Args:
            dataset_name: the group.
            feature_name: the feature.
        """
        return float(self._values(dataset_name, feature_name).max())

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        """The smallest value (noised by the job's filter before it leaves).

        Args:
            dataset_name: the group.
            feature_name: the feature.
        """
        return float(self._values(dataset_name, feature_name).min())
