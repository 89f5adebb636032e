"""CBIS-DDSM (TCIA), as downloaded -> one case per full mammogram, label 1 when any abnormality on it is malignant.

Layout read (Lee et al., Sci. Data 4:170177, 2017; TCIA collection CBIS-DDSM, doi:10.7937/K9/TCIA.2016.7O02S9CY)::

    <source>/mass_case_description_train_set.csv   mass_case_description_test_set.csv
    <source>/calc_case_description_train_set.csv   calc_case_description_test_set.csv
    <source>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study folder>/<series folder>/1-1.dcm

One CSV row per abnormality: ``patient_id``, ``breast_density`` (mass) / ``breast density`` (calc), ``left or right
breast``, ``image view``, ``abnormality id``, ``abnormality type``, ..., ``pathology`` (MALIGNANT, BENIGN,
BENIGN_WITHOUT_CALLBACK), ``image file path``, ``cropped image file path``, ``ROI mask file path``. The known
oddity: ``image file path`` names study/series UID folders (``.../1.3.6.1.4.1.9590.../000000.dcm``) that the
current TCIA download does not have (it writes ``<date>-DDSM-<n>/1.000000-full mammogram images-<n>/1-1.dcm``), so
the image is found by the path's first folder (``Mass-Training_P_00001_LEFT_CC``), whose only DICOM is the full
mammogram (cropped images and masks sit in ``..._CC_1``, ``..._CC_2`` folders).

Label: one per mammogram (patient, side, view: a mass row and a calc row name the same image through two top
folders, ``Mass-Training_P_00001_LEFT_CC`` and ``Calc-Training_P_00001_LEFT_CC``), 1 (malignant) when any of its
abnormalities' ``pathology`` is MALIGNANT, else 0 (BENIGN and BENIGN_WITHOUT_CALLBACK). Split: the dataset's own,
``*_train_set`` to the sites, ``*_test_set`` to ``holdout/`` (Lee et al.), by patient: the mass and calc test sets
were drawn separately, so a patient with any test row goes to ``holdout/`` whole (no patient on both sides).

Sites: DDSM was collected at several institutions (MGH, Wake Forest, Sacred Heart, WashU) on several digitizers, but
CBIS-DDSM re-codes the patients (``P_00001``) and its CSVs and DICOM headers carry no institution, scanner or
digitizer. When every image's DICOM header has a ``Manufacturer``, the sites are the manufacturers; otherwise (the
TCIA release as it is) the patients are dealt into :data:`N_SITES` sites ``ddsm-1..3`` by the SHA-256 of the patient
ID: a deterministic split by patient, *not* an institution split -- a simulation of federation, said in
``summary.json``'s site names.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from .common import DatasetCase, DatasetError, manufacturer, require, site_name

NAME = "cbis_ddsm"
TASK = "breast_mammo_cls"
SUMMARY = "CBIS-DDSM (TCIA DICOM + case CSVs): full mammograms, malignant if any abnormality is; train/test as released"
CSV_FILES = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)
COLUMNS = ("patient_id", "pathology", "image file path")
PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
N_SITES = 3


def read_rows(source: Path) -> list[tuple[str, dict[str, str]]]:
    """(split, row) of every abnormality in the four CSVs; refuses a CSV without the columns read."""
    rows = []
    for name in CSV_FILES:
        with open(source / name, newline="") as f:
            reader = csv.DictReader(f)
            fields = {c.strip() for c in reader.fieldnames or []}
            if not set(COLUMNS) <= fields:
                raise DatasetError(
                    "a CBIS-DDSM case description CSV lacks the columns patient_id, pathology or image file path",
                    fix="use the case description CSVs of the CBIS-DDSM release, unchanged",
                    path=str(source / name),
                    detail=f"columns: {sorted(fields)}",
                )
            split = "testing" if "_test_set" in name else "training"
            rows += [(split, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for row in reader]
    return rows


def image_key(top: str) -> str:
    """The mammogram a top folder holds, without the mass/calc and train/test prefix: ``P_00001_LEFT_CC``."""
    return top.split("_", 1)[1] if "_" in top else top


def images(rows: list[tuple[str, dict[str, str]]]) -> dict[str, tuple[set[str], str, int, list[str]]]:
    """Per mammogram (patient, side, view; a mass row and a calc row may name the same one through two top folders):
    (the splits its rows come from, patient, label, its top folders)."""
    found: dict[str, tuple[set[str], str, int, list[str]]] = {}
    for split, row in rows:
        top = row["image file path"].replace("\\", "/").split("/")[0]
        if row["pathology"] not in PATHOLOGIES or not top:
            raise DatasetError(
                "a CBIS-DDSM CSV row has no image path or an unknown pathology",
                fix="use the case description CSVs of the CBIS-DDSM release, unchanged",
                detail=f"patient {row['patient_id']}, pathology {row['pathology']!r}, image {top!r}",
            )
        splits, _, label, tops = found.get(image_key(top), (set(), row["patient_id"], 0, []))
        malignant = int(row["pathology"] == "MALIGNANT")
        found[image_key(top)] = (splits | {split}, row["patient_id"], max(label, malignant), sorted({*tops, top}))
    return found


def split_by_patient(listed: dict[str, tuple[set[str], str, int, list[str]]]) -> dict[str, str]:
    """Per mammogram: "testing" when any row of its patient is in a test CSV (no patient on both sides of the
    split: mass and calc test sets were drawn separately), else "training"."""
    tested = {patient for splits, patient, _, _ in listed.values() if "testing" in splits}
    return {key: "testing" if patient in tested else "training" for key, (_, patient, _, _) in listed.items()}


def full_mammogram(folder: Path) -> Path | None:
    """The one DICOM under ``<top folder>/<study>/<series>/``, None when there is none or more than one."""
    files = sorted(folder.glob("*/*/*.dcm"))
    return files[0] if len(files) == 1 else None


def patient_site(patient: str) -> str:
    """``ddsm-1..N_SITES`` by the SHA-256 of the patient ID."""
    return f"ddsm-{hashlib.sha256(patient.encode()).digest()[0] % N_SITES + 1}"


def cases(source: Path, out: Path) -> list[DatasetCase]:
    """Every full mammogram the CSVs name, once, read in place (``out`` is not used)."""
    require(source, [*CSV_FILES, "CBIS-DDSM"], "CBIS-DDSM")
    listed = images(read_rows(source))
    paths = {}
    for key, (_, _, _, tops) in sorted(listed.items()):  # the first of its folders that holds the mammogram
        paths[key] = next((p for p in (full_mammogram(source / "CBIS-DDSM" / t) for t in tops) if p), None)
    missing = [listed[key][3][0] for key, path in paths.items() if path is None]
    if missing:
        raise DatasetError(
            "the CBIS-DDSM download lacks full mammograms the CSVs name (or holds several in one folder)",
            fix="download the whole CBIS-DDSM collection (all series) with the NBIA Data Retriever",
            path=str(source / "CBIS-DDSM"),
            detail=f"{len(missing)} folders, e.g. " + ", ".join(missing[:10]),
        )
    makers = {key: manufacturer(path) for key, path in paths.items()}
    by_header = all(makers.values())
    splits = split_by_patient(listed)
    return [
        DatasetCase(site_name(makers[key]) if by_header else patient_site(patient),
                    paths[key].relative_to(source).as_posix(), label, splits[key])
        for key, (_, patient, label, _) in sorted(listed.items())
    ]  # fmt: skip
