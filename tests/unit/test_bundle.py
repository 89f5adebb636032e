"""``oncofl export-bundle``: a finished run's global model and job as a MONAI bundle, run by MONAI's own runner
(``python -m monai.bundle run`` in a subprocess) on a held-out DICOM series and on a NIfTI volume, and compared with
``oncofl predict`` on the same case. Real files throughout: a DP job exported by ``oncofl job export``, the ledgers
in the format the server components write (tests/unit/test_model_card.py), an untrained network saved as FLARE's
persistor saves the global model (equality needs no trained model)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out
from monai.utils import OptionalImportError
from nvflare.app_opt.pt.model_persistence_format_manager import PTModelPersistenceFormatManager

from oncofl import cli, synthetic_mammo
from oncofl.dicom.seg import read_seg
from oncofl.dicom.series import read_series
from oncofl.errors import ModelFileError, SiteDataError
from oncofl.jobs import breast_mammo_cls, prostate_mri_seg
from oncofl.predict import load_model, predict_series
from oncofl.predict.bundle import export_bundle
from oncofl.predict.job import read_job_settings
from oncofl.tasks import get_task
from oncofl.tasks.prostate_seg import ProstateSegNet
from tests.conftest import REPO, save_as_nifti
from tests.unit.test_model_card import SITES, aggregation, participation, privacy, write_json

# the required keys of MONAI's bundle metadata schema (meta_schema_20240725.json, the URL metadata.json names) and
# the required keys of each tensor it describes: checked here when the schema cannot be downloaded (no network)
SCHEMA_REQUIRED = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                   "required_packages_version", "task", "description", "authors", "copyright",
                   "network_data_format")  # fmt: skip
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
CROSS = {site: {"SRV_FL_global_model.pt": {"val_dice": 0.8 + i / 100}} for i, site in enumerate(SITES)}
# TorchScript vs the state-dict network on the same preprocessed case, CPU: measured max |logit difference| 0.0
# (identical kernels); the bound leaves room for other backends
TS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A DP prostate job's server folder after 2 of 3 rounds, as the simulator leaves it."""
    root = tmp_path_factory.mktemp("run")
    job = prostate_mri_seg.export(root / "jobs", num_rounds=3, dp_epsilon=3.0)
    run = root / "workspace" / "server" / "simulate_job"
    shutil.copytree(job / "app", run / "app_server")
    shutil.copy(job / "meta.json", run / "meta.json")
    write_json(run / "participation.json", participation())
    write_json(run / "aggregation.json", aggregation())
    write_json(run / "privacy.json", privacy())
    write_json(run / "cross_site_val" / "cross_val_results.json", CROSS)
    flare = PTModelPersistenceFormatManager(ProstateSegNet().state_dict(), default_train_conf={"train": {"model": "x"}})
    torch.save(flare.to_persistence_dict(), run / "app_server" / "FL_global_model.pt")
    return run


