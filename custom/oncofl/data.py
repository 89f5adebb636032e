"""Datalist reading and the per-site cache of preprocessed cases.

The datalist is MONAI/Decathlon style JSON, paths relative to the site's data root::

    {"training": [{"image": "cases/case_0003/dicom", "label": "cases/case_0003/label.nii.gz"}, ...],
     "validation": [...]}

``image`` is a DICOM series folder, a DICOM file (enhanced multi-frame) or a NIfTI file (``.nii``, ``.nii.gz``): the
tasks read it through :func:`oncofl.volume.read_volume`. ``label`` is a file (a mask) for segmentation tasks, or a
number (the class) for classification tasks.

Each case is decoded and preprocessed once; the result is cached on disk (``cache_dir``), keyed by the files'
content (SHA-256) plus the preprocessing parameters, so later rounds and later jobs skip DICOM decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicom.pixels import decode_limit
from .errors import SiteDataError, SiteDataErrors, case_error
from .site_config import SiteConfig
from .tasks import TaskSpec

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation")
CACHE_VERSION = "2"


@dataclass(frozen=True)
class CaseRef:
    """One datalist entry. ``item`` names it without a path (safe to send to the server)."""

    split: str
    index: int
    image: Path
    label: Path | float  # a mask file, or the class of a classification case
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the entry (e.g. a nodule's center_mm)

    @property
    def item(self) -> str:
        return f"{self.split} case #{self.index}"


@dataclass
class SplitData:
    """A preprocessed split held in memory: images [N, C, ...] float32, labels [N, 1, ...] (masks or classes)."""

    images: np.ndarray
    labels: np.ndarray
    skipped: list[SiteDataError]

    def __len__(self) -> int:
        return len(self.images)


def read_datalist(
    config: SiteConfig, splits: tuple[str, ...] = SPLITS, *, label_kind: str | None = None
) -> dict[str, list[CaseRef]]:
    """Parse and check the datalist: structure, labels, every referenced file exists inside data_root, no split is
    empty (``label_kind``: "mask" or "class" when the task is known)."""
    cases, missing = parse_datalist(config, splits, label_kind=label_kind)
    if missing:
        raise SiteDataErrors(missing, site=config.site_name)
    return cases


def _load_json(config: SiteConfig) -> dict:
    """The datalist file as a JSON object."""
    site, path = config.site_name, str(config.datalist)
    try:
        raw = json.loads(config.datalist.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SiteDataError(
            f"datalist cannot be read as JSON ({type(e).__name__})",
            fix='write the datalist as JSON: {"training": [{"image": ..., "label": ...}], "validation": [...]}',
            site=site,
            path=path,
            detail=str(e),
        ) from e
    if not isinstance(raw, dict):
        raise SiteDataError(
            "datalist must be a JSON object", fix="use keys 'training' and 'validation'", site=site, path=path
        )
    return raw


def parse_datalist(
    config: SiteConfig, splits: tuple[str, ...] = SPLITS, *, label_kind: str | None = None
) -> tuple[dict[str, list[CaseRef]], list[SiteDataError]]:
    """The datalist's cases per split, and one error per unusable entry: a referenced file that does not exist or
    resolves outside data_root, a label that is not a finite number or not the kind the task needs."""
    raw = _load_json(config)
    result: dict[str, list[CaseRef]] = {}
    problems: list[SiteDataError] = []
    for split in splits:
        entries = raw.get(split)
        if not isinstance(entries, list) or not entries:
            raise SiteDataError(
                f"datalist has no '{split}' cases",
                fix=f'list at least one case under \'{split}\' (each {{"image": ..., "label": ...}})',
                site=config.site_name,
                path=str(config.datalist),
            )
        result[split] = []
        for i, entry in enumerate(entries):
            ref, errors = _case_ref(config, split, i, entry, label_kind)
            result[split].append(ref)
            problems += errors
    return result, problems


def parse_datalist_lenient(
    config: SiteConfig, splits: tuple[str, ...] = SPLITS
) -> tuple[dict[str, list[CaseRef]], list[SiteDataError], list[str]]:
    """As :func:`parse_datalist`, for reports over whatever is usable (the statistics): an absent or empty split is
    simply empty, and a malformed entry is skipped, not a stop.

    Args:
        config: this site's validated config.
        splits: the datalist's splits to read.

    Returns:
        the usable entries per split, one error per entry with a missing file (its ``item`` set), and the split of
        every malformed entry (its error in the site's log).
    """
    raw = _load_json(config)
    result: dict[str, list[CaseRef]] = {split: [] for split in splits}
    problems: list[SiteDataError] = []
    malformed: list[str] = []
    for split in splits:
        entries = raw.get(split)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            try:
                ref, errors = _case_ref(config, split, i, entry, None)
            except SiteDataError as e:
                logger.warning("skipping a datalist entry: %s", e.local_message())
                malformed.append(split)
                continue
            result[split].append(ref)
            problems += errors
    return result, problems, malformed


def _case_ref(
    config: SiteConfig, split: str, index: int, entry: object, label_kind: str | None
) -> tuple[CaseRef, list[SiteDataError]]:
    """One datalist entry as a :class:`CaseRef`, and what is wrong with it (a malformed entry raises)."""
    label = entry.get("label") if isinstance(entry, dict) else None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("image"), str)
        or not isinstance(label, (str, int, float))
        or isinstance(label, bool)
    ):
        raise SiteDataError(
            f"datalist {split} case #{index} must be an object with a string 'image' and a 'label' "
            "(a mask file, or a class number)",
            fix="correct that entry of the datalist",
            site=config.site_name,
            path=str(config.datalist),
        )
    label = config.data_root / label if isinstance(label, str) else float(label)
    extra = {k: v for k, v in entry.items() if k not in ("image", "label")}
    ref = CaseRef(split, index, config.data_root / entry["image"], label, extra)
    bad_label = _label_problem(ref, label_kind)
    errors = [bad_label.with_context(site=config.site_name)] if bad_label else []
    for kind, p in (("image", ref.image), ("label", ref.label)):
        if not isinstance(p, Path):
            continue
        if not p.exists():
            problem, fix = f"{kind} does not exist", "fix the datalist entry or restore the file"
        elif not config.allow_paths_outside_data_root and _outside(p, config.roots()):
            problem = f"{kind} path resolves outside data_root (an absolute path, '..' or a symbolic link)"
            fix = (
                "move the data under data_root and list it relative to data_root (or under converted_root), or set "
                '"allow_paths_outside_data_root": true in the site config if this is intended'
            )
        else:
            continue
        errors.append(SiteDataError(problem, fix=fix, site=config.site_name, path=str(p), item=ref.item))
    return ref, errors


def _outside(path: Path, roots: Path | tuple[Path, ...]) -> bool:
    """Whether ``path`` (or, for a folder, a file in it) resolves outside every one of ``roots`` once '..' and links
    are followed."""
    resolved = [r.resolve() for r in ((roots,) if isinstance(roots, Path) else roots)]
    targets = [path, *(path.iterdir() if path.is_dir() else ())]
    return any(not any(t.resolve().is_relative_to(r) for r in resolved) for t in targets)


LABEL_FIXES = {
    "mask": "give the path of the case's mask file (NIfTI or DICOM-SEG), relative to data_root",
    "class": "give the case's class as a number (e.g. 0 or 1)",
}


def _label_problem(ref: CaseRef, label_kind: str | None) -> SiteDataError | None:
    """A label that is NaN/Infinity, or a number where the task needs a mask file (or the other way round)."""
    if isinstance(ref.label, float) and not math.isfinite(ref.label):
        problem = "label is NaN or Infinity, not a class number or a mask file"
    elif label_kind == "mask" and not isinstance(ref.label, Path):
        problem = "label is a number but this task needs a mask file"
    elif label_kind == "class" and isinstance(ref.label, Path):
        problem = "label is a file path but this task needs a class number"
    else:
        return None
    fix = LABEL_FIXES.get(label_kind or "", "correct the case's 'label' in the datalist")
    return SiteDataError(problem, fix=fix, item=ref.item)


def _fingerprint(path: Path | float) -> list[str] | float:
    """SHA-256 of every file's bytes: a re-exported or edited file never reuses an old cache entry."""
    if not isinstance(path, Path):
        return path  # a class label is its own fingerprint
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    return [hashlib.file_digest(f.open("rb"), "sha256").hexdigest() for f in files]


def cache_key(case: CaseRef, task: TaskSpec, params: dict[str, Any]) -> str:
    blob = json.dumps(
        [CACHE_VERSION, task.name, params, case.extra, _fingerprint(case.image), _fingerprint(case.label)],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_case_cached(
    case: CaseRef, task: TaskSpec, params: dict[str, Any], cache_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed (image, label) for one case, from the cache when it is there and intact."""
    cache_file = cache_dir / f"{cache_key(case, task, params)}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file) as z:
                return z["image"], z["label"]
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            logger.warning("rebuilding damaged cache entry %s", cache_file)
    image, label = task.load_case(case.image, case.label, {**params, **case.extra})
    cache_dir.mkdir(parents=True, exist_ok=True)
    # one temporary name per writer (process and thread: evaluation threads and simulator sites share a process)
    tmp = cache_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
    np.savez(tmp, image=image, label=label)
    os.replace(tmp, cache_file)
    return image, label


def _case_failed(error: Exception, case: CaseRef, config: SiteConfig) -> SiteDataError:
    """One case's failure as a reportable error: its traceback to the local log, fixed texts for the server."""
    if not isinstance(error, SiteDataError):
        logger.warning("[%s] %s failed to load", config.site_name, case.item, exc_info=error)
    err = case_error(error, "", path=str(case.image))
    part = "label" if err.path and err.path == str(case.label) else "image"
    return err.with_context(site=config.site_name, item=f"{case.item}, {part}")


def load_split(cases: list[CaseRef], task: TaskSpec, params: dict[str, Any], config: SiteConfig) -> SplitData:
    """Load every case of a split (threads = ``num_workers``); bad cases fail together or are skipped by policy."""

    def one(case: CaseRef) -> tuple[np.ndarray, np.ndarray] | SiteDataError:
        bad_label = _label_problem(case, task.label_kind)
        if bad_label is not None:
            return bad_label.with_context(site=config.site_name)
        try:
            with decode_limit(config.max_decoded_image_mb * 2**20):  # this worker thread's readers
                return load_case_cached(case, task, params, config.cache_dir)
        except Exception as e:  # every kind of bad case (OSError, a reader's ValueError, ...), not only ours
            return _case_failed(e, case, config)

    workers = max(1, config.num_workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, cases))
    errors = [r for r in results if isinstance(r, SiteDataError)]
    good = [r for r in results if not isinstance(r, SiteDataError)]
    if errors and (config.on_unreadable_case == "fail" or not good):
        raise SiteDataErrors(errors, site=config.site_name)
    for e in errors:
        logger.warning("skipping unusable case (on_unreadable_case=skip): %s", e.local_message())
    return SplitData(
        images=np.stack([img for img, _ in good]),
        labels=np.stack([lab for _, lab in good]),
        skipped=errors,
    )
