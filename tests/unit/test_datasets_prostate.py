"""Prostate dataset adapters on fixtures that reproduce each release's layout, file names and annotation schema."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from oncofl import synthetic
from oncofl.data import read_datalist
from oncofl.datacheck import check_site
from oncofl.datasets import DatasetError, main, prepare
from oncofl.errors import SiteDataErrors
from oncofl.site_config import load_site_config
from oncofl.volume import read_volume

MSD_MODALITY = {"0": "T2", "1": "ADC"}


# ---------------------------------------------------------------- MSD Task05_Prostate


def write_msd(root: Path, n_cases: int = 8, modality: dict | None = None, shape=(12, 10, 6)) -> Path:
    """Task05_Prostate as extracted: dataset.json, 4D imagesTr (channels in ``modality`` order), PZ/TZ labelsTr,
    imagesTs, and the macOS ``._`` files the tarball carries."""
    modality = modality or MSD_MODALITY
    task = root / "Task05_Prostate"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (task / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = np.diag([-0.625, -0.625, 3.6, 1.0])
    training, test = [], []
    for i in range(n_cases):
        name = f"prostate_{i:02d}.nii.gz"
        t2 = rng.uniform(0, 1000, shape).astype(np.float32)
        adc = np.full(shape, -7.0, np.float32)  # ADC told apart from T2 by value
        channels = [t2 if modality[str(c)] == "T2" else adc for c in range(len(modality))]
        nib.save(nib.Nifti1Image(np.stack(channels, axis=-1), affine), task / "imagesTr" / name)
        label = np.zeros(shape, np.uint8)
        label[3:8, 3:7, 1:5] = 2  # TZ
        label[3:8, 7:9, 1:5] = 1  # PZ
        nib.save(nib.Nifti1Image(label, affine), task / "labelsTr" / name)
        (task / "imagesTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble junk
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    for i in range(2):
        name = f"prostate_{50 + i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((*shape, 2), np.float32), affine), task / "imagesTs" / name)
        test.append(f"./imagesTs/{name}")
    manifest = {
        "name": "PROSTATE",
        "description": "Prostate transitional zone and peripheral zone segmentation",
        "reference": "Radboud University, Nijmegen Medical Centre",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": modality,
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": n_cases,
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (task / "dataset.json").write_text(json.dumps(manifest, indent=4))
    return task


def site_configs(out: Path) -> list[Path]:
    return sorted((out / "site_configs").glob("*.json"))


def assert_usable(out: Path) -> None:
    """Every written site passes the site check (decoded) and its datalist reads as a mask task's."""
    for path in site_configs(out):
        config = load_site_config(path)
        report = check_site(config)
        assert report.ok, [str(p) for p in report.problems]
        assert read_datalist(config, label_kind="mask")["training"]


@pytest.mark.parametrize("modality", [MSD_MODALITY, {"0": "ADC", "1": "T2"}])
def test_msd_extracts_the_t2_channel_named_in_dataset_json_and_deals_seeded_sites(tmp_path, modality):
    source = write_msd(tmp_path / "dl", modality=modality)
    out = prepare("msd_prostate", source, tmp_path / "sites")
    assert [p.stem for p in site_configs(out)] == ["msd-1", "msd-2"]
    assert_usable(out)
    held = json.loads((out / "holdout" / "datalist.json").read_text())["testing"]
    assert len(held) == 2  # a quarter of 8, NVFlare's test share
    holdout = load_site_config(out / "holdout" / "site_config.json")  # what `oncofl simulate --data` scores with
    assert len(read_datalist(holdout, ("testing",), label_kind="mask")["testing"]) == 2
    for entry in held:
        t2 = read_volume(entry["image"])
        assert t2.array.min() >= 0  # the T2 channel, never the ADC (-7)
        original = nib.load(source / "imagesTr" / Path(entry["label"]).name)
        assert np.array_equal(t2.array, np.asarray(original.dataobj)[..., int(modality["0"] != "T2")])
        assert np.allclose(t2.affine, original.affine)
        assert Path(entry["image"]).is_relative_to(out / "converted") and not Path(entry["label"]).is_absolute()
    summary = json.loads((out / "summary.json").read_text())
    assert sum(c["cases"] for c in summary["counts"]) == 8
    assert not any(p.name.startswith("._") for p in (out / "converted").rglob("*"))
    again = tmp_path / "again"  # the split is seeded: the same download gives the same sites
    prepare("msd_prostate", source, again)
    assert (again / "msd-1" / "datalist.json").read_text().replace(str(again), "") == (
        out / "msd-1" / "datalist.json"
    ).read_text().replace(str(out), "")


def test_msd_refuses_a_listed_file_that_is_missing_and_a_dataset_json_without_t2(tmp_path):
    source = write_msd(tmp_path / "dl", n_cases=4)
    (source / "labelsTr" / "prostate_02.nii.gz").unlink()
    with pytest.raises(DatasetError) as missing:
        prepare("msd_prostate", source, tmp_path / "out")
    assert "labelsTr/prostate_02.nii.gz" in missing.value.fix
    manifest = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**manifest, "modality": {"0": "FLAIR"}}))
    with pytest.raises(DatasetError, match="no 'modality' naming T2"):
        prepare("msd_prostate", source, tmp_path / "out")
    (source / "dataset.json").unlink()
    assert main(["prepare", "msd_prostate", "--source", str(source), "--out", str(tmp_path / "out")]) == 2


