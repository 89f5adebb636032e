"""The installed package: one `oncofl` command, job folders written from the installed definitions, no path tricks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from oncofl.provenance import installed
from tests.conftest import REPO

ONCOFL = Path(sys.executable).parent / "oncofl"  # the console script pip installed with the package


def run(*args, cwd):
    return subprocess.run([str(ONCOFL), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_oncofl_command_lists_what_users_do_from_any_folder(tmp_path):
    out = run("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("simulate", "job export", "make-data", "check-site", "report", "poc", "provision", "site"):
        assert f"oncofl {command}" in out.stdout
    assert len(out.stdout.splitlines()) < 20  # short
    assert run("frobnicate", cwd=tmp_path).returncode == 2
    version = run("version", cwd=tmp_path)
    assert version.returncode == 0 and installed()["code_sha256"] in version.stdout
    assert run("site", "--help", cwd=tmp_path).returncode == 0 and run("poc", "--help", cwd=tmp_path).returncode == 0


def test_job_export_writes_the_committed_folder(tmp_path):
    out = run("job", "export", "breast_wdbc", "--out", tmp_path, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for file in ("meta.json", "app/config/config_fed_client.json", "app/config/config_fed_server.json"):
        committed = json.loads((REPO / "jobs" / "breast_wdbc" / file).read_text())
        assert json.loads((tmp_path / "breast_wdbc" / file).read_text()) == committed, file
    assert run("job", "export", "no_such_job", cwd=tmp_path).returncode == 2


def test_make_data_and_check_site(tmp_path):
    assert run("make-data", "prostate", "--out", tmp_path / "d", cwd=tmp_path).returncode == 0
    check = run("check-site", "--config", tmp_path / "d" / "site_configs" / "site-1.json", "--json", cwd=tmp_path)
    assert check.returncode == 0 and json.loads(check.stdout)["cases"]["training"] > 0


def test_no_module_outside_the_tests_changes_sys_path():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"sys\.path(\.insert|\.append|\[[^]]*\]\s*=|\s*\+?=)")
    offenders = [f for f in files.split() if not f.startswith("tests/") and pattern.search((REPO / f).read_text())]
    assert not offenders
    tests = [f for f in files.split() if f.startswith("tests/") and pattern.search((REPO / f).read_text())]
    assert tests == [], tests  # the tests import the installed package too
