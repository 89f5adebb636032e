import filecmp
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

JOBS = ["prostate_mri_seg", "breast_wdbc", "breast_mammo_cls", "lung_nodule_cls"]
JOB = REPO / "jobs" / "prostate_mri_seg"


def _diff(a, b, rel=""):
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    problems = [f"{rel}{n}: only in committed" for n in cmp.left_only]
    problems += [f"{rel}{n}: only in generated" for n in cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    problems += [f"{rel}{n}: differs" for n in mismatch + errors]
    for sub in cmp.common_dirs:
        problems += _diff(a / sub, b / sub, f"{rel}{sub}/")
    return problems


@pytest.mark.parametrize("name", JOBS)
def test_committed_job_folder_equals_generated(tmp_path, name):
    subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{name}.py"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    problems = _diff(REPO / "jobs" / name, tmp_path / name)
    assert not problems, f"regenerate with `python jobs/{name}.py`: " + "; ".join(problems)


@pytest.mark.parametrize("name", JOBS)
def test_job_holds_no_site_paths_and_streams_no_logs(name):
    for file in ("meta.json", "app/config/config_fed_server.json", "app/config/config_fed_client.json"):
        text = (REPO / "jobs" / name / file).read_text()
        json.loads(text)
        assert "data_root" not in text and "/" + "home" not in text and "/tmp" not in text and str(REPO) not in text
        assert "LogStreamer" not in text  # site logs (which name local files) stay at the site


def test_job_wires_the_documented_workflow():
    server = json.loads((JOB / "app/config/config_fed_server.json").read_text())
    client = json.loads((JOB / "app/config/config_fed_client.json").read_text())
    assert [w["path"].rsplit(".", 1)[1] for w in server["workflows"]] == ["ScatterAndGather", "CrossSiteModelEval"]
    components = {c["id"]: c for c in server["components"]}
    assert components["model_selector"]["args"]["key_metric"] == "val_dice"
    assert components["persistor"]["args"]["model"]["path"] == "oncofl.tasks.prostate_seg.ProstateSegNet"
    executor = client["executors"][0]
    assert set(executor["tasks"]) == {"train", "validate", "submit_model"}
    assert executor["executor"]["args"]["task"] == "prostate_seg"
    assert (JOB / "app/custom/oncofl/__init__.py").is_file()
