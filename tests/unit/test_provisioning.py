"""Provisioning without running anything: the real `nvflare provision` with our builders, site templates, the site IT's
configure/preflight (tamper and foreign-certificate detection), dynamic provisioning of a new site, the site's
update guard, and no key material in git."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from cryptography.x509 import load_pem_x509_certificate
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FilterKey, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.app.fl_conf import create_privacy_manager

from oncofl.deploy.builders import TEMPLATES, site_privacy
from oncofl.deploy.provision import PROJECT_FILE, Consortium, rehearsal_project
from oncofl.deploy.site import (
    GUARD,
    STATS_FILTER,
    SetupError,
    check_gpus,
    check_identity,
    check_privacy,
    check_signatures,
    configure,
    preflight,
)
from oncofl.fedstats.privacy import SiteStatisticsPrivacyFilter
from oncofl.privacy import PHIGuardFilter, SiteUpdateGuard
from tests.conftest import REPO

ROLES = {"project_admin", "org_admin", "lead", "member"}


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("consortium")
    (root / "home").mkdir()
    consortium = Consortium(root / "ws", port=18997, env_overrides={"HOME": str(root / "home")})
    consortium.provision(rehearse=True)
    return consortium


@pytest.fixture(scope="module")
def other(provisioned, tmp_path_factory):
    """Another consortium's provisioning: its kits are signed and consistent, under another root CA."""
    instance = Consortium(tmp_path_factory.mktemp("other") / "ws", port=18996, env_overrides=provisioned.env_overrides)
    instance.provision(rehearse=True)
    return instance


def test_project_describes_a_realistic_consortium():
    project = yaml.safe_load(PROJECT_FILE.read_text())
    server = [p for p in project["participants"] if p["type"] == "server"]
    clients = [p for p in project["participants"] if p["type"] == "client"]
    admins = [p for p in project["participants"] if p["type"] == "admin"]
    assert len(server) == 1 and "." in server[0]["name"] and server[0]["name"] in server[0]["host_names"]
    assert len(clients) >= 3
    for client in clients:
        assert client["capacity"]["num_of_gpus"] >= 1 and client["capacity"]["mem_per_gpu_in_GiB"] >= 16
    assert {a["role"] for a in admins} == ROLES
    builders = [b["path"].rsplit(".", 1)[-1] for b in project["builders"]]
    assert builders.index("SignStartupBuilder") > builders.index("CertBuilder")
    assert "SiteTemplateBuilder" in builders


def test_rehearsal_project_only_moves_the_server_to_localhost(tmp_path):
    original = yaml.safe_load(PROJECT_FILE.read_text())
    rehearsal = yaml.safe_load(rehearsal_project(PROJECT_FILE.read_text(), 18000, tmp_path))
    server = rehearsal["participants"][0]
    assert server["default_host"] == "localhost" and {"localhost", "127.0.0.1"} <= set(server["host_names"])
    assert server["fed_learn_port"] == server["admin_port"] == 18000
    assert [p["name"] for p in rehearsal["participants"]] == [p["name"] for p in original["participants"]]


def test_kits_carry_the_site_templates_and_a_verified_signature(provisioned):
    for site in provisioned.site_names:
        kit = provisioned.kit(site)
        local = kit / "local"
        # the template's scopes, less the unbounded HE scope: these kits have no HE context
        assert json.loads((local / "privacy.json").read_text()) == site_privacy(he=False)
        assert check_privacy(local) == []
        resources = json.loads((local / "resources.json").read_text())
        assert resources["allow_log_streaming"] is False  # local error logs name files: they stay at the site
        assert not any(c["id"] == "site_log_streamer" for c in resources["components"])
        assert resources["class_allow_list"], "FLARE's provisioned allow-list is kept"
        allowed = resources["class_allow_list"]  # our jobs carry no code: the classes they build must be allowed
        assert "oncofl.executor.OncoFLExecutor" in allowed and "oncofl.provenance.ProvenanceCheck" in allowed
        assert "oncofl.faults.UpdateFaultFilter" not in allowed  # fault drills never run at a hospital
        manager = next(c["args"] for c in resources["components"] if c["id"] == "resource_manager")
        capacity = next(p for p in yaml.safe_load(PROJECT_FILE.read_text())["participants"] if p["name"] == site)
        assert manager["num_of_gpus"] == capacity["capacity"]["num_of_gpus"]
        authorization = json.loads((local / "authorization.json").read_text())["permissions"]
        # jobs carry settings only; a job carrying code (BYOC) is refused whoever submits it
        assert all(rights["byoc"] == "none" for rights in authorization.values() if isinstance(rights, dict))
        assert {r for r, rights in authorization.items() if isinstance(rights, dict)} == ROLES
        assert check_signatures(kit / "startup") == []
        assert check_identity(kit / "startup", site) == []
        sample = json.loads((local / "oncofl_site.json.sample").read_text())
        assert sample["site_name"] == site
    server_resources = (provisioned.kit(provisioned.server_name) / "local" / "resources.json").read_text()
    assert "/tmp/nvflare" not in server_resources and str(provisioned.root / "server_storage") in server_resources


