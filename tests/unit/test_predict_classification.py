"""``oncofl predict`` for the classification tasks: a probability of malignancy per image, nodule or case, from the
task's own preprocessing; a DICOM Structured Report per DICOM input that highdicom reads back and that references
the source; research tables that name no patient unless asked. Real files throughout (synthetic DICOM, real CSVs)."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from oncofl import cli, synthetic_lung, synthetic_mammo, wdbc
from oncofl.predict import load_model
from oncofl.tasks import get_task

SMALL_MAMMO = {"init_features": 16, "growth_rate": 8, "block_config": [2, 2]}
PHI = "ZQXPHI"  # planted in folder names and patient headers; must not reach the research tables by default


def save(network: torch.nn.Module, path: Path) -> Path:
    torch.save(network.state_dict(), path)
    return path


def reference_probability(task: str, image: Path, extra: dict, network: dict) -> float:
    """What training's own code path (``load_case``, label given) feeds the network, scored directly."""
    spec = get_task(task)
    x, _ = spec.load_case(image, 0, {**spec.params(None), **extra})
    model = spec.build_network(**network).eval()
    with torch.no_grad():
        return float(torch.softmax(model(torch.from_numpy(x)[None]), dim=1)[0, 1])


def text_items(ds: pydicom.Dataset) -> dict[str, list[str]]:
    """Every TEXT content item of an SR, by its concept name's code value."""
    found: dict[str, list[str]] = {}
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(item.TextValue)
        for code, values in text_items(item).items():
            found.setdefault(code, []).extend(values)
    return found


def read_rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert json.loads((out / "predictions.json").read_text())["predictions"][0]["case"] == 1
    return rows


@pytest.fixture(scope="module")
def mammo(tmp_path_factory) -> Path:
    """Four mammograms in a folder whose name carries a marker, with the marker as patient name and ID."""
    root = tmp_path_factory.mktemp("mammo")
    vendor = replace(synthetic_mammo.SITE_VENDORS["site-1"], n_cases=4)
    synthetic_mammo.write_site(root, "site-1", vendor, seed=3, split=False)
    studies = root / f"{PHI}-DOE^JANE"
    shutil.move(root / "site-1" / "cases", studies)
    for path in sorted(studies.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = f"{PHI}^JANE", f"{PHI}-MRN-1"
        ds.save_as(studies / f"{PHI}-MRN-1_{path.name}")  # file names carry the MRN too, as exports often do
        path.unlink()
    return studies


def test_mammograms_get_the_training_paths_probability_and_an_sr_that_references_each_image(mammo, tmp_path):
    model_file = save(get_task("breast_mammo_cls").build_network(**SMALL_MAMMO), tmp_path / "m.pt")
    out = tmp_path / "out"
    code = cli.main(["predict", "--task", "breast_mammo_cls", "--model", str(model_file), "--network",
                     json.dumps(SMALL_MAMMO), "--input", str(mammo), "--out", str(out)])  # fmt: skip
    assert code == 0
    images = sorted(mammo.glob("*.dcm"))
    rows = read_rows(out)
    assert [int(r["case"]) for r in rows] == [1, 2, 3, 4] and {r["status"] for r in rows} == {"predicted"}
    sha = load_model(model_file, "breast_mammo_cls", network=SMALL_MAMMO).sha256
    for row, image in zip(rows, images):
        expected = reference_probability("breast_mammo_cls", image, {}, SMALL_MAMMO)
        assert float(row["probability_malignant"]) == pytest.approx(expected, abs=1e-5)
        assert int(row["predicted_malignant"]) == int(expected >= 0.5)
        source = pydicom.dcmread(image, stop_before_pixels=True)
        sr = hd.sr.srread(out / "sr" / f"case-{int(row['case']):04d}.dcm")
        group = sr.content.get_image_measurement_groups()[0]
        measurement = group.get_measurements()[0]
        assert measurement.name.value == "111047" and measurement.value == pytest.approx(expected, abs=1e-5)
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)  # as DICOM requires
        texts = text_items(sr)
        assert "oncofl breast_mammo_cls" in texts["111001"]  # Algorithm Name
        assert f"model_sha256={sha}" in texts["111002"]  # Algorithm Parameters
    tables = (out / "predictions.csv").read_text() + (out / "predictions.json").read_text()
    assert PHI not in tables and str(mammo) not in tables and "1.2." not in tables  # no names, paths or UIDs
    assert not {"input", "instance_uid"} & set(rows[0])


