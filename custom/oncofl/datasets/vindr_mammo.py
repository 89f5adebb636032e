"""VinDr-Mammo (PhysioNet), as downloaded -> one case per image, label from the breast's BI-RADS, sites by scanner.

Layout read (Nguyen et al., Sci. Data 10:277, 2023; PhysioNet vindr-mammo 1.0.0, doi:10.13026/br2v-7517)::

    <source>/breast-level_annotations.csv   <source>/finding_annotations.csv
    <source>/images/<study_id>/<image_id>.dicom

``breast-level_annotations.csv``: one row per image -- ``study_id``, ``series_id``, ``image_id``, ``laterality``,
``view_position``, ``height``, ``width``, ``breast_birads`` ("BI-RADS 1".."BI-RADS 5"), ``breast_density``,
``split`` ("training" / "test", the dataset's own split). ``finding_annotations.csv`` (boxes per finding) is
required as part of the release but not needed for an image label.

Label: VinDr-Mammo has no pathology; the breast-level BI-RADS (double reading, arbitrated) stands in: BI-RADS 4-5
(suspicious, biopsy recommended) -> 1, BI-RADS 1-2 (negative / benign) -> 0, BI-RADS 3 (probably benign, short
follow-up) left out -- the ACR BI-RADS Atlas (5th ed.) categories, binarised as in screening-mammography studies
that use VinDr-Mammo without biopsy results. Split: ``split`` "training" to the sites, "test" to ``holdout/``.

Sites: the images come from two Vietnamese hospitals (Hospital 108 and Hanoi Medical University Hospital, Nguyen et
al.), but the release's CSVs name neither. The sites are the images' DICOM ``Manufacturer`` header (images without
one: site ``unknown-manufacturer``): a split by scanner vendor, not by hospital; ``summary.json`` names the sites
found. (Whether the de-identified headers keep an institution was not checked against the release; the adapter
does not rely on one.)
"""

from __future__ import annotations

import csv
from pathlib import Path

from .common import DatasetCase, DatasetError, manufacturer, require, site_name

NAME = "vindr_mammo"
TASK = "breast_mammo_cls"
SUMMARY = "VinDr-Mammo (PhysioNet DICOM + breast-level CSV): BI-RADS 4-5 vs 1-2, own split, sites by manufacturer"
ANNOTATIONS = "breast-level_annotations.csv"
FINDINGS = "finding_annotations.csv"
COLUMNS = ("study_id", "image_id", "breast_birads", "split")
SPLITS = {"training": "training", "test": "testing"}


def label(birads: str) -> int | None:
    """ "BI-RADS 4"/"BI-RADS 5" -> 1, "BI-RADS 1"/"BI-RADS 2" -> 0, "BI-RADS 3" -> None (left out)."""
    category = birads.upper().replace("BI-RADS", "").strip()
    if category not in ("1", "2", "3", "4", "5"):
        raise DatasetError(
            "a VinDr-Mammo breast-level row has a BI-RADS other than 'BI-RADS 1'..'BI-RADS 5'",
            fix="use breast-level_annotations.csv of the VinDr-Mammo release, unchanged",
            detail=f"breast_birads {birads!r}",
        )
    return None if category == "3" else int(category in ("4", "5"))


def read_rows(source: Path) -> list[dict[str, str]]:
    """The breast-level rows; refuses a CSV without the columns read."""
    with open(source / ANNOTATIONS, newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not set(COLUMNS) <= fields:
            raise DatasetError(
                "breast-level_annotations.csv lacks the columns study_id, image_id, breast_birads or split",
                fix="use breast-level_annotations.csv of the VinDr-Mammo release, unchanged",
                path=str(source / ANNOTATIONS),
                detail=f"columns: {sorted(fields)}",
            )
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def cases(source: Path, out: Path) -> list[DatasetCase]:
    """Every image with BI-RADS 1, 2, 4 or 5, read in place (``out`` is not used)."""
    require(source, [ANNOTATIONS, FINDINGS, "images"], "VinDr-Mammo")
    rows = [r for r in read_rows(source) if label(r["breast_birads"]) is not None]
    images = {r["image_id"]: f"images/{r['study_id']}/{r['image_id']}.dicom" for r in rows}
    require(source, sorted(images.values()), "VinDr-Mammo")
    found = []
    for row in rows:
        if row["split"] not in SPLITS:
            raise DatasetError(
                "a VinDr-Mammo breast-level row has a split other than 'training' or 'test'",
                fix="use breast-level_annotations.csv of the VinDr-Mammo release, unchanged",
                detail=f"image {row['image_id']}, split {row['split']!r}",
            )
        image = images[row["image_id"]]
        site = site_name(manufacturer(source / image))
        found.append(DatasetCase(site, image, label(row["breast_birads"]), SPLITS[row["split"]]))
    return found
