"""The POC definition and `pocctl prepare` (real `nvflare poc prepare`, no process started): kits, site data configs,
GPU binding, and a job copy whose GPU needs name every site (so `nvflare job submit` cannot drop them)."""

import json

import yaml

from oncofl.deploy.poc import LEAD, ORG_ADMIN, PROJECT_ADMIN, PROJECT_FILE, SERVER, SITES, Poc
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


def test_staged_job_names_gpu_needs_per_site(tmp_path):
    from oncofl.jobs.prostate_mri_seg import export

    job = export(tmp_path / "jobs", num_rounds=1)
    poc = Poc(tmp_path / "poc")
    meta = json.loads((poc.stage_job(job, gpus_per_site=1) / "meta.json").read_text())
    assert meta["resource_spec"] == {s: {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8} for s in SITES}
    assert "@default" not in json.dumps(meta)
    assert json.loads((poc.stage_job(job) / "meta.json").read_text()).get("resource_spec", {}) == {}