def test_kits_carry_the_consortium_wheel_signed_with_the_kit(provisioned):
    """Server and hospital kits carry the oncofl wheel the lead built (this checkout's code), its pinned requirements
    and installer, with a manifest; the kit's signature covers them. Admin kits carry none."""
    from oncofl.deploy import kit_install
    from oncofl.provenance import installed

    for name in [provisioned.server_name, *provisioned.site_names]:
        startup = provisioned.kit(name) / "startup"
        manifest = kit_install.verify(startup)
        assert {"version": manifest["version"], "code_sha256": manifest["code_sha256"]} == installed()
        assert {manifest["wheel"], "oncofl-requirements.txt", "install_oncofl.py", "oncofl_package.json"} <= {
            p.name for p in startup.iterdir()
        }
        assert (startup / "oncofl-requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
        assert check_signatures(startup) == []
    assert not (provisioned.kit(provisioned.lead) / "startup" / "oncofl_package.json").exists()


def _run(*args, env=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_site_installs_the_kits_wheel_and_preflight_verifies_the_installed_code(provisioned, tmp_path, synthetic_data):
    """A hospital installs the kit's wheel with the kit's own installer (standard library only: nothing of ours is
    installed yet) and preflight confirms the installed oncofl is the kit's; code changed at the site, a wheel
    changed after provisioning: named, with the fix, and nothing installed."""
    import os

    from oncofl.deploy import kit_install

    kit = _copy_kit(provisioned, "hospital-b", tmp_path)
    configure(
        kit,
        data_root=synthetic_data / "site-2",
        cache_dir=tmp_path / "cache",
        gpu_ids=[],
        available_gpus=0,
        ca_fingerprint=provisioned.root_ca_fingerprint(),
    )
    manifest = kit_install.verify(kit / "startup")
    site_env = tmp_path / "site-env"
    first = _run(kit / "startup" / "install_oncofl.py", "--no-deps", "--target", site_env)
    assert first.returncode == 0, first.stderr
    env = {**os.environ, "PYTHONPATH": str(site_env)}  # the site's environment: this oncofl, not the checkout's
    probe = _run("-c", "import oncofl, oncofl.provenance as p; print(oncofl.__file__); print(p.code_hash())", env=env)
    where, code = probe.stdout.split()
    assert where.startswith(str(site_env)) and code == manifest["code_sha256"]
    ok = _run("-m", "oncofl.cli", "site", "preflight", "--kit", kit, env=env)
    assert ok.returncode == 0 and "PASS  oncofl package" in ok.stdout, ok.stdout + ok.stderr

    privacy = site_env / "oncofl" / "privacy.py"  # someone edits the installed guard at the site
    privacy.write_text(privacy.read_text() + "\n# patched locally\n")
    changed = _run("-m", "oncofl.cli", "site", "preflight", "--kit", kit, env=env)
    assert changed.returncode == 1 and "FAIL  oncofl package" in changed.stdout
    assert "oncofl site install --kit" in changed.stdout
    assert f"kit carries oncofl {manifest['version']}" in changed.stdout

    wheel = kit / "startup" / manifest["wheel"]
    wheel.write_bytes(wheel.read_bytes() + b"\0")  # swapped or damaged after provisioning
    refused = _run("-m", "oncofl.cli", "site", "install", "--kit", kit, "--no-deps", "--target", tmp_path / "t2")
    assert refused.returncode == 2 and f"{manifest['wheel']} (changed since provisioning)" in refused.stderr
    by_hash = _run(kit / "startup" / "install_oncofl.py", "--no-deps", "--target", tmp_path / "t3")
    assert by_hash.returncode == 2 and "does not match the SHA-256" in by_hash.stderr
    assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()


def test_byoc_is_granted_only_to_the_roles_a_consortium_names():
    """Research mode is an explicit opt-in per role; without it nobody may submit a job that carries code."""
    from oncofl.deploy.builders import SiteTemplateBuilder

    default = SiteTemplateBuilder()._authorization()["permissions"]
    opted = SiteTemplateBuilder(allow_byoc=["lead"])._authorization()["permissions"]
    assert {r: p["byoc"] for r, p in default.items() if isinstance(p, dict)} == dict.fromkeys(ROLES, "none")
    assert {r: p["byoc"] for r, p in opted.items() if isinstance(p, dict)} == {
        **dict.fromkeys(ROLES, "none"),
        "lead": "any",
    }


def test_flare_builds_the_site_privacy_scope_with_our_guard(provisioned):
    kit = provisioned.kit("hospital-a")
    manager = create_privacy_manager(Workspace(str(kit), "hospital-a"), names_only=False)
    scope = manager.get_scope("")  # a job that names no scope gets the default one
    assert scope.name == "oncofl"
    assert [type(f) for f in scope.task_data_filters[FilterKey.IN]] == [SiteUpdateGuard]
    assert [type(f) for f in scope.task_result_filters[FilterKey.OUT]] == [
        SiteUpdateGuard,
        SiteStatisticsPrivacyFilter,
        PHIGuardFilter,
    ]
    assert manager.get_scope("research_unfiltered") is None  # FLARE refuses to deploy a job naming it
    # the unbounded HE scope exists only in kits with an HE context: here a job naming it is refused
    assert manager.get_scope("oncofl-he") is None


def test_only_an_he_kit_gets_the_scope_without_an_update_bound():
    """What HE jobs name in meta.json: guarded and PHI-cleaned, without the norm bound; only where HE can run."""
    he_policy = site_privacy(he=True)
    he_scope = next(s for s in he_policy["scopes"] if s["name"] == "oncofl-he")
    guards = [f for chain in ("task_data_filters", "task_result_filters") for f in he_scope[chain]]
    assert [f["path"] for f in guards] == [GUARD, GUARD, STATS_FILTER, "oncofl.privacy.PHIGuardFilter"]
    assert all(f["args"].get("max_update_norm") is None for f in guards if f["path"] == GUARD)
    assert [s["name"] for s in site_privacy(he=False)["scopes"]] == ["oncofl"]


def _copy_kit(provisioned, site, tmp_path):
    kit = tmp_path / site
    shutil.copytree(provisioned.kit(site), kit)
    return kit


def test_configure_and_preflight_pass_on_a_good_kit(provisioned, tmp_path, synthetic_data):
    kit = _copy_kit(provisioned, "hospital-b", tmp_path)
    fingerprint = provisioned.root_ca_fingerprint()  # what the lead gives the site's IT out of band
    configure(
        kit,
        data_root=synthetic_data / "site-2",
        cache_dir=tmp_path / "cache",
        gpu_ids=[],
        available_gpus=0,
        ca_fingerprint=fingerprint.replace(":", "").lower(),
    )
    config = json.loads((kit / "local" / "oncofl_site.json").read_text())
    assert config["site_name"] == "hospital-b" and config["gpu_ids"] == []
    manager = next(
        c["args"]
        for c in json.loads((kit / "local" / "resources.json").read_text())["components"]
        if c["id"] == "resource_manager"
    )
    assert manager["gpu_ids"] == []  # provisioned with 1; this machine has none, so the client can start
    rows = {name: (ok, detail) for name, ok, detail in preflight(kit)}
    assert all(ok for ok, _ in rows.values()), rows
    assert "training" in rows["site data"][1]
    assert rows["consortium CA"][0] and rows["privacy policy"][0]


def test_configure_refuses_gpus_the_machine_does_not_have(provisioned, tmp_path, synthetic_data):
    kit = _copy_kit(provisioned, "hospital-a", tmp_path)
    with pytest.raises(SetupError, match=r"GPU ids \[0, 1\] are not visible.*--gpus none"):
        configure(kit, data_root=synthetic_data / "site-1", cache_dir=tmp_path / "c", gpu_ids=[0, 1], available_gpus=0)
    assert not (kit / "local" / "oncofl_site.json").exists()


def test_configure_offers_jobs_exactly_the_sites_gpus(provisioned, tmp_path, synthetic_data):
    """A hospital whose FL GPUs are 1 and 2 (GPU 0 serves something else): the kit's resource manager offers those,
    and the consumer hands the allocated one to the job (FLARE's own manager would offer GPU 0 and 1)."""
    from oncofl.site_config import load_site_config
    from oncofl.site_gpus import SiteGPUConsumer, SiteGPUResourceManager

    kit = _copy_kit(provisioned, "hospital-a", tmp_path)
    configure(kit, data_root=synthetic_data / "site-1", cache_dir=tmp_path / "c", gpu_ids=[1, 2], available_gpus=3)
    resources = json.loads((kit / "local" / "resources.json").read_text())
    components = {c["id"]: c for c in resources["components"]}
    manager, consumer = components["resource_manager"], components["resource_consumer"]
    assert manager["path"] == "oncofl.site_gpus.SiteGPUResourceManager" and manager["args"]["gpu_ids"] == [1, 2]
    assert consumer["path"] == "oncofl.site_gpus.SiteGPUConsumer"
    built = SiteGPUResourceManager(**{**manager["args"], "ignore_host": True})  # no GPUs on this machine
    assert sorted(built.resources) == [1, 2]
    assert isinstance(SiteGPUConsumer(), SiteGPUConsumer)
    config = load_site_config(kit / "local" / "oncofl_site.json", site_name="hospital-a")
    problems, _ = check_gpus(resources, config)
    assert not any("names" in p for p in problems)  # the kit and the site config agree
    other = {**resources, "components": [{**manager, "args": {**manager["args"], "gpu_ids": [0]}}]}
    problems, _ = check_gpus(other, config)
    assert any("offers GPUs [0] to jobs but oncofl_site.json names [1, 2]" in p for p in problems)


def test_preflight_names_a_tampered_startup_file(provisioned, tmp_path, synthetic_data):
    kit = _copy_kit(provisioned, "hospital-a", tmp_path)
    configure(kit, data_root=synthetic_data / "site-1", cache_dir=tmp_path / "c", gpu_ids=[], available_gpus=0)
    fed_client = kit / "startup" / "fed_client.json"
    fed_client.write_text(fed_client.read_text().replace("localhost", "evil.example.org"))
    rows = {name: (ok, detail) for name, ok, detail in preflight(kit)}
    assert rows["kit integrity"] == (False, "fed_client.json (changed since provisioning)")
    # FLARE's own check agrees (the participant would also refuse to start: its startup has a signature.json)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nvflare.tool.verify_startup_kits",
            "-f",
            str(kit / "startup"),
            "-c",
            str(kit / "startup" / "rootCA.pem"),
        ],
        capture_output=True,
    )
    assert proc.returncode == 1