def test_the_research_tables_name_inputs_only_when_asked_and_a_corrupt_image_is_skipped(mammo, tmp_path, capsys):
    studies = tmp_path / "studies"
    shutil.copytree(mammo, studies)
    bad = sorted(studies.glob("*.dcm"))[1]
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated in transfer
    model_file = save(get_task("breast_mammo_cls").build_network(**SMALL_MAMMO), tmp_path / "m.pt")
    out = tmp_path / "out"
    code = cli.main(["predict", "--task", "breast_mammo_cls", "--model", str(model_file), "--network",
                     json.dumps(SMALL_MAMMO), "--input", str(studies), "--out", str(out), "--identify"])  # fmt: skip
    console = capsys.readouterr().out
    assert code == 1
    assert f"FAILED  {bad.name}" in console and "Fix:" in console and "3 of 4 inputs predicted" in console
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["predicted", "failed", "predicted", "predicted"]
    assert rows[1]["probability_malignant"] == "" and not (out / "sr" / "case-0002.dcm").exists()
    assert [r["input"] for r in rows] == [p.name for p in sorted(studies.glob("*.dcm"))]
    uid = pydicom.dcmread(sorted(studies.glob("*.dcm"))[0], stop_before_pixels=True).SOPInstanceUID
    assert rows[0]["instance_uid"] == uid
    assert "Fix:" not in (out / "predictions.csv").read_text()  # reasons name files: console only


@pytest.fixture(scope="module")
def lung(tmp_path_factory) -> Path:
    """Two CTs of one scanner and a datalist naming three nodules (two on one CT), labels left out."""
    root = tmp_path_factory.mktemp("lung")
    scanner = replace(synthetic_lung.SITE_SCANNERS["site-1"], n_cases=2)
    entries = synthetic_lung.write_site(root, "site-1", scanner, seed=5, split=False)["testing"]
    nodules = [{"image": f"site-1/{e['image']}", "center_mm": e["center_mm"]} for e in entries]
    assert len(nodules) >= 2
    (root / "datalist.json").write_text(json.dumps({"testing": nodules}))
    return root / "datalist.json"


def test_each_nodule_gets_a_probability_and_an_sr_point_at_its_centre_in_the_series_frame(lung, tmp_path, capsys):
    spec = get_task("lung_nodule_cls")
    model_file = save(spec.build_network(), tmp_path / "l.pt")
    out = tmp_path / "out"
    args = ["predict", "--task", "lung_nodule_cls", "--model", str(model_file), "--out", str(out)]
    assert cli.main([*args, "--input", str(lung)]) == 0
    nodules = json.loads(lung.read_text())["testing"]
    rows = read_rows(out)
    assert len(rows) == len(nodules)
    for row, nodule in zip(rows, nodules):
        image = lung.parent / nodule["image"]
        expected = reference_probability("lung_nodule_cls", image, {"center_mm": nodule["center_mm"]}, {})
        assert float(row["probability_malignant"]) == pytest.approx(expected, abs=1e-5)
        assert json.loads(row["center_mm"]) == pytest.approx(nodule["center_mm"])
        sr = hd.sr.srread(out / "sr" / f"case-{int(row['case']):04d}.dcm")
        group = sr.content.get_planar_roi_measurement_groups()[0]
        assert group.get_measurements()[0].value == pytest.approx(expected, abs=1e-5)
        series = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(image.iterdir())]
        np.testing.assert_allclose(group.roi.value, [nodule["center_mm"]], atol=1e-4)
        assert group.roi.ReferencedFrameOfReferenceUID == series[0].FrameOfReferenceUID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == series[0].SeriesInstanceUID
        assert {e.ReferencedSOPInstanceUID for e in evidence.ReferencedSOPSequence} == {
            s.SOPInstanceUID for s in series
        }
    elsewhere = tmp_path / "lists" / "holdout.json"  # a datalist kept apart from the data (oncofl datasets' holdout)
    elsewhere.parent.mkdir()
    shutil.copy(lung, elsewhere)
    again = tmp_path / "again"
    assert cli.main([*args[:-1], str(again), "--input", str(elsewhere), "--data-root", str(lung.parent)]) == 0
    assert json.loads((again / "predictions.json").read_text()) == json.loads((out / "predictions.json").read_text())
    capsys.readouterr()
    assert cli.main([*args, "--input", str(lung.parent)]) == 2  # a folder: nodules need their centres
    assert "predicts from a datalist only" in capsys.readouterr().out


