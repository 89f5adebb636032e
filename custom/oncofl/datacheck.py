"""Site data check: what a site's datalist holds, and every case that cannot be read, with the reason.

The report has two views: ``local_text()`` for the site's IT (file paths included), and ``summary()`` -- counts,
modality/vendor mix, spacing and intensity ranges, unreadable counts by reason -- which holds no path, no patient
identifier and no per-case value, so it may be logged where the server can see it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import SPLITS, parse_datalist
from .dicom.pixels import decode_limit
from .dicom.reader import inspect_dicom, read_dicom
from .dicom.series import SeriesVolume
from .errors import SiteDataError
from .site_config import SiteConfig


@dataclass
class SiteReport:
    site: str
    counts: dict[str, int] = field(default_factory=dict)
    modalities: Counter = field(default_factory=Counter)
    manufacturers: Counter = field(default_factory=Counter)
    spacings: list[tuple[float, ...]] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    intensity: list[tuple[float, float, float]] = field(default_factory=list)  # p1, p50, p99 per case
    problems: list[SiteDataError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        """Aggregates only: safe to leave the site."""

        def spread(values: list[tuple[float, ...]]) -> dict[str, list[float]]:
            if not values:
                return {}
            arr = np.asarray(values, dtype=np.float64)
            return {
                k: np.round(f(arr, axis=0), 3).tolist()
                for k, f in (("min", np.min), ("median", np.median), ("max", np.max))
            }

        return {
            "site": self.site,
            "cases": dict(self.counts),
            "modalities": dict(self.modalities),
            "manufacturers": dict(self.manufacturers),
            "spacing_mm": spread(self.spacings),
            "shape": spread(self.shapes),
            "intensity_p1_p50_p99": [round(statistics.median(v), 2) for v in zip(*self.intensity)]
            if self.intensity
            else [],
            "unreadable": dict(Counter(p.problem for p in self.problems)),
        }

    def local_text(self) -> str:
        s = self.summary()
        lines = [
            f"site {self.site}: " + ", ".join(f"{k} {v}" for k, v in s["cases"].items()) + " cases",
            f"  modalities {s['modalities']}, manufacturers {s['manufacturers']}",
            f"  spacing (mm) {s['spacing_mm']}",
            f"  shape {s['shape']}",
            f"  intensity median p1/p50/p99 {s['intensity_p1_p50_p99']}",
            f"  unreadable: {len(self.problems)}",
        ]
        lines += [f"    - {p.item}: {p.problem} (file: {p.path}). Fix: {p.fix}" for p in self.problems]
        return "\n".join(lines)


def check_site(config: SiteConfig, *, decode: bool = True, splits: tuple[str, ...] = SPLITS) -> SiteReport:
    """Read the datalist and every case (headers only unless ``decode``); collect problems instead of stopping.

    Headers-only checks refuse what the readers refuse before decoding (non-finite or degenerate geometry, MIP /
    projection and localizer images, MOSAICs that cannot be unpacked, images over the site's size limit), and the
    slice spacing is measured along the slice normal (sagittal and oblique series included)."""
    with decode_limit(config.max_decoded_image_mb * 2**20):
        return _check_cases(config, decode, splits)


def _check_cases(config: SiteConfig, decode: bool, splits: tuple[str, ...]) -> SiteReport:
    report = SiteReport(site=config.site_name)
    cases, missing = parse_datalist(config, splits)
    report.problems += missing
    missing_items = {e.item.split(",")[0] for e in missing}  # "training case #3, label" -> the case
    for split, refs in cases.items():
        report.counts[split] = len(refs)
        for case in refs:
            if case.item in missing_items:
                continue
            try:
                modality, manufacturer, spacing, shape = inspect_dicom(case.image)
                if decode:
                    image = read_dicom(case.image)
                    if isinstance(image, SeriesVolume):
                        spacing, shape = image.spacing, image.array.shape
                    p1, p50, p99 = np.percentile(image.array, [1, 50, 99])
                    report.intensity.append((float(p1), float(p50), float(p99)))
            except SiteDataError as e:
                report.problems.append(e.with_context(site=config.site_name, item=f"{case.item}, image"))
                continue
            report.modalities[modality] += 1
            report.manufacturers[manufacturer or "unknown"] += 1
            report.spacings.append(tuple(round(s, 3) for s in spacing))
            report.shapes.append(tuple(shape))
    return report