def test_preflight_catches_a_certificate_from_another_provisioning(provisioned, other, tmp_path):
    kit = _copy_kit(provisioned, "hospital-c", tmp_path)
    for name in ("client.crt", "client.key"):
        shutil.copy2(other.kit("hospital-c") / "startup" / name, kit / "startup" / name)
    problems = check_identity(kit / "startup", "hospital-c")
    assert problems == ["client.crt was not issued by this kit's rootCA.pem (a certificate from another provisioning?)"]
    assert set(check_signatures(kit / "startup")) == {
        "client.crt (changed since provisioning)",
        "client.key (changed since provisioning)",
    }


def test_preflight_fails_a_kit_whose_whole_startup_comes_from_another_consortium(
    provisioned, other, tmp_path, synthetic_data
):
    """A whole foreign kit is self-consistent (signed by its own root CA, certificate and key match): only the root
    CA fingerprint the site was given out of band tells it apart. configure refuses it; a pinned kit whose startup/
    was swapped afterwards fails preflight."""
    fingerprint = provisioned.root_ca_fingerprint()
    assert fingerprint != other.root_ca_fingerprint() and len(fingerprint.split(":")) == 32
    foreign = tmp_path / "foreign"
    shutil.copytree(other.kit("hospital-c"), foreign)
    with pytest.raises(SetupError, match="does not have the fingerprint you were given"):
        configure(
            foreign,
            data_root=synthetic_data / "site-3",
            cache_dir=tmp_path / "c",
            gpu_ids=[],
            ca_fingerprint=fingerprint,
        )
    assert not (foreign / "local" / "consortium_ca.json").exists()

    kit = _copy_kit(provisioned, "hospital-c", tmp_path)
    data = synthetic_data / "site-3"
    configure(kit, data_root=data, cache_dir=tmp_path / "c", gpu_ids=[], available_gpus=0, ca_fingerprint=fingerprint)
    shutil.rmtree(kit / "startup")
    shutil.copytree(other.kit("hospital-c") / "startup", kit / "startup")
    rows = {name: (ok, detail) for name, ok, detail in preflight(kit)}
    assert rows["kit integrity"][0] and rows["site identity"][0]  # consistent in itself ...
    assert rows["consortium CA"] == (  # ... but not the consortium's
        False,
        "startup/rootCA.pem is not the consortium's root CA (its fingerprint differs from the pinned one): this kit "
        "comes from another provisioning; ask the consortium lead for your kit through a trusted channel",
    )
    (kit / "local" / "consortium_ca.json").unlink()  # nothing pinned: no PASS either
    assert not dict((n, ok) for n, ok, _ in preflight(kit))["consortium CA"]