def test_wdbc_feature_files_get_probabilities_and_no_sr(tmp_path):
    data = wdbc.generate(tmp_path / "wdbc", seed=0)
    cases = sorted((Path(data) / "holdout").rglob("*.csv"))[:5]
    folder = tmp_path / "cases"
    folder.mkdir()
    for path in cases:
        shutil.copy(path, folder / path.name)
    model_file = save(get_task("breast_wdbc").build_network(), tmp_path / "w.pt")
    out = tmp_path / "out"
    code = cli.main(["predict", "--task", "breast_wdbc", "--model", str(model_file), "--input", str(folder),
                     "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = read_rows(out)
    for row, path in zip(rows, sorted(folder.glob("*.csv"))):
        assert float(row["probability_malignant"]) == pytest.approx(
            reference_probability("breast_wdbc", path, {}, {}), abs=1e-5
        )
    assert not (out / "sr").exists()


def test_a_progress_bar_counts_studies_on_a_terminal_and_stays_off_in_logs(mammo, tmp_path, capsys, monkeypatch):
    model_file = save(get_task("breast_mammo_cls").build_network(**SMALL_MAMMO), tmp_path / "m.pt")
    args = ["predict", "--task", "breast_mammo_cls", "--model", str(model_file), "--network",
            json.dumps(SMALL_MAMMO), "--input", str(mammo)]  # fmt: skip
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "study" not in capsys.readouterr().err  # not a terminal: no bar
    monkeypatch.setenv("ONCOFL_PROGRESS", "1")
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "4/4" in capsys.readouterr().err


def test_an_he_jobs_encrypted_global_model_is_predicted_only_with_a_hospitals_secret_context(tmp_path, capsys):
    """An HE job's server saves CKKS ciphertexts (FLARE's serialized vectors): refused without a context, refused
    with the server's public one, and decrypted with a hospital's client context to the plain model's predictions
    (CKKS noise: measured |difference| < 1e-6 in probability)."""
    ts = pytest.importorskip("tenseal")
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40])
    context.global_scale = 2**40  # FLARE's HEBuilder defaults
    secret, public = tmp_path / "client_context.tenseal", tmp_path / "server_context.tenseal"
    secret.write_bytes(context.serialize(save_secret_key=True))
    context.make_context_public()
    public.write_bytes(context.serialize())
    network = get_task("breast_wdbc").build_network()
    with torch.no_grad():
        network.stats_ready.fill_(1.0)  # the pooled moments are in, as after round 0
        network.input_mean.copy_(torch.linspace(0.5, 3.0, 30))
    plain = save(network, tmp_path / "plain.pt")
    encrypted = tmp_path / "FL_global_model.pt"
    keyed = ts.context_from(secret.read_bytes())
    torch.save({"model": {k: ts.ckks_vector(keyed, v.flatten().tolist()).serialize()
                          for k, v in network.state_dict().items()}}, encrypted)  # fmt: skip

    data = wdbc.generate(tmp_path / "wdbc", seed=0)
    cases = str(Path(data) / "holdout" / "datalist.json")
    args = ["predict", "--task", "breast_wdbc", "--input", cases]
    assert cli.main([*args, "--model", str(encrypted), "--out", str(tmp_path / "none")]) == 2
    assert "the model file is encrypted" in capsys.readouterr().out
    assert cli.main([*args, "--model", str(encrypted), "--he-context", str(public), "--out", str(tmp_path / "p")]) == 2
    assert "cannot be decrypted with this context" in capsys.readouterr().out
    assert cli.main([*args, "--model", str(encrypted), "--he-context", str(secret), "--out", str(tmp_path / "s")]) == 0
    assert cli.main([*args, "--model", str(plain), "--out", str(tmp_path / "plain")]) == 0
    decrypted = json.loads((tmp_path / "s" / "predictions.json").read_text())["predictions"]
    reference = json.loads((tmp_path / "plain" / "predictions.json").read_text())["predictions"]
    assert len(decrypted) == len(reference) > 50
    for ours, ref in zip(decrypted, reference):
        assert ours["probability_malignant"] == pytest.approx(ref["probability_malignant"], abs=1e-5)
