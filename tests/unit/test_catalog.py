"""The catalog (oncofl.catalog) is the one list of jobs: it names every job definition, each committed job folder
trains the task its entry names, and reading it imports nothing else."""

import importlib.util
import json
import subprocess
import sys

import pytest

from oncofl.catalog import JOBS, by_data_kind, by_job, by_task
from oncofl.tasks import TASK_NAMES
from tests.conftest import REPO


def test_every_job_definition_is_in_the_catalog_once():
    definitions = {p.stem for p in (REPO / "custom/oncofl/jobs").glob("*.py")} - {"__init__", "builder"}
    assert sorted(job.name for job in JOBS) == sorted(definitions)
    for attribute in ("name", "task", "data_kind", "data_folder"):
        values = [getattr(job, attribute) for job in JOBS]
        assert len(set(values)) == len(values), attribute


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.name)
def test_entry_names_a_task_a_committed_job_of_that_task_and_a_data_writer(job):
    assert job.task in TASK_NAMES
    config = json.loads((REPO / "jobs" / job.name / "app/config/config_fed_client.json").read_text())
    assert config["executors"][0]["executor"]["args"]["task"] == job.task
    assert (REPO / "jobs" / f"{job.name}.py").is_file()
    assert importlib.util.find_spec(job.data_module) is not None
    assert by_job(job.name) is job and by_task(job.task) is job and by_data_kind(job.data_kind) is job


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'nope'; available: prostate_seg, "):
        by_task("nope")


def test_reading_the_catalog_imports_no_other_oncofl_module():
    code = "import sys, oncofl.catalog; print(sorted(m for m in sys.modules if m.startswith('oncofl')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "['oncofl', 'oncofl.catalog']"