def _policy_without(local, edit) -> list[str]:
    policy = site_privacy(he=False)
    edit(policy["scopes"])
    (local / "privacy.json").write_text(json.dumps(policy))
    return check_privacy(local)


def test_preflight_fails_a_privacy_policy_without_the_phi_filter_or_a_finite_bound(provisioned, tmp_path):
    kit = _copy_kit(provisioned, "hospital-a", tmp_path)
    local = kit / "local"

    def drop_phi(scopes):
        scopes[0]["task_result_filters"] = [f for f in scopes[0]["task_result_filters"] if "PHI" not in f["path"]]

    def unbounded(scopes):
        for f in scopes[0]["task_data_filters"] + scopes[0]["task_result_filters"]:
            f.get("args", {}).pop("max_update_norm", None)

    def drop_stats(scopes):
        scopes[0]["task_result_filters"] = [f for f in scopes[0]["task_result_filters"] if "fedstats" not in f["path"]]

    def infinite(scopes):
        scopes[0]["task_result_filters"][0]["args"]["max_update_norm"] = float("inf")

    assert _policy_without(local, drop_phi) == [
        "the scope 'oncofl' lacks oncofl.privacy.PHIGuardFilter in task_result_filters"
    ]
    assert _policy_without(local, drop_stats) == [
        "the scope 'oncofl' lacks oncofl.fedstats.privacy.SiteStatisticsPrivacyFilter with a min_count of at least 1"
    ]
    assert any("'oncofl' does not bound the update norm" in p for p in _policy_without(local, unbounded))
    assert _policy_without(local, infinite) == [
        "the scope 'oncofl' has max_update_norm inf: it must be a finite positive number"
    ]
    # the template's unbounded HE scope: refused in a kit without an HE context (a job could name it to skip the
    # bound), accepted in an HE kit, never as the default scope
    (local / "privacy.json").write_text((TEMPLATES / "privacy.json").read_text())
    assert check_privacy(local) == [
        "the scope 'oncofl-he' does not bound the update norm (max_update_norm null); only an HE scope in a kit with "
        "an HE context may, and never the default scope"
    ]
    assert check_privacy(local, he_kit=True) == []
    policy = json.loads((TEMPLATES / "privacy.json").read_text())
    (local / "privacy.json").write_text(json.dumps({**policy, "default_scope": "oncofl-he"}))
    assert check_privacy(local, he_kit=True)
    _policy_without(local, drop_phi)
    rows = {name: (ok, detail) for name, ok, detail in preflight(kit)}
    assert rows["privacy policy"][0] is False and "PHIGuardFilter" in rows["privacy policy"][1]


