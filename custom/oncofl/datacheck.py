"""Site data check: what a site's datalist holds, and every case that cannot be read, with the reason.

The report has two views: ``local_text()`` for the site's IT (file paths and header texts included), and
``summary()`` -- counts, modality/vendor mix, spacing and intensity ranges, unreadable counts by reason -- which holds
only numbers and names from fixed vocabularies (:data:`MODALITIES`, :data:`VENDORS`, our own problem texts): a header's
free text is never copied into it, an unknown value is counted as ``other``.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import SPLITS, CaseRef, parse_datalist
from .dicom.pixels import decode_limit
from .dicom.series import SeriesVolume
from .errors import SiteDataError, case_error
from .site_config import SiteConfig
from .volume import inspect_image, is_nifti, read_image

logger = logging.getLogger(__name__)


# DICOM modality defined terms (PS3.3 C.7.3.1.1.1) the summary may name; any other value is counted as "other".
MODALITIES = frozenset("CR CT DX MG MR NM OT PT PX RF RTDOSE RTIMAGE RTPLAN RTSTRUCT SEG SC SM SR US XA".split())
# Known vendors: (name in the summary, lower-case words that identify it in the free-text Manufacturer field).
VENDORS = (
    ("SIEMENS", ("siemens",)),
    ("GE", ("ge medical", "ge healthcare", "general electric", "gems")),
    ("PHILIPS", ("philips",)),
    ("CANON", ("canon", "toshiba")),
    ("FUJIFILM", ("fujifilm", "fuji")),
    ("HOLOGIC", ("hologic", "lorad")),
    ("HITACHI", ("hitachi",)),
    ("AGFA", ("agfa",)),
    ("CARESTREAM", ("carestream", "kodak")),
    ("KONICA MINOLTA", ("konica",)),
    ("PLANMED", ("planmed",)),
    ("IMS GIOTTO", ("giotto",)),
    ("UNITED IMAGING", ("united imaging", "uih")),
    ("SAMSUNG", ("samsung",)),
    ("SHIMADZU", ("shimadzu",)),
)


def modality_category(value: str) -> str:
    """A Modality header value as a defined term, or ``other`` (never the header's own text)."""
    value = value.strip().upper()
    return value if value in MODALITIES else ("unknown" if not value else "other")


def vendor_category(value: str) -> str:
    """A free-text Manufacturer value mapped to :data:`VENDORS`, ``unknown`` when empty, else ``other``."""
    text = " ".join(value.lower().split())
    if not text:
        return "unknown"
    words = set(re.split(r"[^a-z0-9]+", text))
    for name, keys in VENDORS:
        if any((k in text) if " " in k else (k in words) for k in keys):
            return name
    return "other"


@dataclass
class SiteReport:
    site: str
    counts: dict[str, int] = field(default_factory=dict)
    formats: Counter = field(default_factory=Counter)  # readable cases per file format: "DICOM", "NIfTI"
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
            "formats": dict(self.formats),
            "modalities": dict(_categories(self.modalities, modality_category)),
            "manufacturers": dict(_categories(self.manufacturers, vendor_category)),
            "spacing_mm": spread(self.spacings),
            "shape": spread(self.shapes),
            "intensity_p1_p50_p99": [round(statistics.median(v), 2) for v in zip(*self.intensity)]
            if self.intensity
            else [],
            "unreadable": dict(Counter(f"{p.problem} ({p.kind or type(p).__name__})" for p in self.problems)),
        }

    def local_text(self) -> str:
        """The site's own view: the headers' texts as read, every problem with its file and details."""
        s = self.summary()
        lines = [
            f"site {self.site}: " + ", ".join(f"{k} {v}" for k, v in s["cases"].items()) + " cases",
            f"  formats {dict(self.formats)}, modalities {dict(self.modalities)}, "
            f"manufacturers {dict(self.manufacturers)}",
            f"  spacing (mm) {s['spacing_mm']}",
            f"  shape {s['shape']}",
            f"  intensity median p1/p50/p99 {s['intensity_p1_p50_p99']}",
            f"  unreadable: {len(self.problems)}",
        ]
        lines += [
            f"    - {p.item}: {p.problem}{f' [{p.detail}]' if p.detail else ''} (file: {p.path}). Fix: {p.fix}"
            for p in self.problems
        ]
        return "\n".join(lines)


def _categories(raw: Counter, category: Callable[[str], str]) -> Counter:
    """Header texts as read (local) -> counts per fixed category (may leave the site)."""
    out: Counter = Counter()
    for value, n in raw.items():
        out[category(value)] += n
    return out


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
                _check_case(report, case, decode)
            except Exception as e:  # every kind of bad case is reported, none stops the check
                if not isinstance(e, SiteDataError):
                    logger.warning("[%s] %s failed the data check", config.site_name, case.item, exc_info=e)
                err = case_error(e, "", path=str(case.image))
                report.problems.append(err.with_context(site=config.site_name, item=f"{case.item}, image"))
    return report


def _check_case(report: SiteReport, case: CaseRef, decode: bool) -> None:
    """Add one case's facts to the report (headers, and the decoded pixels if ``decode``)."""
    modality, manufacturer, spacing, shape = inspect_image(case.image)  # headers only, the readers' checks
    if decode:
        image = read_image(case.image)
        if isinstance(image, SeriesVolume):
            spacing, shape = image.spacing, image.array.shape
        p1, p50, p99 = np.percentile(image.array, [1, 50, 99])
        report.intensity.append((float(p1), float(p50), float(p99)))
    report.formats["NIfTI" if is_nifti(case.image) else "DICOM"] += 1
    report.modalities[modality] += 1
    report.manufacturers[manufacturer] += 1
    report.spacings.append(tuple(round(float(s), 3) for s in spacing))
    report.shapes.append(tuple(int(n) for n in shape))