@pytest.fixture(scope="module")
def bundle(run_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "prostate_bundle"
    assert cli.main(["export-bundle", "--job", str(run_folder), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def case(synthetic_data, tmp_path_factory) -> tuple[Path, Path]:
    """A held-out case (both classes predicted by the untrained network): its DICOM series and the same volume as
    NIfTI."""
    series = synthetic_data / "holdout" / "site-1" / "cases" / "case_0001" / "dicom"
    nifti = tmp_path_factory.mktemp("nifti") / "case_0001.nii.gz"
    save_as_nifti(series, nifti)
    return series, nifti


def meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def run_bundle(bundle: Path, source: Path, out: Path) -> subprocess.CompletedProcess:
    """MONAI's runner on the bundle, as its README says, from another working directory."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
               "--input", str(source), "--output_dir", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=out.parent, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_the_bundle_holds_a_plain_state_dict_its_configs_and_docs(bundle, run_folder):
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert names == ["configs/inference.json", "configs/logging.conf", "configs/metadata.json", "docs/README.md",
                     "models/model.pt", "models/model.ts"]  # fmt: skip
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    source = torch.load(run_folder / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert weights.keys() == source.keys() and all(torch.equal(weights[k], source[k]) for k in weights)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"] == "oncofl.tasks.prostate_seg.ProstateSegNet"
    assert config["network_def"]["channels"] == [16, 32, 64, 128]
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run --config_file" in readme and "--input" in readme


def test_monai_checks_the_metadata_and_the_networks_input_and_output(bundle, tmp_path):
    """MONAI's own checks: ``verify_metadata`` against the schema the metadata names (it downloads the schema and
    needs ``jsonschema``: without network or without it, the schema's required keys are checked here instead), and
    ``verify_net_in_out`` (the network from ``network_def`` on a tensor of the metadata's input shape), and the
    inference properties of a ``ConfigWorkflow``."""
    try:
        verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(tmp_path / "schema.json"))
    except (OSError, OptionalImportError):  # URLError (no network) is an OSError; jsonschema not installed
        data = meta(bundle)
        assert [key for key in SCHEMA_REQUIRED if key not in data] == []
        assert all(isinstance(data[key], str) for key in ("version", "task", "description", "authors", "copyright"))
        io = data["network_data_format"]
        for tensor in [*io["inputs"].values(), *io["outputs"].values(), *io["post_processed_outputs"].values()]:
            assert [key for key in TENSOR_REQUIRED if key not in tensor] == []
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), device="cpu")  # fmt: skip
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        workflow_type="infer",
        logging_file=False,  # the bundle's logging.conf would reconfigure pytest's logging
        bundle_root=str(bundle),
        input=str(tmp_path),
        output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.network_def, ProstateSegNet)
    with pytest.raises(RuntimeError) as failed:  # an empty folder: the run fails (the runner exits non-zero)
        workflow.run()
    assert isinstance(failed.value.__cause__, SiteDataError) and "no input was found" in str(failed.value.__cause__)


def test_monais_runner_predicts_a_dicom_series_as_oncofl_predict_does(bundle, run_folder, case, tmp_path):
    series = case[0]
    done = run_bundle(bundle, series, tmp_path / "bundle_out")
    assert "ok      dicom: prostate_ml" in done.stdout
    assert cli.main(["predict", "--job", str(run_folder), "--input", str(series), "--out", str(tmp_path / "ref")]) == 0
    ours = np.asarray(nib.load(tmp_path / "bundle_out" / "dicom" / "mask.nii.gz").dataobj)
    ref = np.asarray(nib.load(tmp_path / "ref" / "dicom" / "mask.nii.gz").dataobj)
    assert 0 < np.count_nonzero(ref) < ref.size
    np.testing.assert_array_equal(ours, ref)  # measured: equal voxel for voxel (the same code path, same weights)
    volume = read_series(series)
    seg_path = tmp_path / "bundle_out" / "dicom" / "seg.dcm"
    np.testing.assert_array_equal(read_seg(seg_path, volume), ref)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series.iterdir())]
    seg = hd.seg.segread(seg_path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {u[2] for u in seg.get_source_image_uids()} == {str(ds.SOPInstanceUID) for ds in sources}
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    bundle_sha = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert bundle_sha[:12] in seg.SeriesDescription  # the SEG names the weights it ran
    # the bundle is also a model for oncofl predict: --job <bundle> gives its task, network, preprocessing, weights
    assert cli.main(["predict", "--job", str(bundle), "--input", str(series), "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "b" / "dicom" / "mask.nii.gz").dataobj), ref)


def test_monais_runner_predicts_a_nifti_volume_as_the_dicom_series(bundle, run_folder, case, tmp_path):
    series, nifti = case
    run_bundle(bundle, nifti, tmp_path / "bundle_out")
    mask = nib.load(tmp_path / "bundle_out" / "case_0001" / "mask.nii.gz")
    model = load_model(run_folder / "app_server" / "FL_global_model.pt", "prostate_seg", device=torch.device("cpu"))
    np.testing.assert_array_equal(np.asarray(mask.dataobj), predict_series(model, nifti).label)
    # measured: the NIfTI written from the series gives the series' own mask, voxel for voxel, on the same affine
    np.testing.assert_array_equal(np.asarray(mask.dataobj), predict_series(model, series).label)
    np.testing.assert_allclose(mask.affine, read_series(series).affine, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_the_torchscript_model_gives_the_state_dict_models_logits(bundle, case):
    spec = get_task("prostate_seg")
    _, image, _ = spec.prepare_input(case[0], spec.params(None))
    network = ProstateSegNet()
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu")
    x = torch.from_numpy(image[None])
    with torch.inference_mode():
        expected, got = network.eval()(x), scripted(x)
    difference = float((expected - got).abs().max())
    print(f"TorchScript vs state dict: max |logit difference| {difference:.3g}")
    assert difference <= TS_TOLERANCE
    assert meta(bundle)["torchscript"]["file"] == "models/model.ts"


def test_the_provenance_holds_the_runs_values_and_no_path(bundle, run_folder, synthetic_data):
    fl = meta(bundle)["federated_learning"]
    assert (fl["job"], fl["task"], fl["algorithm"]) == ("prostate_mri_seg", "prostate_seg", "fedavg")
    assert (fl["rounds_run"], fl["rounds_planned"], fl["number_of_sites"], fl["sites"]) == (2, 3, 3, SITES)
    assert fl["server_workflow"] == "PrivacyBudgetScatterAndGather"
    assert fl["aggregation"]["settings"] == aggregation()["settings"]
    assert fl["aggregation"]["updates_refused_rejected_or_bounded"] == ["round 1: site-2 refused"]
    dp = fl["differential_privacy"]
    assert (dp["epsilon_budget"], dp["epsilon_spent"], dp["stopped_after_round"]) == (
        3.0,
        {"site-1": 1.1, "site-2": 2.2},
        1,
    )
    assert fl["metrics"]["cross_site_final_global_model_mean"] == pytest.approx(0.81)
    assert meta(bundle)["eval_metrics"] == {"val_dice cross-site mean, final global model": pytest.approx(0.81)}
    digest = hashlib.sha256((run_folder / "app_server" / "FL_global_model.pt").read_bytes()).hexdigest()
    bundle_digest = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert fl["model"] == {"file": "FL_global_model.pt", "sha256": digest, "bundle_sha256": bundle_digest}
    assert fl["models_recorded_by_run"] == {"FL_global_model.pt": digest}
    assert set(fl["exported_with_oncofl"]) == {"version", "code_sha256"}
    assert meta(bundle)["preprocessing"]["target_spacing"] == [2.5, 2.5, 4.0]
    text = "".join(p.read_text() for p in (bundle / "configs").iterdir()) + (bundle / "docs" / "README.md").read_text()
    for path in (run_folder, synthetic_data, bundle, Path.home()):
        assert str(path) not in text
    assert "holdout" not in text and "case_0" not in text


def test_a_job_definition_needs_a_model_and_says_what_it_did_not_record(tmp_path, capsys):
    job = REPO / "jobs" / "prostate_mri_seg"
    with pytest.raises(ModelFileError, match="holds no trained model"):
        export_bundle(job, tmp_path / "b1")
    model = tmp_path / "weights.pt"
    torch.save(ProstateSegNet().state_dict(), model)
    fl = meta(export_bundle(job, tmp_path / "b2", model=model))["federated_learning"]
    assert (fl["rounds_run"], fl["number_of_sites"], fl["rounds_planned"]) == ("not recorded", "not recorded", 5)
    assert fl["metrics"]["held_out"] == "not recorded" and fl["differential_privacy"] == "none (DP-SGD off)"
    assert fl["source"] == "a job definition (no run records)"
    assert (
        cli.main(["export-bundle", "--job", str(tmp_path), "--model", str(model), "--out", str(tmp_path / "b3")]) == 2
    )
    assert "holds no app*/config/config_fed_client.json" in capsys.readouterr().out
    assert cli.main(["export-bundle", "--job", str(job), "--model", str(model), "--out", str(tmp_path / "b2")]) == 2
    printed = capsys.readouterr().out
    assert "the bundle folder exists and is not empty" in printed and "Fix: pass --out" in printed
    small = tmp_path / "small.pt"
    torch.save(ProstateSegNet(channels=(8, 16, 32, 64)).state_dict(), small)
    with pytest.raises(ModelFileError, match="does not fit this task's network"):
        export_bundle(job, tmp_path / "b4", model=small)


def test_a_classification_bundle_gives_oncofl_predicts_probabilities_and_srs(tmp_path):
    """A mammography run (a smaller network, 128-pixel images, as the job's CPU variant): the bundle's metadata
    describes a classification, its TorchScript model scripts, and MONAI's runner writes the probabilities and SRs
    that ``oncofl predict`` writes for the same images."""
    job = breast_mammo_cls.export(tmp_path / "jobs", image_size=128, small_network=True)
    run = tmp_path / "run"
    shutil.copytree(job / "app", run / "app_server")
    settings = read_job_settings(run)
    network = get_task("breast_mammo_cls").build_network(**settings.network)
    torch.save(network.state_dict(), run / "app_server" / "FL_global_model.pt")
    images = tmp_path / "images"
    vendor = replace(synthetic_mammo.SITE_VENDORS["site-2"], n_cases=3)
    synthetic_mammo.write_site(tmp_path / "mammo", "site-2", vendor, seed=4, split=False)
    shutil.copytree(tmp_path / "mammo" / "site-2" / "cases", images)

    bundle = tmp_path / "mammo_bundle"
    assert cli.main(["export-bundle", "--job", str(run), "--out", str(bundle)]) == 0
    described = meta(bundle)["network_data_format"]
    assert (
        described["inputs"]["image"]["spatial_shape"] == [128, 128] and described["inputs"]["image"]["modality"] == "MG"
    )
    assert described["outputs"]["pred"]["format"] == "classification"
    assert meta(bundle)["torchscript"]["file"] == "models/model.ts"

    run_bundle(bundle, images, tmp_path / "bundle_out")
    assert cli.main(["predict", "--job", str(run), "--input", str(images), "--out", str(tmp_path / "ref")]) == 0
    ours = json.loads((tmp_path / "bundle_out" / "predictions.json").read_text())["predictions"]
    ref = json.loads((tmp_path / "ref" / "predictions.json").read_text())["predictions"]
    assert len(ours) == 3 and ours == ref  # measured: equal to the last digit written (the same code path)
    for row in ours:
        sr = hd.sr.srread(tmp_path / "bundle_out" / "sr" / f"case-{row['case']:04d}.dcm")
        value = sr.content.get_image_measurement_groups()[0].get_measurements()[0].value
        assert value == pytest.approx(row["probability_malignant"], abs=1e-6)