def test_provisioning_leaves_key_material_owner_only(provisioned):
    """The workspace state (the root CA's private key), every private key and every kit archive: mode 600 (700 for
    folders); FLARE 2.9 alone leaves them 644."""
    state = provisioned.state
    assert (state.stat().st_mode & 0o777) == 0o700
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "cert.json" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    keys = list(provisioned.flare_ws.rglob("*.key"))
    assert len(keys) >= len(provisioned.participants())
    assert {oct(p.stat().st_mode & 0o777) for p in keys} == {"0o600"}
    out = provisioned.package()
    zips = sorted(out.glob("*.zip"))
    assert len(zips) == len(provisioned.kits()) > len(provisioned.participants())  # admins' kits too
    assert (out.stat().st_mode & 0o777) == 0o700
    assert {oct(z.stat().st_mode & 0o777) for z in zips} == {"0o600"}


def test_a_workspace_anywhere_inside_a_repository_stays_out_of_git(provisioned):
    """`--root` pointing anywhere inside a checkout: the workspace ignores itself, and the repository's .gitignore
    also covers kit archives wherever they lie."""
    provisioned.package()
    repo = provisioned.root.parent
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    listed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored=no", "--", provisioned.root.name],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listed == ""
    for example in ("anywhere/distribute/hospital-a.zip", "ws/hospital-a.zip", "kits/distribute/README"):
        assert subprocess.run(["git", "check-ignore", "-q", example], cwd=REPO).returncode == 0, example