# ---------------------------------------------------------------- NCI-ISBI 2013


PROFILE = replace(synthetic.SITE_PROFILES["site-1"], matrix=16, n_slices=6, n_cases=1)


def write_series(folder: Path, patient: str, seed: int) -> None:
    """A T2 series as NBIA Data Retriever saves it: <study>/<series>/1-01.dcm ..."""
    signal, _, origin = synthetic.make_case(PROFILE, np.random.default_rng(seed))
    series = folder / patient / "08-22-2009-MRI PROSTATE-80377" / "3.000000-T2 Weighted Axial-23591"
    synthetic.write_dicom_series(signal, origin, PROFILE, series, uid_seed=patient, patient_id=patient,
                                 patient_name=patient)  # fmt: skip
    for k, f in enumerate(sorted(series.glob("IM_*.dcm"))):
        f.rename(series / f"1-{k + 1:02d}.dcm")


def drawn_mask(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A gland on the DICOM grid [x, y, z], central gland 1 and peripheral zone 2, asymmetric in every axis."""
    mask = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(2, 6, 2)
    mask[x0 : x0 + 7, y0 : y0 + 5, 1:4] = 1
    mask[x0 : x0 + 7, y0 + 5 : y0 + 7, 1:3] = 2
    mask[x0, y0, 4] = 1
    return mask


def write_nrrd(path: Path, series: Path, mask: np.ndarray, *, drop_slice: bool = False) -> None:
    """The mask as the challenge's NRRDs store it: gzip, LPS space, axes not in the DICOM grid's order (rows and
    slices run backwards from the far corner), so only the header's geometry puts it back."""
    volume = read_volume(series)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine  # DICOM grid voxel -> LPS mm
    ny, nz = mask.shape[1], mask.shape[2]
    flipped = mask[:, ::-1, ::-1]
    origin = lps @ np.array([0, ny - 1, nz - 1, 1.0])
    directions = np.stack([lps[:3, 0], -lps[:3, 1], -lps[:3, 2]])
    if drop_slice:  # ProstateDx-01-0055: the mask does not cover its series' grid
        flipped = flipped[:, :, 1:]
    header = {"space": "left-posterior-superior", "space directions": directions, "space origin": origin[:3],
              "encoding": "gzip", "kinds": ["domain"] * 3}  # fmt: skip
    nrrd.write(str(path), np.ascontiguousarray(flipped), header)


# patient -> (collection, mask folder, mask file suffix)
NCI_CASES = {
    "Prostate3T-01-0001": ("Prostate-3T", "Training", ""),
    "Prostate3T-01-0002": ("Prostate-3T", "Training", ""),
    "Prostate3T-01-0004": ("Prostate-3T", "Test", "_truth"),
    "ProstateDx-01-0006": ("PROSTATE-DIAGNOSIS", "Training", "_correctedLabels"),
    "ProstateDx-01-0002": ("PROSTATE-DIAGNOSIS", "Training", ""),
    "ProstateDx-01-0011": ("PROSTATE-DIAGNOSIS", "Leaderboard", ""),
    "ProstateDx-01-0055": ("PROSTATE-DIAGNOSIS", "Training", ""),
}


def write_nci_isbi(root: Path) -> dict[str, np.ndarray]:
    """The download: three NBIA manifest folders (one per .tcia file) and the three unzipped mask folders."""
    masks = {}
    for n, (patient, (collection, folder, suffix)) in enumerate(NCI_CASES.items()):
        manifest = root / f"manifest-13699294{70 + ['Training', 'Leaderboard', 'Test'].index(folder)}"
        write_series(manifest / collection, patient, seed=n)
        series = next((manifest / collection / patient).glob("*/*"))
        masks[patient] = drawn_mask(read_volume(series).array.shape, seed=n)
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_nrrd(root / folder / f"{patient}{suffix}.nrrd", series, masks[patient],
                   drop_slice=patient.endswith("0055"))  # fmt: skip
    return masks


def test_nci_isbi_two_institutions_and_masks_on_the_series_grid(tmp_path):
    source = tmp_path / "NCI-ISBI"
    masks = write_nci_isbi(source)
    out = prepare("nci_isbi", source, tmp_path / "sites")
    assert [p.stem for p in site_configs(out)] == ["nci-isbi-3t", "nci-isbi-dx"]
    assert_usable(out)
    skipped = json.loads((out / "converted" / "nci_isbi" / "skipped.json").read_text())
    assert list(skipped) == ["ProstateDx-01-0055"]
    entries = [e for site in ("nci-isbi-3t", "nci-isbi-dx") for split in json.loads(
        (out / site / "datalist.json").read_text()).values() for e in split]  # fmt: skip
    held = json.loads((out / "holdout" / "datalist.json").read_text())["testing"]
    assert len(entries) == 4 and len(held) == 2
    for entry in entries + held:
        patient = Path(entry["label"]).name.removesuffix(".nii.gz")
        series, converted = read_volume(source / entry["image"]), read_volume(entry["label"])
        assert entry["image"].split("/")[1] == NCI_CASES[patient][0]  # read in place, in its collection
        assert np.array_equal(converted.array, (masks[patient] > 0).astype(np.float32)), patient
        assert np.allclose(converted.affine, series.affine)
    assert {Path(e["label"]).name for e in held} == {"Prostate3T-01-0004.nii.gz", "ProstateDx-01-0011.nii.gz"}


def test_nci_isbi_refuses_a_download_without_a_masked_patients_series(tmp_path):
    source = tmp_path / "NCI-ISBI"
    write_nci_isbi(source)
    shutil.rmtree(next(source.glob("manifest-*/Prostate-3T/Prostate3T-01-0002")))
    with pytest.raises(DatasetError, match="lacks the image series") as e:
        prepare("nci_isbi", source, tmp_path / "out")
    assert "Prostate3T-01-0002" in e.value.detail
    shutil.rmtree(source / "Leaderboard")
    with pytest.raises(DatasetError) as e:
        prepare("nci_isbi", source, tmp_path / "out")
    assert "Leaderboard" in e.value.fix


def test_converted_root_admits_only_itself_besides_data_root(tmp_path):
    """A path outside both data_root and converted_root is still refused."""
    source = write_msd(tmp_path / "dl", n_cases=4)
    out = prepare("msd_prostate", source, tmp_path / "sites")
    config_path = out / "site_configs" / "msd-1.json"
    datalist = json.loads((out / "msd-1" / "datalist.json").read_text())
    stray = tmp_path / "elsewhere" / "x.nii.gz"
    stray.parent.mkdir()
    shutil.copy(datalist["training"][0]["image"], stray)
    datalist["training"][0]["image"] = str(stray)
    (out / "msd-1" / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(SiteDataErrors, match="resolves outside data_root"):
        read_datalist(load_site_config(config_path), label_kind="mask")
    raw = json.loads(config_path.read_text())
    del raw["converted_root"]  # without it, the conversions themselves are outside
    datalist["training"][0]["image"] = datalist["validation"][0]["image"]
    (out / "msd-1" / "datalist.json").write_text(json.dumps(datalist))
    config_path.write_text(json.dumps(raw))
    with pytest.raises(SiteDataErrors, match="resolves outside data_root"):
        read_datalist(load_site_config(config_path), label_kind="mask")
    config_path.write_text(json.dumps({**raw, "converted_root": str(tmp_path / "missing")}))
    with pytest.raises(Exception, match="'converted_root' folder does not exist"):
        load_site_config(config_path)
    for too_wide in ("/", str(Path.home()), str(tmp_path)):  # tmp_path holds the download (data_root)
        config_path.write_text(json.dumps({**raw, "converted_root": too_wide}))
        with pytest.raises(Exception, match="'converted_root' must be a folder of conversions"):
            load_site_config(config_path)


# ---------------------------------------------------------------- PROSTATEx


def write_prostatex(root: Path) -> Path:
    lesions = root / "ProstateX-TrainingLesionInformationv2"
    lesions.mkdir(parents=True)
    rows = {
        "ProstateX-Findings-Train.csv": [["ProxID", "fid", "pos", "zone", "ClinSig"],
                                         ["ProstateX-0000", "1", "25.7457 31.8707 -38.511", "PZ", "TRUE"]],
        "ProstateX-Images-Train.csv": [
            ["ProxID", "Name", "fid", "pos", "WorldMatrix", "ijk", "TopLevel", "SpacingBetweenSlices",
             "VoxelSpacing", "Dim", "DCMSerDescr", "DCMSerNum"],
            ["ProstateX-0000", "t2_tse_tra0", "1", "25.7457 31.8707 -38.511", "0.5,0,0,-100,...", "160 100 8",
             "0", "3.6", "0.5,0.5,3.6", "384x384x19x1", "t2_tse_tra", "4"],
        ],
    }  # fmt: skip
    for name, table in rows.items():
        with (lesions / name).open("w", newline="") as f:
            csv.writer(f).writerows(table)
    write_series(root / "manifest-A" / "PROSTATEx", "ProstateX-0000", seed=0)
    return root


def test_prostatex_is_checked_then_refused_naming_where_gland_masks_come_from(tmp_path, capsys):
    source = write_prostatex(tmp_path / "PROSTATEx")
    with pytest.raises(DatasetError, match="no prostate gland masks") as e:
        prepare("prostatex", source, tmp_path / "out")
    assert "PROSTATEx_masks" in e.value.fix and "oncofl predict" in e.value.fix
    (source / "ProstateX-TrainingLesionInformationv2" / "ProstateX-Images-Train.csv").unlink()
    assert main(["prepare", "prostatex", "--source", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "ProstateX-Images-Train.csv" in capsys.readouterr().out
