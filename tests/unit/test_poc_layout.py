"""The POC definition and `pocctl prepare` (real `nvflare poc prepare`, no process started): kits, site data configs,
GPU binding, and a job copy whose GPU needs name every site (so `nvflare job submit` cannot drop them)."""

import json

import yaml
from nvflare.apis.fl_constant import FilterKey
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.app.fl_conf import create_privacy_manager

from oncofl.deploy.builders import site_privacy
from oncofl.deploy.poc import LEAD, ORG_ADMIN, PROJECT_ADMIN, PROJECT_FILE, SERVER, SITES, Poc
from oncofl.deploy.site import check_privacy
from oncofl.fedstats.privacy import SiteStatisticsPrivacyFilter
from oncofl.privacy import PHIGuardFilter, SiteUpdateGuard
from oncofl.site_config import load_site_config


def test_project_lists_the_hospitals_and_admin_roles():
    project = yaml.safe_load(PROJECT_FILE.read_text())
    by_type = {}
    for p in project["participants"]:
        by_type.setdefault(p["type"], []).append(p)
    assert [c["name"] for c in by_type["client"]] == list(SITES)
    roles = {a["name"]: a["role"] for a in by_type["admin"]}
    assert roles[PROJECT_ADMIN] == "project_admin" and roles[LEAD] == "lead" and roles[ORG_ADMIN] == "org_admin"
    assert "member" in roles.values()


def test_prepare_writes_kits_site_configs_and_gpu_binding(tmp_path, synthetic_data):
    (tmp_path / "home").mkdir()
    poc = Poc(tmp_path / "poc", port=18999, env_overrides={"HOME": str(tmp_path / "home")})
    poc.prepare(gpus={"hospital-b": [0, 1]}, data=synthetic_data)
    assert not poc.running_pids()
    server = json.loads((poc.kit(SERVER) / "startup" / "fed_server.json").read_text())
    assert server["servers"][0]["service"]["target"].endswith(":18999")
    for site, folder in zip(SITES, ("site-1", "site-2", "site-3")):
        config = load_site_config(poc.kit(site) / "local" / "oncofl_site.json", site_name=site)
        assert config.data_root == (synthetic_data / folder).resolve()
        assert (poc.kit(site) / "startup" / "client.key").is_file()  # an mTLS identity per hospital
        resources = json.loads((poc.kit(site) / "local" / "resources.json").read_text())
        manager = next(c for c in resources["components"] if c["id"] == "resource_manager")
        assert manager["args"]["num_of_gpus"] == (2 if site == "hospital-b" else 0)
        assert list(config.gpu_ids) == ([0, 1] if site == "hospital-b" else [])
        # the same site policy as a provisioned hospital kit: a privacy scope and no log streaming to the server
        assert resources["allow_log_streaming"] is False
        assert not any(c["id"] == "site_log_streamer" for c in resources["components"])
        assert json.loads((poc.kit(site) / "local" / "privacy.json").read_text()) == site_privacy(he=False)
        assert check_privacy(poc.kit(site) / "local") == []
        scope = create_privacy_manager(Workspace(str(poc.kit(site)), site), names_only=False).get_scope("")
        assert [type(f) for f in scope.task_data_filters[FilterKey.IN]] == [SiteUpdateGuard]
        assert [type(f) for f in scope.task_result_filters[FilterKey.OUT]] == [
            SiteUpdateGuard,
            SiteStatisticsPrivacyFilter,
            PHIGuardFilter,
        ]
    assert (poc.root / ".gitignore").read_text().splitlines()[-1] == "*"  # keys and kits: never committed
    keys = list(poc.flare_ws.rglob("*.key"))
    assert keys and {oct(k.stat().st_mode & 0o777) for k in keys} == {"0o600"}


def test_staged_job_names_gpu_needs_per_site(tmp_path):
    from oncofl.jobs.prostate_mri_seg import export

    job = export(tmp_path / "jobs", num_rounds=1)
    poc = Poc(tmp_path / "poc")
    meta = json.loads((poc.stage_job(job, gpus_per_site=1) / "meta.json").read_text())
    assert meta["resource_spec"] == {s: {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8} for s in SITES}
    assert "@default" not in json.dumps(meta)
    assert json.loads((poc.stage_job(job) / "meta.json").read_text()).get("resource_spec", {}) == {}