def test_add_site_issues_one_kit_under_the_same_root_ca(provisioned, tmp_path):
    consortium = Consortium(tmp_path / "ws", port=18995, env_overrides=provisioned.env_overrides)
    consortium.provision(rehearse=True)
    before = {
        p: p.read_bytes() for name in consortium.participants() for p in (consortium.kit(name) / "startup").iterdir()
    }
    kit = consortium.add_site("hospital-d", "hospital_d", gpus=1, gpu_mem=24)
    assert kit.parent.name == "prod_01" and "hospital-d" in consortium.site_names
    assert all(p.read_bytes() == data for p, data in before.items()), "nobody else's kit may change"
    root = load_pem_x509_certificate((consortium.kit("hospital-a") / "startup" / "rootCA.pem").read_bytes())
    assert (kit / "startup" / "rootCA.pem").read_bytes() == (
        consortium.kit("hospital-a") / "startup" / "rootCA.pem"
    ).read_bytes()
    load_pem_x509_certificate((kit / "startup" / "client.crt").read_bytes()).verify_directly_issued_by(root)
    assert check_signatures(kit / "startup") == [] and check_identity(kit / "startup", "hospital-d") == []
    assert (kit / "local" / "privacy.json").is_file()
    record = yaml.safe_load(consortium.project_file.read_text())
    assert {
        "name": "hospital-d",
        "type": "client",
        "org": "hospital_d",
        "capacity": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 24},
    } in record["participants"]
    with pytest.raises(Exception, match="already a participant"):
        consortium.add_site("hospital-d", "hospital_d")


def test_no_key_or_certificate_is_committed():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert files, "not a git checkout"
    marker = b"PRIVATE " + b"KEY-----"  # PEM keys (RSA or not); built here so this file does not contain it
    suspicious = [f for f in files if f.endswith((".key", ".pem", ".crt", ".p12", ".pfx")) or "rootCA" in f]
    assert not suspicious
    for f in files:
        path = REPO / f
        if path.is_file() and path.stat().st_size < 2_000_000:
            assert marker not in path.read_bytes(), f
    for example in (
        "provisioning/workspace/x/startup/client.key",
        "poc/workspace/a.pem",
        "any/rootCA.pem",
        "provisioning/workspace/oncofl_consortium/state/cert.json",
        "elsewhere/state/cert.json",
        "kits/hospital-a/startup/client.crt",
        "jobs/prostate_mri_seg/.__nvfl_submitter.crt",
        "jobs/prostate_mri_seg/app/.__nvfl_sig.json",
    ):
        assert subprocess.run(["git", "check-ignore", "-q", example], cwd=REPO).returncode == 0, example


# ---------------------------------------------------------------------------------------------- SiteUpdateGuard
def _ctx(task_id: str, direction: str) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_ID, task_id, private=True, sticky=False)
    ctx.set_prop(FLContextKey.FILTER_DIRECTION, direction, private=True, sticky=False)
    return ctx


def _weights(value: float) -> dict:
    return {"conv.weight": np.full((3, 4), value, np.float32), "bn.running_mean": np.full(3, value, np.float32)}


def test_guard_clips_the_update_and_drops_data_statistics():
    guard = SiteUpdateGuard(max_update_norm=1.0)
    guard.process(DXO(DataKind.WEIGHTS, _weights(0.0)).to_shareable(), _ctx("t1", FilterKey.IN))
    out = from_shareable(guard.process(DXO(DataKind.WEIGHTS, _weights(1.0)).to_shareable(), _ctx("t1", FilterKey.OUT)))
    assert set(out.data) == {"conv.weight"}  # BatchNorm running statistics never leave
    np.testing.assert_allclose(np.linalg.norm(out.data["conv.weight"]), 1.0, rtol=1e-5)  # norm sqrt(12) -> 1
    assert out.data["conv.weight"].dtype == np.float32
    # cross-site evaluation's submit_model has no task data: measured against the last global model trained from
    out = from_shareable(guard.process(DXO(DataKind.WEIGHTS, _weights(0.1)).to_shareable(), _ctx("t2", FilterKey.OUT)))
    np.testing.assert_allclose(out.data["conv.weight"], 0.1, rtol=1e-5)  # norm 0.35: within the bound, unchanged


