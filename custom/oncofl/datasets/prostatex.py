"""SPIE-AAPM-NCI PROSTATEx Challenge (TCIA) for ``prostate_seg``: checked, then refused -- it has no gland masks.

Sources: the TCIA page "SPIE-AAPM-NCI PROSTATEx Challenges" (images through an NBIA ``.tcia`` manifest; lesion
information in ``ProstateX-TrainingLesionInformationv2.zip``) and NVFlare's prostate example
(research/prostate/README.md, data_conversion_PROSTATEx.sh), which trains on PROSTATEx only with a *second* download
of prostate masks (DICOM-SEG) that is not part of the challenge release.

Read as downloaded (give the folder holding both)::

    manifest-*/PROSTATEx/ProstateX-0000/<study folder>/<series folder>/*.dcm      T2, DWI/ADC, Ktrans ... series
    ProstateX-TrainingLesionInformationv2/ProstateX-Findings-Train.csv   ProxID,fid,pos,zone,ClinSig
    ProstateX-TrainingLesionInformationv2/ProstateX-Images-Train.csv     ProxID,Name,fid,pos,WorldMatrix,ijk,...,
                                                                         DCMSerDescr,DCMSerNum

The release annotates lesions (a point ``pos`` per finding, its zone and clinical significance), not the gland, so
it holds no label ``prostate_seg`` can train or be scored on. Rather than invent masks, :func:`cases` checks the
download (so a partial one is named as such) and then refuses, naming where public gland masks come from. A
consortium that has such masks lists them in a datalist by hand (``data_root`` = this download; see
docs/datasets-prostate.md); the T2 axial series (``DCMSerDescr`` ``t2_tse_tra``) can be segmented with
``oncofl predict`` as they are.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .common import DatasetCase, DatasetError, require

NAME = "prostatex"
TASK = "prostate_seg"
SUMMARY = "PROSTATEx (TCIA DICOM + lesion CSVs): checked, then refused: the release has no gland masks"
CSV_COLUMNS = {
    "ProstateX-Findings-Train.csv": ("ProxID", "fid", "pos", "zone", "ClinSig"),
    "ProstateX-Images-Train.csv": ("ProxID", "Name", "fid", "pos", "DCMSerDescr", "DCMSerNum"),
}
LESION_FOLDER = "ProstateX-TrainingLesionInformationv2"


def _csv(source: Path, name: str) -> Path:
    """A lesion CSV, in the unzipped lesion folder or directly in the download folder; its header checked."""
    path = source / LESION_FOLDER / name
    path = path if path.is_file() else source / name
    require(source, [f"{LESION_FOLDER}/{name}" if not path.is_file() else str(path.relative_to(source))], NAME)
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    missing = [c for c in CSV_COLUMNS[name] if c not in header]
    if missing:
        raise DatasetError(
            "a PROSTATEx lesion CSV lacks the release's columns (another release or an edited file)",
            fix="unzip ProstateX-TrainingLesionInformationv2.zip from TCIA again",
            path=str(path),
            detail=f"missing columns: {', '.join(missing)}",
        )
    return path


def cases(source: Path, out: Path) -> list[DatasetCase]:
    """Check the download, then refuse: PROSTATEx has no gland masks (module doc)."""
    for name in CSV_COLUMNS:
        _csv(source, name)
    patients = sorted({p.name for p in [*source.glob("PROSTATEx/*"), *source.glob("*/PROSTATEx/*")] if p.is_dir()})
    if not patients:
        require(source, ["manifest-*/PROSTATEx/ProstateX-*"], NAME)
    raise DatasetError(
        "PROSTATEx has no prostate gland masks: its annotations are lesion points, so prostate_seg cannot be "
        "trained or scored on it as released",
        fix="download public gland masks for PROSTATEx (the DICOM-SEG prostate segmentations on TCIA that NVFlare's "
        "prostate example uses, or github.com/rcuocolo/PROSTATEx_masks) and list them with their T2 series in a "
        "datalist (docs/datasets-prostate.md); or segment the T2 axial series with 'oncofl predict'",
        path=str(source),
        detail=f"{len(patients)} PROSTATEx patient folders found",
    )
