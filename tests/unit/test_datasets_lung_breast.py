"""LIDC-IDRI, CBIS-DDSM and VinDr-Mammo as downloaded -> per-site datalists the real readers load.

Each test writes a small download in the release's own layout (folder and file names, DICOM headers, the XML / CSV
annotation schema) with its oddities, runs ``oncofl datasets prepare`` and loads a case through the task.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest

from oncofl import datasets
from oncofl.data import read_datalist
from oncofl.datasets import DatasetError, cbis_ddsm, lidc_idri
from oncofl.site_config import load_site_config
from oncofl.synthetic import VendorProfile, write_dicom_series
from oncofl.synthetic_mammo import MammoVendor, make_case, write_mg
from oncofl.tasks import get_task

NIH = "http://www.nih.gov"
PS, DZ = 2.5, 2.5  # the fixture CTs: 64 x 64 pixels of 2.5 mm, 16 slices of 2.5 mm
CENTRE_TOLERANCE_MM = 1.25  # half a pixel: edge maps are whole pixels
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture")  # fmt: skip


def _ct(folder: Path, manufacturer: str, origin: np.ndarray, seed: str) -> list[tuple[str, float]]:
    """A CT series named as the TCIA download names its files (1-001.dcm ...); (SOP UID, z) per slice."""
    profile = VendorProfile(manufacturer, "CT", 64, 16, 1.0, 1.0, -1024.0, 0.0, 0.0, 1, 0.0, fov_mm=160.0,
                            coverage_mm=40.0, modality="CT")  # fmt: skip
    hu = np.full((64, 64, 16), -800.0, dtype=np.float32)
    write_dicom_series(hu, origin, profile, folder, uid_seed=seed, patient_id=folder.parts[-3], patient_name="LIDC")
    slices = []
    for k in range(16):
        path = folder / f"1-{k + 1:03d}.dcm"
        (folder / f"IM_{k:04d}.dcm").rename(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        slices.append((str(ds.SOPInstanceUID), float(ds.ImagePositionPatient[2])))
    return slices


def _sub(parent: ET.Element, tag: str, text: object = None, ns: str = NIH) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ns}}}{tag}" if ns else tag)
    if text is not None:
        element.text = str(text)
    return element


def _nodule(session: ET.Element, nodule: dict, slices: list, origin: np.ndarray, ns: str) -> None:
    """A reader's unblindedReadNodule: a sphere's contour on every slice it crosses (whole-pixel edge map)."""
    mark = _sub(session, "unblindedReadNodule", ns=ns)
    _sub(mark, "noduleID", nodule["id"], ns)
    if nodule.get("malignancy"):
        chars = _sub(mark, "characteristics", ns=ns)
        for name in CHARACTERISTICS:
            _sub(chars, name, 1 if name == "internalStructure" else 3, ns)
        _sub(chars, "malignancy", nodule["malignancy"], ns)
    centre, radius = np.asarray(nodule["centre"]), nodule.get("radius", 0.0)
    for sop, z in slices:
        dz = z - centre[2]
        if radius == 0.0 and abs(dz) > 0.1 or radius and abs(dz) >= radius:
            continue
        roi = _sub(mark, "roi", ns=ns)
        _sub(roi, "imageZposition", f"{z:.3f}", ns)
        _sub(roi, "imageSOP_UID", "" if nodule.get("no_sop") else sop, ns)
        _sub(roi, "inclusion", "TRUE", ns)
        in_plane = np.sqrt(max(radius**2 - dz**2, 0.0))
        for angle in np.linspace(0, 2 * np.pi, 24 if radius else 1, endpoint=False):
            xy = (centre[:2] + in_plane * np.array([np.cos(angle), np.sin(angle)]) - origin[:2]) / PS
            edge = _sub(roi, "edgeMap", ns=ns)
            _sub(edge, "xCoord", int(round(xy[0])), ns)
            _sub(edge, "yCoord", int(round(xy[1])), ns)


def _lidc_xml(path: Path, readers: list[list[dict]], slices: list, origin: np.ndarray, ns: str = NIH) -> None:
    root = ET.Element(f"{{{ns}}}LidcReadMessage" if ns else "LidcReadMessage")
    header = _sub(root, "ResponseHeader", ns=ns)
    _sub(header, "SeriesInstanceUid", "1.3.6.1.4.1.14519.5.2.1.6279.6001.1", ns)
    _sub(header, "StudyInstanceUID", "1.3.6.1.4.1.14519.5.2.1.6279.6001.2", ns)
    for reader, nodules in enumerate(readers):
        session = _sub(root, "readingSession", ns=ns)
        _sub(session, "servicingRadiologistID", f"reader{reader}", ns)
        for nodule in nodules:
            _nodule(session, nodule, slices, origin, ns)
        non = _sub(session, "nonNodule", ns=ns)
        _sub(non, "nonNoduleID", "NN1", ns)
        _sub(non, "imageZposition", f"{slices[2][1]:.3f}", ns)
        locus = _sub(non, "locus", ns=ns)
        _sub(locus, "xCoord", 5, ns)
        _sub(locus, "yCoord", 5, ns)
    if ns:
        ET.register_namespace("", ns)
    ET.ElementTree(root).write(path, xml_declaration=True, encoding="utf-8")


def _patient(source: Path, patient: str, manufacturer: str, readers: list[list[dict]], ns: str = NIH) -> Path:
    origin = np.array([-80.0, -100.0, -200.0])
    series = source / "LIDC-IDRI" / patient / "01-01-2000-NA-NA-30178" / "3000566.000000-NA-03192"
    slices = _ct(series, manufacturer, origin, patient)
    _lidc_xml(series / "069.xml", readers, slices, origin, ns)
    return series


def _at(px: float, py: float, k: float) -> list[float]:
    """LPS mm of pixel (column px, row py) on slice k of the fixture CTs."""
    return [-80.0 + px * PS, -100.0 + py * PS, -200.0 + k * DZ]


NODULE_A = _at(30.3, 25.6, 8)  # four readers, malignancy 4, 5, 4, 3 -> median 4 -> 1
NODULE_B = _at(50, 50, 4)  # one reader, malignancy 2 -> 0
NODULE_C = _at(12, 50, 12)  # two readers, malignancy 3, 3 -> median 3: left out


def _lidc(source: Path) -> Path:
    shift = [np.array([0.4, -0.3, 0.0]), np.array([-0.5, 0.2, 0.0]), np.array([0.0, 0.5, 0.0]), np.zeros(3)]
    a = [
        {"id": "A", "centre": np.add(NODULE_A, s), "radius": 6.0, "malignancy": m} for s, m in zip(shift, (4, 5, 4, 3))
    ]
    a[3]["no_sop"] = True  # this reader's ROIs name no SOP instance: found by imageZposition
    _patient(source, "LIDC-IDRI-0001", "SIEMENS", [
        [a[0], {"id": "C", "centre": NODULE_C, "radius": 4.0, "malignancy": 3}],
        [a[1], {"id": "B", "centre": NODULE_B, "radius": 4.0, "malignancy": 2},
         {"id": "C", "centre": NODULE_C, "radius": 4.5, "malignancy": 3}],
        [a[2], {"id": "small", "centre": _at(20, 12, 3)}],  # a "< 3 mm" mark: one point, no characteristics
        [a[3]],
    ])  # fmt: skip
    ge = [{"id": "1", "centre": _at(20, 20, 6), "radius": 5.0, "malignancy": m} for m in (2, 1)]
    _patient(source, "LIDC-IDRI-0002", "GE MEDICAL SYSTEMS", [  # an older file: no namespace
        [ge[0], {"id": "2", "centre": _at(45, 30, 10), "radius": 7.0, "malignancy": 5}], [ge[1]]], ns="")  # fmt: skip
    _patient(source, "LIDC-IDRI-0008", "TOSHIBA", [[{"id": "1", "centre": _at(32, 32, 8), "radius": 5.0,
                                                       "malignancy": 4}]])  # fmt: skip
    return source


def _datalist(out: Path, site: str) -> list[dict]:
    splits = json.loads((out / site / "datalist.json").read_text())
    return splits.get("training", []) + splits.get("validation", []) + splits.get("testing", [])


def _usable(out: Path, task: str, extra_params: dict) -> None:
    """Every site config validates with its datalist (sites of two or more cases), and one case loads."""
    spec = get_task(task)
    loaded = False
    for config_file in sorted((out / "site_configs").glob("*.json")):
        config = load_site_config(config_file, site_name=config_file.stem)
        if len(_datalist(out, config.site_name)) < 2:
            continue
        refs = read_datalist(config, label_kind="class")
        if not loaded:
            entry = _datalist(out, config.site_name)[0]
            params = {**spec.params(extra_params), **{k: v for k, v in entry.items() if k not in ("image", "label")}}
            image, label = spec.load_case(Path(config.data_root) / entry["image"], entry["label"], params)
            assert np.isfinite(image).all() and int(label[0]) == entry["label"]
            loaded = bool(refs["training"])
    assert loaded


def test_lidc_idri_nodules_per_manufacturer(tmp_path):
    source, out = _lidc(tmp_path / "download"), tmp_path / "sites"
    assert datasets.main(["prepare", "lidc_idri", "--source", str(source), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sites"] == ["ge-medical-systems", "siemens", "toshiba"]
    siemens = sorted(_datalist(out, "siemens"), key=lambda e: -e["label"])
    # A (four readers who disagree: median 4 -> 1) and B (one reader: 2 -> 0); C (median 3) and the < 3 mm mark out
    assert [(e["label"], e["readers"], e["malignancy"]) for e in siemens] == [(1, 4, 4.0), (0, 1, 2.0)]
    assert np.allclose(siemens[0]["center_mm"], np.add(NODULE_A, [-0.025, 0.1, 0.0]), atol=CENTRE_TOLERANCE_MM)
    assert np.allclose(siemens[1]["center_mm"], NODULE_B, atol=CENTRE_TOLERANCE_MM)
    assert abs(siemens[0]["diameter_mm"] - 12.0) <= PS  # a 6 mm radius; each edge point rounded to a whole pixel
    ge = sorted(_datalist(out, "ge-medical-systems"), key=lambda e: e["label"])
    assert [(e["label"], e["readers"]) for e in ge] == [(0, 2), (1, 1)]
    assert lidc_idri.held_out("LIDC-IDRI-0008") and not (out / "toshiba").exists()
    held = json.loads((out / "holdout" / "datalist.json").read_text())["testing"]
    assert [(e["image"].split("/")[1], e["label"]) for e in held] == [("LIDC-IDRI-0008", 1)]
    assert json.loads((out / "site_configs" / "siemens.json").read_text())["data_root"] == str(source.resolve())
    _usable(out, "lung_nodule_cls", {"spacing_mm": 4.0, "patch_size": 8})


def test_lidc_idri_partial_download_is_refused(tmp_path):
    source = _lidc(tmp_path / "download")
    (next(source.glob("LIDC-IDRI/LIDC-IDRI-0002/*/*")) / "069.xml").unlink()  # the XML of one CT did not arrive
    with pytest.raises(DatasetError, match="no readers' XML") as info:
        datasets.prepare("lidc_idri", source, tmp_path / "sites")
    assert "LIDC-IDRI-0002" in info.value.detail and "LIDC-IDRI-0001" not in info.value.detail
    shutil.rmtree(source / "LIDC-IDRI")
    with pytest.raises(DatasetError, match="incomplete") as info:
        datasets.prepare("lidc_idri", source, tmp_path / "sites")
    assert "LIDC-IDRI" in info.value.fix


def test_lidc_idri_clustering_shrinks_a_group_of_more_than_four_marks():
    def mark(x: float) -> lidc_idri.Mark:
        return lidc_idri.Mark(np.array([[x, 0.0, 0.0]]), np.array([x, 0.0, 0.0]), 5.0, 4)

    groups = lidc_idri.cluster([mark(x) for x in (0, 1, 2, 10, 11, 12)], tolerance=20.0)  # one chain of six at 20
    assert sorted(len(g) for g in groups) == [3, 3]
    assert [lidc_idri.label(m) for m in (1, 2.5, 3, 3.5, 5)] == [0, 0, None, 1, 1]


# ---- CBIS-DDSM -------------------------------------------------------------------------------------------------

MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]  # fmt: skip
CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]  # fmt: skip
CBIS_ROWS = [  # (csv, patient, side, view, abnormality id, pathology)
    ("mass_case_description_train_set.csv", "P_00001", "LEFT", "CC", 1, "MALIGNANT"),
    ("mass_case_description_train_set.csv", "P_00001", "LEFT", "MLO", 1, "BENIGN"),
    ("mass_case_description_train_set.csv", "P_00006", "RIGHT", "CC", 1, "BENIGN"),
    ("mass_case_description_train_set.csv", "P_00010", "LEFT", "MLO", 1, "MALIGNANT"),
    ("calc_case_description_train_set.csv", "P_00002", "RIGHT", "CC", 1, "BENIGN"),
    ("calc_case_description_train_set.csv", "P_00002", "RIGHT", "CC", 2, "MALIGNANT"),  # same image: malignant
    ("calc_case_description_train_set.csv", "P_00005", "LEFT", "CC", 1, "BENIGN_WITHOUT_CALLBACK"),
    ("calc_case_description_train_set.csv", "P_00003", "LEFT", "CC", 1, "BENIGN_WITHOUT_CALLBACK"),
    ("mass_case_description_test_set.csv", "P_00004", "LEFT", "CC", 1, "BENIGN"),
    ("calc_case_description_test_set.csv", "P_00007", "RIGHT", "MLO", 1, "MALIGNANT"),
    # the same mammogram through a calc row (its own top folder, a second copy): one case, malignant from the mass
    ("calc_case_description_train_set.csv", "P_00001", "LEFT", "CC", 1, "BENIGN"),
    # a patient with mass rows in train and a calc row in test: the whole patient to holdout/, never both sides
    ("calc_case_description_test_set.csv", "P_00006", "LEFT", "MLO", 1, "BENIGN"),
]
UID = "1.3.6.1.4.1.9590.100.1.2."


def _mg(path: Path, manufacturer: str, side: str, view: str, seed: int) -> None:
    vendor = MammoVendor(manufacturer, "", "MONOCHROME2", 12, 1.0, 0.03, 0.5, 1, (96, 72), 1.0)
    rng = np.random.default_rng(seed)
    write_mg(make_case(vendor, False, rng), vendor, path, laterality=side, view=view, uid_seed=f"{path}",
             patient_id=path.parts[-4][:40], rng=rng)  # fmt: skip


def _cbis(source: Path) -> Path:
    rows: dict[str, list[dict]] = {}
    for i, (name, patient, side, view, abnormality, pathology) in enumerate(CBIS_ROWS):
        kind = "Mass" if name.startswith("mass") else "Calc"
        top = f"{kind}-{'Test' if 'test' in name else 'Training'}_{patient}_{side}_{view}"
        full = source / "CBIS-DDSM" / top / f"07-20-2016-DDSM-{9000 + i}" / f"1.000000-full mammogram images-{i}"
        if not full.parent.parent.exists():
            _mg(full / "1-1.dcm", "", side[0], view, i)  # the release's headers carry no manufacturer
        crop = source / "CBIS-DDSM" / f"{top}_{abnormality}" / f"08-07-2016-DDSM-{i}" / f"1.000000-ROI mask images-{i}"
        crop.mkdir(parents=True, exist_ok=True)  # cropped image and mask: 1-1.dcm, 1-2.dcm (not read)
        path = f"{top}/{UID}{i}1/{UID}{i}2/000000.dcm"  # UID folders the download does not have (the known oddity)
        rows.setdefault(name, []).append(dict(zip(MASS_COLUMNS if kind == "Mass" else CALC_COLUMNS, [
            patient, 3, side, view, abnormality, kind.lower() if kind == "Mass" else "calcification", "OVAL",
            "CIRCUMSCRIBED", 4, pathology, 3, path, f"{top}_{abnormality}/{UID}{i}3/{UID}{i}4/000000.dcm",
            f"{top}_{abnormality}/{UID}{i}3/{UID}{i}4/000001.dcm\n"])))  # fmt: skip
    for name in cbis_ddsm.CSV_FILES:
        with open(source / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MASS_COLUMNS if name.startswith("mass") else CALC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows.get(name, []))
    return source


def test_cbis_ddsm_one_label_per_image_own_split(tmp_path):
    source, out = _cbis(tmp_path / "download"), tmp_path / "sites"
    datasets.prepare("cbis_ddsm", source, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sites"] == ["ddsm-1", "ddsm-2", "ddsm-3"]  # no manufacturer in the headers: by patient
    labels = {}
    for site in summary["sites"]:
        for entry in _datalist(out, site):
            top = entry["image"].split("/")[1]
            assert cbis_ddsm.patient_site("_".join(top.split("_")[1:3])) == site
            assert entry["image"].endswith("/1-1.dcm") and "full mammogram images" in entry["image"]
            labels[top] = entry["label"]
    assert labels == {"Calc-Training_P_00001_LEFT_CC": 1, "Mass-Training_P_00001_LEFT_MLO": 0,
                      "Mass-Training_P_00010_LEFT_MLO": 1,
                      "Calc-Training_P_00002_RIGHT_CC": 1, "Calc-Training_P_00005_LEFT_CC": 0,
                      "Calc-Training_P_00003_LEFT_CC": 0}  # fmt: skip
    held = json.loads((out / "holdout" / "datalist.json").read_text())["testing"]
    assert sorted((e["image"].split("/")[1], e["label"]) for e in held) == [
        ("Calc-Test_P_00006_LEFT_MLO", 0), ("Calc-Test_P_00007_RIGHT_MLO", 1), ("Mass-Test_P_00004_LEFT_CC", 0),
        ("Mass-Training_P_00006_RIGHT_CC", 0)]  # fmt: skip
    _usable(out, "breast_mammo_cls", {"image_size": 64})


def test_cbis_ddsm_partial_download_is_refused(tmp_path):
    source = _cbis(tmp_path / "download")
    shutil.rmtree(source / "CBIS-DDSM" / "Calc-Test_P_00007_RIGHT_MLO")
    with pytest.raises(DatasetError, match="lacks full mammograms") as info:
        datasets.prepare("cbis_ddsm", source, tmp_path / "sites")
    assert "Calc-Test_P_00007_RIGHT_MLO" in info.value.detail
    (source / "calc_case_description_test_set.csv").unlink()
    with pytest.raises(DatasetError, match="incomplete") as info:
        datasets.prepare("cbis_ddsm", source, tmp_path / "sites")
    assert "calc_case_description_test_set.csv" in info.value.fix


# ---- VinDr-Mammo -----------------------------------------------------------------------------------------------

VINDR_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                 "breast_birads", "breast_density", "split"]  # fmt: skip
VINDR_STUDIES = {  # study: (manufacturer, split, BI-RADS of the left, of the right breast)
    "a1b2c3d4e5f60718293a4b5c6d7e8f90": ("SIEMENS", "training", 4, 1),
    "0f1e2d3c4b5a69788796a5b4c3d2e1f0": ("Planmed", "training", 3, 2),
    "1234567890abcdef1234567890abcdef": ("Planmed", "training", 5, 2),
    "fedcba0987654321fedcba0987654321": ("SIEMENS", "training", 2, 2),
    "00112233445566778899aabbccddeeff": ("SIEMENS", "test", 5, 2),
}


def _vindr(source: Path) -> Path:
    rows = []
    for s, (study, (manufacturer, split, left, right)) in enumerate(VINDR_STUDIES.items()):
        for side, birads in (("L", left), ("R", right)):
            for view in ("CC", "MLO"):
                image = f"{study[:8]}{side}{view}{s}".ljust(32, "0")
                _mg(source / "images" / study / f"{image}.dicom", manufacturer, side, view, s)
                rows.append([study, f"se{study[:30]}", image, side, view, 96, 72, f"BI-RADS {birads}",
                             "DENSITY C", split])  # fmt: skip
    with open(source / "breast-level_annotations.csv", "w", newline="") as f:
        csv.writer(f).writerows([VINDR_COLUMNS, *rows])
    with open(source / "finding_annotations.csv", "w", newline="") as f:
        csv.writer(f).writerow([*VINDR_COLUMNS[:7], "breast_birads", "breast_density", "finding_categories",
                                "finding_birads", "xmin", "ymin", "xmax", "ymax", "split"])  # fmt: skip
    return source


def test_vindr_mammo_birads_labels_sites_by_manufacturer(tmp_path):
    source, out = _vindr(tmp_path / "download"), tmp_path / "sites"
    datasets.prepare("vindr_mammo", source, out)
    assert json.loads((out / "summary.json").read_text())["sites"] == ["planmed", "siemens"]
    planmed, siemens = _datalist(out, "planmed"), _datalist(out, "siemens")
    assert sorted(e["label"] for e in planmed) == [0, 0, 0, 0, 1, 1]  # BI-RADS 3 left out, 5 -> 1, 2 -> 0
    assert sorted(e["label"] for e in siemens) == [0, 0, 0, 0, 0, 0, 1, 1]  # 4 -> 1; 1, 2 -> 0
    assert all(e["image"].startswith("images/") and e["image"].endswith(".dicom") for e in planmed + siemens)
    held = json.loads((out / "holdout" / "datalist.json").read_text())["testing"]
    assert sorted(e["label"] for e in held) == [0, 0, 1, 1]
    _usable(out, "breast_mammo_cls", {"image_size": 64})


def test_vindr_mammo_partial_download_is_refused(tmp_path):
    source = _vindr(tmp_path / "download")
    victim = next((source / "images" / "1234567890abcdef1234567890abcdef").glob("*.dicom"))
    victim.unlink()
    with pytest.raises(DatasetError, match="incomplete") as info:
        datasets.prepare("vindr_mammo", source, tmp_path / "sites")
    assert victim.name in info.value.fix
    (source / "finding_annotations.csv").unlink()
    with pytest.raises(DatasetError, match="incomplete") as info:
        datasets.prepare("vindr_mammo", source, tmp_path / "sites")
    assert "finding_annotations.csv" in info.value.fix