def test_guard_refuses_non_finite_updates_and_unbounded_ones():
    guard = SiteUpdateGuard(max_update_norm=1.0, exclude_vars=[])
    bad = _weights(0.0)
    bad["conv.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values in 1 tensor\(s\) \(first: conv.weight\)"):
        guard.guard(bad, DataKind.WEIGHTS, _weights(0.0))
    with pytest.raises(ValueError, match="global weights this result started from were not seen"):
        guard.guard(_weights(1.0), DataKind.WEIGHTS, None)
    diff, report = guard.guard(_weights(0.1), DataKind.WEIGHT_DIFF, None)  # a diff is its own update
    assert "within bound" in report and set(diff) == {"conv.weight", "bn.running_mean"}
    with pytest.raises(ValueError, match="positive number"):
        SiteUpdateGuard(max_update_norm=0)


def test_guard_passes_he_ciphertext_and_refuses_to_leave_an_unmeasurable_update_unbounded():
    encrypted = DXO(DataKind.WEIGHTS, {"conv.weight": b"ciphertext"})
    encrypted.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, "CKKS")
    shareable = encrypted.to_shareable()
    assert SiteUpdateGuard(max_update_norm=1.0).process(shareable, _ctx("he1", FilterKey.IN)) is shareable
    with pytest.raises(ValueError, match="arrived encrypted.*max_update_norm null"):
        SiteUpdateGuard(max_update_norm=1.0).process(
            DXO(DataKind.WEIGHTS, _weights(1.0)).to_shareable(), _ctx("he1", FilterKey.OUT)
        )
    unbounded = SiteUpdateGuard(max_update_norm=None)  # the HE scope: NaN refusal and exclusions still apply
    unbounded.process(encrypted.to_shareable(), _ctx("he2", FilterKey.IN))
    out = from_shareable(
        unbounded.process(DXO(DataKind.WEIGHTS, _weights(1.0)).to_shareable(), _ctx("he2", FilterKey.OUT))
    )
    assert set(out.data) == {"conv.weight"}
    bad = _weights(0.0)
    bad["conv.weight"][0, 0] = np.inf
    unbounded.process(encrypted.to_shareable(), _ctx("he3", FilterKey.IN))
    with pytest.raises(ValueError, match="non-finite"):
        unbounded.process(DXO(DataKind.WEIGHTS, bad).to_shareable(), _ctx("he3", FilterKey.OUT))


def test_site_template_scope_lists_the_guard_in_both_chains():
    policy = json.loads((TEMPLATES / "privacy.json").read_text())
    default = next(s for s in policy["scopes"] if s["name"] == policy["default_scope"])
    assert any(f["path"] == GUARD for f in default["task_data_filters"])
    assert [f["path"] for f in default["task_result_filters"]] == [GUARD, STATS_FILTER, "oncofl.privacy.PHIGuardFilter"]


def test_the_lead_is_shown_the_fingerprint_and_a_site_cannot_configure_without_it(provisioned, capsys, tmp_path):
    from oncofl.deploy import provision, site

    assert provision.main(["--root", str(provisioned.root), "kits"]) == 0
    assert f"root CA fingerprint (SHA-256): {provisioned.root_ca_fingerprint()}" in capsys.readouterr().out
    kit = _copy_kit(provisioned, "hospital-b", tmp_path)
    args = ["configure", "--kit", str(kit), "--data-root", str(tmp_path), "--cache-dir", str(tmp_path / "c")]
    with pytest.raises(SystemExit):
        site.main(args)
    assert "--ca-fingerprint" in capsys.readouterr().err
    assert site.main([*args, "--ca-fingerprint", "ab" * 32]) == 2  # not this kit's root CA: refused, nothing written
    assert "does not have the fingerprint you were given" in capsys.readouterr().err
    assert not (kit / "local" / "oncofl_site.json").exists()
