"""What every public-dataset adapter shares: the case it yields, the error for a partial or mismatched download, and
the writer of per-site datalists and site configs.

An adapter reads a dataset *as its users download it* (release layout, file names and annotation files unchanged on
disk) and yields :class:`DatasetCase` objects, each naming its site (the institution / scanner split the literature
uses), its image (a path relative to the download root), its label and split. :func:`write_sites` turns them into
``<out>/<site>/datalist.json`` and ``<out>/site_configs/<site>.json`` (``data_root``: the download itself, read in
place) and ``<out>/holdout/datalist.json`` for the dataset's own test split (with ``holdout/site_config.json``, which
``oncofl simulate --data <out>`` scores it with), plus ``<out>/summary.json`` (counts per
site, split and label: no path, no identifier).

A file that must be converted (a 4D NIfTI's one channel, an NRRD mask) is written under :func:`converted_dir`
(``<out>/converted/<dataset>/``) and listed by its absolute path; the site configs then name ``<out>/converted`` as
their ``converted_root``, the one folder besides ``data_root`` their datalist paths may resolve in.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from ..errors import SiteDataError

SPLITS = ("training", "validation", "testing")
CONVERTED = "converted"  # <out>/converted/: every file an adapter had to convert, the sites' converted_root


class DatasetError(SiteDataError):
    """A public dataset's download cannot be used as it is: partial, mismatched or of another release."""


@dataclass(frozen=True)
class DatasetCase:
    """One case an adapter found.

    Args:
        site: the site (institution, manufacturer or source) it belongs to in the literature's split.
        image: the image, relative to the download root (a DICOM series folder, a DICOM file or a NIfTI file).
        label: a mask path relative to the download root, or a class number.
        split: "training" (the writer deals it into training and validation per site) or "testing" (the dataset's
            own held-out split, written to ``holdout/``).
        extra: the entry's other keys (e.g. a nodule's ``center_mm``), written into the datalist as they are.
    """

    site: str
    image: str
    label: str | int
    split: str = "training"
    extra: dict[str, Any] = field(default_factory=dict)


def site_name(manufacturer: str) -> str:
    """The site a manufacturer's images form (the literature's scanner split): its name in lower case, dashes
    between words; ``unknown-manufacturer`` when the header is empty."""
    words = "".join(c if c.isalnum() else " " for c in manufacturer.lower()).split()
    return "-".join(words) or "unknown-manufacturer"


def manufacturer(path: Path) -> str:
    """A DICOM file's ``Manufacturer`` header ('' when absent)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    return str(ds.get("Manufacturer", "") or "").strip()


def require(source: Path, relative: list[str], dataset: str) -> None:
    """Refuse a download that lacks any of ``relative`` (paths under ``source``), naming every missing one."""
    missing = [name for name in relative if not (source / name).exists()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(
            f"the {dataset} download is incomplete or of another release",
            fix=f"download the whole {dataset} release and give its root folder; missing: {shown}",
            path=str(source),
        )


def converted_dir(out: Path, dataset: str) -> Path:
    """Where an adapter writes what it converts: ``<out>/converted/<dataset>/`` (created)."""
    folder = Path(out).resolve() / CONVERTED / dataset
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _entry(case: DatasetCase) -> dict[str, Any]:
    return {"image": case.image, "label": case.label, **case.extra}


def deal(cases: list[DatasetCase], val_fraction: float, seed: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per site: its training cases dealt into training and validation (a seeded shuffle, at least one case each
    when the site has two or more), in a stable order."""
    sites: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for site in sorted({c.site for c in cases if c.split == "training"}):
        own = [c for c in cases if c.site == site and c.split == "training"]
        order = np.random.default_rng([seed, sum(map(ord, site))]).permutation(len(own))
        n_val = min(len(own) - 1, max(1, round(len(own) * val_fraction))) if len(own) > 1 else 0
        val = set(order[:n_val].tolist())
        sites[site] = {
            "training": [_entry(c) for i, c in enumerate(own) if i not in val],
            "validation": [_entry(c) for i, c in enumerate(own) if i in val],
        }
    return sites


def write_sites(
    cases: list[DatasetCase],
    *,
    source: Path,
    out: Path,
    dataset: str,
    task: str,
    val_fraction: float = 0.2,
    seed: int = 0,
    config_fields: dict[str, Any] | None = None,
) -> Path:
    """Write the per-site datalists, site configs, the held-out datalist and the summary (see the module doc)."""
    source, out = Path(source).resolve(), Path(out).resolve()
    configs = out / "site_configs"
    configs.mkdir(parents=True, exist_ok=True)
    for site, splits in deal(cases, val_fraction, seed).items():
        (out / site).mkdir(parents=True, exist_ok=True)
        (out / site / "datalist.json").write_text(json.dumps(splits, indent=1) + "\n")
        config = {
            "site_name": site,
            "data_root": str(source),
            "datalist": str(out / site / "datalist.json"),
            "cache_dir": str(out / "cache" / site),
            **({"converted_root": str(out / CONVERTED)} if (out / CONVERTED).is_dir() else {}),
            **(config_fields or {}),
        }
        (configs / f"{site}.json").write_text(json.dumps(config, indent=2) + "\n")
    held = [_entry(c) for c in cases if c.split == "testing"]
    if held:
        (out / "holdout").mkdir(parents=True, exist_ok=True)
        (out / "holdout" / "datalist.json").write_text(json.dumps({"testing": held}, indent=1) + "\n")
        holdout = {"site_name": "holdout", "data_root": str(source), "datalist": str(out / "holdout" / "datalist.json"),
                   "cache_dir": str(out / "cache" / "holdout")}  # fmt: skip
        if (out / CONVERTED).is_dir():
            holdout["converted_root"] = str(out / CONVERTED)
        (out / "holdout" / "site_config.json").write_text(json.dumps(holdout, indent=2) + "\n")
    counts = Counter((c.site, c.split, str(c.label) if isinstance(c.label, int) else "mask") for c in cases)
    summary = {
        "dataset": dataset,
        "task": task,
        "sites": sorted({c.site for c in cases}),
        "counts": [{"site": s, "split": sp, "label": lb, "cases": n} for (s, sp, lb), n in sorted(counts.items())],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out
