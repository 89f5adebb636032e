"""What ``oncofl predict`` reads: the inputs under ``--input``, found by kind.

- a datalist (``.json``): the entries of its ``testing`` list (else ``test``, ``validation``, ``training``: the first
  present), each an image path or an object with ``image`` and the entry's other keys (e.g. a nodule's
  ``center_mm``); paths are relative to the datalist's folder (or to ``--data-root``); labels, if any, are ignored;
- a folder: for volume tasks every DICOM series folder below it (or the folder itself when it is a series), or,
  where it holds no DICOM series, every NIfTI file below it (so a case's ``label.nii.gz`` beside its series is not
  taken for an image; give a NIfTI dataset's images folder, e.g. MSD's ``imagesTs``, or a datalist); for
  mammography every DICOM file below it; for ``breast_wdbc`` every ``.csv`` file below it;
- a single file: that image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SiteDataError
from ..tasks import TaskSpec
from ..volume import is_nifti

DATALIST_SPLITS = ("testing", "test", "validation", "training")
# how each task's inputs are found in a folder: "volume" (series folders, NIfTI files), "dicom file", "csv file", or
# "" (a datalist only: a nodule needs its centre)
FOLDER_INPUTS = {
    "prostate_seg": "volume",
    "breast_mammo_cls": "dicom file",
    "breast_wdbc": "csv file",
    "lung_nodule_cls": "",
}


@dataclass(frozen=True)
class PredictInput:
    """One input of a prediction.

    Args:
        number: its position among the inputs (1, 2, ...): the only way outputs for research name it by default.
        name: its path under the input root, or as the datalist gives it, for the local console and the output
            folder's layout; never written into the research tables unless asked.
        path: the image: a DICOM series folder, a DICOM file, a NIfTI file or a feature CSV.
        extra: the datalist entry's other keys (e.g. ``center_mm``), passed to the task's preprocessing.
    """

    number: int
    name: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dicom(self) -> bool:
        return not is_nifti(self.path) and self.path.suffix.lower() != ".csv"


def is_dicom_file(path: Path) -> bool:
    """A DICOM image file by its name (.dcm) or its preamble (``DICM`` at byte 128); not a media directory
    (``DICOMDIR``, the index of a CD or PACS export, which DICOM names so)."""
    if not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def holds_dicom(folder: Path) -> bool:
    """True when a file directly in ``folder`` is DICOM."""
    return any(is_dicom_file(path) for path in folder.iterdir())


def _named(root: Path, paths: list[Path]) -> list[PredictInput]:
    def name(path: Path) -> str:
        return path.name if path == root else path.relative_to(root).as_posix()

    return [PredictInput(number, name(path), path) for number, path in enumerate(paths, start=1)]


def _entries(split: object) -> list:
    """A split's entries: a list of image paths or of objects with a string ``image`` (``TypeError`` otherwise)."""
    if not isinstance(split, list):
        raise TypeError("a datalist split must be a list")
    for entry in split:
        image = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(image, str) or not image:
            raise TypeError("each entry must be an image path or an object with a string 'image'")
    return split


def from_datalist(path: Path, data_root: Path | None = None) -> list[PredictInput]:
    """The entries of the datalist's first split present (see the module doc); relative paths resolve against
    ``data_root`` (default: the datalist's folder)."""
    base = Path(data_root) if data_root else path.parent
    try:
        datalist = json.loads(path.read_text())
        split = next(s for s in DATALIST_SPLITS if isinstance(datalist, dict) and s in datalist)
        entries = [e if isinstance(e, dict) else {"image": e} for e in _entries(datalist[split])]
        images = [str(entry["image"]) for entry in entries]
        inputs = [
            PredictInput(number, image if images.count(image) == 1 else f"{image} (entry {number})",
                         base / image, {k: v for k, v in entry.items() if k not in ("image", "label")})
            for number, (image, entry) in enumerate(zip(images, entries), start=1)
        ]  # fmt: skip
    except (OSError, ValueError, StopIteration, KeyError, TypeError) as e:
        raise SiteDataError(
            f"the datalist cannot be read ({type(e).__name__})",
            fix=f'give a JSON object with a list under one of {", ".join(DATALIST_SPLITS)}: [{{"image": ...}}, ...]',
            path=str(path),
            detail=str(e),
        ) from e
    return inputs


def find_inputs(spec: TaskSpec, root: str | Path, data_root: str | Path | None = None) -> list[PredictInput]:
    """The inputs under ``root`` for ``spec``'s task (see the module doc; ``data_root``: where a datalist's relative
    paths start, e.g. a public dataset's download for the holdout datalist ``oncofl datasets`` writes)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".json":
        return from_datalist(root, Path(data_root) if data_root else None)
    if root.is_file():
        return _named(root, [root])
    if not root.is_dir():
        raise SiteDataError(
            "the input does not exist", fix="give a series folder, a folder of studies, a datalist or a file",
            path=str(root),
        )  # fmt: skip
    kind = FOLDER_INPUTS.get(spec.name, "")
    if kind == "volume":
        if holds_dicom(root):
            return _named(root, [root])
        series = sorted(p for p in root.rglob("*") if p.is_dir() and holds_dicom(p))
        return _named(root, series or sorted(p for p in root.rglob("*") if p.is_file() and is_nifti(p)))
    if kind == "dicom file":
        return _named(root, sorted(p for p in root.rglob("*") if is_dicom_file(p)))
    if kind == "csv file":
        return _named(root, sorted(p for p in root.rglob("*.csv") if p.is_file()))
    raise SiteDataError(
        "this task predicts from a datalist only (lung nodules need their centres)",
        fix='give a datalist (.json) whose entries name the image and the nodule\'s "center_mm"',
        path=str(root),
    )
