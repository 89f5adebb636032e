"""Medical Segmentation Decathlon, Task05_Prostate (http://medicaldecathlon.com, ``Task05_Prostate.tar``) -> whole-gland
segmentation sites.

Read as extracted (``tar xf Task05_Prostate.tar``; give the ``Task05_Prostate`` folder)::

    dataset.json        name, modality {"0": "T2", "1": "ADC"}, labels {"0": "background", "1": "PZ", "2": "TZ"},
                        numTraining (32), numTest (16), training [{"image": "./imagesTr/prostate_00.nii.gz",
                        "label": "./labelsTr/prostate_00.nii.gz"}], test ["./imagesTs/prostate_03.nii.gz", ...]
    imagesTr/prostate_XX.nii.gz   4D: x, y, z, channel (T2 and ADC, in dataset.json's "modality" order)
    labelsTr/prostate_XX.nii.gz   3D: 0 background, 1 peripheral zone, 2 transition zone
    imagesTs/                     16 cases without labels (not used: prostate_seg needs a mask)

Only ``dataset.json``'s lists are read, so the macOS ``._prostate_XX.nii.gz`` files the tarball carries are ignored.
The T2 channel is found by name in ``modality`` (a dataset.json without a "T2" modality is refused) and written as a
3D NIfTI with the 4D file's affine under ``<out>/converted/msd_prostate/`` -- the one conversion: the task reads 3D
volumes. Labels are read in place; PZ and TZ both count as gland (the task's "label > 0"), as NVFlare's
``label_threshold.py`` does.

Split. MSD has no institution attribute: all 32 labelled cases come from one centre (Radboud University Nijmegen
Medical Centre, dataset.json's ``reference``), and NVFlare's prostate example (research/prostate/data_preparation:
``data_conversion_MSD.sh``, ``prepare_data_split.py``) keeps MSD as one client split 0.5 / 0.25 / 0.25 by a seeded
shuffle. Here a seeded shuffle (``SEED``) holds out a quarter of the labelled cases as the test split (``holdout/``),
as NVFlare does, and deals the rest round-robin into ``N_SITES`` sites (``msd-1``, ``msd-2``) so the federation can
be exercised on one download. These sites are an artificial split of one institution's data, not a multi-centre
cohort: results on them say nothing about cross-site generalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from .common import DatasetCase, DatasetError, converted_dir, require

NAME = "msd_prostate"
TASK = "prostate_seg"
SUMMARY = "MSD Task05_Prostate (4D T2+ADC NIfTI, PZ/TZ labels): T2 channel, whole gland, seeded artificial sites"
N_SITES = 2
SEED = 0
TEST_FRACTION = 0.25  # NVFlare's prepare_data_split.py default test share


def _manifest(source: Path) -> dict:
    """dataset.json, checked: the keys this adapter reads, a T2 modality."""
    require(source, ["dataset.json"], NAME)
    try:
        manifest = json.loads((source / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(
            "the MSD dataset.json cannot be read as JSON",
            fix="extract Task05_Prostate.tar again and give the Task05_Prostate folder",
            path=str(source / "dataset.json"),
            detail=str(e),
        ) from e
    missing = [k for k in ("modality", "labels", "training") if not isinstance(manifest.get(k), (dict, list))]
    if missing or "T2" not in dict(manifest.get("modality") or {}).values():
        raise DatasetError(
            "the MSD dataset.json is not Task05_Prostate's (no 'modality' naming T2, 'labels' or 'training')",
            fix="give the Task05_Prostate folder of the Medical Segmentation Decathlon",
            path=str(source / "dataset.json"),
            detail=f"missing keys: {missing}" if missing else f"modality: {manifest.get('modality')}",
        )
    return manifest


def _t2_channel(manifest: dict) -> int:
    return int(next(k for k, v in manifest["modality"].items() if v == "T2"))


def _relative(entry: str) -> str:
    return str(Path(entry))  # "./imagesTr/prostate_00.nii.gz" -> "imagesTr/prostate_00.nii.gz"


def extract_channel(image: Path, channel: int, n_channels: int, target: Path) -> None:
    """Write ``image``'s channel ``channel`` (its 4th axis) as a 3D NIfTI with the same affine and header."""
    img = nib.load(image)
    shape = img.header.get_data_shape()
    if len(shape) != 4 or shape[3] != n_channels:
        raise DatasetError(
            "an MSD image does not have dataset.json's channels on its 4th axis",
            fix="download Task05_Prostate.tar again; its images are 4D (x, y, z, T2/ADC)",
            path=str(image),
            detail=f"shape {shape}, {n_channels} modalities in dataset.json",
        )
    data = np.asarray(img.dataobj[..., channel])
    header = img.header.copy()
    header.set_data_shape(data.shape)
    nib.save(nib.Nifti1Image(data, img.affine, header), target)


def cases(source: Path, out: Path) -> list[DatasetCase]:
    """Every labelled case: its T2 volume (converted) and its PZ/TZ label (in place), dealt into sites and a test
    split by a seeded shuffle (module doc)."""
    manifest = _manifest(source)
    training = [(_relative(e["image"]), _relative(e["label"])) for e in manifest["training"]]
    require(source, [p for pair in training for p in pair], NAME)
    channel, n_channels = _t2_channel(manifest), len(manifest["modality"])
    target_dir = converted_dir(out, NAME)
    order = np.random.default_rng(SEED).permutation(len(training))
    n_test = round(len(training) * TEST_FRACTION)
    found = []
    for rank, index in enumerate(order.tolist()):
        image, label = training[index]
        target = target_dir / Path(image).name.replace(".nii.gz", "_T2.nii.gz")
        extract_channel(source / image, channel, n_channels, target)
        split = "testing" if rank < n_test else "training"
        site = "holdout" if split == "testing" else f"msd-{(rank - n_test) % N_SITES + 1}"
        found.append(DatasetCase(site=site, image=str(target), label=label, split=split))
    return sorted(found, key=lambda c: c.label)
