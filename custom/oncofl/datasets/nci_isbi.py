"""NCI-ISBI 2013 Challenge: Automated Segmentation of Prostate Structures (TCIA) -> one site per institution.

Sources: the TCIA page "NCI-ISBI 2013 Challenge - Automated Segmentation of Prostate Structures" (three ``.tcia``
manifests for NBIA Data Retriever, three zips of NRRD masks) and NVFlare's prostate example
(research/prostate/README.md and data_preparation/data_conversion_NCI_ISBI.sh, which reads the same download).

Read as downloaded into one folder (give that folder)::

    manifest-*/Prostate-3T/Prostate3T-01-0001/<study folder>/<series folder>/*.dcm         Radboud UMC, 3 T
    manifest-*/PROSTATE-DIAGNOSIS/ProstateDx-01-0001/<study folder>/<series folder>/*.dcm   Boston Medical Center
    Training/Prostate3T-01-0001.nrrd         "NCI-ISBI 2013 Prostate Challenge - Training.zip", unzipped
    Leaderboard/ProstateDx-01-0011.nrrd      "... - Leaderboard.zip"
    Test/Prostate3T-01-0002_truth.nrrd       "... - Test.zip" (masks carry a ``_truth`` suffix)

(one ``manifest-*`` folder per ``.tcia`` file; a collection folder placed directly in the download folder is found
too). A mask's name, less ``.nrrd``, ``_truth`` or ``_correctedLabels`` (the corrected ProstateDx-01-0006, preferred
over an uncorrected one), is its case's PatientID; the case's T2 axial series is the one series folder under the
patient (or, where NBIA brought several, the one whose rows, columns and slice count match the mask).

Sites: the two institutions (collections), ``nci-isbi-3t`` (Prostate-3T, Radboud University Nijmegen Medical
Centre, 3 T) and ``nci-isbi-dx`` (PROSTATE-DIAGNOSIS, Boston Medical Center, 1.5 T with an endorectal coil), as NVFlare
splits them (clients NCI_ISBI_3T and NCI_ISBI_Dx). Training masks are the sites' training data; Leaderboard and Test
masks form the held-out split (``holdout/``), the challenge's own.

Conversion: masks label the central gland 1 and the peripheral zone 2; both count as gland. An NRRD's voxel axes need
not follow the DICOM series' (NVFlare flips its second axis after conversion), so each mask is placed on the series'
own grid through the NRRD header's ``space``, ``space directions`` and ``space origin`` -- never by array order -- and
written as ``<out>/converted/nci_isbi/<PatientID>.nii.gz`` with the series' affine. A mask whose grid does not
coincide with its series' (NVFlare drops ProstateDx-01-0055 for this) is left out and listed in
``<out>/converted/nci_isbi/skipped.json``. Read with pynrrd (the NRRD reader NVFlare's example uses): the masks are
gzip-encoded NRRD, whose header variants (field spellings, ``none`` directions) a hand parser would have to repeat.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom

from ..volume import read_volume
from .common import DatasetCase, DatasetError, converted_dir, require

NAME = "nci_isbi"
TASK = "prostate_seg"
SUMMARY = "NCI-ISBI 2013 (TCIA DICOM + NRRD masks): Radboud 3T vs Boston Medical Center, masks onto the series grid"
COLLECTIONS = {"Prostate-3T": ("Prostate3T-", "nci-isbi-3t"), "PROSTATE-DIAGNOSIS": ("ProstateDx-", "nci-isbi-dx")}
MASK_FOLDERS = {"Training": "training", "Leaderboard": "testing", "Test": "testing"}
SUFFIXES = ("_truth", "_correctedLabels")
GRID_TOLERANCE = 0.05  # voxels: how far a series voxel may sit from an NRRD voxel centre
logger = logging.getLogger(__name__)


def _collections(source: Path) -> dict[str, Path]:
    """PatientID -> patient folder, over every collection folder in the download (one per NBIA manifest)."""
    patients: dict[str, Path] = {}
    for collection in COLLECTIONS:
        for folder in sorted([*source.glob(collection), *source.glob(f"*/{collection}")]):
            patients.update({p.name: p for p in sorted(folder.iterdir()) if p.is_dir()})
    return patients


def _masks(source: Path) -> dict[str, tuple[Path, str]]:
    """PatientID -> (mask file, split), a corrected mask preferred."""
    masks: dict[str, tuple[Path, str]] = {}
    for folder, split in MASK_FOLDERS.items():
        for path in sorted((source / folder).glob("*.nrrd"), key=lambda p: "_correctedLabels" in p.name):
            patient = path.name[: -len(".nrrd")]
            for suffix in SUFFIXES:
                patient = patient.removesuffix(suffix)
            masks[patient] = (path, split)
    return masks


def _series(patient: Path, shape: tuple[int, ...]) -> Path | None:
    """The patient's series folder: the only one, or the one whose rows x columns x slices match the mask's shape."""
    folders = sorted({f.parent for f in patient.glob("*/*/*.dcm")})
    if len(folders) <= 1:
        return folders[0] if folders else None
    for folder in folders:
        files = sorted(folder.glob("*.dcm"))
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        if sorted((int(ds.Columns), int(ds.Rows), len(files))) == sorted(shape):
            return folder
    return None


def nrrd_affine(header: dict) -> np.ndarray:
    """Voxel index -> RAS mm from an NRRD header's space, space directions and space origin."""
    space = str(header.get("space", "")).lower()
    directions, origin = header.get("space directions"), header.get("space origin")
    if (
        directions is None
        or origin is None
        or space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras")
    ):
        raise ValueError(f"no usable world geometry (space {space!r})")
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=float)[-3:].T
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine if space in ("right-anterior-superior", "ras") else np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def mask_on_grid(mask: np.ndarray, mask_affine: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """``mask`` (voxel -> RAS ``mask_affine``) sampled at every voxel centre of the grid ``shape`` / ``affine``; raises
    ValueError unless the two grids' voxel centres coincide (the same grid, its axes possibly permuted or flipped)."""
    to_mask = np.linalg.inv(mask_affine) @ affine
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    index = grid @ to_mask[:3, :3].T + to_mask[:3, 3]
    nearest = np.round(index)
    offset = float(np.abs(index - nearest).max()) if len(index) else 0.0
    inside = np.all((nearest >= 0) & (nearest < np.array(mask.shape[:3])), axis=1)
    if offset > GRID_TOLERANCE or not inside.all():
        raise ValueError(f"grids differ (off by {offset:.2f} voxels, {int((~inside).sum())} voxels outside the mask)")
    i, j, k = nearest.astype(int).T
    return (mask[i, j, k] > 0).astype(np.uint8).reshape(shape)


def convert(mask_path: Path, series: Path, target: Path) -> None:
    """The NRRD mask on the series' grid, saved as NIfTI with the series' affine (ValueError: it does not fit)."""
    data, header = nrrd.read(str(mask_path))
    volume = read_volume(series)
    labels = mask_on_grid(np.asarray(data), nrrd_affine(header), volume.array.shape, volume.affine)
    nib.save(nib.Nifti1Image(labels, volume.affine), target)


def _site(patient: str) -> str | None:
    return next((site for prefix, site in COLLECTIONS.values() if patient.startswith(prefix)), None)


def cases(source: Path, out: Path) -> list[DatasetCase]:
    """Every masked case with its series: masks converted onto the series' grids, one site per institution."""
    require(source, list(MASK_FOLDERS), NAME)
    masks, patients = _masks(source), _collections(source)
    if not masks:
        require(source, [f"{folder}/*.nrrd" for folder in MASK_FOLDERS], NAME)
    absent = sorted(p for p in masks if p not in patients and _site(p) is not None)
    if absent:
        raise DatasetError(
            "the NCI-ISBI download lacks the image series of some masked cases",
            fix="download the three .tcia manifests with NBIA Data Retriever into the same folder as the masks "
            "(collections Prostate-3T and PROSTATE-DIAGNOSIS)",
            path=str(source),
            detail=f"{len(absent)} patients without a series folder: " + ", ".join(absent[:10]),
        )
    unknown = sorted(p for p in masks if _site(p) is None)
    if unknown:
        raise DatasetError(
            "NCI-ISBI masks name patients of neither Prostate-3T nor PROSTATE-DIAGNOSIS",
            fix="give the folder holding only the NCI-ISBI 2013 download (its three mask folders and manifests)",
            path=str(source),
            detail=", ".join(unknown[:10]),
        )
    target_dir = converted_dir(out, NAME)
    found, skipped = [], {}
    for patient, (mask_path, split) in sorted(masks.items()):
        series = _series(patients[patient], tuple(nrrd.read_header(str(mask_path))["sizes"]))
        target = target_dir / f"{patient}.nii.gz"
        try:
            if series is None:
                raise ValueError("no series folder matches the mask's size")
            convert(mask_path, series, target)
        except ValueError as e:
            skipped[patient] = str(e)
            logger.warning("NCI-ISBI %s left out: its mask does not fit its series (%s)", patient, e)
            continue
        image = str(series.relative_to(source))
        found.append(DatasetCase(site=_site(patient) or "", image=image, label=str(target), split=split))
    (target_dir / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    return found
